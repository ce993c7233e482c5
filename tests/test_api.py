"""The public Python API: every name in ``edgetl.__all__`` resolves, verbs stay callable
whatever was imported before, and ``import edgetl`` is torch-free."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import edgetl


def test_verbs_stay_functions_after_their_modules_are_imported():
    for module in pkgutil.walk_packages(edgetl.__path__, "edgetl."):  # every module, every subpackage
        importlib.import_module(module.name)
    for name in edgetl.__all__:
        value = getattr(edgetl, name)
        assert not isinstance(value, types.ModuleType), name
    for verb in ("train", "evaluate", "export", "quantize", "package", "retrain", "build"):
        assert callable(getattr(edgetl, verb)), verb


def test_import_edgetl_is_cheap_and_torch_free():
    code = "import sys, edgetl; print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out
