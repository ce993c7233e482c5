"""OpenVINO's CPU plugin on this (ARM) CPU: does an int8 convolution with SIGNED int8 inputs run?

Runs in the device venv (openvino + numpy, no edgetl). Two tiny convolutions shaped as NNCF
writes them (FakeQuantize on the activations, weights stored as i8 constants times a
per-channel scale, bias, Clamp, FakeQuantize): one whose input range starts at 0 (u8
activations) and one whose input range is signed (i8 activations, as after a linear
bottleneck). Under emulation (docs/arm.md) the i8 one fails with "[CPU] Convolution node ...
object is not initialized" exactly when the CPU lacks FEAT_FP16 (HWCAP fphp/asimdhp: Cortex-A72,
A53), whatever else it has; the u8 one runs everywhere. f32 is pinned: the failure does not
come from the fp16 inference precision OpenVINO picks by default on ARM.

Prints JSON: {"openvino", "capabilities", "u8_input", "i8_input"} ("ok" or "failed: ...").
"""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
from openvino import opset13 as ops

C_IN, C_OUT, SIZE = 32, 64, 7


def int8_conv(signed_input: bool) -> ov.Model:
    rng = np.random.default_rng(0)
    x = ops.parameter([1, C_IN, SIZE, SIZE], ov.Type.f32, name="x")
    low, high = ops.constant(np.float32(-4.0 if signed_input else 0.0)), ops.constant(np.float32(4.0))
    src = ops.fake_quantize(x, low, high, low, high, 256)
    q = rng.integers(-127, 128, (C_OUT, C_IN, 1, 1)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, (C_OUT, 1, 1, 1)).astype(np.float32)
    w = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
    y = ops.convolution(src, w, [1, 1], [0, 0], [0, 0], [1, 1])
    y = ops.add(y, ops.constant(rng.standard_normal((1, C_OUT, 1, 1)).astype(np.float32)))
    y = ops.clamp(y, 0.0, 6.0)
    zero, six = ops.constant(np.float32(0.0)), ops.constant(np.float32(6.0))
    y = ops.fake_quantize(y, zero, six, zero, six, 256)
    return ov.Model([y], [x], "edgetl_int8_conv_probe")


def attempt(core: ov.Core, model: ov.Model) -> str:
    try:
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        x = np.random.default_rng(1).uniform(-4, 4, (1, C_IN, SIZE, SIZE)).astype(np.float32)
        compiled.create_infer_request().infer({0: x})
    except RuntimeError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return "failed: " + (lines[-1].strip() if lines else type(exc).__name__)[:160]
    return "ok"


def main() -> None:
    core = ov.Core()
    print(json.dumps({"openvino": ov.__version__,
                      "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                      "u8_input": attempt(core, int8_conv(False)),
                      "i8_input": attempt(core, int8_conv(True))}))


if __name__ == "__main__":
    main()
