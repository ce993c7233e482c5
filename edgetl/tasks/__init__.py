"""Tasks: what a label, a prediction and a metric are. One registry, one module per task.

The backbone does not know which task it serves (Hugging Face's one body, many heads). A task
owns everything that changes with it: its label formats and readers, how many outputs its head
has, how the backbone's output becomes the head's *rows* (classification: one row per item;
detection: one per feature-map location; token classification: one per token), decoding the
head's outputs into predictions, its metric, and how two runs of the same bundle are compared
(the quantization guard, the conformance set). Every head is the same small Gemm over rows,
so the device trains every task's head with the same trainer.

The task's name travels in run.json (``task``), the ONNX metadata (``edgetl.task``) and the
manifest (``task``); absent means classification (RUNs and bundles made before tasks).

Adding a task is adding a module that registers one (see docs/ARCHITECTURE.md, "Add a task").
Torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetl.core.registry import Registry
from edgetl.errors import ConfigError
from edgetl.tasks.base import Task

__all__ = ["Task", "TASKS", "DEFAULT_TASK", "get_task", "task_names", "infer_task", "check_data_for"]

DEFAULT_TASK = "classification"  # what RUNs and bundles made before tasks hold

TASKS: Registry[Task] = Registry("task", ConfigError)
# name -> module that registers it, imported on first use
_MODULES = {"classification": "edgetl.tasks.classification", "detection": "edgetl.tasks.detection.task",
            "token-classification": "edgetl.tasks.token_classification.task"}


def get_task(name: str | None) -> Task:
    """The registered task ``name`` (default: classification)."""
    name = name or DEFAULT_TASK
    if name not in TASKS and name in _MODULES:
        importlib.import_module(_MODULES[name])
    return TASKS.get(name)


def task_names() -> list[str]:
    for module in _MODULES.values():
        try:
            importlib.import_module(module)
        except ImportError:  # a task whose module is not there (yet)
            continue
    return TASKS.names()


def infer_task(data: Any, modality: str) -> str:
    """The task DATA is for: the first task (other than classification) whose readers recognise
    it, else classification, the task of a folder of class subfolders or a labelled table."""
    for name in task_names():
        task = TASKS.get(name)
        if name != DEFAULT_TASK and modality in task.modalities and task.recognises(data):
            return name
    return DEFAULT_TASK


def check_data_for(task: str, data: Any, modality: str) -> None:
    """One clear line when DATA is another task's (a detection dataset given to a classifier's
    command): without it, a COCO folder reads as one class called 'images'."""
    from edgetl.errors import DataError

    found = infer_task(data, modality)
    if found != task:
        raise DataError(f"{data}: holds {found} annotations, and this model is for {task}; use a {task} dataset "
                        f"(or a {found} bundle for this data)")
