"""edgetl: transfer learning for edge devices.

``import edgetl`` is cheap and torch-free: the public verbs are loaded on first use,
so the device side (:mod:`edgetl.device`) never pulls in the workstation side.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "EdgeTLError": "edgetl.errors",
    "PreprocessSpec": "edgetl.preprocess",
    "TrainConfig": "edgetl.training",
    "train": "edgetl.training",
    "evaluate": "edgetl.evaluation",
    "create_backbone": "edgetl.backbones",
    "export": "edgetl.onnx_export",
    "quantize": "edgetl.quantization",
    "package": "edgetl.bundle",
    "Predictor": "edgetl.device",
    "retrain": "edgetl.device",
    "build": "edgetl.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
