"""edgetl targets"""

from __future__ import annotations

import argparse
import shutil

HELP = "list the deployment targets (runtime, precision, budgets), or check one TOML file"
DESCRIPTION = """\
List the shipped deployment targets: runtime, precision, threads, batch size, the p90
latency and peak-memory budgets the benchmark checks, whether the device retrains the
head, and whether the target's runtime is installed here. With TARGET (a name or the
path of your own .toml file), check and show only that one.

A target file holds: name, description, runtime (onnxruntime | openvino), device
(an ONNX Runtime execution provider or an OpenVINO device; default: the CPU), precision
(fp32 | int8 | bf16, bf16 with openvino only), threads, batch_size, input_size (optional,
else the model's), latency_budget_ms (p90), memory_budget_mb, retraining (true | false),
isa (the CPU class: x86-avx2 | x86-vnni | arm64 | arm64-dotprod; int8 is built for it),
arch (x86_64 | aarch64 | any; implied by isa), measured_ms (optional: measured latency per
CPU class, which orders 'edgetl doctor's list) and notes.

CPU classes: x86-avx2 is any x86-64 with AVX2; its int8 has 7-bit weights, exact on every
x86 CPU. x86-vnni needs AVX-512 VNNI, AVX-VNNI or AMX: full-range int8 weights, which
saturate on CPUs without VNNI. arm64 (Raspberry Pi 4) and arm64-dotprod (Pi 5). The
column "fits" says whether this CPU is one of the target's ('edgetl doctor' for more).

--json prints a list of the targets' keys plus "fits_this_cpu", "runtime_available", "runtime_status" and,
for targets that retrain, "trainer_here" (ort: ONNX Runtime training artifacts; numpy: the
numpy trainer, where this ONNX Runtime has no training build). 'edgetl doctor' shows more.

Examples:
  edgetl targets
  edgetl targets --json
  edgetl targets ./my-board.toml
  edgetl package runs/digits --target ./my-board.toml --out bundle/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", nargs="?", help="show only this target (a name or a .toml path)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.core.isa import this_cpu
    from edgetl.core.targets import list_targets, load_target

    if args.json:
        _ui.quiet()
    targets = [load_target(args.target)] if args.target else list_targets()
    status = [t.runtime_available() for t in targets]
    cpu = this_cpu()
    trainer = _trainer_here() if any(t.retraining for t in targets) else None
    if args.json:
        _ui.print_json([{**t.to_dict(), "fits_this_cpu": t.fits(cpu), "runtime_available": ok, "runtime_status": why,
                         **({"trainer_here": trainer} if t.retraining else {})}
                        for t, (ok, why) in zip(targets, status)])
        return 0
    # An 80-column terminal (or a pipe) gets short runtime names and no arch/batch, so
    # that the names stay whole; `--json` has everything.
    wide = shutil.get_terminal_size().columns >= 105
    short = {} if wide else {"onnxruntime": "ort", "openvino": "ov"}
    columns = ["name", "runtime", "prec.", "isa", "thr.", *(["batch"] if wide else []),
               "p90 ms", "mem MB", "retrain" if wide else "retr.", "fits", "here"]
    rows = [
        [t.name, short.get(t.runtime.value, t.runtime.value), t.precision.value, t.isa.value if t.isa else t.arch.value,
         t.threads, *([t.batch_size] if wide else []), t.latency_budget_ms, t.memory_budget_mb,
         "yes" if t.retraining else "no", "yes" if t.fits(cpu) else "no", "yes" if ok else "no"]
        for t, (ok, _) in zip(targets, status)
    ]
    _ui.print_table(f"{len(targets)} deployment target(s)", columns, rows)
    for t, (ok, why) in zip(targets, status):
        if not ok:
            _ui.info(f"{t.name}: {why}")
    misfits = [t.name for t in targets if not t.fits(cpu)]
    if misfits:
        _ui.info(f"this CPU ({cpu.model}: {', '.join(cpu.int8_instructions) or 'no int8 instructions known'}) is not "
                 f"one of {', '.join(misfits)}'s; their bundles fail their conformance check here")
    if trainer:
        _ui.info(f"retraining here uses the {trainer} trainer "
                 f"({'ONNX Runtime training artifacts' if trainer == 'ort' else 'no ONNX Runtime training build'}); "
                 "'edgetl doctor' shows the precisions each runtime executes")
    return 0


def _trainer_here() -> str:
    from importlib.util import find_spec

    if find_spec("onnxruntime") is None:
        return "numpy"
    from edgetl.device.learn import ort_training_available

    return "ort" if ort_training_available() else "numpy"
