"""edgetl build"""

from __future__ import annotations

import argparse

from edgetl.commands._args import epochs, fraction, image_size, learning_rate, milliseconds, open_fraction, seconds, seed
from edgetl.commands.select import add_select_arguments, add_sweep_arguments, select_config
from edgetl.commands.train import _unfreeze

# --strategy and --unfreeze not given: their defaults, or the sweep's suggested depth
_GIVEN_NONE = object()

HELP = "images to a deployed, benchmarked bundle in one command (train, export, quantize, package, bench)"
DESCRIPTION = """\
Run the whole workstation pipeline for one deployment target:

  0 select    with --backbone auto: the most accurate candidate within the
              target's latency budget ('edgetl select'); the summary says why;
              with --sweep-unfreeze, also the depth the sweep suggests (the
              probe, or --strategy finetune --unfreeze N) unless --strategy or
              --unfreeze is given
  1 train     linear probe (or --strategy finetune) on DATA
  2 export    ONNX backbone, head and fused model, validated against PyTorch
  3 quantize  int8 for int8 targets, within the accuracy budget (--max-drop)
  4 package   the bundle for TARGET in BUNDLE (RUN directory kept in BUNDLE.run)
  5 bench     the deployed model against PyTorch eager, budgets marked pass/fail

Stops at the first failing stage and names it. Ends with a summary table
(accuracy fp32 and deployed, size, p50 latency, speed-up, budgets).

Examples:
  edgetl build photos/ --target x86-ort-int8 --out bundle/
  edgetl build photos/ --target x86-openvino-int8 --out ov-bundle/ --strategy finetune --epochs 5
  edgetl build photos/ --target ./my-board.toml --out board/ --no-bench --json
  edgetl build photos/ --target rpi4-ort-int8 --out pi/ --backbone auto
  edgetl build photos/ --target rpi4-ort-int8 --out pi/ --backbone auto --sweep-unfreeze 0,1,2,all
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="image folder, one subfolder per class")
    p.add_argument("--target", required=True, help="target name or .toml path (see 'edgetl targets')")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create")
    p.add_argument("--run", metavar="RUN", help="RUN directory (default: BUNDLE.run)")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="a backbone name (see 'edgetl train --help'), or 'auto': run 'edgetl select' first")
    p.add_argument("--strategy", choices=["linear-probe", "finetune"], default=_GIVEN_NONE,
                   help="default linear-probe; with --backbone auto --sweep-unfreeze, the sweep's suggestion")
    p.add_argument("--unfreeze", type=_unfreeze, default=_GIVEN_NONE, metavar="N|all",
                   help="finetune: last N blocks trainable (default 2; with a sweep, its suggestion)")
    p.add_argument("--epochs", type=epochs)
    p.add_argument("--lr", type=learning_rate)
    p.add_argument("--val-split", type=open_fraction, default=0.2)
    p.add_argument("--image-size", type=image_size)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    p.add_argument("--max-drop", type=fraction, default=0.01, help="int8 accuracy budget (default: 0.01 = 1 point)")
    p.add_argument("--calib", metavar="DATA", help="int8 calibration data (default: a sample of the training split)")
    p.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True, help="benchmark at the end")
    p.add_argument("--duration", type=seconds, default=2.0, help="bench: seconds per configuration")
    p.add_argument("--archive", action="store_true", help="also write BUNDLE.tar.gz")
    p.add_argument("--force", action="store_true", help="replace an existing RUN and bundle")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    g = p.add_argument_group("with --backbone auto (see 'edgetl select --help')")
    add_select_arguments(g, image_size=False)
    g.add_argument("--budget-ms", type=milliseconds, help="p90 latency budget (default: the target's)")
    add_sweep_arguments(g)


def build_config(args: argparse.Namespace):
    """The BuildConfig of the parsed options (with --backbone auto, select's and the sweep's)."""
    from edgetl.benchmarking import BenchConfig
    from edgetl.workstation.onnx_export import ExportConfig
    from edgetl.workstation.pipeline import BuildConfig
    from edgetl.workstation.quantization import QuantizeConfig
    from edgetl.workstation.training import TrainConfig

    explicit = args.strategy is not _GIVEN_NONE or args.unfreeze is not _GIVEN_NONE
    return BuildConfig(
        run_dir=args.run,
        train=TrainConfig(backbone=args.backbone,
                          strategy="linear-probe" if args.strategy is _GIVEN_NONE else args.strategy,
                          unfreeze=2 if args.unfreeze is _GIVEN_NONE else args.unfreeze,
                          epochs=args.epochs, lr=args.lr, val_split=args.val_split,
                          image_size=args.image_size, seed=args.seed),
        export=ExportConfig(exporter=args.exporter, opset=18 if args.exporter == "dynamo" else 17),
        quantize=QuantizeConfig(max_drop=args.max_drop, calib=args.calib),
        bench=BenchConfig(duration=args.duration, repeats=2) if args.bench else None,
        select=select_config(args, image_size=args.image_size, budget_ms=args.budget_ms)
        if args.backbone == "auto" else None,
        follow_sweep=not explicit,
        run_bench=args.bench, archive=args.archive, overwrite=args.force,
    )


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.core.targets import load_target
    from edgetl.workstation.pipeline import build, summary_rows

    if args.json:
        _ui.quiet()
    target = load_target(args.target)
    result = build(args.data, target, args.out, build_config(args))
    if args.json:
        _ui.print_json(result.to_dict())
        return 0
    _ui.print_table("stages", ["stage", "seconds"], [(s["stage"], s["seconds"]) for s in result.stages])
    _ui.print_table(f"edgetl build → {result.bundle}", ["", "value"], summary_rows(result.summary))
    return 0
