"""Rows of float32 (embeddings) in a memory-mapped file, so memory stays flat as data grows.

:class:`RowStore` is an ``[n, width]`` float32 array backed by a file without a name: it is
opened with ``O_TMPFILE`` in the folder given (beside the embedding cache or in a RUN's
work folder, never ``TMPDIR``), so nothing is left on disk whatever happens to the process,
a ``kill -9`` included; where the file system cannot do that, it is created and unlinked at
once. Its space goes back when the last view of the array is dropped.

Resident memory: the kernel keeps a mapped file's pages in the process's resident set once
touched, so a pass over 100k rows of 1,280 floats would still show 0.5 GB. Code that reads
or writes the rows in chunks calls :func:`release` after each chunk, which drops the pages
from this process (``MADV_DONTNEED``: a shared file mapping keeps its data in the page cache
or on disk, and the next touch maps it again), so the resident set is one chunk, not the
store. :func:`row_chunks` does both for a reader.
"""

from __future__ import annotations

import mmap
import os
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["RowStore", "release", "row_chunks", "chunk_rows"]

CHUNK_BYTES = 16 * 1024**2  # one float64 chunk of a pass: big enough for BLAS, small next to the model


def chunk_rows(width: int, itemsize: int = 8) -> int:
    """Rows per chunk for rows of ``width`` values (at least 64)."""
    return max(64, CHUNK_BYTES // max(1, width * itemsize))


def _unnamed_file(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(folder, flag | os.O_RDWR, 0o600)
        except OSError:  # a file system without O_TMPFILE: fall back to create + unlink
            pass
    for attempt in range(100):
        path = folder / f".edgetl-rows-{os.getpid()}-{attempt}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.unlink(path)  # from here on the file has no name: nothing can be left behind
        return fd
    raise OSError(f"cannot create a scratch file in {folder}")


class RowStore:
    """``n`` rows of ``width`` float32 values in an unnamed, memory-mapped file under
    ``folder``; :attr:`array` is the ``[n, width]`` view (zeros until written)."""

    def __init__(self, folder: str | os.PathLike, n: int, width: int):
        if n < 0 or width < 0:
            raise ValueError(f"need n >= 0 and width >= 0, got {n} x {width}")
        self.n, self.width = int(n), int(width)
        nbytes = self.n * self.width * 4
        fd = _unnamed_file(Path(folder))
        try:
            os.ftruncate(fd, max(nbytes, 1))  # sparse: the disk fills as rows are written
            self._map = mmap.mmap(fd, max(nbytes, 1), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file alive
        self.array = np.ndarray((self.n, self.width), np.float32, buffer=self._map)
        # found again by address: a view that went through torch (from_numpy, .numpy()) no
        # longer leads back to the mapping through ``.base``
        _LIVE[self.array.__array_interface__["data"][0]] = self.array

    def write(self, rows, block: np.ndarray) -> None:
        """``array[rows] = block``, then the written pages leave the resident set."""
        self.array[rows] = block
        release(self.array)


_LIVE: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def _address(a) -> int | None:
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0]
    ptr = getattr(a, "data_ptr", None)  # a torch tensor
    return ptr() if callable(ptr) else None


def _mapping(a) -> mmap.mmap | None:
    base = a
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None:
        return base
    addr = _address(a)
    if addr is None:
        return None
    for start, arr in list(_LIVE.items()):
        if start <= addr < start + max(arr.nbytes, 1):
            return arr.base
    return None


def release(a) -> None:
    """Drop the pages of the file mapping behind ``a`` (a :class:`RowStore` view, a
    ``numpy.memmap``, a torch tensor's numpy view of either) from this process's resident
    set; a no-op for arrays in ordinary memory."""
    m = _mapping(a)
    if m is not None and hasattr(m, "madvise") and not m.closed:
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - advice only
            pass


def row_chunks(a: np.ndarray, rows: np.ndarray | None = None, dtype=np.float64,
               size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, block)`` over ``a[rows]`` (all rows when ``rows`` is None) in order, each
    block ``dtype`` and at most ``size`` rows; a mapped ``a`` gives its pages back after
    each block. A block is a view of ``a`` or of a buffer the next block overwrites: read
    it, do not keep or write it."""
    n = len(a) if rows is None else len(rows)
    size = size or chunk_rows(a.shape[1] if a.ndim == 2 else 1, np.dtype(dtype).itemsize)
    mapped = _mapping(a) is not None
    # rows that need converting go into one buffer, reused: a fresh array per chunk costs
    # its page faults on every pass (measured: 2-5x the cast itself)
    buf = None if rows is None and a.dtype == dtype else np.empty((min(size, n),) + a.shape[1:], dtype)
    for s in range(0, n, size):
        part = a[s:s + size] if rows is None else a[rows[s:s + size]]
        if buf is None:
            yield s, part
        else:
            block = buf[:len(part)]
            block[...] = part
            yield s, block
        if mapped:
            release(a)
