"""edgetl quantize"""

from __future__ import annotations

import argparse

from edgetl.commands._args import Number, count, fraction
from edgetl.core.isa import Isa

HELP = "quantize an exported RUN's backbone to int8 (ONNX Runtime QDQ, NNCF for OpenVINO), within an accuracy budget"
DESCRIPTION = """\
Calibrate on real images through exactly the training preprocessing (default: a
stratified sample of the RUN's training split, or --calib DATA), then write

  RUN/onnx/backbone.int8.onnx, RUN/onnx/model.int8.onnx   (ONNX Runtime, static QDQ,
                                                           per-channel int8 weights)
  RUN/openvino/backbone.int8.xml/.bin                     (NNCF post-training int8)

The head stays fp32: it is what the device retrains. Every int8 model is scored on the
RUN's held-out split against its fp32 counterpart (accuracy drop and top-1 agreement).
While the drop exceeds --max-drop or the agreement is below --min-agreement, the nodes
that add the most error are kept in fp32 (1, 2, 4, ... of them). If the budget still
cannot be met, no int8 file is written and the command fails with the report.

Text models (a transformer backbone): ONNX Runtime's int8 is dynamic (--engine ort or
both picks ort-dynamic: int8 weights per channel, activations quantized at run time, no
calibration), and NNCF quantizes with its transformer model type; the same guard holds.

int8 is built for the CPUs it will run on (--isa, or the --target's isa): int8 kernels
differ between CPUs. On x86 CPUs without VNNI (AVX2 only: AMD Zen 1-3, Intel before Ice
Lake) ONNX Runtime's int8 saturates with full-range weights (EfficientNet-Lite0 agreed with
fp32 on 0.80 of digits there); x86-avx2, the default, gets 7-bit weights (ONNX Runtime
reduce_range, NNCF's overflow fix), exact on every x86-64 CPU. x86-vnni and ARM get
full-range weights. Each int8 model is scored twice: as the reference computes it (no
integer kernels: the same on every CPU) and as this CPU's kernels do; this CPU's score
decides where it computes int8 as the target's CPUs do, the reference's otherwise, and the
report says which (and when this CPU saturates).

Every accuracy names the precision actually executed: OpenVINO runs fp32 models in bf16
on CPUs with AMX unless pinned to f32, so its fp32 IR is measured both ways.

Examples:
  edgetl quantize runs/probe
  edgetl quantize runs/probe --target x86-vnni-ort-int8      (full-range int8, VNNI CPUs only)
  edgetl quantize runs/probe --engine ort --calibration percentile --calib-size 200
  edgetl quantize runs/probe --calib data/extra --max-drop 0.005 --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="RUN directory, exported with 'edgetl export'")
    p.add_argument("--calib", metavar="DATA", help="calibration data, images or texts as the RUN takes (default: the RUN's training split)")
    p.add_argument("--calib-size", type=count, default=128,
                   help="calibration images, stratified over classes (default: %(default)s)")
    p.add_argument("--engine", choices=["ort", "ort-dynamic", "nncf", "both"], default="both",
                   help="ort: ONNX Runtime QDQ (images) or dynamic int8 (text); ort-dynamic: dynamic int8 "
                        "with int8 per-channel weights; nncf: OpenVINO int8 IR; both (default)")
    isa = p.add_mutually_exclusive_group()
    isa.add_argument("--isa", choices=[i.value for i in Isa], default=None,
                     help="the int8 instruction class of the CPUs the model is for (default: x86-avx2, safe on "
                          "every x86-64; 'edgetl targets' shows each target's)")
    isa.add_argument("--target", metavar="NAME", help="take --isa from this target (a name or a .toml path)")
    p.add_argument("--method", choices=["static", "dynamic"], default="static",
                   help="static (default) or dynamic (ONNX Runtime only; weights only, little gain for convs)")
    p.add_argument("--calibration", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="ONNX Runtime's calibration method (default: %(default)s); NNCF uses its own min-max")
    p.add_argument("--max-drop", type=fraction, default=None,
                   help="largest drop of the task's metric allowed, as a fraction (default: 0.01 = 1 point of "
                        "accuracy for classification; 0.02 of mAP@.5 for detection, of entity F1 for NER)")
    p.add_argument("--min-agreement", type=fraction, default=None,
                   help="smallest agreement with fp32 allowed (default: 0.97 of top-1 labels for classification; "
                        "0.90 of detections or entities found again for detection and NER)")
    p.add_argument("--max-fp32-nodes", type=count, default=32,
                   help="most nodes the guard may keep in fp32 (default: %(default)s)")
    p.add_argument("--max-steps", type=Number(int, 0, 1000, what="a number of steps"), default=6, help="fallback steps of the guard, 0 for none (default: %(default)s)")
    p.add_argument("--activations", choices=["uint8", "int8"], default="uint8",
                   help="ONNX Runtime activation type (default: uint8, the fast form on x86 VNNI)")
    p.add_argument("--json", action="store_true", help="print the quantization report as JSON")


def _pct(value):
    return None if value is None else round(100 * value, 2)


def _print(report: dict) -> None:
    from edgetl.core import ui as _ui

    def agree(r: dict, key: str):
        return _pct(r[key]["agreement"]) if isinstance(r.get(key), dict) else None

    rows = [(r["runtime"], r["precision"], r["precision_executed"], _pct(r["fp32_accuracy"]), _pct(r["accuracy"]),
             _pct(r["drop"]), _pct(r["agreement"]), agree(r, "reference"), agree(r, "this_cpu"),
             r.get("judged_on", ""), r["size_mb"], len(r.get("fp32_nodes", [])))
            for r in report["report"]]
    int8 = report.get("int8") or {}
    _ui.print_table(
        f"int8 quantization for {int8.get('isa', '?')} ({int8.get('weight_bits', '?')}-bit weights; "
        f"{report['evaluation']['images']} held-out items, in %)",
        ["runtime", "precision", "executed", "fp32 acc", "acc", "drop", "agreement", "ref. agr.", "here agr.",
         "judged on", "MB", "fp32 nodes"], rows,
    )
    for r in report["report"]:
        if r.get("note"):
            _ui.info(f"{r['runtime']} int8: {r['note']}")
    steps = [(runtime, s["step"], len(s["fp32_nodes"]), _pct(s["accuracy"]), _pct(s["drop"]), _pct(s["agreement"]),
              "yes" if s["passed"] else "no")
             for runtime, guard in report["guard"].items() if len(guard["steps"]) > 1 for s in guard["steps"]]
    if steps:
        _ui.print_table("accuracy guard: nodes kept in fp32, step by step",
                        ["runtime", "step", "fp32 nodes", "acc", "drop", "agreement", "within budget"], steps)


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.errors import QuantizationError
    from edgetl.workstation.quantization import QuantizeConfig, quantize

    if args.json:
        _ui.quiet()
    isa = args.isa
    if args.target:
        from edgetl.core.targets import load_target

        isa = load_target(args.target).isa
    cfg = QuantizeConfig(
        engine=args.engine, isa=isa or Isa.X86_AVX2, method=args.method, calibration=args.calibration, calib=args.calib,
        calib_size=args.calib_size, max_drop=args.max_drop, min_agreement=args.min_agreement,
        max_fp32_nodes=args.max_fp32_nodes, max_steps=args.max_steps, activations=args.activations,
    )
    try:
        report = quantize(args.run_dir, cfg)
    except QuantizationError as exc:
        # The budget failed: show what was measured (also in run.json), then the one-line error.
        failed = getattr(exc, "report", None)
        if failed is not None:
            _ui.print_json(failed) if args.json else _print(failed)
        raise
    if args.json:
        _ui.print_json(report)
        return 0
    _print(report)
    for rel in report["files"]:
        _ui.info(f"wrote {rel}")
    return 0
