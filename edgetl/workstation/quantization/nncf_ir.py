"""OpenVINO int8: NNCF post-training quantization of the fp32 IR with a growing ignored
scope, and inference with the precision actually executed read back. Used by
:mod:`edgetl.workstation.quantization`; workstation side."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from edgetl.modalities import Inputs, count, take

def quiet_logs() -> None:
    import nncf

    nncf.set_log_level(logging.ERROR)  # also hides NNCF's own progress bars


def read(path: Path):
    import openvino as ov

    return ov.Core().read_model(str(path))


RT_INT8 = "edgetl_int8"  # the IR's rt_info key for META_INT8's JSON (an IR has no ONNX metadata)


def int8_facts(xml: Path) -> dict | None:
    """What an int8 IR records of the CPUs it was built for (see :data:`RT_INT8`), or None."""
    import json

    model = read(xml)
    if not model.has_rt_info(RT_INT8):
        return None
    try:
        facts = json.loads(model.get_rt_info(RT_INT8).astype(str))
    except ValueError:
        return None
    return facts if isinstance(facts, dict) else None


def quantize(fp32_xml: Path, out_xml: Path, x: Inputs, ignored: list[str], *, preset: str,
             advance: Callable[[int], None], transformer: bool = False, reduce_range: bool = False,
             facts: dict | None = None) -> None:
    """NNCF PTQ on ``x``; ``ignored`` ops stay fp32. Full (not fast) bias correction: on
    the digits run it took int8 from 0.96 to 0.975 top-1 agreement with fp32 (with the
    MIXED preset) for 15 s instead of 8 s of quantization. ``reduce_range``: NNCF's overflow
    fix on every layer (7-bit weights), for CPUs without VNNI, whose int8 kernels saturate
    otherwise (0.997 top-1 agreement with it on an AVX2 EPYC, 0.984 with NNCF's default of the
    first layer only: see edgetl.core.isa)."""
    import nncf
    import openvino as ov

    def transform(i: int) -> dict[str, np.ndarray]:
        advance(1)
        return take(x, slice(i, i + 1))

    model = nncf.quantize(
        read(fp32_xml), nncf.Dataset(list(range(count(x))), transform), subset_size=count(x),
        preset=nncf.QuantizationPreset(preset), fast_bias_correction=False,
        ignored_scope=nncf.IgnoredScope(names=list(ignored), validate=False) if ignored else None,
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            overflow_fix=nncf.OverflowFix.ENABLE if reduce_range else nncf.OverflowFix.FIRST_LAYER),
        **({"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}),
    )
    if facts is not None:
        import json

        model.set_rt_info(json.dumps(facts), RT_INT8)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)


def compile_model(path: Path, precision: str):
    """Compiled on CPU with the hint set explicitly: 'f32' pins floats to f32; 'default'
    leaves OpenVINO's choice (bf16 on CPUs with AMX)."""
    import openvino as ov

    config = {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}
    return ov.Core().compile_model(str(path), "CPU", config)


def executed(compiled) -> dict[str, str]:
    """``{"precision_executed", "inference_precision_hint"}`` as read back from the compiled model."""
    from edgetl.runtimes.ov import executed_precision

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {"precision_executed": executed_precision(compiled),
            "inference_precision_hint": getattr(hint, "get_type_name", lambda: str(hint))()}


def predict(compiled, x: Inputs, batch: int = 50) -> np.ndarray:
    request = compiled.create_infer_request()
    return np.concatenate([request.infer(take(x, slice(i, i + batch)))[0].copy() for i in range(0, count(x), batch)])
