"""edgetl adapt"""

from __future__ import annotations

import argparse

from edgetl.commands._args import SIGN_HELP, add_trust, check_sign_key, path_arg, require_trust

HELP = "align a bundle to a new domain from unlabelled images (torch-free)"
DESCRIPTION = """\
Adapt BUNDLE to a new domain (another camera, lighting, noise) from UNLABELLED_DIR, a
folder of unlabelled images of it (flat, or in subfolders whose names are ignored).
The deployed backbone embeds them; a feature alignment that gives their embeddings the
training domain's mean and covariance is stored as a new bundle version and applied
before the head by 'edgetl predict'. Atomic like 'retrain': a crash leaves the old or
the new version live. 'edgetl rollback BUNDLE' removes the alignment again.

Methods:
  coral        whiten with the new domain's covariance, recolour with the training
               domain's (shrunk toward the diagonal; default)
  standardize  per-feature mean and standard deviation only

The training domain's statistics come from the bundle (source_stats.npz or its replay
memory), or from --source DIR (images of the training domain) when it has none.

--json prints {"accuracy_before", "accuracy_after", "method", "n_images", "version",
"source", "bundle"}; the accuracies are null without --eval.

Examples:
  edgetl adapt bundle/ new_camera/
  edgetl adapt bundle/ new_camera/ --eval new_camera_labelled/ --json
  edgetl adapt bundle/ night/ --method standardize
"""


def _shrinkage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", type=path_arg, help="bundle folder (made by 'edgetl package')")
    p.add_argument("unlabelled", metavar="UNLABELLED_DIR", type=path_arg, help="unlabelled images of the new domain")
    p.add_argument("--method", choices=["coral", "standardize"], default="coral", help="default: %(default)s")
    p.add_argument("--eval", metavar="LABELLED_DIR", type=path_arg,
                   help="labelled new-domain images to report accuracy on")
    p.add_argument("--source", metavar="DIR", type=path_arg,
                   help="training-domain images, if the bundle holds no statistics")
    p.add_argument("--shrinkage", type=_shrinkage, metavar="F",
                   help="coral: covariance shrinkage toward the diagonal (default: d / (n + d))")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_trust(p)
    p.add_argument("--sign", type=path_arg, metavar="KEY", help=SIGN_HELP)


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.alignment import AdaptConfig, adapt

    if args.json:
        _ui.quiet()
    require_trust(args, args.bundle)  # --trust: refuse an unsigned bundle before using it
    check_sign_key(args)
    result = adapt(args.bundle, args.unlabelled, AdaptConfig(method=args.method, shrinkage=args.shrinkage,
                                                             source=args.source, eval_dir=args.eval,
                                                             sign_key=args.sign))
    if args.json:
        _ui.print_json(result.to_dict())
        return 0
    if args.eval:
        _ui.print_table(f"{result['method']} on {result['n_images']} image(s)", ["", "accuracy"],
                        [["before", result["accuracy_before"]], ["after", result["accuracy_after"]]])
    _ui.info(f"{result['bundle']}: version {result['version']} is live with a {result['method']} alignment "
             f"from {result['n_images']} image(s); 'edgetl rollback {result['bundle']}' removes it")
    return 0
