"""OpenVINO behind the :class:`Session` protocol: reads IR (.xml) or ONNX directly."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgetl.errors import BundleError, ConfigError
from edgetl.runtimes import RUNTIMES, Precision, dim, feeds, first_line, unavailable

# Layers that carry the arithmetic; their runtime precision is what "precision executed" means.
_HEAVY = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "GEMM"})
_FLOAT_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "f16"}
_OV_TYPES = {"f32": "float32", "i64": "int64", "i32": "int32"}


@lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()  # one per process: creating it scans plugins


def _type_name(value) -> str:
    name = getattr(value, "get_type_name", None)
    return name() if name else str(value).lower()


def executed_precision(compiled) -> str:
    """What the compiled model runs, from its runtime graph (see the package docstring)."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in _HEAVY:
            counts[info["runtimePrecision"].astype(str).lower()] += 1
    int8 = counts["i8"] + counts["u8"] > 0
    floats = [(n, p) for p, n in counts.items() if p in _FLOAT_NAMES]
    if floats:
        float_part = _FLOAT_NAMES[max(floats)[1]]
    else:  # every heavy layer is int8: the hint governs the remaining (elementwise) layers
        float_part = _FLOAT_NAMES.get(_type_name(compiled.get_property("INFERENCE_PRECISION_HINT")), "fp32")
    if not int8:
        return float_part
    return "int8" if float_part == "fp32" else f"int8+{float_part}"


class OpenVINOSession:
    """A compiled OpenVINO model and one infer request, reused for every call."""

    runtime = "openvino"

    def __init__(self, path: Path, *, threads: int | None, precision: Precision, device: str):
        info = RUNTIMES.get(self.runtime)
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            raise unavailable(info, exc) from None
        core = _core()
        device = device.upper() or "CPU"
        if device not in core.available_devices and device.split(":")[0] not in ("AUTO", "HETERO", "MULTI"):
            raise ConfigError(f"OpenVINO device {device!r} is not available here; "
                              f"available: {', '.join(core.available_devices)}")
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for any bad file
            raise BundleError(f"{path}: OpenVINO cannot read this model ({first_line(exc)}); "
                              "re-export or re-package it") from None
        # Without an explicit f32 hint OpenVINO runs float layers in bf16 on CPUs that have
        # it, silently; int8 models keep their float remainder in f32 unless bf16 is asked for.
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision is Precision.BF16 else "f32",
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:  # noqa: BLE001
            raise BundleError(f"{path}: OpenVINO cannot compile this model for {device} ({first_line(exc)})") from None
        self._request = self._compiled.create_infer_request()
        port_in, port_out = self._compiled.inputs[0], self._compiled.outputs[0]
        self.path = path
        self.device = device
        self.input_names = tuple(p.get_any_name() for p in self._compiled.inputs)
        self.input_types = tuple(_OV_TYPES.get(p.get_element_type().get_type_name(), "float32")
                                 for p in self._compiled.inputs)
        self.input_name: str = port_in.get_any_name()
        self.input_shape = tuple(_pdim(d) for d in port_in.get_partial_shape())
        self.output_name: str = port_out.get_any_name()
        self.output_shape = tuple(_pdim(d) for d in port_out.get_partial_shape())
        self.threads = threads
        self.precision_executed = executed_precision(self._compiled)
        self._out = port_out

    def run(self, x) -> np.ndarray:
        # share_inputs: no copy of the batch; outputs are copied (the request reuses its buffers)
        return self._request.infer(feeds(self, x), share_inputs=True)[self._out]

    def __repr__(self) -> str:
        return f"OpenVINOSession({self.path.name!r}, input={self.input_shape}, precision={self.precision_executed!r})"


def _pdim(d) -> int | None:
    return dim(d.get_length()) if d.is_static else None


def load(path: Path, *, threads: int | None, precision: Precision, device: str,
         spinning: bool = True, reference: bool = False) -> OpenVINOSession:
    # ``spinning`` is ONNX Runtime's: OpenVINO's CPU plugin has no such setting to turn off.
    # ``reference`` neither: OpenVINO always fuses; its reference is what the build machine ran.
    return OpenVINOSession(path, threads=threads, precision=precision, device=device)
