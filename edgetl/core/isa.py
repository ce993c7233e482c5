"""The int8 instruction sets a bundle can be built for, and what this CPU has. Torch-free.

int8 arithmetic is not the same on every CPU. ONNX Runtime's u8 x s8 kernels on x86 CPUs
without VNNI (AVX2, and AVX-512 without VNNI) multiply with VPMADDUBSW, whose 16-bit pair sums
saturate when 8-bit weights meet large activations: EfficientNet-Lite0 int8 at 224 px agreed
with fp32 on 0.80 of 359 digits there, 1.00 on a VNNI CPU (benchmarks/cpu_int8_bench.py).
Weights quantized to 7 bits (ONNX Runtime's ``reduce_range``; NNCF's overflow fix) cannot
saturate: 255 x 64 + 255 x 64 = 32,640 fits in 16 bits, 255 x 127 x 2 = 64,770 does not. CPUs with VNNI (AVX-512 VNNI, AVX-VNNI,
AMX) and ARM's NEON kernels widen to 32 bits before adding, so full-range weights are safe
and more precise there.

An :class:`Isa` names such a class of CPUs; a target says which one it is for
(``isa = "x86-avx2"``), quantization reads it, and the device checks that it has it.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from enum import Enum
from typing import Iterable

__all__ = ["Isa", "IsaInfo", "ISAS", "Cpu", "this_cpu", "cpu_from_flags", "cpu_class", "fits", "fitting_isas", "isa_info",
           "saturates", "int8_mismatch", "INT8_FLAGS"]


class Isa(str, Enum):
    X86_AVX2 = "x86-avx2"
    X86_VNNI = "x86-vnni"
    ARM64 = "arm64"
    ARM64_DOTPROD = "arm64-dotprod"


@dataclass(frozen=True)
class IsaInfo:
    """What a class of CPUs guarantees for int8, and how int8 must be built for it."""

    isa: Isa
    arch: str  # platform.machine() spelling: x86_64 or aarch64
    needs: tuple[tuple[str, ...], ...]  # every group must have at least one flag (cpuinfo spelling)
    reduced_range: bool  # 7-bit weights: the int8 kernels of some CPUs of the class saturate otherwise
    rank: int  # larger = faster int8 within its architecture (for "fastest first")
    description: str


ISAS: dict[Isa, IsaInfo] = {
    Isa.X86_AVX2: IsaInfo(Isa.X86_AVX2, "x86_64", (("avx2",),), True, 1,
                          "any x86-64 with AVX2 (AMD Zen 1-3, Intel Haswell and later); int8 with 7-bit weights, "
                          "which cannot saturate the VPMADDUBSW kernels CPUs without VNNI use"),
    Isa.X86_VNNI: IsaInfo(Isa.X86_VNNI, "x86_64", (("avx512_vnni", "avx_vnni", "amx_int8"),), False, 2,
                          "x86-64 with AVX-512 VNNI, AVX-VNNI or AMX (Intel Ice Lake / Alder Lake and later, "
                          "AMD Zen 4 and later); full-range int8 weights, which saturate on CPUs without VNNI"),
    Isa.ARM64: IsaInfo(Isa.ARM64, "aarch64", (("asimd",),), False, 1,
                       "64-bit ARM with NEON (Raspberry Pi 4: Cortex-A72); NEON int8 widens to 32 bits, "
                       "full-range weights are safe"),
    Isa.ARM64_DOTPROD: IsaInfo(Isa.ARM64_DOTPROD, "aarch64", (("asimd",), ("asimddp",)), False, 2,
                               "64-bit ARM with the dot-product extension (Raspberry Pi 5: Cortex-A76)"),
}

# The flags that decide int8 (and bf16) kernels, as /proc/cpuinfo spells them. The verdict of a
# conformance check is remembered per these (and the runtime's version).
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16",
              "asimd", "asimddp", "i8mm", "asimdhp", "sve")

_LABELS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
           "amx_int8": "AMX-INT8", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16", "asimd": "NEON",
           "asimddp": "dot product", "i8mm": "int8 matrix multiply", "asimdhp": "fp16 arithmetic", "sve": "SVE"}

# numpy's names for the flags it reports (the fallback where /proc/cpuinfo does not exist): it
# knows AVX512VNNI and ASIMDDP, not AVX-VNNI or AMX.
_NUMPY_NAMES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni",
                "AVX512_BF16": "avx512_bf16", "ASIMD": "asimd", "ASIMDDP": "asimddp", "ASIMDHP": "asimdhp",
                "SVE": "sve", "NEON": "asimd"}


def _arch(machine: str) -> str:
    m = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


@dataclass(frozen=True)
class Cpu:
    """This machine's CPU as int8 sees it: architecture, model name, flags and where they came from."""

    arch: str
    model: str
    flags: frozenset[str]
    source: str  # "/proc/cpuinfo", "numpy" or "none"

    @property
    def int8_flags(self) -> list[str]:
        """The int8/bf16-relevant flags this CPU has, in :data:`INT8_FLAGS` order."""
        return [f for f in INT8_FLAGS if f in self.flags]

    @property
    def int8_instructions(self) -> list[str]:
        """Readable names of :attr:`int8_flags` ("AVX2", "AVX-512 VNNI", ...)."""
        return [_LABELS.get(f, f) for f in self.int8_flags if f in _LABELS]

    @property
    def vnni(self) -> bool:
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    def to_dict(self) -> dict[str, object]:
        return {"arch": self.arch, "model": self.model, "int8_flags": self.int8_flags,
                "int8_instructions": self.int8_instructions, "flags_from": self.source,
                "isas": [i.value for i in fitting_isas(self)]}


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]] | None:
    model, flags = "", set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for _ in range(4096):  # one core's block is enough; never read an endless file whole
                line = f.readline(4096)
                if not line:
                    break
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware", "Model") and not model:
                    model = value.strip()
                elif key == "CPU part" and not model:
                    model = f"ARM CPU part {value.strip()}"
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model and flags and key == "":
                    break
    except OSError:
        return None
    return model, flags


def _numpy_flags() -> set[str]:
    try:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as features  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core._multiarray_umath import __cpu_features__ as features  # type: ignore[no-redef]
    except ImportError:  # pragma: no cover
        return set()
    return {_NUMPY_NAMES[name] for name, on in features.items() if on and name in _NUMPY_NAMES}


def cpu_from_flags(arch: str, flags: Iterable[str], model: str = "", source: str = "given") -> Cpu:
    """A :class:`Cpu` from an architecture and flags (cpuinfo spelling): for tests and reports."""
    flags = set(flags)
    if _arch(arch) == "aarch64":
        flags.add("asimd")  # NEON is part of ARMv8-A; some kernels do not list it
    return Cpu(_arch(arch), model or arch, frozenset(flags), source)


@functools.lru_cache(maxsize=1)
def this_cpu() -> Cpu:
    """This machine's CPU: flags from ``/proc/cpuinfo`` on Linux, else from numpy's CPU dispatch."""
    arch = _arch(platform.machine())
    found = _read_cpuinfo()
    if found is not None and found[1]:
        return cpu_from_flags(arch, found[1], found[0] or platform.processor() or arch, "/proc/cpuinfo")
    flags = _numpy_flags()
    return cpu_from_flags(arch, flags, platform.processor() or arch, "numpy" if flags else "none")


def isa_info(isa: Isa | str) -> IsaInfo:
    return ISAS[Isa(isa)]


def fits(isa: Isa | str, cpu: Cpu) -> bool:
    """Whether ``cpu`` has what ``isa`` needs (its architecture and instructions)."""
    info = isa_info(isa)
    if info.arch != cpu.arch:
        return False
    if cpu.source == "none":  # nothing known: the architecture is all we can check
        return info.rank == 1
    return all(cpu.flags & set(group) for group in info.needs)


def fitting_isas(cpu: Cpu) -> list[Isa]:
    """The ISAs ``cpu`` has, fastest int8 first."""
    return sorted((i for i in ISAS if fits(i, cpu)), key=lambda i: -ISAS[i].rank)


def cpu_class(cpu: Cpu) -> str:
    """The fastest CPU class ``cpu`` fits (e.g. "x86-avx2"), else its architecture: how result
    files measured on it are named."""
    isas = fitting_isas(cpu)
    return isas[0].value if isas else cpu.arch


def saturates(cpu: Cpu, reduced_range: bool) -> bool:
    """Whether ONNX Runtime's int8 kernels on ``cpu`` can saturate with these weights: x86
    without VNNI and full-range (8-bit) weights."""
    return cpu.arch == "x86_64" and not cpu.vnni and not reduced_range


def int8_mismatch(built: dict | None, target_isa: Isa | str | None) -> str | None:
    """Why int8 built as ``built`` (``{"isa", "weight_bits"}`` as quantization records it; None
    for int8 made before edgetl recorded it, which had full-range weights) must not ship to
    CPUs of ``target_isa`` (None: any CPU), or None when it may."""
    bits = (built or {}).get("weight_bits", 8)
    made_for = (built or {}).get("isa") or "CPUs with VNNI (full-range weights, made before edgetl knew CPU classes)"
    needs_reduced = target_isa is None or isa_info(target_isa).reduced_range
    if needs_reduced and bits != 7:
        where = f"{Isa(target_isa).value} CPUs" if target_isa is not None else "any CPU"
        return (f"its int8 backbone was built for {made_for} with {bits}-bit weights, which saturate on x86 CPUs "
                f"without VNNI, and the target is for {where}")
    return None
