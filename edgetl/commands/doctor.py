"""edgetl doctor"""

from __future__ import annotations

import argparse

HELP = "what this machine runs: runtimes, the precisions they execute, the on-device trainer"
DESCRIPTION = """\
Report, for this machine, each inference runtime's version (and which ONNX Runtime
distribution is installed), the precisions that actually execute (OpenVINO is asked by
compiling a tiny model for each: on CPUs with AVX-512 BF16 or AMX it runs float models in
bf16 unless told f32; on ARM CPUs it runs int8 IRs in fp16), and which trainer
'edgetl retrain' and 'edgetl adapt' use: ONNX Runtime training artifacts where
onnxruntime-training-cpu is installed (x86-64, Python 3.10-3.12), else the numpy trainer
(the same AdamW update, step for step). Torch-free: run it on the device.

Examples:
  edgetl doctor
  edgetl doctor --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.capabilities import capabilities

    if args.json:
        _ui.quiet()
    caps = capabilities()
    if args.json:
        _ui.print_json(caps)
        return 0
    rows = []
    for name, r in caps["runtimes"].items():
        executed = r.get("precisions_executed") or {}
        rows.append([name, r["version"] or "not installed", r.get("distribution") or "",
                     ", ".join(f"{k}->{v}" for k, v in executed.items()) or r["install"]])
    _ui.print_table(f"edgetl on {caps['system']} {caps['machine']}, Python {caps['python']}",
                    ["runtime", "version", "distribution", "precision asked -> executed"], rows)
    _ui.info(f"on-device retraining: {caps['retraining']['detail']}")
    return 0
