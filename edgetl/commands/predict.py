"""edgetl predict"""

from __future__ import annotations

import argparse
import sys

from edgetl.commands._args import (NO_VERIFY_HELP, add_trust, batch_size, path_arg, positive_int, require_trust,
                                   thread_count)

HELP = "classify images with a bundle (torch-free)"
DESCRIPTION = """\
Classify image files with BUNDLE on its target's runtime (ONNX Runtime or OpenVINO),
with exactly the preprocessing used in training. A FILE may be a folder: every image
inside it, recursively, in sorted order. An unreadable file is reported and the others
are still classified; the exit code is then 1.

--json prints a list of {"file", "label", "score", "top_k": [{"label", "score"}], "error"}.

Examples:
  edgetl predict bundle/ cat.jpg dog.png
  edgetl predict bundle/ photos/ --top-k 3 --json > predictions.json
  edgetl predict bundle/ cam.jpg --runtime openvino --threads 4
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", type=path_arg, help="bundle directory (made by 'edgetl package')")
    p.add_argument("files", metavar="FILE", nargs="+", type=path_arg, help="image file, or a folder of images")
    p.add_argument("--top-k", type=positive_int, default=1, metavar="K", help="show the K best labels (default: 1)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--batch-size", type=batch_size, metavar="N", help="default: the target's batch size (at most 4096)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], help="override the target's runtime")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="override the target's thread count (at most 4 per core, at least 8, at most 256)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help=NO_VERIFY_HELP)
    add_trust(p)


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.predictor import PredictConfig, expand_inputs, predict

    if args.json:
        _ui.quiet()
    require_trust(args, args.bundle)  # --trust: refuse an unsigned bundle before using it
    files = expand_inputs(args.files)
    report = predict(args.bundle, [str(f) for f in files], PredictConfig(
        top_k=args.top_k, batch_size=args.batch_size, runtime=args.runtime, threads=args.threads, verify=args.verify))
    predictions, failed = report.predictions, report.failed
    if args.json:
        _ui.print_json([p.to_dict() for p in predictions])
    else:
        columns = ["file", "label", "score"] + (["top-k"] if args.top_k > 1 else [])
        rows = []
        for p in predictions:
            row = [p.file, p.label if p.ok else "error", p.score]
            if args.top_k > 1:
                row.append(", ".join(f"{lab} {s:.3f}" for lab, s in p.top_k))
            rows.append(row)
        title = f"{len(predictions)} image(s), {report.runtime} {report.precision_executed}"
        _ui.print_table(title, columns, rows)
    for p in failed:
        print(f"edgetl predict: {p.error}", file=sys.stderr)
    return 1 if failed else 0
