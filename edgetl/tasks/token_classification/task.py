"""Named-entity recognition behind the task seam: entity spans in texts.

The backbone's output is one feature vector per token, ``[N, T, F]``; each token is a row of the
head (``[N*T, F]``), whose outputs are the IOB2 tags ``O, B-T1, I-T1, B-T2, ...`` of the entity
types (:func:`~.tags.tag_set`; types appended later keep the earlier tags' indices, so a head
learning a new type grows by two outputs). A word's tag is read on its FIRST subword (the
rows training and the replay memory use); decoding, the same on the workstation and the device
(numpy): softmax over tags, the most probable valid IOB2 path over words (Viterbi), entity spans
with character offsets into the original text (:func:`~.align.decode`). The metric is entity
F1, strict IOB2, equal to ``seqeval`` (:mod:`.metric`).

Offsets: the predictor's chunks carry token ids, not offsets, so :meth:`predict` tokenises each
chunk's texts once more with :func:`~.align.encode_batch` and the bound ``tokenizer.json`` (the
same setup, so the same ids, checked per text). Measured on the loaded 2-core EPYC: 0.16 ms per
27-token sentence, against ~8 ms for the int8 backbone on one; the modality's own loading stays
what every task shares.

Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgetl.errors import BundleError, ConfigError, DataError
from edgetl.tasks import TASKS
from edgetl.tasks.token_classification.align import Encoding, decode, encode_batch
from edgetl.tasks.token_classification.data import NerData, detect_format, read_ner_data
from edgetl.tasks.token_classification.metric import EntityScores, score_spans
from edgetl.tasks.token_classification.tags import parse_tag, tag_set

__all__ = ["Entity", "TokenPrediction", "NerEvaluation", "TokenClassificationTask", "TOKEN_CLASSIFICATION",
           "tags_of", "types_of", "extend_tags", "word_rows", "tag_probabilities", "decode_texts"]


@dataclass(frozen=True)
class Entity:
    """A predicted entity: ``text[start:end]`` (Python string indices into the original text)
    is of type ``label``; ``score`` is the mean over its words of the chosen tag's probability."""

    start: int
    end: int
    label: str
    score: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label, "score": self.score, "text": self.text}


@dataclass(frozen=True)
class TokenPrediction:
    """One text's entities, in order; ``error`` says why a text could not be read. ``where``
    names where the text came from (file:line, --text:N) when the caller says."""

    text: str | None
    entities: tuple[Entity, ...] = ()
    error: str | None = None
    where: str | None = None
    words_cut: int = 0  # words past max_length: no prediction there

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "entities": [e.to_dict() for e in self.entities],
                               "error": self.error}
        if self.where is not None:
            out["where"] = self.where
        if self.words_cut:
            out["words_cut"] = self.words_cut
        return out


@dataclass(frozen=True)
class NerEvaluation:
    """``{"f1", "precision", "recall", "per_type": {type: {"precision", "recall", "f1", "support",
    "predicted", "correct"}}, "n", "n_true", "n_pred", "n_correct", "errors", "runtime",
    "precision_executed", ...}``: strict IOB2 entity scores (= seqeval) of the predictions."""

    scores: EntityScores
    errors: tuple[tuple[str, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def f1(self) -> float:
        return self.scores.f1

    @property
    def n(self) -> int:
        return self.scores.n

    def to_dict(self) -> dict[str, Any]:
        return {**self.scores.to_dict(), "errors": [{"file": w, "error": e} for w, e in self.errors], **self.extra}


def tags_of(labels: Sequence[str]) -> tuple[str, ...]:
    """The head's tags from a model's labels: the tag set itself (what head.onnx records, first
    ``O``), or entity types (what run.json lists), whose tag set it is. ``O`` is never a type."""
    labels = tuple(labels)
    if labels and labels[0] == "O":
        for t in labels:
            p = parse_tag(t) if isinstance(t, str) else None
            if p is None or p[0] not in ("O", "B", "I"):
                raise BundleError(f"head label {t!r} is not an IOB2 tag (O, B-TYPE, I-TYPE)")
        return labels
    return tag_set(labels)


def types_of(labels: Sequence[str]) -> tuple[str, ...]:
    """The entity types of a model's labels (tags or types), in head order."""
    return tuple(t[2:] for t in tags_of(labels) if t.startswith("B-"))


def extend_tags(labels: Sequence[str], types: Sequence[str]) -> tuple[str, ...]:
    """The tag set of a model's labels with ``types`` it lacks appended (``B-X``, ``I-X`` each, at
    the end: the existing tags keep their head outputs, so a grown head starts from the old rows)."""
    known = types_of(labels)
    return tag_set(known + tuple(t for t in dict.fromkeys(types) if t not in known))


def word_rows(predictor: Any, examples: Sequence[Any], tags: Sequence[str] | None = None, *,
              batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows the head learns from, through ``predictor``'s backbone (as the device computes
    them): the features of each word's FIRST subword ``X`` [R, F] float32, the word's tag id ``y``
    [R] in ``tags`` (default: the model's; pass :func:`extend_tags` to learn new types), and the
    example each row is from ``item`` [R]. Words whose label is unknown (the data's ignored
    spans) and words past ``max_length`` give no row. Raises DataError on an unusable text."""
    from edgetl.tasks.token_classification.align import IGNORE, token_labels

    tags = tuple(tags) if tags is not None else tags_of(predictor.labels)
    index = {t: i for i, t in enumerate(tags)}
    tokenizer = predictor.modality.tokenizer(predictor.spec)
    texts = [e.text for e in examples]
    X, y, item = [], [], []
    for indices, z, _ in predictor.run_chunks(texts, batch_size, strict=True, logits=False, adapted=False):
        encodings = encode_batch([texts[i] for i in indices], tokenizer, predictor.spec.max_length)
        for row, (i, enc) in enumerate(zip(indices, encodings)):
            labels = token_labels(examples[i], enc, index)
            keep = np.flatnonzero(labels != IGNORE)
            X.append(np.asarray(z[row, keep], np.float32))
            y.append(labels[keep])
            item.append(np.full(len(keep), i, np.int64))
    if not X:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(X), np.concatenate(y), np.concatenate(item)


def _backbone_chunks(predictor: Any, texts: Sequence[str]):
    """``(indices, token features, model inputs)`` per chunk of readable texts."""
    for indices, x, _ in predictor.batches(texts, strict=False):
        if indices:
            yield indices, predictor.backbone.run(x), x


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float32) - np.max(logits, axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def tag_probabilities(logits: np.ndarray) -> np.ndarray:
    """Head logits ``[..., K]`` -> tag probabilities (softmax over the last axis)."""
    return _softmax(logits)


def decode_texts(encodings: Sequence[Encoding], probs: Sequence[np.ndarray], tags: Sequence[str]) -> list[list[dict]]:
    """Each text's entities (:func:`~.align.decode`, constrained) from its tokens' tag
    probabilities ``[T_i (or more, padding), K]``."""
    return [decode(e.text, e, p, tags) for e, p in zip(encodings, probs)]


class TokenClassificationTask:
    """Entity spans in texts (see the module docstring)."""

    name = "token-classification"
    modalities = ("text",)
    noun = "sentence"
    pooled = False
    feature_axis = -1  # token features [N, T, F]
    extra_heads: tuple[str, ...] = ()
    metric_label = "entity F1"  # what its summaries call the metric
    guard_budget = (0.02, 0.90)  # the quantization guard's: entity F1 drop, exact-entity agreement
    metric_name = "f1"  # entity F1, strict IOB2: what on-device retraining is gated on
    background_sampled = False  # every first-subword token is a row, O included

    def recognises(self, data: Any) -> bool:
        try:
            return detect_format(data) is not None
        except (OSError, ValueError, DataError):
            return False

    def read(self, data: Any, modality: Any = None, *, strict: bool = False, **options: Any) -> NerData:
        return read_ner_data(data, strict=strict)

    def head_labels(self, labels: Sequence[str]) -> list[str]:
        """The tags of entity types ``labels`` (a tag set is returned as it is)."""
        return list(tags_of(labels))

    def rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """token features [N, T, F] -> rows [N*T, F], each text's tokens in order (padding included:
        ``inputs["attention_mask"]`` says which are real)."""
        f = output.shape[-1]
        return np.ascontiguousarray(output.reshape(-1, f))

    def item_rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Each text's real tokens' features [T_i, F] (padding left out)."""
        lengths = np.asarray(inputs["attention_mask"]).sum(axis=1)
        return [np.ascontiguousarray(z[: int(n)]) for z, n in zip(output, lengths)]

    # --- retraining on the device (edgetl.device.row_retraining) -------------------------------

    def item_source(self, item: Any) -> str:
        """What the predictor reads for an annotated example: its text."""
        return item.text

    def item_classes(self, item: Any, labels: Sequence[str]) -> np.ndarray:
        """The example's entities' types as indices into ``labels`` (entity types), in order."""
        index = {t: i for i, t in enumerate(labels)}
        return np.asarray([index[s.label] for s in item.entities], np.int64)

    def training_rows(self, rows: np.ndarray, item: Any, classes: np.ndarray, spec: Any,
                      rng: np.random.Generator, *, sample: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One text's token rows [T, F] -> the rows to learn from: each labelled word's first
        subword (as the workstation trains), its tag's index in the head (type ``c`` of the
        labels: ``B-`` is ``1 + 2c``, ``I-`` is ``2 + 2c``; ``O`` is 0), no extra targets.
        ``classes``: the example's entities' types as the head's labels index them."""
        from edgetl.modalities import get_modality
        from edgetl.tasks.token_classification.align import IGNORE, encode, token_labels

        index = {"O": 0}
        for span, c in zip(item.entities, np.asarray(classes, np.int64)):
            index[f"B-{span.label}"], index[f"I-{span.label}"] = 1 + 2 * int(c), 2 + 2 * int(c)
        enc = encode(item.text, get_modality("text").tokenizer(spec), spec.max_length)
        if len(enc) != len(rows):
            raise ConfigError(f"{item.where or 'a text'}: {len(enc)} tokens encoded but {len(rows)} run; "
                              "this is a bug in edgetl, please report it")
        labels = token_labels(item, enc, index)
        keep = np.flatnonzero(labels != IGNORE)
        return (np.asarray(rows[keep], np.float32), labels[keep].astype(np.int64),
                np.zeros((len(keep), 0), np.float32))

    def solve_extra_heads(self, X: np.ndarray, y: np.ndarray, targets: np.ndarray,
                          old: Mapping[str, tuple] | None = None) -> dict[str, tuple]:
        return {}  # one head: the tags

    def score_heads(self, predictor: Any, items: list, classes: list, head: tuple, extra: dict,
                    labels: list[str]) -> float:
        """Entity F1 (strict IOB2) of the tag head ``head`` (W, b) over the tags of ``labels``
        on annotated examples, decoded as :meth:`predict` decodes."""
        W, b = (np.asarray(a, np.float32) for a in head)
        tags = tags_of(labels)[: len(W)]  # an old head answers its own tags (new ones are appended)
        tokenizer = predictor.modality.tokenizer(predictor.spec)
        texts = [it.text for it in items]
        truth, preds, kept = [], [], []
        for indices, z, x in _backbone_chunks(predictor, texts):
            encodings = encode_batch([texts[i] for i in indices], tokenizer, predictor.spec.max_length)
            for i, rows, enc in zip(indices, self.item_rows(z, x), encodings):
                found = decode(enc.text, enc, _softmax(rows @ W.T + b), tags)
                kept.append(texts[i]), truth.append(items[i].entities)
                preds.append([(e["start"], e["end"], e["label"]) for e in found])
        return float(score_spans(kept, truth, preds).f1) if kept else 0.0

    def outputs(self, predictor: Any, z: np.ndarray, inputs: Mapping[str, np.ndarray], head: Any,
                extra: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A chunk's token features -> ``{"probs": [N, T, K] tag probabilities, "lengths": [N] real
        tokens}`` (the head over every token row, softmax)."""
        if z.ndim != 3:
            raise BundleError(f"a token-classification backbone returns token features [N, T, F], this one "
                              f"returns shape {tuple(z.shape)}; re-export the RUN")
        n, t, _ = z.shape
        rows = self.rows(z, inputs)
        if predictor.adapter is not None:
            rows = predictor.apply_adapter(rows)
        logits = head.run(rows).reshape(n, t, -1)
        return {"probs": _softmax(logits), "lengths": np.asarray(inputs["attention_mask"]).sum(axis=1)}

    # --- what ``edgetl bench`` times after the network (edgetl.benchmarking.worker) ------------

    def bench_outputs(self, raw: Any, x: Mapping[str, np.ndarray], spec: Any) -> dict[str, np.ndarray]:
        """The PyTorch model's tag logits [N, T, K] as :meth:`outputs` gives the device's."""
        return {"probs": _softmax(np.asarray(raw, np.float32)),
                "lengths": np.asarray(x["attention_mask"]).sum(axis=1)}

    def bench_decode(self, out: Mapping[str, np.ndarray], spec: Any) -> np.ndarray:
        """Each text's best tags over its real tokens, turned into strict IOB2 entities (what
        decoding costs before character offsets); returns their count per text."""
        from edgetl.tasks.token_classification.tags import strict_entities

        names = tags_of([str(c) for c in range((out["probs"].shape[-1] - 1) // 2)])  # the head's tag layout
        best = out["probs"].argmax(axis=-1)
        return np.asarray([len(strict_entities([names[int(k)] for k in row[: int(n)]]))
                           for row, n in zip(best, out["lengths"])])

    def predict(self, predictor: Any, sources: Sequence[Any], *, top_k: int = 1,
                batch_size: int | None = None) -> list[TokenPrediction]:
        """Entities of each text (``top_k`` has no meaning here); an unusable text gives a
        :class:`TokenPrediction` with ``error`` set."""
        tags = tags_of(predictor.labels)
        tokenizer = predictor.modality.tokenizer(predictor.spec)
        max_length = predictor.spec.max_length
        results: list[TokenPrediction | None] = [None] * len(sources)
        for indices, out, errors in predictor.run_chunks(sources, batch_size, strict=False, logits=True):
            for i, reason in errors.items():
                results[i] = TokenPrediction(sources[i] if isinstance(sources[i], str) else None, (), reason)
            if not indices:
                continue
            encodings = encode_batch([sources[i] for i in indices], tokenizer, max_length)
            for row, (i, enc) in enumerate(zip(indices, encodings)):
                if len(enc) != int(out["lengths"][row]):
                    raise ConfigError(f"text {i}: {len(enc)} tokens re-encoded but {int(out['lengths'][row])} run; "
                                      "this is a bug in edgetl, please report it")
                found = decode(enc.text, enc, out["probs"][row], tags)
                results[i] = TokenPrediction(sources[i], tuple(Entity(**e) for e in found), words_cut=enc.words_cut)
        return results  # type: ignore[return-value]

    def evaluate(self, predictor: Any, data: str | os.PathLike | NerData, *,
                 batch_size: int | None = None) -> NerEvaluation:
        """Strict IOB2 entity scores (= seqeval) of ``predictor`` on annotated texts (a CoNLL or
        JSONL-with-spans file, or :class:`NerData`). Entity types the model does not know are
        scored (it finds none of them) and listed under ``unknown_types``."""
        found = data if isinstance(data, NerData) else read_ner_data(data)
        known = set(types_of(predictor.labels))
        unknown = [t for t in found.types if t not in known]
        examples = list(found.examples)
        predictions = self.predict(predictor, [e.text for e in examples], batch_size=batch_size)
        texts, truth, preds, errors = [], [], [], []
        cut = 0
        for example, pred in zip(examples, predictions):
            if not pred.ok:
                errors.append((example.where, pred.error or ""))
                continue
            texts.append(example.text)
            truth.append(example.entities)
            preds.append([(e.start, e.end, e.label) for e in pred.entities])
            cut += pred.words_cut
        if not texts:
            raise DataError(f"{found.root}: none of its {len(examples)} text(s) could be read")
        extra: dict[str, Any] = {"runtime": predictor.runtime, "precision_executed": predictor.precision_executed}
        if unknown:
            extra["unknown_types"] = unknown
        if cut:
            extra["words_cut"] = cut
        return NerEvaluation(score_spans(texts, truth, preds), tuple(errors), extra)


TOKEN_CLASSIFICATION = TokenClassificationTask()
TASKS.register("token-classification", TOKEN_CLASSIFICATION)
