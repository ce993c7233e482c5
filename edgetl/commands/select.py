"""edgetl select"""

from __future__ import annotations

import argparse

from edgetl.commands._args import blocks, count, epochs, folds, max_length, milliseconds, seconds
from edgetl.commands._args import image_size as pixels

HELP = "which backbone to build for a target: estimated accuracy on DATA against deployed latency"
DESCRIPTION = """\
For each candidate backbone (default: every built-in of DATA's kind), estimate:

  accuracy   on a stratified sample of DATA: the frozen backbone embeds it once
             (cached), then the exact linear probe is cross-validated (k folds);
             a k-NN and the probe's training accuracy are the ceilings beside it,
             LogME the training-free score
  latency    p50/p90 and peak memory of the exported backbone on the target's
             runtime and precision (int8 where the target is int8), each in a
             fresh process with torch blocked, as 'edgetl bench' measures

then recommend the most accurate backbone within the budget (the target's p90
budget, or --budget-ms) and say whether fine-tuning is likely to pay. When no
candidate meets the budget, exits 1 naming the fastest candidate's latency.

DATA is an image folder (one subfolder per class) or texts (a CSV/TSV/JSONL file
with text and label columns, or class subfolders of .txt files); the candidates
are the built-ins of that kind (text: all_minilm_l6_v2; add local models with
--backbones all_minilm_l6_v2,hf:/path/to/model).

A candidate NAME@SIZE is that image backbone at SIZE px input, estimated,
exported and timed at it: on a device the input resolution is often the
cheaper choice (latency grows with its square), so
--backbones efficientnet_lite0@96,efficientnet_lite0@160,efficientnet_lite2
compares sizes and backbones at once; 'edgetl build --backbone auto' then
trains at the chosen size. For a text backbone NAME@N is its token budget
(max_length, 8 to 512): latency grows with the tokens, accuracy falls when
texts are cut short, so
--backbones all_minilm_l6_v2@16,all_minilm_l6_v2@32,all_minilm_l6_v2@128
compares budgets (each embedded with that max_length, timed at N tokens).

--sweep-unfreeze 0,1,2,all measures instead of guessing: the recommended
backbone is fine-tuned briefly (LP-FT: the head starts from the solved probe;
--sweep-epochs, small inputs --sweep-image-size) once per depth on 70 % of the
sample and scored on the other 30 %, beside the linear probe on the same split.
The suggested --unfreeze is the cheapest depth within one standard error of the
best held-out accuracy (the probe when nothing beats it by more).

Exported models and embeddings are cached in the work folder (--work), so a
second run costs only the latency measurement.

Examples:
  edgetl select photos/ --target x86-ort-int8
  edgetl select photos/ --target rpi4-ort-int8 --backbones efficientnet_lite0,efficientnet_lite1 --plot sel.png
  edgetl select photos/ --target x86-ort-int8 --budget-ms 5 --json
  edgetl select photos/ --target x86-ort-int8 --sweep-unfreeze 0,1,2,all
  edgetl select photos/ --target rpi4-ort-int8 --backbones efficientnet_lite0@96,efficientnet_lite0@160
  edgetl select reviews.csv --target x86-ort-int8 --max-length 64
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="image folder (one subfolder per class) or texts (CSV/TSV/JSONL)")
    p.add_argument("--target", required=True, help="target name or .toml path (see 'edgetl targets')")
    add_select_arguments(p)
    p.add_argument("--budget-ms", type=milliseconds, help="p90 latency budget (default: the target's)")
    p.add_argument("--plot", metavar="PNG", help="write accuracy against latency, Pareto front and budget line")
    add_sweep_arguments(p.add_argument_group("the unfreeze sweep"))
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def add_sweep_arguments(g) -> None:
    """--sweep-unfreeze and its options (``edgetl build --backbone auto`` shares them)."""
    g.add_argument("--sweep-unfreeze", metavar="D,D,...", type=_depths,
                   help="fine-tune the recommended backbone briefly at each depth (block counts or 'all', "
                        "e.g. 0,1,2,all) and suggest --unfreeze from the held-out accuracies")
    g.add_argument("--sweep-epochs", type=epochs, default=3, help="epochs per depth (default 3)")
    g.add_argument("--sweep-image-size", type=pixels, default=64,
                   help="input size of the sweep, images (default 64: cheap; the ranking of depths, not the "
                        "accuracy, is what it measures)")


def add_select_arguments(p: argparse.ArgumentParser, image_size: bool = True) -> None:
    """The options ``edgetl build --backbone auto`` shares (build passes its --image-size)."""
    p.add_argument("--backbones", metavar="A,B,C",
                   help="candidate backbones, comma-separated (default: built-ins); NAME@SIZE is that backbone "
                        "at SIZE px input (estimated, exported and timed at it), e.g. "
                        "efficientnet_lite0@96,efficientnet_lite0@160,efficientnet_lite2; for a text backbone "
                        "NAME@N is max_length N tokens, e.g. all_minilm_l6_v2@32")
    p.add_argument("--sample", type=count, default=300, help="images in the stratified sample (default 300)")
    p.add_argument("--folds", type=folds, default=5, help="cross-validation folds (default 5)")
    if image_size:
        p.add_argument("--image-size", dest="select_image_size", type=pixels,
                       help="one input size for every candidate (default: each one's native size)")
        p.add_argument("--max-length", dest="select_max_length", type=max_length,
                       help="text: tokens per text for every candidate (default: each one's, 128)")
    p.add_argument("--work", metavar="DIR", help="cache folder (default: ~/.cache/edgetl/select)")
    p.add_argument("--bench-duration", type=seconds, default=1.0, help="seconds timed per repeat (default 1)")


def _depths(text: str):
    from edgetl.errors import ConfigError
    from edgetl.workstation.selection import parse_depths

    for part in text.split(","):
        if part.strip().lower() != "all" and part.strip().isdigit():
            blocks(part.strip())  # a bounded block count (one line past 10,000)
    try:
        return parse_depths(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--sweep-unfreeze: ")) from None


def select_config(args: argparse.Namespace, image_size: int | None = None, budget_ms: float | None = None):
    from edgetl.workstation.selection import SelectConfig

    return SelectConfig(backbones=tuple(args.backbones.split(",")) if args.backbones else None,
                        budget_ms=budget_ms, sample=args.sample, folds=args.folds,
                        image_size=getattr(args, "select_image_size", None) or image_size,
                        max_length=getattr(args, "select_max_length", None), work_dir=args.work,
                        bench_duration=args.bench_duration, sweep_unfreeze=getattr(args, "sweep_unfreeze", None),
                        sweep_epochs=getattr(args, "sweep_epochs", 3),
                        sweep_image_size=getattr(args, "sweep_image_size", 64))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.workstation.selection import NoCandidateError, select

    if args.json:
        _ui.quiet()
    report = select(args.data, args.target, select_config(args, budget_ms=args.budget_ms), plot=args.plot)
    if args.json:
        _ui.print_json(report.to_dict())
    else:
        text = report.sample.get("modality") == "text"
        size = lambda c: c.get("max_length") if text else c.get("input_size")  # noqa: E731
        rows = [(c["backbone"], size(c), _fmt(c["probe_accuracy"], ".3f"), _fmt(c["knn_accuracy"], ".3f"),
                 _fmt(c["probe_train_accuracy"], ".3f"), _fmt(c["logme"], ".3f"), _fmt(c["p50_ms"], ".3g"),
                 _fmt(c["p90_ms"], ".3g"), _fmt(c["peak_rss_mb"], ".0f"),
                 ("*" if c.get("candidate", c["backbone"]) == report.recommended else "")
                 + ("yes" if c["meets_budget"] else "no"))
                for c in report.candidates]
        _ui.print_table(
            f"edgetl select: {report.sample['n']} of {report.sample['of']} {report.sample.get('noun', 'image')}s, "
            f"{report.target}, "
            f"budget p90 {report.budget_ms:g} ms",
            ["backbone", "tokens" if text else "px", f"probe ({report.sample['folds']}-fold)", "k-NN", "probe train", "LogME", "p50 ms",
             "p90 ms", "peak MB", "fits"], rows)
        sweep = report.finetune.get("sweep") if report.finetune else None
        if sweep:
            _ui.print_table(
                f"unfreeze sweep, {sweep['backbone']}: {sweep['n_train']} sampled {report.sample.get('noun', 'image')}s"
                f" trained, {sweep['n_heldout']} held out, {sweep['epochs']} epochs"
                + (f", {sweep['input_size']} px" if sweep.get("input_size") else ""),
                ["unfreeze", "held-out acc", "held-out loss", "train acc", "trainable params", "seconds", "suggested"],
                [(r["unfreeze"] if r["unfreeze"] != "probe" else "probe (frozen)", f"{r['heldout_accuracy']:.3f}",
                  f"{r['heldout_loss']:.3f}", _fmt(r["train_accuracy"], ".3f"), f"{r['trainable_params']:,}",
                  f"{r['seconds']:.1f}", "*" if r["unfreeze"] == sweep["suggested"] else "")
                 for r in sweep["rows"]])
        cost = report.cost
        _ui.info(f"estimate cost: {cost['seconds']:.1f} s on {cost['cpu_threads']} CPU thread(s) "
                 f"(latency timing {cost['bench_seconds']:.1f} s"
                 + (f", unfreeze sweep {cost['sweep_seconds']:.1f} s" if cost.get("sweep_seconds") else "")
                 + f"); cache: {report.sample['work_dir']}")
        if report.plot:
            _ui.info(f"plot: {report.plot}")
        if report.recommended:
            print(f"recommended: {report.reason}")
            ft = report.finetune
            print(f"fine-tuning {'likely to pay' if ft['likely_to_pay'] else 'unlikely to pay'}: {ft['why']} "
                  f"(suggested: {ft['suggest']})")
    if report.recommended is None:
        raise NoCandidateError(report.reason)
    return 0
