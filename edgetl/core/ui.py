"""Progress bars, tables and messages. Progress and messages go to stderr so that
stdout stays clean for ``--json``; tables go to stdout."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")

__all__ = ["progress", "progress_bar", "print_table", "info", "warn", "print_json", "quiet"]

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

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    Console(highlight=False).print(table)


def info(message: str) -> None:
    if not _QUIET:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"edgetl: warning: {message}", file=sys.stderr, flush=True)


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
