"""The ``edgetl`` command. Thin: each subcommand lives in ``edgetl/commands/<name>.py``
(``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``, ``run(args) -> int``) and calls
the same functions as the Python API. Heavy imports (torch, runtimes) happen inside
``run`` so that device commands work where torch is not installed."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import Sequence

from edgetl.errors import EdgeTLError

# Order shown in --help: the pipeline, then the device, then tooling.
COMMANDS = (
    "train",
    "evaluate",
    "export",
    "quantize",
    "package",
    "predict",
    "retrain",
    "adapt",
    "rollback",
    "keygen",
    "bench",
    "targets",
    "doctor",
    "select",
    "build",
    "demo",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at ``--help``."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
        from edgetl.core.ui import printable  # an argument echoed back may hold any byte

        self.exit(2, f"{self.prog}: error: {printable(message)} (see '{self.prog} --help')\n")


def _available_commands() -> list[tuple[str, object]]:
    found = []
    for name in COMMANDS:
        try:
            found.append((name, importlib.import_module(f"edgetl.commands.{name}")))
        except ModuleNotFoundError as exc:
            if exc.name != f"edgetl.commands.{name}":
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    from edgetl.core.version import __version__

    parser = _Parser(
        prog="edgetl",
        description="Transfer learning for edge devices: train on a workstation, export to ONNX, "
        "quantize to int8, deploy a bundle, retrain its head on the device, benchmark it.",
        epilog="Run 'edgetl COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"edgetl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _available_commands():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _quiet_third_party() -> None:
    # Importing torch (onnxruntime does, when torch is installed) logs a CUDA warning on
    # machines without a GPU; it says nothing about the user's work.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module=r"torch\..*")
    warnings.filterwarnings("ignore", module=r"timm\..*")
    warnings.filterwarnings("ignore", module=r"nncf\..*")

    def show(message, category, filename, lineno, file=None, line=None):  # one line, no source
        from edgetl.core.ui import printable

        print(f"edgetl: warning: {printable(message)}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    from edgetl.core import ui as _ui

    _quiet_third_party()
    _ui.quiet(False)  # a previous in-process call with --json must not silence this one
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # as given: `train --nproc-per-node` relaunches it
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except EdgeTLError as exc:
        message = str(exc).replace("\r", " ").replace("\n", " ")  # one line, whatever a library said
        _ui.error_line(args.command, f"error: {message}")  # and input echoed in it escaped (NULs, ESC)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edgetl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgetl ... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    # Last resorts: the file system and memory refuse things the command did not foresee (a
    # name too long, a file it may not read, a full disk). One line, never a traceback; the
    # places that can say more raise an EdgeTLError themselves.
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _ui.error_line(args.command, f"error: {where}{exc.strerror or _one_line(exc)}")
        return 2
    except MemoryError:
        print(f"edgetl {args.command}: error: out of memory (try a smaller --batch-size, or fewer inputs at once)",
              file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
