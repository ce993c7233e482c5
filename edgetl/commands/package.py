"""edgetl package"""

from __future__ import annotations

import argparse

from edgetl.commands._args import add_memory_options, path_arg

HELP = "package a trained RUN as a bundle for a deployment target"
DESCRIPTION = """\
Copy the models a deployment target needs from RUN into the bundle folder BUNDLE:
the backbone in the target's runtime and precision (ONNX int8 or fp32, or OpenVINO IR),
the fp32 head, and, when the target retrains on the device, the head's ONNX Runtime
training artifacts. manifest.json records the labels, the preprocessing, the target,
the SHA-256 of every file and the accuracy known so far. Run 'edgetl export RUN' first,
and 'edgetl quantize RUN' for int8 and OpenVINO targets.

TARGET is a name from 'edgetl targets' or the path of your own .toml file. The bundle
is built beside BUNDLE and renamed into place; an existing bundle is only replaced
with --force.

--json prints {"bundle", "archive", "version", "target", "runtime", "precision",
"files": {path: {"sha256", "bytes"}}, "accuracy"}.

Examples:
  edgetl package runs/digits --target x86-ort-int8 --out bundle/
  edgetl package runs/digits --target rpi4-ort-int8 --out pi-bundle/ --archive
  edgetl package runs/digits --target ./my-board.toml --out bundle/ --force
  edgetl package runs/digits --target x86-ort-int8 --out bundle/ --memory-mb 2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", type=path_arg,
                   help="RUN directory (made by 'edgetl train', then export/quantize)")
    p.add_argument("--target", required=True, metavar="TARGET", help="target name or .toml path (see 'edgetl targets')")
    p.add_argument("--out", required=True, metavar="BUNDLE", type=path_arg, help="bundle folder to create")
    p.add_argument("--archive", action="store_true", help="also write BUNDLE.tar.gz")
    p.add_argument("--force", action="store_true", help="replace an existing bundle (and archive)")
    add_memory_options(p, retrain=False)
    p.add_argument("--deployed-head", action=argparse.BooleanOptionalAction, default=True,
                   help="int8 targets, linear-probe RUNs: solve the head again, as training did, on what the int8 "
                        "backbone computes for the RUN's split, so it learns the features the device sees "
                        "(default: on; --no-deployed-head keeps the RUN's head)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--sign", metavar="KEY", type=path_arg,
                   help="sign the manifest with this private key (from 'edgetl keygen'), into BUNDLE/manifest.sig; "
                        "devices check it with --trust KEY.pub")


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.bundle import open_bundle
    from edgetl.workstation.packaging import PackageConfig, package

    if args.json:
        _ui.quiet()
    signed = _sign_first(args)
    report = package(args.run, args.target, args.out, PackageConfig(
        archive=args.archive and not signed, overwrite=args.force, memory_per_class=args.memory_per_class,
        memory_mb=args.memory_mb, memory_selection=args.memory_selection, memory_precision=args.memory_precision,
        deployed_head=args.deployed_head))
    if signed:  # --sign: the archive must hold the signature, so it is written after it
        report = _sign_and_archive(args, report)
    out = report.bundle
    m = open_bundle(out, verify=False).manifest  # just written and hashed
    archive = str(report.archive) if report.archive else None
    accuracy = m.get("accuracy") or {}
    if args.json:
        _ui.print_json(report.to_dict())
        return 0
    rows = [[rel, _size(entry["bytes"]), entry["sha256"][:12]] for rel, entry in sorted(m["files"].items())]
    title = (f"{out}: target {m['target']['name']} ({m['runtime']}, {m['precision']}), {len(m['labels'])} labels, "
             f"accuracy fp32 {_pct(accuracy.get('fp32'))}, deployed {_pct(accuracy.get('deployed'))}")
    _ui.print_table(title, ["file", "size", "sha256"], rows)
    head = accuracy.get("head")
    if isinstance(head, dict):
        _ui.info(f"head solved again on the {m['precision']} backbone's features (C {head['C']:.3g}): validation "
                 f"{_pct(head['val_after']['accuracy'])} fit on train alone; the RUN's head scored "
                 f"{_pct(head['val_before']['accuracy'])}{' in sample' if head['val_before']['in_sample'] else ''}")
    if archive:
        _ui.info(f"archive: {archive}")
    return 0


def _pct(value: object) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "unknown"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _sign_first(args: argparse.Namespace) -> bool:
    """With --sign: check the key (and that an archive may be written) before packaging."""
    if not args.sign:
        return False
    from pathlib import Path

    from edgetl.core.signing import load_signing_key
    from edgetl.errors import BundleError

    load_signing_key(args.sign)
    tar_path = Path(args.out).with_name(Path(args.out).name + ".tar.gz")
    if args.archive and tar_path.exists() and not args.force:
        raise BundleError(f"{tar_path}: already exists; pass --force to replace it")
    return True


def _sign_and_archive(args: argparse.Namespace, report):
    """Sign the new bundle, then write its archive (with manifest.sig) if --archive."""
    import dataclasses

    from edgetl.core import ui as _ui
    from edgetl.device.bundle import sign_bundle, write_archive

    key_id = sign_bundle(report.bundle, args.sign)
    _ui.info(f"{report.bundle}: manifest signed by key {key_id} ({report.bundle}/manifest.sig)")
    if not args.archive:
        return report
    tar_path = report.bundle.with_name(report.bundle.name + ".tar.gz")
    return dataclasses.replace(report, archive=write_archive(report.bundle, tar_path))
