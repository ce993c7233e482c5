"""edgetl: transfer learning for edge devices.

``import edgetl`` is cheap and torch-free: the public verbs are loaded on first use,
so the device side (:mod:`edgetl.device`) never pulls in the workstation side.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetl.core.version import __version__

# public name -> module that defines it
_LAZY = {
    "EdgeTLError": "edgetl.errors",
    "PreprocessSpec": "edgetl.modalities.image",
    "create_backbone": "edgetl.workstation.backbones",
    "Predictor": "edgetl.device",
    # verb(input, config=None) -> Report, for every stage
    "train": "edgetl.workstation.training",
    "TrainConfig": "edgetl.workstation.training",
    "TrainReport": "edgetl.workstation.training",
    "evaluate": "edgetl.workstation.evaluation",
    "EvaluateConfig": "edgetl.device.evaluation",
    "EvaluateReport": "edgetl.device.evaluation",
    "export": "edgetl.workstation.onnx_export",
    "ExportConfig": "edgetl.workstation.onnx_export",
    "ExportReport": "edgetl.workstation.onnx_export",
    "quantize": "edgetl.workstation.quantization",
    "QuantizeConfig": "edgetl.workstation.quantization",
    "QuantizeReport": "edgetl.workstation.quantization",
    "package": "edgetl.workstation.packaging",
    "PackageConfig": "edgetl.workstation.packaging",
    "PackageReport": "edgetl.workstation.packaging",
    "predict": "edgetl.device.predictor",
    "PredictConfig": "edgetl.device.predictor",
    "PredictReport": "edgetl.device.predictor",
    "retrain": "edgetl.device.retraining",
    "RetrainConfig": "edgetl.device.retraining",
    "RetrainReport": "edgetl.device.retraining",
    "adapt": "edgetl.device.alignment",
    "AdaptConfig": "edgetl.device.alignment",
    "AdaptReport": "edgetl.device.alignment",
    "rollback": "edgetl.device.bundle",
    "RollbackReport": "edgetl.device.bundle",
    "bench": "edgetl.benchmarking",
    "BenchConfig": "edgetl.benchmarking",
    "BenchReport": "edgetl.benchmarking",
    "build": "edgetl.workstation.pipeline",
    "BuildConfig": "edgetl.workstation.pipeline",
    "BuildReport": "edgetl.workstation.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
