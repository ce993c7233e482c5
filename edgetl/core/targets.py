"""Deployment targets as data: one TOML file per target, checked against a schema.

The shipped targets live in the repository's top-level ``targets/`` folder, installed
as the data package ``edgetl._targets``. Anywhere a target name is accepted, a path to
a user's own ``.toml`` file works too. Torch-free.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from edgetl.core.isa import Cpu, Isa, fits, isa_info
from edgetl.core.reading import read_regular
from edgetl.core.registry import did_you_mean
from edgetl.errors import TargetError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["Runtime", "Precision", "Arch", "Isa", "Target", "load_target", "list_targets", "target_names",
           "targets_for"]


class Runtime(str, Enum):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(str, Enum):
    FP32 = "fp32"
    INT8 = "int8"
    BF16 = "bf16"  # an execution precision of OpenVINO on CPUs with AMX / AVX-512 BF16


class Arch(str, Enum):
    """The CPU family the target is for (derived from ``isa`` when only that is given)."""

    X86_64 = "x86_64"
    AARCH64 = "aarch64"
    ANY = "any"


_DEFAULT_DEVICE = {Runtime.ONNXRUNTIME: "CPUExecutionProvider", Runtime.OPENVINO: "CPU"}
_OV_DEVICE = re.compile(r"^(CPU|GPU|NPU|AUTO|HETERO|MULTI)([.:][A-Za-z0-9.,:]*)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Target:
    """Where a bundle runs: runtime, device, precision, threads, batch and the budgets the
    benchmark checks it against."""

    name: str
    runtime: Runtime
    precision: Precision
    threads: int
    latency_budget_ms: float  # p90, batch ``batch_size``
    memory_budget_mb: float  # peak resident memory of the process running the bundle
    description: str = ""
    device: str = ""  # OpenVINO device ("CPU") or ONNX Runtime execution provider; "" = the runtime's CPU
    batch_size: int = 1
    input_size: int | None = None  # overrides the model's input size when set
    retraining: bool = False
    arch: Arch = Arch.ANY
    # The int8 instruction class the target's CPUs have (edgetl.core.isa): quantization builds
    # int8 that is exact on all of them (7-bit weights for x86-avx2). None: any CPU (arch any).
    isa: Isa | None = None
    # Measured median latency (ms) of the reference model (EfficientNet-Lite0, 224 px, batch 1, the
    # target's threads) per CPU class (isa name -> ms), from benchmarks/cpu_classes_bench.py: how
    # 'edgetl doctor' orders the targets that fit a CPU, fastest first.
    measured_ms: dict[str, float] | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        # Everything is validated here so a Target built in Python is as safe as one read from TOML.
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        checked = _validate(d, f"target {self.name!r}")
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (enums as strings); :meth:`from_dict` reads it back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in out.items():
            if isinstance(value, Enum):
                out[key] = value.value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "target") -> "Target":
        """Build from a dict (a parsed TOML file or a manifest's ``target``), with the same
        schema checks as a TOML file."""
        if not isinstance(d, dict):
            raise TargetError(f"{source}: expected a table of target keys, got {type(d).__name__}")
        _check_keys(d, source)
        return cls(**_validate(d, source))

    def fits(self, cpu: Cpu) -> bool:
        """Whether this target's CPUs include ``cpu`` (its architecture and int8 instructions)."""
        if self.isa is not None:
            return fits(self.isa, cpu)
        return self.arch is Arch.ANY or self.arch.value == cpu.arch

    def runtime_available(self) -> tuple[bool, str]:
        """``(True, "onnxruntime 1.19.2")`` when the runtime imports and offers the target's
        device here, else ``(False, reason)``."""
        return _runtime_available(self.runtime, self.device)


# --- schema -----------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# key -> (required, check(value) -> converted value or raise ValueError with the allowed values)
def _enum(cls: type[Enum]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        try:
            return cls(v)
        except ValueError:
            raise ValueError("allowed values: " + ", ".join(m.value for m in cls)) from None

    return check


def _positive_int(limit: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if not _is_int(v) or not 1 <= v <= limit:
            raise ValueError(f"expected an integer from 1 to {limit}")
        return int(v)

    return check


def _positive_number(v: Any) -> float:
    if not _is_number(v) or not v > 0:
        raise ValueError("expected a number > 0")
    return float(v)


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME.match(v):
        raise ValueError("expected letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit)")
    return v


def _measured(v: Any) -> dict[str, float] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError("expected a table of CPU class = milliseconds, e.g. { x86-avx2 = 6.1 }")
    out = {}
    for key, ms in v.items():
        try:
            Isa(key)
        except ValueError:
            raise ValueError(f"{key!r} is not a CPU class (allowed: {', '.join(i.value for i in Isa)})") from None
        out[key] = _positive_number(ms)
    return out


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _input_size(v: Any) -> int | None:
    if v is None:
        return None
    if not _is_int(v) or not 8 <= v <= 4096:
        raise ValueError("expected an integer from 8 to 4096, or leave it out to use the model's")
    return int(v)


_SCHEMA: dict[str, tuple[bool, Callable[[Any], Any]]] = {
    "name": (True, _name),
    "description": (False, _string),
    "runtime": (True, _enum(Runtime)),
    "device": (False, _string),
    "precision": (True, _enum(Precision)),
    "threads": (True, _positive_int(256)),
    "batch_size": (False, _positive_int(4096)),
    "input_size": (False, _input_size),
    "latency_budget_ms": (True, _positive_number),
    "memory_budget_mb": (True, _positive_number),
    "retraining": (False, _bool),
    "arch": (False, _enum(Arch)),
    "isa": (False, lambda v: None if v is None else _enum(Isa)(v)),
    "measured_ms": (False, _measured),
    "notes": (False, _string),
}


def _check_keys(d: dict[str, Any], source: str) -> None:
    for key in d:
        if key not in _SCHEMA:
            raise TargetError(
                f"{source}: unknown key {key!r}{did_you_mean(str(key), tuple(_SCHEMA))}; "
                f"allowed keys: {', '.join(_SCHEMA)}"
            )
    missing = [k for k, (required, _) in _SCHEMA.items() if required and k not in d]
    if missing:
        raise TargetError(f"{source}: missing required key(s): {', '.join(missing)}")


def _validate(d: dict[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        _, check = _SCHEMA[key]
        try:
            out[key] = check(value)
        except ValueError as exc:
            raise TargetError(f"{source}: bad value for {key!r}: {value!r} ({exc})") from None
    runtime = out["runtime"]
    device = out.get("device") or _DEFAULT_DEVICE[runtime]
    if runtime is Runtime.ONNXRUNTIME and not device.endswith("ExecutionProvider"):
        raise TargetError(
            f"{source}: bad value for 'device': {device!r} (with runtime 'onnxruntime' it is an "
            "execution provider, e.g. 'CPUExecutionProvider')"
        )
    if runtime is Runtime.OPENVINO and not _OV_DEVICE.match(device):
        raise TargetError(
            f"{source}: bad value for 'device': {device!r} (with runtime 'openvino' it is an OpenVINO "
            "device: CPU, GPU, NPU or AUTO)"
        )
    out["device"] = device
    isa, arch = out.get("isa"), out.get("arch")
    if isa is None and arch in (Arch.X86_64, Arch.AARCH64):
        # files written before targets named their ISA: the baseline of their architecture
        out["isa"] = Isa.X86_AVX2 if arch is Arch.X86_64 else Isa.ARM64
    elif isa is not None:
        isa_arch = Arch(isa_info(isa).arch)
        if arch not in (None, Arch.ANY, isa_arch):
            raise TargetError(f"{source}: 'isa' {isa.value!r} is for {isa_arch.value} CPUs, but 'arch' says "
                              f"{arch.value}; drop 'arch' (the isa implies it) or make them agree")
        out["arch"] = isa_arch
    if out["precision"] is Precision.BF16 and runtime is not Runtime.OPENVINO:
        raise TargetError(f"{source}: bad value for 'precision': 'bf16' (only runtime 'openvino' runs bf16; use fp32 or int8)")
    return out


# --- shipped and user targets -----------------------------------------------------------------

def _shipped_dir() -> Path:
    """Where the shipped TOML files are: the installed data package, or the repository's
    ``targets/`` folder when edgetl runs from a source checkout that is not installed."""
    import importlib.util

    # A folder of TOML files is a namespace package (no __init__.py): its location is in
    # the spec's search path (importlib.resources.files would hand back a MultiplexedPath).
    try:
        spec = importlib.util.find_spec("edgetl._targets")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return Path(__file__).resolve().parent.parent / "targets"


def _shipped() -> dict[str, Path]:
    folder = _shipped_dir()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def target_names() -> list[str]:
    """Names of the shipped targets, sorted."""
    return sorted(_shipped())


def list_targets() -> list[Target]:
    """Every shipped target, sorted by name."""
    return [_load_file(path) for _, path in sorted(_shipped().items())]


def targets_for(cpu: Cpu) -> list[Target]:
    """The shipped targets whose CPUs include ``cpu``, fastest first: by the latency measured on
    the fastest CPU class ``cpu`` belongs to (``measured_ms``), unmeasured ones last."""
    from edgetl.core.isa import fitting_isas

    classes = [i.value for i in fitting_isas(cpu)]

    def speed(t: Target) -> float:
        measured = t.measured_ms or {}
        return next((measured[c] for c in classes if c in measured), float("inf"))

    return sorted((t for t in list_targets() if t.fits(cpu)), key=lambda t: (speed(t), t.name))

MAX_TARGET_BYTES = 1 << 20  # a target file is a dozen lines


def _load_file(path: Path) -> Target:
    raw = read_regular(path, MAX_TARGET_BYTES, "target file", TargetError)  # not a FIFO, not /dev/zero
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TargetError(f"{path}: not UTF-8 text, not a target file") from None
    except RecursionError:
        raise TargetError(f"{path}: TOML nested too deeply, not a target file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML ({exc})") from None
    data.setdefault("name", path.stem)
    return Target.from_dict(data, source=f"target file {path}")


def _looks_like_path(text: str) -> bool:
    return text.endswith(".toml") or os.sep in text or (os.altsep is not None and os.altsep in text)


def load_target(name_or_path: "str | os.PathLike[str] | Target") -> Target:
    """A shipped target by name (``"x86-ort-int8"``), or a user's ``.toml`` file by path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        return _load_file(Path(text))
    shipped = _shipped()
    if text not in shipped:
        raise TargetError(
            f"unknown target {text!r}{did_you_mean(text, tuple(shipped))}; known: "
            f"{', '.join(sorted(shipped)) or 'none'} (or pass the path of your own .toml file; "
            "see 'edgetl targets')"
        )
    return _load_file(shipped[text])


# --- runtime presence -------------------------------------------------------------------------

_INSTALL_HINT = {
    Runtime.ONNXRUNTIME: "pip install onnxruntime-training-cpu==1.19.2",
    Runtime.OPENVINO: "pip install openvino",
}


@functools.lru_cache(maxsize=None)
def _runtime_available(runtime: Runtime, device: str) -> tuple[bool, str]:
    try:
        module = importlib.import_module(runtime.value)
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything, not just ImportError
        return False, f"{runtime.value} is not importable here ({exc.__class__.__name__}); {_INSTALL_HINT[runtime]}"
    version = str(getattr(module, "__version__", "?")).split("-")[0]  # openvino appends a build id
    try:
        if runtime is Runtime.ONNXRUNTIME:
            offered = list(module.get_available_providers())
        else:
            offered = list(module.Core().available_devices)
    except Exception as exc:  # noqa: BLE001
        return False, f"{runtime.value} {version} is installed but cannot list its devices ({exc})"
    base = device.split(".")[0].split(":")[0]
    if runtime is Runtime.OPENVINO and base in ("AUTO", "HETERO", "MULTI"):
        return bool(offered), f"{runtime.value} {version}"
    if not any(d == device or d.split(".")[0] == base for d in offered):
        return False, f"{runtime.value} {version} does not offer {device} here (offers: {', '.join(offered) or 'none'})"
    return True, f"{runtime.value} {version}"
