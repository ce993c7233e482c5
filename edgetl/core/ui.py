"""Progress bars, tables and messages. Progress and messages go to stderr so that
stdout stays clean for ``--json``; tables go to stdout."""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")

__all__ = ["progress", "progress_bar", "print_table", "info", "warn", "print_json", "quiet", "printable"]

# What must not reach a terminal from untrusted text (file names, CSV headers, labels, texts):
# control characters (an ESC starts a sequence that recolours or rewrites the terminal; a
# newline splits a table row or an error line), DEL and C1 controls, bidirectional overrides
# (text that reads other than it is), and the bytes that were not UTF-8 (surrogateescape).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\udc80-\udcff]")


def _escape(match: "re.Match[str]") -> str:
    ch = match.group()
    if "\udc80" <= ch <= "\udcff":
        return f"\\x{ord(ch) - 0xDC00:02x}"  # the byte that was not UTF-8
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def printable(text: Any) -> str:
    """``text`` for a terminal: control characters, bidirectional overrides and bad bytes
    written as escapes (``\\x1b``, ``\\n``-as-``\\x0a``, ``\\xff``); one line. ``--json`` output
    needs none of this (JSON escapes them itself)."""
    return _UNPRINTABLE.sub(_escape, str(text))

_QUIET = False


def quiet(value: bool = True) -> None:
    """Silence progress bars and info messages (``--json`` mode, library use in tests)."""
    global _QUIET
    _QUIET = value


def _enabled() -> bool:
    return not _QUIET and os.environ.get("EDGETL_NO_PROGRESS", "") in ("", "0")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    """``with progress_bar("calibrating", n) as advance: advance(k)``."""
    if not _enabled():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = _stderr_console()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=not console.is_terminal,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr (only drawn on a terminal)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total) as advance:
        for item in items:
            yield item
            advance(1)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on stdout; floats shown with four significant digits. Silent in ``--json``
    mode (:func:`quiet`), where stdout carries JSON only."""
    if _QUIET:
        return
    from rich.console import Console
    from rich.table import Table

    from rich.text import Text

    # Text, not str: rich would read "[red]" in a file name as markup
    table = Table(title=Text(printable(title)), title_justify="left")
    for col in columns:
        table.add_column(Text(printable(col)))
    for row in rows:
        table.add_row(*(Text(printable(_fmt(v))) for v in row))
    Console(highlight=False).print(table)


def info(message: str) -> None:
    if not _QUIET:
        print(printable(message), file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"edgetl: warning: {printable(message)}", file=sys.stderr, flush=True)


def error_line(command: str, message: Any) -> None:
    """``edgetl COMMAND: MESSAGE`` on stderr, one line, untrusted text escaped."""
    print(f"edgetl {command}: {printable(message)}", file=sys.stderr, flush=True)


def _plain(obj: Any) -> Any:
    """What ``json`` cannot write itself: reports (their ``to_dict``), other mappings, paths."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    return str(obj)


def print_json(obj: Any) -> None:
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    json.dump(obj, sys.stdout, indent=2, default=_plain)
    sys.stdout.write("\n")
    sys.stdout.flush()
