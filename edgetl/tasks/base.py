"""What edgetl needs to know about a task (see :mod:`edgetl.tasks`)."""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np

__all__ = ["Task"]


class Task(Protocol):
    """One task: its data, its head's rows and outputs, its decoding, its metric.

    The pipeline (training, export, quantization, packaging, the predictor, evaluation,
    retraining, the benchmark) asks the task at these points and nowhere else."""

    name: str  # "classification", "detection", "token-classification"
    modalities: tuple[str, ...]  # the input kinds it takes
    noun: str  # "image", "text", "scene", "sentence": what an item is called in messages
    pooled: bool  # the backbone's output is already the head's rows, one per item (classification)
    feature_axis: int  # the axis of the backbone's output that holds the features (the head's input width)
    extra_heads: tuple[str, ...]  # heads besides ``head`` over the same rows (detection: "box_head")
    metric_label: str  # the metric as summaries name it: "accuracy", "mAP@.5", "entity F1"
    guard_budget: tuple[float, float]  # int8's default budget: largest drop of the metric, least agreement

    def recognises(self, data: Any) -> bool:
        """Whether DATA is annotated for this task (``--task`` inferred from the data)."""

    def read(self, data: Any, modality: Any, *, strict: bool = False, **options: Any) -> Any:
        """Annotated data -> the task's data (items, targets, label names, what was skipped)."""

    def head_labels(self, labels: Sequence[str]) -> list[str]:
        """Names of the head's outputs (the trainable Gemm over rows) for these label names, as
        head.onnx records them (``edgetl.labels``): classification, the labels themselves."""

    def rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The backbone's output for a batch -> the head's rows [R, F] (in item order)."""

    def item_rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The same rows, item by item: one [r_i, F] array per item of the batch (its locations,
        its tokens; padding left out)."""

    # On-device learning of a task that is not pooled (edgetl.device.row_retraining) also asks:
    # metric_name (what retraining is gated on), item_source(item) (what the predictor reads),
    # item_classes(item, labels) (the item's annotations' classes as indices into labels),
    # training_rows(rows, item, classes, spec, rng, sample=) -> (X, y, targets),
    # solve_extra_heads(X, y, targets, old) -> {name: (W, b)} (``old``: the live extra heads),
    # score_heads(predictor, items, classes, head, extra, labels) -> the metric, and
    # background_sampled (True where training_rows samples output 0's rows: detection).

    def outputs(self, predictor: Any, z: np.ndarray, inputs: Mapping[str, np.ndarray], head: Any,
                extra: Mapping[str, Any]) -> Any:
        """A chunk's backbone outputs ``z`` (for its model ``inputs``) through the head (and the
        task's ``extra`` heads) -> what :meth:`predict` decodes: an array per item, or a dict."""

    def predict(self, predictor: Any, sources: Sequence[Any], *, top_k: int, batch_size: int | None) -> list:
        """Predictions of ``predictor`` (:class:`edgetl.device.predictor.Predictor`) for items,
        one per item, in order; an unusable item gives one with ``error`` set (``ok`` False)."""

    def evaluate(self, predictor: Any, data: Any, *, batch_size: int | None) -> Any:
        """The task's metric of ``predictor`` on annotated DATA (a Report)."""
