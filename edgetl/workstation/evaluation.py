"""Accuracy of a trained RUN (its PyTorch model) on labelled data; ``evaluate`` takes a RUN
or a bundle (evaluated torch-free by :mod:`edgetl.device.evaluation`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetl.device.evaluation import EvaluateConfig, EvaluateReport, evaluate_bundle, plot_confusion
from edgetl.errors import DataError
from edgetl.modalities.image import scan_folder

__all__ = ["evaluate", "evaluate_run", "plot_confusion", "match_labels", "EvaluateConfig", "EvaluateReport"]


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


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike, *, batch_size: int = 64) -> EvaluateReport:
    """Accuracy of the PyTorch model in RUN on DATA (class folders matched by name)."""
    import torch

    from edgetl.modalities import get_modality
    from edgetl.workstation.run import load_run
    from edgetl.workstation.training.data import as_inputs, make_dataset, make_item_loader

    run = load_run(run_dir)
    spec = run.spec
    if run.task == "detection":  # COCO mAP of the PyTorch model, decoded as the device decodes
        return _evaluate_detection_run(run, data)
    if run.modality == "image":
        folder = scan_folder(data, min_classes=1)
        names, items, targets = folder.labels, folder.paths, folder.targets
    else:
        found = get_modality(run.modality).scan(data, min_classes=1)
        names, items, targets = found.labels, list(found.items), found.targets
    mapping = match_labels(names, run.labels)
    y_true = np.asarray([mapping[y] for y in targets], dtype=np.int64)
    loader = make_item_loader(make_dataset(items, y_true.tolist(), spec), batch_size, False, 0)
    preds = []
    with torch.no_grad():
        for x, _ in loader:
            preds.append(run.model(*as_inputs(x, torch.device("cpu"))).argmax(1).numpy())
    return EvaluateReport.from_predictions(run.labels, y_true, np.concatenate(preds), extra={"runtime": "torch"})


def _evaluate_detection_run(run, data):
    from edgetl.device.evaluation import TaskEvaluateReport
    from edgetl.tasks.detection.data import read_detection_data
    from edgetl.workstation.detection.evaluation import evaluate_items

    found = read_detection_data(data)
    unknown = [name for name in found.labels if name not in run.labels]
    if unknown:
        raise DataError(f"{found.root}: class(es) {', '.join(map(repr, unknown))} are not among the model's labels "
                        f"({', '.join(run.labels)})")
    index = [run.labels.index(name) for name in found.labels]
    from dataclasses import replace

    items = [replace(it, classes=np.asarray(index, np.int64)[it.classes]) for it in found.items]
    metrics = evaluate_items(run.model, items, run.labels, run.spec)
    return TaskEvaluateReport(extra={**metrics, "runtime": "torch"})


def evaluate(model: str | os.PathLike, data: str | os.PathLike, config: EvaluateConfig | None = None) -> EvaluateReport:
    """Accuracy of a RUN directory (its PyTorch model) or a bundle (its deployed runtime) on
    labelled data."""
    cfg = config or EvaluateConfig()
    if (Path(model) / "run.json").is_file():
        return evaluate_run(model, data, batch_size=cfg.batch_size or 64)
    return evaluate_bundle(model, data, cfg)
