"""edgetl keygen"""

from __future__ import annotations

import argparse

from edgetl.commands._args import path_arg

HELP = "make an Ed25519 key pair for signing bundles"
DESCRIPTION = """\
Write a new private key to KEY (PEM, readable by you only: mode 0600) and its public key
to KEY.pub. 'edgetl package ... --sign KEY' signs a bundle's manifest with it (into
BUNDLE/manifest.sig); 'edgetl predict/evaluate/retrain/adapt --trust KEY.pub' then
refuses any bundle whose manifest it did not sign. Keep KEY on the workstation; copy
only KEY.pub to the devices. A device that retrains can sign its own versions with a
key of its own (--sign on retrain/adapt), which the other devices trust or not.

Needs the 'cryptography' package (a device dependency of edgetl).

Examples:
  edgetl keygen --out ~/.edgetl/vendor.key
  edgetl package runs/digits --target x86-ort-int8 --out bundle/ --sign ~/.edgetl/vendor.key
  edgetl predict bundle/ cat.png --trust vendor.key.pub
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="KEY", type=path_arg,
                   help="private key file to write (the public key goes to KEY.pub)")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.add_argument("--json", action="store_true", help="print {\"private\", \"public\", \"key_id\"} on stdout")


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.core.signing import generate_key

    if args.json:
        _ui.quiet()
    private, public, key_id = generate_key(args.out, overwrite=args.force)
    if args.json:
        _ui.print_json({"private": str(private), "public": str(public), "key_id": key_id})
    else:
        _ui.info(f"key {key_id}: private key {private} (keep it secret), public key {public} (for --trust)")
    return 0
