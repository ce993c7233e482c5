"""Accuracy of a trained RUN on an image folder (workstation side; bundles are evaluated
torch-free by :mod:`edgetl.device`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import scan_folder
from .errors import DataError

__all__ = ["evaluate", "evaluate_run", "accuracy_report", "plot_confusion", "match_labels"]


def match_labels(data_labels: Sequence[str], model_labels: Sequence[str]) -> list[int]:
    """Map the data folder's class names onto the model's class indices, by name."""
    index = {name: i for i, name in enumerate(model_labels)}
    unknown = [name for name in data_labels if name not in index]
    if unknown:
        raise DataError(
            f"class folder(s) {', '.join(unknown)} are not classes of this model "
            f"(it knows {', '.join(model_labels)}); remove them or retrain with them"
        )
    return [index[name] for name in data_labels]


def accuracy_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """``{"accuracy", "n", "per_class", "confusion"}`` with per-class accuracy for classes present."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {
        labels[i]: float(confusion[i, i] / confusion[i].sum()) for i in range(len(labels)) if confusion[i].sum()
    }
    return {
        "accuracy": float((y_true == y_pred).mean()) if n else float("nan"),
        "n": int(n),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "labels": list(labels),
    }


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


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike, *, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy of the PyTorch model in RUN on DATA (class folders matched by name)."""
    import torch

    from .run import load_run
    from .training import _Images, _loader

    run = load_run(run_dir)
    folder = scan_folder(data, min_classes=1)
    mapping = match_labels(folder.labels, run.labels)
    y_true = np.asarray([mapping[y] for y in folder.targets], dtype=np.int64)
    loader = _loader(_Images(folder.paths, y_true.tolist(), run.preprocess), batch_size, False, 0)
    preds = []
    with torch.no_grad():
        for x, _ in loader:
            preds.append(run.model(x).argmax(1).numpy())
    return accuracy_report(y_true, np.concatenate(preds), run.labels)


def evaluate(model: str | os.PathLike, data: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Accuracy of a RUN directory or a bundle on an image folder."""
    if (Path(model) / "run.json").is_file():
        return evaluate_run(model, data, **kwargs)
    from .device import evaluate_bundle  # torch-free path

    return evaluate_bundle(model, data, **kwargs)
