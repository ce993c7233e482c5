"""Reading untrusted files and streams, bounded: the one place that opens a file named by a
user or a bundle and decides whether it is something to read at all.

A path may name a device (``/dev/zero`` never ends, ``/dev/urandom`` neither), a FIFO (opening
one for reading blocks until a writer comes), a socket or a folder; a JSON document may be
nested deeper than the parser's recursion; a stream may be one endless line or not UTF-8.
:func:`read_regular` reads regular files only, never blocking on a FIFO, and at most
``limit`` bytes; :func:`parse_json` turns every way a JSON text can fail into one line;
:func:`bounded_lines` reads a stream (stdin) line by line within a per-line and a total
bound. Each raises the caller's :class:`~edgetl.errors.EdgeTLError` subclass. Torch-free.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from edgetl.errors import EdgeTLError

__all__ = ["read_regular", "open_regular", "parse_json", "bounded_lines", "file_kind", "check_regular", "walk_files"]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words (for messages)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _tail(hint: str) -> str:
    return f"; {hint}" if hint else ""


def check_regular(path: str | os.PathLike, what: str, error: type[EdgeTLError], hint: str = "") -> os.stat_result:
    """``os.stat(path)`` if it is a regular file (links followed); else ``error`` in one line
    (``hint`` appended: what to do). Nothing is opened, so a device or FIFO is refused
    without side effects."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}{_tail(hint)}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}){_tail(hint)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {file_kind(st.st_mode)}, not a {what} (a regular file){_tail(hint)}")
    return st


def read_regular(path: str | os.PathLike, limit: int, what: str, error: type[EdgeTLError], hint: str = "") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; ``error`` (one line)
    for a missing file, a device, FIFO, socket or folder, or a file larger than ``limit``.
    The file is opened non-blocking (a FIFO swapped in after the check cannot hang the
    read) and checked again on the open descriptor; the read stops at ``limit + 1`` bytes
    whatever size the file reports (``/proc`` files and devices report 0)."""
    check_regular(path, what, error, hint)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}){_tail(hint)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {file_kind(st.st_mode)}, not a {what} (a regular file){_tail(hint)}")
        if st.st_size > limit:
            raise error(f"{path}: larger than a {what} can be ({st.st_size:,} bytes, at most {limit:,}){_tail(hint)}")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}){_tail(hint)}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise error(f"{path}: larger than a {what} can be (more than {limit:,} bytes){_tail(hint)}")
    return b"".join(chunks)


def parse_json(data: bytes | str, source: str, what: str, error: type[EdgeTLError], hint: str = "") -> Any:
    """``json.loads`` whose every failure is one line naming ``source``: not UTF-8, not JSON,
    nested deeper than the parser recurses (``[[[...`` raises RecursionError, not ValueError),
    an integer beyond Python's digit limit."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError:
        raise error(f"{source}: not UTF-8 text, not a {what}{_tail(hint)}") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply, not a {what}{_tail(hint)}") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond the digit limit
        raise error(f"{source}: not valid JSON ({' '.join(str(exc).split())[:200]}), not a {what}{_tail(hint)}") from None


def open_regular(path: str | os.PathLike, what: str, error: type[EdgeTLError], hint: str = "") -> BinaryIO:
    """The regular file ``path`` opened for reading in binary (a device, FIFO or folder
    refused in one line, as by :func:`read_regular`); the caller bounds what it reads."""
    check_regular(path, what, error, hint)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}){_tail(hint)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {file_kind(st.st_mode)}, not a {what} (a regular file){_tail(hint)}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def bounded_lines(stream: BinaryIO, source: str, *, max_line: int, max_total: int, error: type[EdgeTLError],
                  keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a binary stream, decoded as UTF-8 with ``surrogateescape``
    (the caller decides what a bad byte means: ``"\\udc80"``-``"\\udcff"`` characters mark
    them), a leading byte-order mark dropped, the line ending too unless ``keep_ends``.
    ``error`` (one line) for a line longer than ``max_line`` bytes or more than ``max_total``
    bytes in all, raised before either is held: memory stays within ``max_line`` whatever
    the stream is (``/dev/zero`` has no newline at all, ``yes`` never ends)."""
    total = 0
    for n, raw in enumerate(iter(lambda: stream.readline(max_line + 1), b""), 1):
        total += len(raw)
        if total > max_total:
            raise error(f"{source}: more than {max_total:,} bytes; split the input into smaller parts")
        if len(raw) > max_line and not raw.endswith(b"\n"):
            raise error(f"{source}:{n}: a line longer than {max_line:,} bytes; split it")
        text = raw.decode("utf-8", errors="surrogateescape")
        if n == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield n, text if keep_ends else text.rstrip("\r\n")


def walk_files(root: str | os.PathLike, onerror: Callable[[OSError], None] | None = None) -> Iterator[Path]:
    """Every entry under ``root`` that is not a folder (files, and links to anything), hidden
    names (``.*``) and what they hold left out; links to folders are not followed. Iterative:
    ``os.walk`` and ``Path.rglob`` recurse once per level and raise RecursionError on a tree
    1,000 folders deep. A folder that cannot be read goes to ``onerror`` (its ``filename``
    names it), or is passed over."""
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = str(folder)
            if onerror is not None:
                onerror(exc)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(Path(entry.path))
            else:
                yield Path(entry.path)
        stack.extend(reversed(subfolders))
