"""An on-disk cache of embeddings, keyed by file content and by what computed them.

Layout: ``ROOT/KEY/ID.emb.npy`` (float32, one row per file) and ``ROOT/KEY/ID.keys.npy``
(the SHA-256 digests of the files' bytes, ``uint8`` rows of 32), one pair per *shard*. ``KEY`` names the
model, its weights, the preprocessing and the engine (see
:func:`edgetl.workstation.embedding.cache_key`), so a cached row is only ever reused for the
same computation on the same bytes.

Safety: a writer writes its own shard (streamed row block by row block, so no writer
needs all its rows in memory) under temporary names and renames the embeddings
first and the keys last, so a reader sees a shard only once it is complete; concurrent
writers never share a file (duplicates are harmless: the first found wins). Anything a
killed writer left behind (``.tmp-*``) is removed by a later writer once it is an hour old.
A shard that does not read back as it must (wrong dtype, shape, truncated) is ignored and
removed. Size: the whole cache is kept under ``max_bytes`` by removing the least recently
used shards (reads touch them). Files are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetl.core.rowstore import chunk_rows, release

__all__ = ["DEFAULT_MAX_BYTES", "EmbeddingCache", "ShardWriter", "cache_size", "default_cache_dir", "file_digest"]

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: ~400k embeddings of 1280 floats
_STALE_SECONDS = 3600.0
_DIGEST_BYTES = 32  # keys are stored as (n, 32) uint8: numpy's S32 would drop trailing NUL bytes


def default_cache_dir() -> Path:
    """``$EDGETL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgetl/embeddings``, else
    ``~/.cache/edgetl/embeddings``."""
    if os.environ.get("EDGETL_CACHE_DIR"):
        return Path(os.environ["EDGETL_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgetl" / "embeddings"


def file_digest(path: str | os.PathLike) -> bytes:
    """SHA-256 of a file's bytes (32 raw bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def cache_size(root: str | os.PathLike) -> int:
    """Bytes the cache under ``root`` holds (0 when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.glob("*/*.npy") if p.is_file())


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


class EmbeddingCache:
    """The shards of one ``key`` under ``root``; see the module docstring."""

    def __init__(self, root: str | os.PathLike, key: str, *, max_bytes: int = DEFAULT_MAX_BYTES):
        if not (key and all(c.isalnum() or c in "-_." for c in key)):
            raise ValueError(f"cache key must be a plain name, got {key!r}")
        self.root, self.key, self.max_bytes = Path(root), key, int(max_bytes)
        self.dir = self.root / key

    # ------------------------------------------------------------------ reading
    def _shards(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(".keys.npy")] for p in self.dir.glob("*.keys.npy") if not p.name.startswith("."))

    def width(self) -> int | None:
        """The embedding size of the first readable shard (None: no shard)."""
        for shard in self._shards():
            try:
                emb = np.load(self.dir / f"{shard}.emb.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                continue
            if emb.ndim == 2 and emb.dtype == np.float32:
                return int(emb.shape[1])
        return None

    def lookup(self, digests: Sequence[bytes], width: int | None = None,
               out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows for ``digests``: ``(embeddings, found)`` where ``found`` is a boolean mask and
        ``embeddings[i]`` is valid where ``found[i]`` (zeros elsewhere). ``width`` (the
        embedding size, when known) refuses shards of another size. ``out`` (``[n, width]``,
        a memory-mapped :class:`~edgetl.core.rowstore.RowStore` array, say) receives the rows
        instead of a new array; shards are read in chunks, their pages given back after each."""
        if out is not None:
            width = out.shape[1]
        wanted: dict[bytes, list[int]] = {}
        for i, d in enumerate(digests):
            wanted.setdefault(bytes(d), []).append(i)
        found = np.zeros(len(digests), bool)
        for shard in self._shards():
            if not wanted:
                break
            keys_path, emb_path = self.dir / f"{shard}.keys.npy", self.dir / f"{shard}.emb.npy"
            try:
                keys = np.load(keys_path, allow_pickle=False)
                emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
                if (keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != _DIGEST_BYTES or emb.dtype != np.float32
                        or emb.ndim != 2 or len(emb) != len(keys) or (width is not None and emb.shape[1] != width)
                        or (out is not None and emb.shape[1] != out.shape[1])):
                    raise ValueError("malformed shard")
            except FileNotFoundError:
                continue  # removed by an evicting writer meanwhile: a miss
            except (OSError, ValueError, EOFError):
                _remove(keys_path, emb_path)
                continue
            rows, targets = [], []
            for r, k in enumerate(keys):
                idx = wanted.pop(k.tobytes(), None)
                if idx is not None:
                    rows.append(r)
                    targets.append(idx)
            if not rows:
                continue
            if out is None:
                out = np.zeros((len(digests), emb.shape[1]), np.float32)
            step = chunk_rows(emb.shape[1], 4)
            for s in range(0, len(rows), step):
                block = np.asarray(emb[rows[s:s + step]])
                for row, idx in zip(block, targets[s:s + step]):
                    out[idx] = row
                    found[idx] = True
                release(emb)
                release(out)
            os.utime(keys_path)  # least recently used goes first
        if out is None:
            out = np.zeros((len(digests), width or 0), np.float32)
        return out, found

    # ------------------------------------------------------------------ writing
    def add(self, digests: Sequence[bytes], embeddings: np.ndarray) -> None:
        """Store rows as one new shard (atomically), then keep the cache under its bound."""
        if len(digests) != len(embeddings) or np.ndim(embeddings) != 2:
            raise ValueError("one 2-D embedding row per digest")
        writer = self.writer(len(digests), embeddings.shape[1])
        if writer is None:
            return
        try:
            step = chunk_rows(embeddings.shape[1], 4)
            for s in range(0, len(digests), step):
                writer.write(embeddings[s:s + step])
                release(embeddings)
            writer.commit(digests)
        finally:
            writer.close()

    def writer(self, n: int, width: int) -> "ShardWriter | None":
        """A new shard of ``n`` rows written as they come (:meth:`ShardWriter.write`), visible
        only once :meth:`ShardWriter.commit` renames it; None when it would not fit the bound."""
        if n <= 0 or n * width * 4 > self.max_bytes:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        self._collect_stale()
        return ShardWriter(self, n, width)

    def _collect_stale(self) -> None:
        now = time.time()
        for p in self.dir.glob(".tmp-*"):
            try:
                if now - p.stat().st_mtime > _STALE_SECONDS:
                    p.unlink()
            except OSError:
                pass

    def _evict(self) -> None:
        """Remove least recently used shards (of any key) until the cache fits ``max_bytes``."""
        shards = []
        for keys_path in self.root.glob("*/*.keys.npy"):
            emb_path = keys_path.with_name(keys_path.name[: -len(".keys.npy")] + ".emb.npy")
            try:
                size = keys_path.stat().st_size + emb_path.stat().st_size
                shards.append((keys_path.stat().st_mtime, size, keys_path, emb_path))
            except OSError:
                continue
        total = sum(s[1] for s in shards)
        for _, size, keys_path, emb_path in sorted(shards):
            if total <= self.max_bytes:
                break
            _remove(keys_path, emb_path)  # keys first: the shard is gone for readers at once
            total -= size


class ShardWriter:
    """One shard being written: rows streamed to ``.tmp-ID.emb.npy``, then the keys, then
    the two renamed (embeddings first, keys last). :meth:`close` without a commit removes
    the temporary files."""

    def __init__(self, cache: EmbeddingCache, n: int, width: int):
        self.cache, self.n, self.width, self.count = cache, int(n), int(width), 0
        self.id = uuid.uuid4().hex
        self.tmp_emb = cache.dir / f".tmp-{self.id}.emb.npy"
        self.tmp_keys = cache.dir / f".tmp-{self.id}.keys.npy"
        self._f = open(self.tmp_emb, "wb")
        try:
            np.lib.format.write_array_header_1_0(
                self._f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                          "shape": (self.n, self.width)})
        except BaseException:
            self.close()
            raise

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.width or self.count + len(rows) > self.n:
            raise ValueError(f"rows of width {self.width}, {self.n} in all")
        self._f.write(rows.tobytes())
        self.count += len(rows)

    def commit(self, digests: Sequence[bytes]) -> None:
        if self.count != self.n or len(digests) != self.n:
            raise ValueError(f"{self.count} rows written and {len(digests)} digests for a shard of {self.n}")
        self._f.close()
        keys = np.frombuffer(b"".join(bytes(d) for d in digests), np.uint8).reshape(self.n, _DIGEST_BYTES)
        with open(self.tmp_keys, "wb") as f:
            np.save(f, keys, allow_pickle=False)
        d = self.cache.dir
        os.replace(self.tmp_emb, d / f"{self.id}.emb.npy")
        os.replace(self.tmp_keys, d / f"{self.id}.keys.npy")  # the shard exists from here on
        self.cache._evict()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        _remove(self.tmp_emb, self.tmp_keys)
