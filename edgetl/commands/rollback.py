"""edgetl rollback"""

from __future__ import annotations

import argparse

HELP = "make a bundle's previous version live again"
DESCRIPTION = """\
Make the previous version of BUNDLE live again, atomically: after a retrain or adapt
that made things worse, this restores exactly the manifest and files before it. The
version rolled back from becomes the previous one, so rolling back twice returns to
where you started. With no previous version, nothing changes and the exit code is 2.

The restored version's conformance set is run here right away (its verdict is remembered).

--json prints {"bundle", "version", "from_version", "history", "conformance"}.

Examples:
  edgetl rollback bundle/
  edgetl rollback bundle/ --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder (made by 'edgetl package')")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.bundle import rollback

    if args.json:
        _ui.quiet()
    from edgetl.device.doctor import recheck, say_recheck

    report = rollback(args.bundle)
    conformance = recheck(args.bundle)
    if args.json:
        _ui.print_json({**report.to_dict(), "conformance": conformance})
    else:
        _ui.info(f"{report.bundle}: rolled back from version {report.from_version} to version {report.version}")
        say_recheck(conformance, "rollback")
    return 0
