"""The device side: runtimes, prediction, retraining. Torch-free by contract
(``tests/test_torch_free.py`` checks it); runtimes are imported only when a model loads.

    from edgetl.device import Predictor
    predictor = Predictor.from_bundle("bundle/")
    for p in predictor.predict(["cat.jpg", "dog.png"], top_k=3):
        print(p.file, p.label, p.score)
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetl.device.evaluation import EvaluateConfig, EvaluateReport, Evaluation, evaluate_bundle, evaluate_folder
from edgetl.device.predictor import Adapter, PredictConfig, Prediction, Predictor, PredictReport, predict
from edgetl.runtimes import Session, available_runtimes, load_session

# Retraining and adaptation live in their own modules, loaded on first use.
_LAZY = {
    "retrain": "edgetl.device.retraining",
    "RetrainConfig": "edgetl.device.retraining",
    "RetrainReport": "edgetl.device.retraining",
    "adapt": "edgetl.device.alignment",
    "AdaptConfig": "edgetl.device.alignment",
    "AdaptReport": "edgetl.device.alignment",
    "rollback": "edgetl.device.bundle",
    "RollbackReport": "edgetl.device.bundle",
}

__all__ = [
    "Predictor",
    "Prediction",
    "predict",
    "PredictConfig",
    "PredictReport",
    "Adapter",
    "Evaluation",
    "EvaluateConfig",
    "EvaluateReport",
    "evaluate_folder",
    "evaluate_bundle",
    "Session",
    "load_session",
    "available_runtimes",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetl.device' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
