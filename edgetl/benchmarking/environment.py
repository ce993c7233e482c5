"""The environment fingerprint stored with every benchmark: which CPU (and which of the
instruction sets that decide int8 and bf16 speed), how many cores, which OS, Python and
package versions, and the command line. Torch-free; imports nothing heavy."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Sequence

from edgetl.core.run import package_versions

__all__ = ["environment", "cpu_model", "machine_name"]

# Flags (as /proc/cpuinfo spells them) that change what int8 and bf16 cost.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd",
             "asimddp", "i8mm", "sve")
PACKAGES = ("edgetl", "numpy", "onnx", "onnxruntime-training-cpu", "onnxruntime", "openvino", "torch", "timm", "nncf")


def _cpuinfo() -> tuple[str, set[str]]:
    from edgetl.core.isa import this_cpu

    cpu = this_cpu()
    return cpu.model, set(cpu.flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def environment(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-able description of this machine and software (see the module docstring)."""
    from edgetl.core.isa import fitting_isas, this_cpu

    model, flags = _cpuinfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):
        load = None
    return {
        "cpu": model,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "isas": [isa.value for isa in fitting_isas(this_cpu())],  # the int8 targets' classes this CPU belongs to
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average": list(load) if load else None,  # a busy machine makes latencies noisy
        "machine": platform.machine(),
        "os": platform.platform(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": package_versions(*PACKAGES),
        "command": list(sys.argv if argv is None else argv),
    }


def machine_name(env: dict[str, Any] | None = None) -> str:
    """One line for tables: 'AMD EPYC (x86_64, 2 CPUs, AVX-512 VNNI, AVX-512 BF16)'."""
    env = env or environment()
    flags = env.get("cpu_flags", {})
    shown = [label for flag, label in (("avx2", "AVX2"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                                       ("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX"), ("asimddp", "dotprod"))
             if flags.get(flag)]
    if env.get("machine") == "x86_64" and not any(flags.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_tile")):
        shown.append("no VNNI")
    cpus = env.get("cpus_usable") or env.get("cpu_count")
    return f"{env.get('cpu')} ({', '.join([env.get('machine', '?'), f'{cpus} CPUs', *shown])})"
