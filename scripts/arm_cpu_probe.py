"""What the emulated ARM CPU really is, read from inside it: the kernel's HWCAP bits (QEMU
user mode fills them from the CPU model it emulates) and MIDR_EL1 (read with an `mrs`
instruction, which Linux and QEMU emulate for user space). Prints JSON.

Stdlib only: it runs on the root filesystem's system python3, before anything is installed.
Under QEMU user mode /proc/cpuinfo shows the x86 host, so scripts/test_arm.sh renders a
fake ARM one from this probe (`--cpuinfo`), consistent with what the emulated CPU executes.

Usage: python3 arm_cpu_probe.py [--cpuinfo]
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import sys

AT_HWCAP, AT_HWCAP2 = 16, 26
# Linux arch/arm64/include/uapi/asm/hwcap.h, in bit order (the names /proc/cpuinfo prints).
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
         "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 "
          "sme_f16f32 sme_b16f32 sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1").split()
PARTS = {0xD03: "Cortex-A53", 0xD07: "Cortex-A57", 0xD08: "Cortex-A72", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1"}


def _bits(value: int, names: list[str]) -> list[str]:
    return [name for i, name in enumerate(names) if value >> i & 1]


def _midr() -> int | None:
    """MIDR_EL1 via `mrs x0, midr_el1; ret` in an executable page (HWCAP cpuid says the
    kernel traps and emulates the read for user space)."""
    code = (0xD5380000).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_uint64)(address)())


def probe() -> dict:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    hwcap, hwcap2 = int(libc.getauxval(AT_HWCAP)), int(libc.getauxval(AT_HWCAP2))
    features = _bits(hwcap, HWCAP) + _bits(hwcap2, HWCAP2)
    midr = _midr() if "cpuid" in features else None
    out = {"machine": platform.machine(), "hwcap": hex(hwcap), "hwcap2": hex(hwcap2), "features": features,
           "qemu_cpu": os.environ.get("QEMU_CPU"), "midr": None if midr is None else hex(midr)}
    if midr is not None:
        part = midr >> 4 & 0xFFF
        out.update(implementer=hex(midr >> 24 & 0xFF), variant=hex(midr >> 20 & 0xF), part=hex(part),
                   revision=midr & 0xF, model=PARTS.get(part, "unknown"))
    return out


def cpuinfo(p: dict, cores: int = 4) -> str:
    """A /proc/cpuinfo as an arm64 Linux kernel prints it, for ``cores`` identical cores."""
    block = (f"BogoMIPS\t: 108.00\nFeatures\t: {' '.join(p['features'])}\n"
             f"CPU implementer\t: {p.get('implementer', '0x41')}\nCPU architecture: 8\n"
             f"CPU variant\t: {p.get('variant', '0x0')}\nCPU part\t: {p.get('part', '0x000')}\n"
             f"CPU revision\t: {p.get('revision', 0)}\n")
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(cores))


if __name__ == "__main__":
    result = probe()
    if result["machine"] != "aarch64":
        sys.exit(f"arm_cpu_probe: this is {result['machine']}, not aarch64 (is the binfmt handler for QEMU on?)")
    sys.stdout.write(cpuinfo(result) if "--cpuinfo" in sys.argv[1:] else json.dumps(result) + "\n")
