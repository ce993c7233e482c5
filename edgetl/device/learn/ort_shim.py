"""Torch-free access to ONNX Runtime's on-device training API.

``onnxruntime-training-cpu`` 1.19.2 is the last wheel with on-device training. Its
``onnxruntime/training/__init__.py`` imports ``optim/``, whose ``_modifier.py`` imports
torch, so a plain ``import onnxruntime.training.api`` fails on a device without torch.
The pieces edgetl uses (``api/``, ``artifacts.py``, ``onnxblock/``) need no torch. This
module is the only place that knows how to load them: it puts a stand-in module object
for ``onnxruntime.training`` (``__path__`` = the real folder, so submodules resolve
normally) in ``sys.modules`` without running the real ``__init__``. If the real package
is already imported (a workstation with torch), it is used as it is; once the stand-in
is in place, ``import onnxruntime.training`` in this process returns it (submodules
still import; package-level names such as ``ORTModule`` do not).

It also holds the few helpers that touch ORT training objects directly: opening
artifacts, setting AdamW's attributes, and keeping native log spam off the terminal.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
import threading
import types
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

from edgetl.errors import RetrainError

__all__ = [
    "training_api",
    "artifacts_api",
    "onnxblock_api",
    "ort_version",
    "open_training",
    "set_adamw",
    "captured_stderr",
]

_PACKAGE = "onnxruntime.training"
_INSTALL_HINT = (
    "install onnxruntime-training-cpu==1.19.2 (it provides the module onnxruntime; "
    "do not install the onnxruntime package beside it)"
)
_LOCK = threading.Lock()


def _install_stand_in() -> None:
    """Make ``onnxruntime.training`` importable as a namespace without its ``__init__``."""
    from edgetl.runtimes.ort import import_onnxruntime

    try:
        onnxruntime = import_onnxruntime()
    except ImportError as exc:
        raise RetrainError(f"on-device retraining needs ONNX Runtime with training: {_INSTALL_HINT}") from exc
    if _PACKAGE in sys.modules:
        return  # the real package (or our stand-in) is already there
    # find_spec on a submodule imports the parent (onnxruntime) only; it does not run
    # onnxruntime/training/__init__.py.
    spec = importlib.util.find_spec(_PACKAGE)
    capi = importlib.import_module("onnxruntime.capi._pybind_state")
    if spec is None or not spec.submodule_search_locations or not hasattr(capi, "CheckpointState"):
        raise RetrainError(
            f"onnxruntime {getattr(onnxruntime, '__version__', '?')} has no training support: {_INSTALL_HINT}"
        )
    stand_in = types.ModuleType(_PACKAGE, "Stand-in for onnxruntime.training, loaded by edgetl without torch.")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__file__ = spec.origin
    stand_in.__spec__ = spec
    stand_in.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = stand_in
    onnxruntime.training = stand_in  # type: ignore[attr-defined]


@lru_cache(maxsize=None)
def _load(name: str) -> types.ModuleType:
    with _LOCK:
        _install_stand_in()
        try:
            return importlib.import_module(f"{_PACKAGE}.{name}")
        except ImportError as exc:
            raise RetrainError(f"cannot load {_PACKAGE}.{name} ({exc}): {_INSTALL_HINT}") from exc


def training_api() -> types.ModuleType:
    """``onnxruntime.training.api`` (``CheckpointState``, ``Module``, ``Optimizer``), torch-free."""
    return _load("api")


def artifacts_api() -> types.ModuleType:
    """``onnxruntime.training.artifacts`` (``generate_artifacts``, ``LossType``, ``OptimType``), torch-free."""
    return _load("artifacts")


def onnxblock_api() -> types.ModuleType:
    """``onnxruntime.training.onnxblock`` (loss and optimizer blocks), torch-free."""
    return _load("onnxblock")


def ort_version() -> str:
    """The installed ONNX Runtime version (for manifests and error messages)."""
    from edgetl.runtimes.ort import import_onnxruntime

    onnxruntime = import_onnxruntime()
    return str(onnxruntime.__version__)


def open_training(paths: Mapping[str, Path], optimizer_path: Path | None = None) -> tuple[Any, Any, Any]:
    """``(CheckpointState, Module, Optimizer)`` from artifact paths keyed like
    ``head_training.ARTIFACT_FILES``; ``optimizer_path`` replaces the optimizer model."""
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(paths["checkpoint"]))
    module = api.Module(str(paths["training_model"]), state, str(paths["eval_model"]))
    optimizer = api.Optimizer(str(optimizer_path or paths["optimizer_model"]), module)
    return state, module, optimizer


def set_adamw(model: Any, *, betas: tuple[float, float], eps: float, weight_decay: float) -> bool:
    """Set the AdamWOptimizer node of an optimizer model; True if anything changed.

    ``adam_mode`` 0 is ORT's PyTorch AdamW (decoupled weight decay before the step, bias
    correction on each moment). onnxblock always writes mode 1 (Hugging Face: eps added
    to the uncorrected sqrt(v), decay after the step), which drifts from torch.
    """
    import numpy as np
    from onnx import helper

    node = next((n for n in model.graph.node if n.op_type == "AdamWOptimizer"), None)
    if node is None:
        raise RetrainError("optimizer_model.onnx has no AdamWOptimizer node; regenerate the training artifacts")
    want = {
        "adam_mode": 0,
        "correct_bias": 1,
        "alpha": float(betas[0]),
        "beta": float(betas[1]),
        "epsilon": float(eps),
        "weight_decay": float(weight_decay),
    }
    have = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if all(k in have and np.float32(have[k]) == np.float32(v) for k, v in want.items()):
        return False
    kept = [a for a in node.attribute if a.name not in want]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in want.items()])
    return True


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (the gradient graph builder logs every
    graph transformer at info level whatever the ORT log severity, which would clutter
    the CLI); the text is appended to the yielded list for error messages."""
    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode("utf-8", "replace"))
