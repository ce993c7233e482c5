"""Inference runtimes behind one small protocol.

Each runtime lives in its own module, imported only when a session is loaded, so
``import edgetl.device`` stays cheap and never pulls in torch (a plain ``import onnxruntime``
does, when torch is installed: :func:`edgetl.runtimes.ort.import_onnxruntime` does not).

``Session.precision_executed`` says what actually runs, not what was asked for:

- ``fp32``, ``bf16``, ``f16``: a float model, computed in that precision;
- ``int8``: a quantized model whose quantized layers run in int8 and the rest in fp32;
- ``int8+bf16`` (or ``int8+f16``): quantized layers in int8, the rest in bf16 (f16).

ONNX Runtime's CPU provider computes float in fp32, so it reports ``fp32`` or
``int8``; OpenVINO reports what its compiled model says it runs (on CPUs with bf16
support it would run float layers in bf16 unless told ``f32``, which
:func:`load_session` does unless bf16 is asked for).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

from edgetl.core.registry import Registry
from edgetl.errors import ConfigError, RuntimeUnavailableError

__all__ = [
    "Session",
    "Precision",
    "RuntimeInfo",
    "RUNTIMES",
    "load_session",
    "available_runtimes",
    "runtime_version",
]


class Precision(str, Enum):
    """The precision a target asks for. ``int8`` needs a quantized model; the runtime
    then computes the model's float remainder in fp32."""

    FP32 = "fp32"
    INT8 = "int8"
    BF16 = "bf16"


@runtime_checkable
class Session(Protocol):
    """A loaded model with named, typed inputs and one output, ready to run batches.

    ``run`` takes ``{input name: array}`` (cast to each input's dtype), or a bare array for
    a model with one input. ``input_name``/``input_shape`` describe the first input."""

    runtime: str
    input_names: tuple[str, ...]
    input_types: tuple[str, ...]  # numpy dtype names: "float32", "int64"
    input_shape: tuple[int | str | None, ...]  # str or None: a dynamic dimension
    input_name: str
    output_name: str
    precision_executed: str

    def run(self, inputs: "np.ndarray | Mapping[str, np.ndarray]") -> np.ndarray:
        """One batch in, the single output out (a new array the caller may keep)."""
        ...


@dataclass(frozen=True)
class RuntimeInfo:
    """A runtime's name, the module that loads it, and what to pip install for it."""

    name: str
    module: str  # the edgetl module that implements it
    package: str  # what that module imports
    distributions: tuple[str, ...]  # pip distributions that provide ``package``
    pip: str
    suffixes: tuple[str, ...]  # model files it reads

    def load_module(self):
        return importlib.import_module(self.module)


RUNTIMES: Registry[RuntimeInfo] = Registry("runtime", ConfigError)
RUNTIMES.register(
    "onnxruntime",
    RuntimeInfo(
        "onnxruntime", "edgetl.runtimes.ort", "onnxruntime",
        ("onnxruntime-training-cpu", "onnxruntime"),
        "pip install onnxruntime-training-cpu==1.19.2 on x86-64 with Python 3.10-3.12, else pip install onnxruntime",
        (".onnx",),
    ),
)
RUNTIMES.register(
    "openvino",
    RuntimeInfo(
        "openvino", "edgetl.runtimes.ov", "openvino", ("openvino",), "pip install openvino",
        (".onnx", ".xml"),
    ),
)


def load_session(
    path: str | os.PathLike,
    runtime: str,
    *,
    threads: int | None = None,
    precision: str | Precision | None = None,
    device: str | None = None,
    spinning: bool = True,
    reference: bool = False,
) -> Session:
    """Load a model file on ``runtime`` ('onnxruntime' or 'openvino').

    ``threads``: intra-op threads (None: the runtime's default). ``precision``: 'fp32',
    'int8' or 'bf16' (None: 'fp32'); only OpenVINO can honour 'bf16'. ``device``: an
    OpenVINO device ('CPU', 'GPU', ...) or an ONNX Runtime execution provider (None: the
    CPU). ``spinning``: ONNX Runtime's intra-op workers busy-wait between ops (its default,
    the lowest latency on otherwise idle cores); False makes them sleep instead, for a
    session that shares the cores with threads decoding its next inputs. ``reference``: run
    every op as the ONNX standard defines it, with no graph optimization (ONNX Runtime: a QDQ
    int8 model then computes its quantize/dequantize pairs in float, which no CPU's int8 kernels
    can saturate: the machine-independent "ideal" int8 the conformance set is judged against);
    OpenVINO has no such mode and runs as usual. Raises :class:`RuntimeUnavailableError` when
    the runtime is not installed.
    """
    info = RUNTIMES.get(str(getattr(runtime, "value", runtime)))  # a targets.Runtime enum works too
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    if path.suffix.lower() not in info.suffixes:
        raise ConfigError(
            f"{path}: {runtime} cannot read {path.suffix or 'this'} files (it reads {', '.join(info.suffixes)})"
        )
    try:
        precision = Precision(getattr(precision, "value", precision) or "fp32")
    except ValueError:
        raise ConfigError(
            f"unknown precision {precision!r}; choose one of {', '.join(p.value for p in Precision)}"
        ) from None
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    options = {"reference": True} if reference else {}
    return info.load_module().load(path, threads=threads, precision=precision, device=device or "",
                                   spinning=bool(spinning), **options)


def available_runtimes() -> list[str]:
    """Names of the runtimes installed here (found without importing them)."""
    from importlib.util import find_spec

    return [name for name in RUNTIMES if find_spec(RUNTIMES.get(name).package) is not None]


def runtime_version(runtime: str) -> str | None:
    """The installed version of ``runtime``'s package, or None."""
    from importlib import metadata

    for dist in RUNTIMES.get(runtime).distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def unavailable(info: RuntimeInfo, exc: ImportError) -> RuntimeUnavailableError:
    """The error for a runtime whose package cannot be imported."""
    return RuntimeUnavailableError(f"runtime {info.name!r} is not installed here ({exc}); {info.pip}")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: runtimes raise multi-line C++ errors."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else ''}"


def dim(value: object) -> int | str | None:
    """A dimension as the protocol reports it: an int, or a name/None when dynamic."""
    if isinstance(value, int) and value >= 0:
        return value
    return value if isinstance(value, str) and value else None


def as_input(x: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Contiguous ``dtype`` without copying when it already is."""
    if x.dtype == dtype and x.flags.c_contiguous:
        return x
    return np.ascontiguousarray(x, dtype=dtype)


def feeds(session: Session, inputs: "np.ndarray | Mapping[str, np.ndarray]") -> dict[str, np.ndarray]:
    """``{name: contiguous array of the input's dtype}`` for every input of ``session``."""
    if not isinstance(inputs, Mapping):
        if len(session.input_names) != 1:
            raise ConfigError(f"this model takes {len(session.input_names)} inputs "
                              f"({', '.join(session.input_names)}); pass a dict of arrays")
        inputs = {session.input_names[0]: inputs}
    missing = [n for n in session.input_names if n not in inputs]
    if missing:
        raise ConfigError(f"missing model input(s) {', '.join(missing)}; the model takes {', '.join(session.input_names)}")
    return {n: as_input(inputs[n], t) for n, t in zip(session.input_names, session.input_types)}
