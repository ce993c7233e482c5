"""Object detection on the workstation (the torch half; edgetl.tasks.detection is the rest):
the model (a backbone cut at stride 8 under per-location heads), its training, its export and
how its int8 is scored. Registers the task's workstation hooks."""

from __future__ import annotations

from typing import Any

from edgetl.workstation.task_hooks import HOOKS, TaskHooks

__all__ = ["build_model", "split_items"]


def build_model(module: Any, info: dict) -> Any:
    """The RUN's model rebuilt around a backbone module of its architecture (weights loaded after)."""
    from edgetl.workstation.detection.model import DetectionModel, FeatureMap

    return DetectionModel(FeatureMap(module), len(info["labels"]))


def split_items(run: Any, which: str) -> tuple[list[Any], list[Any]]:
    """The image paths of the RUN's ``train`` or ``val`` split and their annotations
    (:class:`edgetl.tasks.detection.DetectionItem`), read again from the training data."""
    from edgetl.errors import DataError, RunDirError
    from edgetl.tasks.detection.data import read_detection_data

    split = run.info.get("split") or {}
    idx = split.get(which) or []
    if not idx:
        raise RunDirError(f"{run.root}: run.json records no {which} split")
    try:
        data = read_detection_data(run.info.get("data_root", ""))
    except DataError as exc:
        raise RunDirError(f"the training data of {run.root} cannot be read again ({exc})") from None
    if len(data.items) != split.get("items"):
        raise RunDirError(f"{data.root}: holds {len(data.items)} annotated images, but {split.get('items')} were "
                          "read at training time; the data changed since 'edgetl train'")
    items = [data.items[int(i)] for i in idx]
    return [it.path for it in items], items


def _train(*args: Any, **kwargs: Any) -> Any:
    from edgetl.workstation.detection.train import train_detection

    return train_detection(*args, **kwargs)


def _export(*args: Any, **kwargs: Any) -> Any:
    from edgetl.workstation.detection.export import export_detection

    return export_detection(*args, **kwargs)


def _guard_scorer(*args: Any, **kwargs: Any) -> Any:
    from edgetl.workstation.detection.guard import scorer

    return scorer(*args, **kwargs)


HOOKS.register("detection", TaskHooks(train=_train, build_model=build_model, split_items=split_items,
                                      export=_export, guard_scorer=_guard_scorer))
