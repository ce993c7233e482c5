"""ONNX Runtime (CPU execution provider) behind the :class:`Session` protocol."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

from edgetl.errors import BundleError, ConfigError
from edgetl.runtimes import RUNTIMES, Precision, dim, feeds, first_line, unavailable

# Ops that mean activations are quantized, so ORT runs those layers in int8. A graph with
# DequantizeLinear alone (weight-only quantization) still computes in fp32.
_INT8_OPS = frozenset({
    "QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QLinearAdd", "QLinearMul", "QGemm",
})


def import_onnxruntime() -> types.ModuleType:
    """``import onnxruntime`` without the torch its training build imports at start-up.

    onnxruntime-training-cpu's import-time check (``capi/onnxruntime_validation.py``) imports
    ``onnxruntime.training.ortmodule``, and with it torch, wherever torch is installed: 3.4 s
    of the 4.8 s an ``edgetl predict`` of one image took on a workstation install. Inference
    uses none of it, and on-device training loads its torch-free parts through
    :mod:`edgetl.device.learn.ort_shim`, so torch is hidden for that one import (as on a device,
    where it is absent) unless this process has already loaded it; it imports normally after.
    """
    if "onnxruntime" in sys.modules or "torch" in sys.modules:
        import onnxruntime

        return onnxruntime
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        import onnxruntime
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return onnxruntime


_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _ops(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    ops.update(node.op_type for f in model.functions for node in f.node)
    return ops


def is_quantized(path: Path) -> bool:
    return bool(_ops(path) & _INT8_OPS)


class OrtSession:
    """An ``onnxruntime.InferenceSession``, created once; :meth:`run` adds one dict lookup."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, *, threads: int | None, precision: Precision, device: str,
                 spinning: bool = True, reference: bool = False):
        info = RUNTIMES.get(self.runtime)
        try:
            ort = import_onnxruntime()
        except ImportError as exc:
            raise unavailable(info, exc) from None
        providers = ["CPUExecutionProvider"]
        if device not in ("", "CPU", "CPUExecutionProvider"):
            offered = ort.get_available_providers()
            if device not in offered:
                raise ConfigError(f"onnxruntime execution provider {device!r} is not available here; "
                                  f"available: {', '.join(offered)}")
            providers.insert(0, device)
        if precision is Precision.BF16:
            raise ConfigError("onnxruntime's CPU provider cannot run bf16; use precision fp32 or int8, "
                              "or runtime 'openvino' for bf16")
        options = ort.SessionOptions()
        # reference: no fusion, so QDQ pairs stay float ops (see load_session)
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if reference
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1  # one model, run op by op: parallelism is intra-op
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if not spinning:  # workers sleep between ops instead of busy-waiting (see load_session)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source: str | bytes = str(path)
        if reference:
            from edgetl.runtimes.reference import reference_model

            source = reference_model(path) or source
        try:
            self._session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind types for bad models
            raise BundleError(f"{path}: onnxruntime cannot load this model ({first_line(exc)}); "
                              "re-export or re-package it") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        types = [_ORT_TYPES.get(i.type) for i in inputs]
        if None in types:
            bad = [i.type for i, t in zip(inputs, types) if t is None]
            raise BundleError(f"{path}: input type(s) {', '.join(bad)} are not supported (float32 and int64 are)")
        self.path = path
        self.input_names = tuple(i.name for i in inputs)
        self.input_types = tuple(types)
        self.input_name: str = inputs[0].name
        self.input_shape = tuple(dim(d) for d in inputs[0].shape)
        self.output_name: str = outputs[0].name
        self.output_shape = tuple(dim(d) for d in outputs[0].shape)
        self.threads = threads
        self.spinning = spinning
        self.reference = reference
        self.device = providers[0]
        self._requested = precision
        self._outputs = [self.output_name]
        self._precision: str | None = None

    @property
    def precision_executed(self) -> str:
        # Found by reading the graph (~20 ms for a 13 MB model), so only when asked: it
        # stays out of the cold start.
        if self._precision is None:
            quantized = is_quantized(self.path)
            self._precision = ("int8-reference" if self.reference else "int8") if quantized else "fp32"
        return self._precision

    @property
    def batch_dependent(self) -> bool:
        """Whether one item's outputs depend on the others in its batch: dynamic int8
        (DynamicQuantizeLinear) takes each activation's scale over the whole batch, padding
        included (measured: a text's entity scored 0.790 alone and 0.720 among eight)."""
        if getattr(self, "_batch_dependent", None) is None:
            self._batch_dependent = "DynamicQuantizeLinear" in _ops(self.path)
        return self._batch_dependent

    def run(self, x) -> np.ndarray:
        return self._session.run(self._outputs, feeds(self, x))[0]

    def single_threaded(self) -> "OrtSession":
        """The same model in a session of one thread: several of its runs, each on the thread
        that calls it, go side by side (ONNX Runtime's run is thread-safe)."""
        device = "" if self.device == "CPUExecutionProvider" else self.device
        return OrtSession(self.path, threads=1, precision=self._requested, device=device, spinning=False,
                          reference=self.reference)

    def __repr__(self) -> str:
        return f"OrtSession({self.path.name!r}, input={self.input_shape}, precision={self.precision_executed!r})"


def load(path: Path, *, threads: int | None, precision: Precision, device: str, spinning: bool = True,
         reference: bool = False) -> OrtSession:
    return OrtSession(path, threads=threads, precision=precision, device=device, spinning=spinning,
                      reference=reference)
