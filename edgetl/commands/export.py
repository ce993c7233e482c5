"""edgetl export"""

from __future__ import annotations

import argparse

from edgetl.commands._args import Number
from edgetl.core.formats import MAX_OPSET

HELP = "export a trained RUN to ONNX (backbone, head, fused model) and OpenVINO IR, validated"
DESCRIPTION = """\
Write RUN/onnx/backbone.onnx (image -> embedding), RUN/onnx/head.onnx (embedding ->
logits) and RUN/onnx/model.onnx (image -> logits), each one self-contained file with a
dynamic batch and the labels and preprocessing in its metadata, plus the fp32 OpenVINO IR
RUN/openvino/backbone.xml.

Every file is then checked against PyTorch on real validation images, on ONNX Runtime
and on OpenVINO (pinned to f32): max |diff|, cosine similarity, top-1 agreement, and
head(backbone(x)) == model(x). All failures are reported together. The largest |diff|
allowed is derived from this model: 16 times what float32 rounding alone does to PyTorch's
own outputs (measured against the model in float64), or 1e-4 of the output scale if that
is larger; kernels that sum in another order (AVX2 or AVX-512, ONNX Runtime or OpenVINO)
stay within a few times the rounding, a wrong op or constant is orders of magnitude off.

Examples:
  edgetl export runs/probe
  edgetl export runs/probe --exporter torchscript --opset 17
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="RUN directory written by 'edgetl train'")
    p.add_argument("--opset", type=Number(int, 13, MAX_OPSET, what="an ONNX opset"), default=18, help="ONNX opset (default: %(default)s)")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                   help="dynamo (default, maintained) or torchscript (legacy, faster to run)")
    p.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                   help="check the files against PyTorch (default: on)")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.workstation.onnx_export import ExportConfig, export

    if args.json:
        _ui.quiet()
    report = export(args.run_dir, ExportConfig(opset=args.opset, exporter=args.exporter, validate=args.validate))
    if args.json:
        _ui.print_json(report)
        return 0
    rows = [(f["path"], f["bytes"] / 1e6, f["ir_version"], f["opset"], report["seconds"][name])
            for name, f in report["files"].items()]
    _ui.print_table("ONNX export", ["file", "MB", "IR", "opset", "seconds"], rows)
    v = report["validation"]
    if v is None:  # --no-validate
        _ui.warn("not validated against PyTorch (--no-validate): nothing checked that the files compute the model")
    else:
        vrows = [(name, r.get("max_abs_diff"), r.get("abs_limit"), r.get("min_cosine"), r.get("top1_agreement"))
                 for name, r in v.items() if isinstance(r, dict) and "max_abs_diff" in r]
        _ui.print_table(f"validation against PyTorch ({v['samples']} images)",
                        ["check", "max |diff|", "allowed", "min cosine", "top-1 agreement"], vrows)
    return 0
