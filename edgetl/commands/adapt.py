"""edgetl adapt"""

from __future__ import annotations

import argparse

from edgetl.commands._args import (SIGN_HELP, Number, add_allow_nonconforming, add_trust, check_sign_key, path_arg,
                                   require_trust)

_SHRINKAGE = Number(float, 0.0, 1.0, what="a shrinkage")

HELP = "align a bundle to a new domain from unlabelled images (torch-free)"
DESCRIPTION = """\
Adapt BUNDLE to a new domain (another camera, lighting, noise) from UNLABELLED_DIR, a
folder of unlabelled images of it (flat, or in subfolders whose names are ignored).
The deployed backbone embeds them, and the model is aligned to their statistics, in a
new bundle version. Atomic like 'retrain': a crash leaves the old or the new version
live. 'edgetl rollback BUNDLE' returns to the old one.

Methods (--method):
  coral        covariance alignment, covariances shrunk toward trace/F * I (default)
  standardize  per-feature mean and standard deviation only

Modes (--mode):
  refit  the replay memory (training images' embeddings) is recoloured to the new
         domain and the head is retrained on it with the bundle's trainer (default
         where the bundle has a memory: CORAL as published, and no F x F adapter)
  map    the new domain's embeddings are mapped to the training domain's statistics
         (source_stats.npz, the memory, or --source DIR) before the head (adapter.npz)

The guard: with --eval (labelled new-domain images) the adaptation is kept only if it
beats the current model there; without, the prediction entropy and class balance on
UNLABELLED_DIR before and after are reported, and an adaptation that collapses the
predictions onto few classes is refused (the bundle is unchanged). --force overrides.

--json prints {"accuracy_before", "accuracy_after", "target_before", "target_after",
"switched", "reason", "method", "mode", "n_images", "version", "source", "bundle"};
the accuracies are null without --eval.

Examples:
  edgetl adapt bundle/ new_camera/
  edgetl adapt bundle/ new_camera/ --eval new_camera_labelled/ --json
  edgetl adapt bundle/ night/ --method standardize
"""


def _shrinkage(text: str) -> float | str:
    if text in ("lw", "oas"):
        return text
    try:
        return _SHRINKAGE(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or lw, oas") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", type=path_arg, help="bundle folder (made by 'edgetl package')")
    p.add_argument("unlabelled", metavar="UNLABELLED_DIR", type=path_arg, help="unlabelled images of the new domain")
    p.add_argument("--method", choices=["coral", "standardize"], default="coral", help="default: %(default)s")
    p.add_argument("--eval", metavar="LABELLED_DIR", type=path_arg,
                   help="labelled new-domain images to report accuracy on")
    p.add_argument("--source", metavar="DIR", type=path_arg,
                   help="training-domain images, if the bundle holds no statistics")
    p.add_argument("--mode", choices=["auto", "refit", "map"], default="auto",
                   help="refit the head on the aligned memory, or map features (default: refit with a memory)")
    p.add_argument("--shrinkage", type=_shrinkage, metavar="F|lw|oas", default=0.9,
                   help="coral: covariance shrinkage toward trace/F * I, or lw / oas for the Ledoit-Wolf / "
                        "OAS estimate's (default: %(default)s, measured best for whitening)")
    p.add_argument("--force", action="store_true", help="switch even if the guard refuses")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_trust(p)
    add_allow_nonconforming(p)
    p.add_argument("--sign", type=path_arg, metavar="KEY", help=SIGN_HELP)


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.alignment import AdaptConfig, adapt

    if args.json:
        _ui.quiet()
    require_trust(args, args.bundle)  # --trust: refuse an unsigned bundle before using it
    check_sign_key(args)
    result = adapt(args.bundle, args.unlabelled, AdaptConfig(
        method=args.method, mode=args.mode, shrinkage=args.shrinkage, source=args.source,
        eval_dir=args.eval, force=args.force, sign_key=args.sign, allow_nonconforming=args.allow_nonconforming))
    from edgetl.device.doctor import recheck, say_recheck

    conformance = recheck(args.bundle) if result["switched"] else None
    if args.json:
        _ui.print_json({**result.to_dict(), "conformance": conformance})
        return 0
    tb, ta = result["target_before"], result["target_after"]
    _ui.print_table(f"{result['method']} ({result['mode']}) on {result['n_images']} image(s)",
                    ["", "accuracy", "entropy", "balance"],
                    [["before", result["accuracy_before"], tb["entropy"], tb["balance"]],
                     ["after", result["accuracy_after"], ta["entropy"], ta["balance"]]])
    if not result["switched"]:
        _ui.warn(result["reason"])
        return 0
    _ui.info(f"{result['bundle']}: version {result['version']} is live with a {result['method']} alignment "
             f"({result['mode']}) from {result['n_images']} image(s); 'edgetl rollback {result['bundle']}' undoes it")
    say_recheck(conformance, "adapt")
    return 0
