"""What this machine can run, measured rather than assumed: each runtime's version and
distribution, which precisions actually execute (OpenVINO is asked, with a tiny model
compiled for each precision), and which trainer on-device retraining uses. Torch-free;
shown by ``edgetl doctor`` and ``edgetl targets``."""

from __future__ import annotations

import platform
import sys
from typing import Any

from edgetl.runtimes import RUNTIMES, runtime_version

__all__ = ["capabilities", "onnxruntime_distribution"]


def onnxruntime_distribution() -> str | None:
    """Which pip distribution provides ``import onnxruntime`` here (they must not be mixed)."""
    from importlib import metadata

    found = []
    for name in ("onnxruntime-training-cpu", "onnxruntime-training", "onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found) or None


def _ort_precisions() -> dict[str, str]:
    # The CPU execution provider computes float layers in fp32 and QDQ layers in int8 on
    # every CPU it supports; bf16 is not one of its precisions.
    return {"fp32": "fp32", "int8": "int8"}


def _tiny_openvino_model(int8: bool):
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, 8, 16, 16], ov.Type.f32, name="x")
    w: Any = ops.constant(np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32))
    src: Any = x
    if int8:  # FakeQuantize on input and weights: what an NNCF int8 IR holds
        lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
        src = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        wl, wh = ops.constant(np.float32(-3)), ops.constant(np.float32(3))
        w = ops.fake_quantize(w, wl, wh, wl, wh, 255)
    y = ops.convolution(src, w, [1, 1], [1, 1], [1, 1], [1, 1])
    return ov.Model([ops.relu(y)], [x], "edgetl_probe")


def _openvino_precisions() -> dict[str, str]:
    """What the CPU plugin executes for a float model asked for fp32 and bf16, for an int8 IR,
    and with no hint at all (OpenVINO's own choice: bf16 on AVX-512 BF16/AMX, f16 on ARM)."""
    import openvino as ov

    from edgetl.runtimes.ov import executed_precision

    core = ov.Core()
    asked = {"fp32": (False, "f32"), "bf16": (False, "bf16"), "int8": (True, "f32"), "default": (False, None)}
    out = {}
    for name, (int8, hint) in asked.items():
        try:
            compiled = core.compile_model(_tiny_openvino_model(int8), "CPU",
                                          {} if hint is None else {"INFERENCE_PRECISION_HINT": hint})
            out[name] = executed_precision(compiled)
        except Exception as exc:  # noqa: BLE001 - a precision the CPU refuses is reported, not raised
            out[name] = f"unavailable ({str(exc).splitlines()[0][:80]})"
    return out


def capabilities() -> dict[str, Any]:
    """``{"machine", "python", "runtimes": {name: {...}}, "retraining": {...}}``."""
    from importlib.util import find_spec

    from edgetl.device.learn import ort_training_available

    runtimes: dict[str, Any] = {}
    for name in RUNTIMES:
        info = RUNTIMES.get(name)
        installed = find_spec(info.package) is not None
        row: dict[str, Any] = {"installed": installed, "version": runtime_version(name) if installed else None,
                               "install": info.pip}
        if installed:
            try:
                row["precisions_executed"] = _ort_precisions() if name == "onnxruntime" else _openvino_precisions()
            except ImportError as exc:
                row.update(installed=False, error=str(exc))
        if name == "onnxruntime":
            row["distribution"] = onnxruntime_distribution()
        runtimes[name] = row
    ort_training = ort_training_available() if runtimes.get("onnxruntime", {}).get("installed") else False
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "runtimes": runtimes,
        "retraining": {
            "trainer": "ort" if ort_training else "numpy",
            "detail": ("ONNX Runtime training artifacts (onnxruntime-training-cpu)" if ort_training else
                       "numpy trainer: the same AdamW as the training artifacts, step for step "
                       "(this ONNX Runtime has no training build)"),
        },
    }
