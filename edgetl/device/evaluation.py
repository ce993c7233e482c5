"""Accuracy on labelled data, on the device: a bundle's deployed runtime (or any
:class:`~edgetl.device.predictor.Predictor`), per class, with a confusion matrix. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl.core.report import Report
from edgetl.errors import ConfigError
from edgetl.device.predictor import Predictor
from edgetl.tasks.classification import Evaluation

__all__ = ["EvaluateConfig", "EvaluateReport", "TaskEvaluateReport", "Evaluation", "evaluate_folder", "evaluate_bundle", "plot_confusion"]


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of :func:`evaluate_bundle` (and :func:`edgetl.evaluate`)."""

    batch_size: int | None = None  # None: the target's batch size
    verify: bool = True  # check the bundle's file hashes first
    allow_nonconforming: bool = False  # run a bundle that fails its conformance check here (with a warning)
    runtime: str | None = None  # None: the bundle's own runtime
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class EvaluateReport(Report):
    """``{"accuracy", "n", "per_class", "labels", "confusion", "errors", ...}``: ``confusion[t, p]``
    counts items of class ``t`` predicted as ``p`` (indices into ``labels``, the model's)."""

    accuracy: float
    n: int
    per_class: dict[str, float]
    labels: list[str]
    confusion: list[list[int]]
    errors: list[dict[str, str]] = field(default_factory=list)  # items that could not be read
    extra: dict[str, Any] = field(default_factory=dict)  # runtime, precision_executed

    @classmethod
    def from_predictions(cls, labels: Sequence[str], y_true: Sequence[int], y_pred: Sequence[int], *,
                         errors: Sequence[tuple[str, str]] = (), extra: dict[str, Any] | None = None) -> "EvaluateReport":
        e = Evaluation.from_predictions(labels, y_true, y_pred, errors=tuple(errors), extra=extra or {})
        return cls(e.accuracy, e.n, e.per_class, list(e.labels), e.confusion.tolist(),
                   [{"file": f, "error": r} for f, r in e.errors], dict(e.extra))


def evaluate_folder(
    predictor: Predictor, data: str | os.PathLike, *, batch_size: int | None = None
) -> Any:
    """The task's metric of ``predictor`` on annotated DATA (classification: accuracy per class,
    with a confusion matrix, on an image folder of class subfolders or labelled texts; every
    class in DATA must be one of the model's labels)."""
    return predictor.task.evaluate(predictor, data, batch_size=batch_size)


@dataclass(frozen=True)
class TaskEvaluateReport(Report):
    """A task's own metrics as ``to_dict()`` gives them (detection: ``{"map", "map50",
    "per_class", "n", ...}``; token classification: ``{"f1", "precision", "recall", "per_type",
    "n", ...}``)."""

    extra: dict[str, Any] = field(default_factory=dict)


def _to_report(e: Any) -> Any:
    if not isinstance(e, Evaluation):  # another task's metric
        return TaskEvaluateReport(extra=e.to_dict())
    d = e.to_dict()
    known = {"accuracy", "n", "per_class", "labels", "confusion", "errors"}
    return EvaluateReport(**{k: d[k] for k in known}, extra={k: v for k, v in d.items() if k not in known})


def evaluate_bundle(bundle: str | os.PathLike, data: str | os.PathLike,
                    config: EvaluateConfig | None = None) -> EvaluateReport:
    """Accuracy of a bundle, on its deployed runtime and precision, on labelled data."""
    cfg = config or EvaluateConfig()
    predictor = Predictor.from_bundle(bundle, verify=cfg.verify, runtime=cfg.runtime, threads=cfg.threads,
                                      conformance="warn" if cfg.allow_nonconforming else "refuse")
    return _to_report(evaluate_folder(predictor, data, batch_size=cfg.batch_size))


def plot_confusion(report: dict[str, Any], labels: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(report["confusion"], dtype=float)
    shown = [i for i in range(len(labels)) if m[i].sum() or m[:, i].sum()]
    m = m[np.ix_(shown, shown)]
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(shown) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [labels[i] for i in shown]
    ax.set_xticks(range(len(shown)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(shown)), names)
    for i in range(len(shown)):
        for j in range(len(shown)):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black",
                        fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or f"accuracy {report['accuracy']:.3f} (n={report['n']})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
