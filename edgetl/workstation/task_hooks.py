"""The workstation's half of a task (edgetl.tasks holds the torch-free half): how a task trains,
how its model is rebuilt from a RUN, how its files are exported and its int8 scored. One entry
per task other than classification, registered by the task's own package (imported on first
use); classification is the stages' built-in path, so it has none."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from edgetl.core.registry import Registry
from edgetl.errors import ConfigError

__all__ = ["TaskHooks", "HOOKS", "hooks"]


@dataclass(frozen=True)
class TaskHooks:
    """What a task adds to the workstation's stages (each a function; see the task's package)."""

    train: Callable[..., Any]  # (data, out, cfg, backbone, device, overwrite, dist) -> TrainReport
    build_model: Callable[..., Any]  # (backbone module, run.json info) -> nn.Module with the model contract
    split_items: Callable[..., Any]  # (run, which) -> (items the modality loads, their targets)
    export: Callable[..., Any]  # (run, model, onnx_dir, metadata, x, cfg) -> (files, validation, failures)
    guard_scorer: Callable[..., Any]  # (targets, head paths, fp32 backbone outputs, inputs) -> scorer


HOOKS: Registry[TaskHooks] = Registry("task", ConfigError)
_MODULES = {"detection": "edgetl.workstation.detection",
            "token-classification": "edgetl.workstation.token_classification"}


def hooks(task: str) -> TaskHooks | None:
    """The task's workstation hooks; None for classification (the stages' own path)."""
    if task == "classification":
        return None
    if task not in HOOKS and task in _MODULES:
        importlib.import_module(_MODULES[task])
    return HOOKS.get(task)
