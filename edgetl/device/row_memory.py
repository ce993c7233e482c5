"""The replay memory of a task whose head reads many rows per item (detection: feature-map
locations; token classification: tokens): a bounded, seeded sample of rows per head output
(background included), each with its label and the task's extra targets (detection: the box
codes of its location), so that retraining on new data does not forget what the data lacks.
Torch-free; the one owner of ``row_memory.npz``.

Stored as ``rows`` float16 offsets from ``center`` (the first rows' mean, itself float16: what
float16 rounds is a row's variation, not a common offset, as edgetl.device.memory does),
``labels`` int64 [M] (the head's outputs: 0 is the background), ``targets`` float32 [M, k]
(k = 0 without extra targets), ``head_labels`` (the head's output names) and ``seen`` [K]
(rows offered per output so far: merging keeps a uniform sample of all of them, reservoir
sampling per output). Rows are the backbone's raw output, as the device computes it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl.errors import BundleError, ConfigError, DataError

__all__ = ["background_shift", "ROW_MEMORY_FILE", "RowMemory", "DEFAULT_ROWS_PER_OUTPUT", "MAX_ROWS", "task_rows"]

ROW_MEMORY_FILE = "row_memory.npz"
DEFAULT_ROWS_PER_OUTPUT = 256  # per head output; at 152 float16 features 77 KB an output
MAX_ROWS = 4_000_000
_FORMAT = 1


@dataclass(frozen=True)
class RowMemory:
    rows: np.ndarray  # float32 [M, F] (as float16 rounds them)
    labels: np.ndarray  # int64 [M], indices into head_labels
    targets: np.ndarray  # float32 [M, k]
    head_labels: tuple[str, ...]
    seen: np.ndarray  # int64 [K]

    def __post_init__(self) -> None:
        rows, labels, targets = np.asarray(self.rows), np.asarray(self.labels), np.asarray(self.targets)
        if rows.ndim != 2 or labels.shape != (len(rows),) or targets.ndim != 2 or len(targets) != len(rows):
            raise BundleError(f"row memory: rows {rows.shape}, labels {labels.shape}, targets {targets.shape} disagree")
        if len(rows) > MAX_ROWS or not np.isfinite(rows).all() or not np.isfinite(targets).all():
            raise BundleError("row memory: too many rows, or rows that are not finite numbers; re-package")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.head_labels)):
            raise BundleError("row memory: a row's label names no output of the head; re-package")
        if np.asarray(self.seen).shape != (len(self.head_labels),):
            raise BundleError("row memory: 'seen' must count every output of the head")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def sample(cls, rows: np.ndarray, labels: np.ndarray, targets: np.ndarray, head_labels: Sequence[str], *,
               per_output: int = DEFAULT_ROWS_PER_OUTPUT, seed: int = 0) -> "RowMemory":
        """At most ``per_output`` rows of each output, a seeded uniform sample."""
        seen = np.bincount(np.asarray(labels, np.int64), minlength=len(head_labels)).astype(np.int64)
        keep = _per_output(np.asarray(labels), per_output, np.random.default_rng(seed))
        return cls(np.asarray(rows, np.float32)[keep], np.asarray(labels, np.int64)[keep], np.asarray(targets, np.float32)[keep],
                   tuple(head_labels), seen)

    def grown(self, head_labels: Sequence[str]) -> "RowMemory":
        """The same rows under a head with more outputs (new ones appended, none removed)."""
        head_labels = tuple(head_labels)
        if head_labels[: len(self.head_labels)] != self.head_labels:
            raise BundleError("the new head's outputs do not extend the memory's; re-package the bundle")
        seen = np.concatenate([self.seen, np.zeros(len(head_labels) - len(self.head_labels), np.int64)])
        return RowMemory(self.rows, self.labels, self.targets, head_labels, seen)

    def merge(self, rows: np.ndarray, labels: np.ndarray, targets: np.ndarray, *,
              per_output: int = DEFAULT_ROWS_PER_OUTPUT, seed: int = 0) -> "RowMemory":
        """The memory after offering it new rows: per output, a uniform sample of everything seen
        (reservoir sampling: an old row stays with probability kept / seen)."""
        rng = np.random.default_rng(seed)
        labels = np.asarray(labels, np.int64)
        new_seen = np.bincount(labels, minlength=len(self.head_labels)).astype(np.int64)
        all_rows = np.concatenate([self.rows, np.asarray(rows, np.float32)])
        all_labels = np.concatenate([self.labels, labels])
        all_targets = np.concatenate([self.targets, np.asarray(targets, np.float32).reshape(len(labels), -1)])
        # weights: an old row stands for seen_old / kept_old rows offered, a new one for itself
        kept_old = np.bincount(self.labels, minlength=len(self.head_labels))
        weight = np.concatenate([(self.seen / np.maximum(kept_old, 1))[self.labels], np.ones(len(labels))])
        keep = []
        for k in range(len(self.head_labels)):
            idx = np.flatnonzero(all_labels == k)
            if len(idx) <= per_output:
                keep.append(idx)
                continue
            p = weight[idx] / weight[idx].sum()
            keep.append(np.sort(rng.choice(idx, per_output, replace=False, p=p)))
        keep_a = np.concatenate(keep) if keep else np.zeros(0, np.int64)
        return RowMemory(all_rows[keep_a], all_labels[keep_a], all_targets[keep_a], self.head_labels,
                         self.seen + new_seen)

    def save(self, path: str | os.PathLike) -> Path:
        center = (self.rows.mean(axis=0) if len(self.rows) else np.zeros(self.rows.shape[1])).astype(np.float16)
        buffer = io.BytesIO()
        np.savez(buffer, format=np.int64(_FORMAT), center=center,
                 rows=(self.rows - center.astype(np.float32)).astype(np.float16), labels=self.labels,
                 targets=self.targets, head_labels=np.array(self.head_labels, dtype=str), seen=self.seen)
        path = Path(path)
        path.write_bytes(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RowMemory":
        try:
            with np.load(path, allow_pickle=False) as f:
                if int(f["format"]) != _FORMAT:
                    raise BundleError(f"{path}: row memory format {int(f['format'])} is not {_FORMAT}; re-package")
                rows = f["rows"].astype(np.float32) + f["center"].astype(np.float32)
                return cls(rows, f["labels"].astype(np.int64), f["targets"].astype(np.float32),
                           tuple(str(x) for x in f["head_labels"]), f["seen"].astype(np.int64))
        except BundleError:
            raise
        except (OSError, KeyError, ValueError, TypeError, EOFError) as exc:
            raise BundleError(f"{path}: not a readable row memory ({exc}); re-package the bundle") from None


def _per_output(labels: np.ndarray, per_output: int, rng: np.random.Generator) -> np.ndarray:
    if not isinstance(per_output, int) or per_output < 1:
        raise ConfigError(f"rows per output must be a positive integer, got {per_output!r}")
    keep = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        keep.append(idx if len(idx) <= per_output else np.sort(rng.choice(idx, per_output, replace=False)))
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


def task_rows(predictor: Any, items: list, classes: list[np.ndarray], rng: np.random.Generator, *,
              sample: bool, locations: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, head outputs and extra targets of annotated ``items`` through ``predictor``'s
    backbone, as its task learns from them (:meth:`Task.training_rows`); ``classes``: each
    item's classes as the head's labels index them. ``locations``, when given, gets each read
    item's number of rows before sampling (see :func:`background_shift`)."""
    task = predictor.task
    out_X, out_y, out_t = [], [], []
    sources = [task.item_source(it) for it in items]
    for indices, x, errors in predictor.batches(sources, strict=False):
        if not indices:
            continue
        per_item = task.item_rows(predictor.backbone.run(x), x)
        for i, rows in zip(indices, per_item):
            X, y, t = task.training_rows(rows, items[i], classes[i], predictor.spec, rng, sample=sample)
            if locations is not None:
                locations.append(len(rows))
            out_X.append(X), out_y.append(y), out_t.append(t)
    if not out_X:
        raise DataError("none of the annotated items could be read")
    return np.concatenate(out_X), np.concatenate(out_y), np.concatenate(out_t)


def background_shift(y: np.ndarray, locations: int) -> float:
    """log(background rows there were / background rows sampled) for rows ``y`` sampled from
    ``locations`` rows in all, every non-background row (output > 0) kept: what the background
    output's bias carries beyond the sampled rows (0 when nothing was sampled away, as for
    token rows). A head solved on sampled rows against a background bias calibrated for all
    locations learns new classes that over-fire: measured on composite scenes (5 known + 2 new
    classes), new classes reached 0.62 of joint training's mAP@.5 without this shift, 0.83 with."""
    y = np.asarray(y)
    sampled = int((y == 0).sum())
    there = int(locations) - int((y > 0).sum())
    if sampled == 0 or there <= sampled:
        return 0.0
    return float(np.log(there / sampled))
