"""Token rows: texts tokenised with offsets, run through the frozen encoder once, and the features
of every word's FIRST subword kept with the word's IOB2 tag id (the rows the head is solved on,
and the rows the device's replay memory holds). Only first subwords are kept: the decoder reads a
word's tag there and nowhere else (:func:`edgetl.tasks.token_classification.decode`), so the
other tokens' features would never be used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgetl.tasks.token_classification.align import IGNORE, Encoding, encode_batch, stack, token_labels
from edgetl.tasks.token_classification.data import NerExample

__all__ = ["WordRows", "encode_examples", "word_rows", "word_labels", "token_probs", "probs_of", "val_scores"]


@dataclass
class WordRows:
    """Per text: ``rows[i]`` [W_i, F], the features of the first subword of each word that has one
    (``encodings[i].first_token >= 0``, in word order), and ``labels[i]`` [W_i], their tag ids
    (``IGNORE`` where the data says the label is unknown)."""

    encodings: list[Encoding]
    rows: list[np.ndarray]
    labels: list[np.ndarray]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The labelled rows of every text, stacked: ``X`` [R, F] float32, ``y`` [R] int64."""
        if not self.rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        X = np.concatenate(self.rows)
        y = np.concatenate(self.labels)
        keep = y != IGNORE
        return np.ascontiguousarray(X[keep], np.float32), y[keep]


def encode_examples(examples: Sequence[NerExample], tokenizer, max_length: int) -> list[Encoding]:
    return encode_batch([e.text for e in examples], tokenizer, max_length)


def word_labels(example: NerExample, enc: Encoding, tag_index: Mapping[str, int]) -> np.ndarray:
    present = enc.first_token[enc.first_token >= 0]
    return token_labels(example, enc, tag_index)[present]


def word_rows(examples: Sequence[NerExample], encodings: Sequence[Encoding], tag_index: Mapping[str, int],
              forward: Callable[[dict], np.ndarray], *, batch_size: int = 32,
              progress: str = "embedding sentences") -> WordRows:
    """Run ``forward`` (model inputs -> token features [N, T, F]) over the texts in batches of
    similar length (less padding) and keep each word's first-subword features."""
    from edgetl.core import ui

    n = len(encodings)
    rows: list[np.ndarray | None] = [None] * n
    order = np.argsort([len(e) for e in encodings], kind="stable")
    with ui.progress_bar(progress, n) as advance:
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            z = forward(stack([encodings[i] for i in idx]))
            for row, i in enumerate(idx):
                ft = encodings[i].first_token
                rows[i] = np.ascontiguousarray(z[row, ft[ft >= 0]], np.float32)
            advance(len(idx))
    labels = [word_labels(e, c, tag_index) for e, c in zip(examples, encodings)]
    return WordRows(list(encodings), rows, labels)  # type: ignore[arg-type]


def token_probs(enc: Encoding, word_probs: np.ndarray) -> np.ndarray:
    """A text's word probabilities [W_i, K] (first subwords, in order) -> the [T, K] array the
    decoder reads (uniform on the tokens it does not read)."""
    k = word_probs.shape[1]
    out = np.full((len(enc), k), 1.0 / k, np.float32)
    ft = enc.first_token
    out[ft[ft >= 0]] = word_probs
    return out


def probs_of(rows: WordRows, W: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Each text's [T, K] tag probabilities under the head (W [K, F], b [K])."""
    from edgetl.tasks.token_classification.task import tag_probabilities

    out = []
    for enc, r in zip(rows.encodings, rows.rows):
        logits = r.astype(np.float64) @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)
        out.append(token_probs(enc, tag_probabilities(logits.astype(np.float32))))
    return out


def val_scores(rows, W: np.ndarray, b: np.ndarray, examples: Sequence[Any], tags: Sequence[str]):
    """Strict entity scores (= seqeval, as ``edgetl evaluate``) of the head on these texts' rows."""
    from edgetl.tasks.token_classification.metric import score_spans
    from edgetl.tasks.token_classification.task import decode_texts

    found = decode_texts(rows.encodings, probs_of(rows, W, b), tags)
    return score_spans([e.text for e in examples], [e.entities for e in examples],
                       [[(s["start"], s["end"], s["label"]) for s in f] for f in found])
