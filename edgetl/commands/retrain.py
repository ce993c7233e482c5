"""edgetl retrain"""

from __future__ import annotations

import argparse
import sys

from edgetl.commands._args import (NO_VERIFY_HELP, SIGN_HELP, Number, add_allow_nonconforming, add_memory_options,
                                   add_trust, batch_size, check_sign_key, epochs, learning_rate, open_fraction, path_arg,
                                   patience, require_trust, seed)

_FOLDS = Number(int, 2, 20, what="a number of folds")  # RetrainConfig's range

HELP = "retrain a bundle's head on the device from labelled images (torch-free)"
DESCRIPTION = """\
Retrain the classifier head of BUNDLE on DATA (one subfolder per class, named by label),
on the device, without PyTorch: DATA is embedded once by the bundle's deployed backbone,
the head is learnt and becomes a new version of the bundle, switched in atomically. The
bundle's replay memory (at most K embeddings per class) is replayed so that classes
missing from DATA are not forgotten.

Who learns (--learner): when DATA holds classes the bundle does not know, the exact
learner (default) keeps the head's rows for the classes it knew, exactly, and solves the
new classes' rows to their optimum over memory + DATA (class-balanced logistic regression
on standardised embeddings, its penalty set so the new rows are as large as the old ones):
no learning rate, no epochs, the same head whatever the seed, and no decision between two
old classes changes. It is judged out of fold (--folds: each row predicted by the head
learnt without it). Otherwise (or with --learner adamw) the head is trained by AdamW
epochs with ONNX Runtime training artifacts or numpy (--trainer), early stopping on a
holdout: a --holdout fraction of DATA plus the same fraction of the memory of classes
DATA lacks; its learning rate defaults to 1 / the mean L1 norm of the embeddings, so the
steps move logits alike whatever the embedding's scale.

If accuracy (out of fold, or on the holdout) would get worse, the bundle is left
unchanged and the exit code is 1 (--force switches anyway). 'edgetl rollback BUNDLE'
returns to the previous version. Unreadable files in DATA are skipped with a warning
(--strict refuses).

--json prints {"accuracy_before", "accuracy_after", "new_classes", "version", "switched",
"epochs", "n_train", "n_holdout", "groups", "per_class", "forgetting": {"old_retained",
"max_drop", "max_drop_class", "new_accuracy"}, "bias_correction": {"method", "kept",
"alpha", "beta", "candidates"}, "memory_per_class", "memory_selection", ...}.

Adding classes without forgetting: the memory keeps herded exemplars (closest to each
class mean); the exact learner keeps the old rows; with --learner adamw, training draws
class-balanced batches over memory + DATA and the grown head's bias toward its new
classes is corrected (--bias-correction). The table shows each class before and after;
"forgetting" the old classes' retention and largest drop; "learner" the C chosen.

Examples:
  edgetl retrain bundle/ new_photos/
  edgetl retrain bundle/ more_of_the_same_classes/ --epochs 30 --lr 0.005 --json
  edgetl retrain bundle/ only_new_classes/ --memory-per-class 40
  edgetl retrain bundle/ only_new_classes/ --learner adamw --bias-correction fit
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", type=path_arg, help="bundle folder (made by 'edgetl package')")
    p.add_argument("data", metavar="DATA", type=path_arg,
                   help="image folder, one subfolder per class; for a text model a CSV/TSV/JSONL file with "
                        "text and label columns, or a folder of class subfolders of .txt files")
    p.add_argument("--epochs", type=epochs, default=50, metavar="N", help="at most N epochs (default: 50)")
    p.add_argument("--lr", type=learning_rate, metavar="F",
                   help="AdamW learning rate (default: automatic, 1 / mean L1 norm of the embeddings)")
    p.add_argument("--batch-size", type=batch_size, default=32, metavar="N", help="default: 32 (at most 4096)")
    p.add_argument("--holdout", type=open_fraction, default=0.2, metavar="F",
                   help="fraction held out for early stopping and before/after accuracy, in (0, 1): without a "
                        "holdout nothing could show the new head is not worse (default: 0.2)")
    p.add_argument("--patience", type=patience, default=10, metavar="N",
                   help="stop after N epochs without a lower holdout loss; 0 = never (default: 10)")
    add_memory_options(p, retrain=True)
    p.add_argument("--bias-correction", choices=["fit", "weight-aligning", "auto", "none"], default="fit",
                   help="after adding classes, correct the head's bias toward them: fit (new-class logits shifted "
                        "by a number fit on the holdout), weight-aligning (new rows scaled to the old rows' mean "
                        "norm), auto (the better of the two); kept only if the class-balanced holdout loss falls "
                        "and its accuracy does not (default: %(default)s)")
    p.add_argument("--seed", type=seed, default=0, metavar="N", help="holdout split, batch order, memory (default: 0)")
    p.add_argument("--strict", action="store_true", help="refuse DATA with unreadable files instead of skipping them")
    p.add_argument("--force", action="store_true", help="switch to the new head even if holdout accuracy drops")
    p.add_argument("--trainer", choices=["auto", "ort", "numpy"], default="auto",
                   help="who takes the AdamW steps: ONNX Runtime training artifacts (ort), numpy (exactly the same "
                        "update, for devices without onnxruntime-training), or auto: ort where installed "
                        "(default: %(default)s)")
    p.add_argument("--learner", choices=["auto", "exact", "adamw"], default="auto",
                   help="exact: add classes keeping the old rows, new rows solved exactly (no learning rate); "
                        "adamw: epochs of AdamW steps (--epochs, --lr, --holdout, --trainer); auto: exact when "
                        "DATA adds classes, else adamw (default: %(default)s)")
    p.add_argument("--folds", type=_FOLDS, default=5, metavar="K",
                   help="exact learner: judge the new head on K-fold out-of-fold predictions (2-20, default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--no-verify", dest="verify", action="store_false", help=NO_VERIFY_HELP)
    add_trust(p)
    add_allow_nonconforming(p)
    p.add_argument("--sign", type=path_arg, metavar="KEY", help=SIGN_HELP)


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.retraining import RetrainConfig, retrain

    if args.json:
        _ui.quiet()
    require_trust(args, args.bundle)  # --trust: refuse an unsigned bundle before using it
    check_sign_key(args)
    config = RetrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, holdout=args.holdout, patience=args.patience,
        memory_per_class=args.memory_per_class, memory_mb=args.memory_mb, memory_selection=args.memory_selection,
        bias_correction=args.bias_correction, seed=args.seed, strict=args.strict, force=args.force,
        verify=args.verify, trainer=args.trainer, sign_key=args.sign, allow_nonconforming=args.allow_nonconforming,
        learner=args.learner, folds=args.folds,
    )
    from edgetl.device.doctor import recheck, say_recheck

    report = retrain(args.bundle, args.data, config)
    conformance = recheck(args.bundle) if report.switched else None
    if args.json:
        _ui.print_json({**report.to_dict(), "conformance": conformance})
    else:
        rows = [("all", report.n_holdout, report.accuracy_before, report.accuracy_after)]
        for name, g in report.groups.items():
            if g["n"]:
                rows.append((f"{name} classes", g["n"], g["before"], g["after"]))
        for label, g in report.per_class.items():
            rows.append((f"  {label}", g["n"], g["before"], g["after"]))
        state = (f"version {report.previous_version} -> {report.version}" if report.switched
                 else f"NOT switched, still version {report.version}")
        where = "out of fold" if report.trainer == "exact" else "holdout"
        _ui.print_table(f"retrain: {state}", [where, "rows", "before", "after"], rows)
        f = report.forgetting
        if report.new_classes and f.get("old_retained") is not None:
            bc = report.bias_correction
            kept = (f"{bc['method']} (alpha {bc['alpha']:.3g}, beta {bc['beta']:.3g})" if bc.get("kept") else "none")
            _ui.info(f"old classes kept {f['old_retained']:.1%} of their {where} accuracy (largest drop "
                     f"{f['max_drop']:.3f}, class {f['max_drop_class']}); new classes {f['new_accuracy']:.3f}; "
                     f"bias correction: {kept}; memory {report.memory_per_class}/class ({report.memory_selection})")
        new = ", ".join(report.new_classes) or "none"
        how = (f"solved exactly (C {report.learner['C']:.3g}, {report.learner['evaluation']})"
               if report.trainer == "exact" else
               f"{report.epochs} epoch(s) (best {report.best_epoch}, lr {report.lr:.3g}, {report.trainer} trainer)")
        _ui.info(f"{report.n_images} item(s) embedded in {report.seconds.get('embed', 0):.1f} s "
                 f"({len(report.skipped)} skipped), {report.n_train} training rows with the replay memory, "
                 f"{how} in {report.seconds.get('train', 0):.1f} s; new classes: {new}")
        say_recheck(conformance, "retrain")
    if not report.switched:
        print(f"edgetl retrain: {report.reason}", file=sys.stderr)
        return 1
    return 0
