"""edgetl evaluate"""

from __future__ import annotations

import argparse

from edgetl.commands._args import NO_VERIFY_HELP, add_allow_nonconforming, add_trust, batch_size, output_file, path_arg, require_trust

HELP = "accuracy of a RUN or a bundle on a labelled image folder"
DESCRIPTION = """\
Accuracy of RUN_OR_BUNDLE on DATA (one subfolder per class, matched to the model's
labels by name; DATA may hold a subset of the classes). A bundle is evaluated on its
target's runtime and precision, torch-free; a RUN directory (run.json + model.pt) in
PyTorch (needs edgetl[train]).

--json prints {"accuracy", "n", "per_class": {label: accuracy}, "confusion", ...}.

An entity tagger (--task token-classification) is scored on a CoNLL file or JSONL with
character spans: entity-level precision, recall and F1, strict IOB2 (equal to seqeval), per
type; --json prints {"f1", "precision", "recall", "per_type": {type: {"precision", "recall",
"f1", "support", ...}}, "n", ...}. Types the model does not know count as missed.
--plot F writes the confusion matrix as a PNG (needs matplotlib; skipped without it).

Examples:
  edgetl evaluate bundle/ test_photos/
  edgetl evaluate runs/probe test_photos/ --json
  edgetl evaluate bundle/ test_photos/ --plot confusion.png
  edgetl evaluate ner-bundle/ test.conll --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_BUNDLE", type=path_arg, help="RUN directory or bundle directory")
    p.add_argument("data", metavar="DATA", type=path_arg,
                   help="image folder, one subfolder per class; for a text model a CSV/TSV/JSONL file with "
                        "text and label columns, or a folder of class subfolders of .txt files")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--plot", metavar="F", type=output_file, help="write the confusion matrix to this PNG")
    p.add_argument("--batch-size", type=batch_size, metavar="N", help="at most 4096")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], help="bundle: override the target's runtime")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="bundle: " + NO_VERIFY_HELP)
    add_trust(p)
    add_allow_nonconforming(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgetl.core import ui as _ui
    from edgetl.errors import RunDirError

    if args.json:
        _ui.quiet()
    model = Path(args.model)
    if _task(model) == "token-classification":
        return _run_entities(args, model)
    if (model / "run.json").is_file():
        from edgetl.workstation.evaluation import evaluate_run  # workstation side: torch

        if args.trust:
            raise RunDirError(f"{model}: --trust checks a bundle's signature; a RUN directory has none")
        kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
        report = evaluate_run(model, args.data, **kwargs)
        labels = report.get("labels") or _run_labels(model)
    elif model.is_dir() and not (model / "manifest.json").is_file():
        raise RunDirError(f"{model}: neither a RUN directory (no run.json) nor a bundle (no manifest.json); "
                          "pass a folder made by 'edgetl train' or 'edgetl package'")
    else:  # a bundle folder or its .tar.gz
        from edgetl.device.evaluation import EvaluateConfig, evaluate_bundle

        require_trust(args, args.model)  # --trust: refuse an unsigned bundle before using it
        report = evaluate_bundle(model, args.data, EvaluateConfig(batch_size=args.batch_size, verify=args.verify,
                                                                  runtime=args.runtime,
                                                                  allow_nonconforming=args.allow_nonconforming))
        labels = report.get("labels")
    for item in report.get("errors", []):
        _ui.warn(f"{item['file']}: {item['error']}")
    if args.json:
        _ui.print_json(report.to_dict())
    elif "map50" in report:
        _print_detection(report)
    else:
        counts = {}
        if report.get("confusion") is not None:
            counts = {label: int(sum(row)) for label, row in zip(labels, report["confusion"])}
        rows = [(label, counts.get(label), acc) for label, acc in report["per_class"].items()]
        rows.append(("all", report["n"], report["accuracy"]))
        _ui.print_table(f"accuracy on {report['n']} image(s)", ["class", "images", "accuracy"], rows)
    if args.plot and report.get("confusion") is None:
        _ui.warn(f"--plot draws a confusion matrix, which {'a detector' if 'map50' in report else 'this model'} "
                 "has none of; no plot written")
    elif args.plot:
        _plot(report, labels, args.plot)
    return 0


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _print_detection(report) -> None:
    """Per class and overall COCO mAP@.5 and mAP@[.5:.95], in %."""
    from edgetl.core import ui as _ui

    rows = [(label, c["n"], _pct(c["map50"]), _pct(c["map"])) for label, c in report["per_class"].items()]
    rows.append(("all", sum(c["n"] for c in report["per_class"].values()), _pct(report["map50"]), _pct(report["map"])))
    _ui.print_table(f"COCO mAP on {report['n']} image(s) ({report.get('runtime', 'torch')}, in %)",
                    ["class", "boxes", "mAP@.5", "mAP@[.5:.95]"], rows)


def _run_labels(run_dir) -> list[str]:
    from edgetl.core.run import read_run_json

    return list(read_run_json(run_dir)["labels"])


def _plot(report, labels: list[str], path: str) -> None:
    from edgetl.core import ui as _ui

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _ui.warn(f"matplotlib is not installed, so no plot was written to {path} (pip install matplotlib)")
        return
    from edgetl.device.evaluation import plot_confusion  # matplotlib is imported inside

    plot_confusion(report, labels, path)
    _ui.info(f"confusion matrix written to {path}")


def _task(model) -> str | None:
    """The task of a RUN (run.json) or a bundle (its manifest, read unverified: evaluating
    verifies it); None when MODEL is neither (the classification path says why)."""
    from edgetl.errors import EdgeTLError

    try:
        if (model / "run.json").is_file():
            from edgetl.core.run import read_run_json

            return read_run_json(model).get("task")
        if (model / "manifest.json").is_file() or model.is_file():  # a bundle folder or its .tar.gz
            from edgetl.device.bundle import open_bundle

            return open_bundle(model, verify=False, warn=False).task
    except EdgeTLError:
        return None
    return None


def _run_entities(args: argparse.Namespace, model) -> int:
    """An entity tagger's scores: --json prints {"f1", "precision", "recall", "per_type", "n",
    ...}; else a table per entity type."""
    from edgetl.core import ui as _ui
    from edgetl.errors import ConfigError, RunDirError

    if args.plot:
        raise ConfigError("--plot draws a confusion matrix of classes; an entity tagger has none (use --json for "
                          "its per-type scores)")
    if (model / "run.json").is_file():
        from edgetl.workstation.token_classification.evaluation import evaluate_run  # workstation side: torch

        if args.trust:
            raise RunDirError(f"{model}: --trust checks a bundle's signature; a RUN directory has none")
        report = evaluate_run(model, args.data, batch_size=args.batch_size)
    else:
        from edgetl.device.evaluation import EvaluateConfig, evaluate_bundle

        require_trust(args, args.model)
        report = evaluate_bundle(model, args.data, EvaluateConfig(batch_size=args.batch_size, verify=args.verify,
                                                                  runtime=args.runtime,
                                                                  allow_nonconforming=args.allow_nonconforming))
    d = report.to_dict()
    for item in d.get("errors", []):
        _ui.warn(f"{item['file']}: {item['error']}")
    if d.get("unknown_types"):
        _ui.warn(f"entity type(s) {', '.join(d['unknown_types'])} in DATA are not among the model's; "
                 "they count as missed (retrain the model with them)")
    if args.json:
        _ui.print_json(d)
        return 0
    rows = [(t, s["support"], s["predicted"], s["correct"], s["precision"], s["recall"], s["f1"])
            for t, s in d["per_type"].items()]
    rows.append(("all", d["n_true"], d["n_pred"], d["n_correct"], d["precision"], d["recall"], d["f1"]))
    _ui.print_table(f"entity F1 (strict IOB2) on {d['n']} text(s), {d.get('runtime')} {d.get('precision_executed')}",
                    ["type", "entities", "predicted", "correct", "precision", "recall", "F1"], rows)
    return 0
