"""The device side runs without torch: imports, the CLI and a real prediction, in a
subprocess where torch cannot be imported (``sys.modules["torch"] = None`` from a
``sitecustomize.py``; see DESIGN.md for why not a fake package). The stronger check, a
second virtual environment without torch, is ``scripts/check_device_install.sh``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgetl
from _device_models import tiny_models, write_bundle

REPO = Path(edgetl.__file__).resolve().parent.parent
DEVICE_MODULES = ["edgetl", "edgetl.device", "edgetl.device.bundle", "edgetl.core.targets", "edgetl.modalities.image", "edgetl.cli",
                  "edgetl.device.retraining", "edgetl.device.memory", "edgetl.device.alignment",
                  "edgetl.device.learn", "edgetl.modalities.corruptions", "edgetl.benchmarking"]
DEVICE_COMMANDS = ["predict", "targets", "evaluate", "retrain", "rollback", "adapt", "bench", "package"]
HEAVY = ("torch", "timm", "torchvision")


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (REPO / rel.with_suffix(".py")).is_file() or (REPO / rel / "__init__.py").is_file()


def _python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_block_is_effective(blocked_env, tmp_path):
    result = _python("import torch", blocked_env, tmp_path)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_device_modules_import_without_torch(blocked_env, tmp_path):
    missing = [m for m in DEVICE_MODULES if not _exists(m)]
    present = [m for m in DEVICE_MODULES if m not in missing]
    code = (
        "import importlib, sys\n"
        f"for m in {present!r}: importlib.import_module(m)\n"
        "import edgetl.cli; edgetl.cli.build_parser()\n"
        "from edgetl import Predictor; from edgetl.runtimes import ort, ov\n"
        "import onnxruntime, openvino\n"  # the runtimes themselves need no torch
        "print('ok', sys.modules['torch'])\n"
    )
    result = _python(code, blocked_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok None"
    if missing:
        pytest.skip(f"not written yet: {', '.join(missing)}")


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_commands_help_without_torch(blocked_env, tmp_path, command):
    if not _exists(f"edgetl.commands.{command}"):
        pytest.skip(f"edgetl/commands/{command}.py not written yet")
    result = _cli([command, "--help"], blocked_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: edgetl " + command in result.stdout


def test_predict_and_evaluate_without_torch(blocked_env, tmp_path, tmp_path_factory, digits_dir):
    models = tiny_models(tmp_path_factory.mktemp("tiny_models"), digits_dir)
    images = sorted((digits_dir / "4").iterdir())[:3]
    for runtime, precision in [("onnxruntime", "int8"), ("openvino", "fp32")]:
        bundle = write_bundle(tmp_path / f"{runtime}-{precision}", models, runtime=runtime, precision=precision)
        result = _cli(["predict", str(bundle), *map(str, images), "--json", "--top-k", "2"], blocked_env, tmp_path)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert [r["file"] for r in out] == [str(p) for p in images]
        assert all(r["error"] is None and r["label"] in models.labels for r in out)
        result = _cli(["evaluate", str(bundle), str(digits_dir), "--json"], blocked_env, tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        # The tiny test backbone has random convolutions: well above chance (0.1) is what it can do.
        assert report["n"] == len(list(digits_dir.rglob("*.png"))) and report["accuracy"] > 0.35


def test_importing_the_device_side_loads_no_torch(tmp_path):
    """Without blocking: torch is installed here, and still nothing device-side imports it."""
    present = [m for m in DEVICE_MODULES if _exists(m)]
    code = (
        "import importlib, sys\n"
        f"for m in {present!r}: importlib.import_module(m)\n"
        "import edgetl.cli; edgetl.cli.build_parser()\n"
        "import edgetl.device.predictor, edgetl.runtimes\n"
        f"print([m for m in {list(HEAVY)!r} if m in sys.modules])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = _python(code, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
