"""Classification: one label per item (an image folder of class subfolders, a labelled table of
texts). The backbone's pooled embedding is the head's one row per item; the head's outputs are
the classes' logits; a prediction is the label with its softmax probability; the metric is
accuracy, per class, with a confusion matrix. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgetl.errors import DataError
from edgetl.tasks import TASKS

__all__ = ["Prediction", "Evaluation", "ClassificationTask", "CLASSIFICATION", "softmax"]


@dataclass(frozen=True)
class Prediction:
    """One image's result. ``score`` is the softmax probability of ``label``; ``top_k``
    holds ``(label, probability)`` pairs, best first. When the image could not be read,
    ``error`` says why and the other fields are None/empty."""

    file: str | None
    label: str | None
    score: float | None
    top_k: tuple[tuple[str, float], ...] = ()
    error: str | None = None
    index: int | None = None  # class id of ``label``

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": lab, "score": s} for lab, s in self.top_k],
            "error": self.error,
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass(frozen=True)
class Evaluation:
    """Accuracy on labelled images. ``confusion[t, p]`` counts images of class ``t``
    predicted as ``p`` (indices into ``labels``, the model's classes)."""

    labels: tuple[str, ...]
    confusion: np.ndarray
    errors: tuple[tuple[str, str], ...] = ()  # (file, reason) of images that could not be read
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. runtime, precision_executed

    @classmethod
    def from_predictions(
        cls, labels: Sequence[str], y_true: Sequence[int], y_pred: Sequence[int], **kwargs: Any
    ) -> "Evaluation":
        c = len(labels)
        confusion = np.zeros((c, c), dtype=np.int64)
        np.add.at(confusion, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
        return cls(tuple(labels), confusion, **kwargs)

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.n) if self.n else float("nan")

    @property
    def per_class(self) -> dict[str, float]:
        """Accuracy (recall) of each class that has at least one image."""
        totals = self.confusion.sum(axis=1)
        return {lab: float(self.confusion[i, i] / totals[i]) for i, lab in enumerate(self.labels) if totals[i]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "per_class": self.per_class,
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
            "errors": [{"file": f, "error": e} for f, e in self.errors],
            **self.extra,
        }


class ClassificationTask:
    """One label per item (see the module docstring)."""

    name = "classification"
    modalities = ("image", "text")
    noun = "item"
    pooled = True
    feature_axis = -1  # where the backbone output's features are: [N, F]
    extra_heads: tuple[str, ...] = ()
    metric_label = "accuracy"  # what its summaries call the metric
    guard_budget = (0.01, 0.97)  # the quantization guard's: top-1 accuracy drop, top-1 agreement

    def recognises(self, data: Any) -> bool:
        return False  # the default: what DATA is when no other task recognises it

    def read(self, data: Any, modality: Any, *, strict: bool = False, **options: Any) -> Any:
        return modality.scan(data, strict=strict, **options)

    def head_labels(self, labels: Sequence[str]) -> list[str]:
        return list(labels)

    def rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return output  # the pooled embedding: one row per item

    def item_rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [output[i:i + 1] for i in range(len(output))]

    def outputs(self, predictor: Any, z: np.ndarray, inputs: Mapping[str, np.ndarray], head: Any,
                extra: Mapping[str, Any]) -> np.ndarray:
        """A chunk's backbone outputs -> its logits [N, C] (through the bundle's adapter, if any)."""
        return head.run(predictor.apply_adapter(z) if predictor.adapter is not None else z)

    def predict(self, predictor: Any, sources: Sequence[Any], *, top_k: int = 1,
                batch_size: int | None = None, score_threshold: float | None = None) -> list[Prediction]:
        """Classify items; an unusable item gives a :class:`Prediction` with ``error`` set."""
        if score_threshold is not None:
            from edgetl.errors import ConfigError

            raise ConfigError("a score threshold is for detection bundles; this one classifies")
        k = min(top_k, predictor.num_classes)
        results: list[Prediction | None] = [None] * len(sources)
        for indices, logits, errors in predictor.run_chunks(sources, batch_size, strict=False, logits=True):
            for i, reason in errors.items():
                results[i] = Prediction(predictor._describe(sources[i]), None, None, (), reason)
            if not indices:
                continue
            probs = softmax(logits)
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            for row, i in enumerate(indices):
                best = [(predictor.labels[c], float(probs[row, c])) for c in order[row]]
                results[i] = Prediction(predictor._describe(sources[i]), best[0][0], best[0][1], tuple(best),
                                        index=int(order[row, 0]))
        return results  # type: ignore[return-value]

    def evaluate(self, predictor: Any, data: str | os.PathLike, *, batch_size: int | None = None) -> Evaluation:
        """Accuracy of ``predictor`` on an image folder (one subfolder per class, named by
        label). Every class in ``data`` must be one of the model's labels."""
        from edgetl.tasks import check_data_for

        check_data_for(self.name, data, predictor.modality.name)
        if predictor.modality.name == "image":
            from edgetl.modalities.image import scan_folder

            folder = scan_folder(data, min_classes=1, verify=False)  # unreadable files are counted below
            root, names, items, targets = folder.root, folder.labels, list(folder.paths), folder.targets
        else:  # text: a CSV/TSV/JSONL file with text and label columns, or class folders of .txt files
            found = predictor.modality.scan(data, min_classes=1)
            root, names, items, targets = found.root, found.labels, list(found.items), found.targets
        index = {label: i for i, label in enumerate(predictor.labels)}
        unknown = [name for name in names if name not in index]
        if unknown:
            what = "class folder(s)" if predictor.modality.name == "image" else "label(s)"
            raise DataError(
                f"{root}: {what} {', '.join(map(repr, unknown))} are not among the model's labels "
                f"({', '.join(predictor.labels)}); evaluate on known classes, or retrain the bundle with them"
            )
        to_model = np.asarray([index[name] for name in names], dtype=np.int64)
        predictions = predictor.predict(items, batch_size=batch_size)
        y_true, y_pred, errors = [], [], []
        for item, target, pred in zip(items, targets, predictions):
            if pred.ok:
                y_true.append(to_model[target])
                y_pred.append(pred.index)
            else:
                errors.append((str(predictor._describe(item)), pred.error or ""))
        if not y_true:
            raise DataError(f"{root}: none of its {len(predictions)} {predictor.modality.item_noun}(s) could be read")
        return Evaluation.from_predictions(
            predictor.labels, y_true, y_pred, errors=tuple(errors),
            extra={"runtime": predictor.runtime, "precision_executed": predictor.precision_executed},
        )


CLASSIFICATION = ClassificationTask()
TASKS.register("classification", CLASSIFICATION)
