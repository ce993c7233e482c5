"""Entity-level precision, recall and F1, overall (micro) and per type, with strict IOB2
matching: an entity is ``B-X I-X*`` (an ``I-X`` that continues no ``B-X``/``I-X`` is in no
entity) and a prediction counts only when its type, first and last word all equal a true
entity's. This is ``seqeval``'s ``classification_report(..., mode="strict", scheme=IOB2)``
and ``f1_score(..., mode="strict", scheme=IOB2)``, undefined ratios included (0 when nothing
was predicted or nothing was there to find); ``tests/test_ner_metric.py`` checks equality.

Spans (what :func:`.align.decode` returns, what the data holds) are scored through
:func:`spans_to_tags`, which tags the words of :mod:`.words`: for spans on word boundaries the
entities of the tags are the spans themselves, so the score does not depend on how words are cut.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from edgetl.errors import DataError
from edgetl.tasks.token_classification.tags import spans_to_word_tags, strict_entities
from edgetl.tasks.token_classification.words import split_words

__all__ = ["EntityScores", "entity_scores", "spans_to_tags", "score_spans"]


def _prf(correct: int, predicted: int, true: int) -> tuple[float, float, float]:
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@dataclass(frozen=True)
class EntityScores:
    """Micro-averaged ``precision``, ``recall``, ``f1`` over all entities; ``per_type``
    maps each type seen in truth or predictions to ``{"precision", "recall", "f1",
    "support" (true entities), "predicted", "correct"}``; ``n``: sequences scored."""

    precision: float
    recall: float
    f1: float
    n_true: int
    n_pred: int
    n_correct: int
    n: int
    per_type: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``evaluate --json`` shape: f1, precision, recall, per_type, n (+ counts)."""
        return {"f1": self.f1, "precision": self.precision, "recall": self.recall,
                "per_type": {k: dict(v) for k, v in self.per_type.items()}, "n": self.n,
                "n_true": self.n_true, "n_pred": self.n_pred, "n_correct": self.n_correct}


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> EntityScores:
    """Strict IOB2 entity scores of predicted tag sequences against true ones (one sequence
    per sentence, the same lengths). A tag that is not ``O``/``B-X``/``I-X`` raises DataError."""
    if len(y_true) != len(y_pred):
        raise DataError(f"{len(y_true)} true tag sequences but {len(y_pred)} predicted ones")
    true: set[tuple[int, str, int, int]] = set()
    pred: set[tuple[int, str, int, int]] = set()
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise DataError(f"sequence {i}: {len(t)} true tags but {len(p)} predicted")
        true.update((i, typ, a, b) for typ, a, b in strict_entities(t))
        pred.update((i, typ, a, b) for typ, a, b in strict_entities(p))
    correct = true & pred
    n_true, n_pred, n_ok = Counter(e[1] for e in true), Counter(e[1] for e in pred), Counter(e[1] for e in correct)
    per_type = {}
    for typ in sorted(set(n_true) | set(n_pred)):
        p, r, f = _prf(n_ok[typ], n_pred[typ], n_true[typ])
        per_type[typ] = {"precision": p, "recall": r, "f1": f, "support": n_true[typ],
                         "predicted": n_pred[typ], "correct": n_ok[typ]}
    p, r, f = _prf(len(correct), len(pred), len(true))
    return EntityScores(p, r, f, len(true), len(pred), len(correct), len(y_true), per_type)


def _span_tuple(s: Any) -> tuple[int, int, str]:
    if isinstance(s, Mapping):
        return int(s["start"]), int(s["end"]), str(s["label"])
    start, end, label = s
    return int(start), int(end), str(label)


def spans_to_tags(text: str, spans: Iterable[Any]) -> list[str]:
    """Word-level IOB2 tags of ``text`` for entity spans (``Span``, ``(start, end, label)``
    or decode's ``{"start", "end", "label", ...}``) on word boundaries, not overlapping."""
    return spans_to_word_tags(split_words(text), [_span_tuple(s) for s in spans])


def score_spans(texts: Sequence[str], true_spans: Sequence[Iterable[Any]],
                pred_spans: Sequence[Iterable[Any]]) -> EntityScores:
    """:func:`entity_scores` of predicted against true spans, text by text."""
    if not len(texts) == len(true_spans) == len(pred_spans):
        raise DataError(f"{len(texts)} texts, {len(true_spans)} true and {len(pred_spans)} predicted span lists")
    y_true = [spans_to_tags(t, s) for t, s in zip(texts, true_spans)]
    y_pred = [spans_to_tags(t, s) for t, s in zip(texts, pred_spans)]
    return entity_scores(y_true, y_pred)
