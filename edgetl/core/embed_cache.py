"""An on-disk cache of embeddings, keyed by file content and by what computed them.

Layout: ``ROOT/KEY/ID.emb.npy`` (float32, one row per file) and ``ROOT/KEY/ID.keys.npy``
(the SHA-256 digests of the files' bytes, ``uint8`` rows of 32), one pair per *shard*. ``KEY`` names the
model, its weights, the preprocessing and the engine (see
:func:`edgetl.workstation.embedding.cache_key`), so a cached row is only ever reused for the
same computation on the same bytes.

Safety: a writer writes its own shard under temporary names and renames the embeddings
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

__all__ = ["DEFAULT_MAX_BYTES", "EmbeddingCache", "cache_size", "default_cache_dir", "file_digest"]

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

    def lookup(self, digests: Sequence[bytes], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows for ``digests``: ``(embeddings, found)`` where ``found`` is a boolean mask and
        ``embeddings[i]`` is valid where ``found[i]`` (zeros elsewhere). ``width`` (the
        embedding size, when known) refuses shards of another size."""
        wanted: dict[bytes, list[int]] = {}
        for i, d in enumerate(digests):
            wanted.setdefault(bytes(d), []).append(i)
        found = np.zeros(len(digests), bool)
        out: np.ndarray | None = None
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
            block = np.asarray(emb[rows])
            for row, idx in zip(block, targets):
                out[idx] = row
                found[idx] = True
            os.utime(keys_path)  # least recently used goes first
        if out is None:
            out = np.zeros((len(digests), width or 0), np.float32)
        return out, found

    # ------------------------------------------------------------------ writing
    def add(self, digests: Sequence[bytes], embeddings: np.ndarray) -> None:
        """Store rows as one new shard (atomically), then keep the cache under its bound."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if len(digests) != len(embeddings) or embeddings.ndim != 2:
            raise ValueError("one 2-D embedding row per digest")
        if not len(digests) or embeddings.nbytes > self.max_bytes:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._collect_stale()
        shard = uuid.uuid4().hex
        keys = np.frombuffer(b"".join(bytes(d) for d in digests), np.uint8).reshape(len(digests), _DIGEST_BYTES)
        tmp_emb, tmp_keys = self.dir / f".tmp-{shard}.emb.npy", self.dir / f".tmp-{shard}.keys.npy"
        try:
            with open(tmp_emb, "wb") as f:
                np.save(f, embeddings, allow_pickle=False)
            with open(tmp_keys, "wb") as f:
                np.save(f, keys, allow_pickle=False)
            os.replace(tmp_emb, self.dir / f"{shard}.emb.npy")
            os.replace(tmp_keys, self.dir / f"{shard}.keys.npy")  # the shard exists from here on
        finally:
            _remove(tmp_emb, tmp_keys)
        self._evict()

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
