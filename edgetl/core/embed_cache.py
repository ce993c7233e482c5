"""An on-disk cache of embeddings, keyed by file content and by what computed them.

Layout: ``ROOT/KEY/ID.emb.npy`` (float32, one row per file) and ``ROOT/KEY/ID.keys.npy``
(``uint8`` rows of 64: the SHA-256 of the file's bytes, then the row's integrity digest),
one pair per *shard*. ``KEY`` names the model, its weights, the preprocessing and the engine
(see :func:`edgetl.workstation.embedding.cache_key`), so a cached row is only ever reused
for the same computation on the same bytes.

Integrity: each row carries ``SHA-256(DOMAIN, KEY, file digest, SHA-256(row))``, computed
when the row is written and checked whenever it is read. A row moved to another file or
another key, edited, scaled, or replaced by NaN fails it; a shard with a row that fails
(or that is not what a shard must be: a FIFO or device in its place, the wrong dtype or
shape, a truncated file) is removed, listed in :attr:`EmbeddingCache.rejected`, and its
rows are looked up elsewhere or recomputed by the caller. Rows that are not finite are never
written. The digest is not a signature: whoever can write the cache folder can write rows
with valid digests, so the folder is trusted input (``docs/security.md``). A folder that
other users may write (group or world writable, or owned by another user) is not used at
all (:attr:`EmbeddingCache.untrusted` says why); folders are created private (mode 0700).

Safety: a writer writes its own shard (streamed row block by row block, so no writer
needs all its rows in memory) under temporary names and renames the embeddings
first and the keys last, so a reader sees a shard only once it is complete; concurrent
writers never share a file (duplicates are harmless: the first found wins). Anything a
killed writer left behind (``.tmp-*``) is removed by a later writer once it is an hour old.
Size: the whole cache is kept under ``max_bytes`` by removing the least recently
used shards (reads touch them). Files are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetl.core.rowstore import chunk_rows, release

__all__ = ["DEFAULT_MAX_BYTES", "EmbeddingCache", "ShardWriter", "cache_size", "default_cache_dir", "file_digest"]

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: ~400k embeddings of 1280 floats
_STALE_SECONDS = 3600.0
_DIGEST_BYTES = 32
# keys are stored as (n, 64) uint8 (numpy's S32 would drop trailing NUL bytes): the file's
# digest, then the row's integrity digest (see _row_digest)
_KEY_BYTES = 2 * _DIGEST_BYTES
_DOMAIN = b"edgetl-embedding-row-v1\n"  # a row digest can never be taken for another kind of digest


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


def _row_digest(key: str, file_digest: bytes, row_hash: bytes) -> bytes:
    """The integrity digest of one cached row: it covers the cache key (the computation),
    the file's digest (the input) and the row's bytes (``row_hash`` = SHA-256 of them)."""
    return hashlib.sha256(_DOMAIN + key.encode("ascii") + b"\0" + bytes(file_digest) + row_hash).digest()


def _row_hashes(rows: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return [hashlib.sha256(r.tobytes()).digest() for r in rows]


def _check_folder(path: Path, *, sticky_ok: bool) -> str | None:
    """Why ``path`` (a folder of the cache) cannot be trusted, or None (also when it does not
    exist yet). Rows from a folder that another user can write could be anyone's: their
    digests are not secret. ``sticky_ok``: a world-writable folder with the sticky bit (like
    ``/tmp``) is fine as the root, where others can add names but not replace ours."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check it ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid is not None and st.st_uid not in (euid, 0):
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return f"other users may write in it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _regular(path: Path, limit: int) -> bool:
    """``path`` is a regular file (not a link, FIFO or device: ``np.load`` would block on a
    FIFO or read ``/dev/zero`` without end) of at most ``limit`` bytes."""
    st = path.lstat()
    return stat.S_ISREG(st.st_mode) and st.st_size <= limit


class EmbeddingCache:
    """The shards of one ``key`` under ``root``; see the module docstring."""

    def __init__(self, root: str | os.PathLike, key: str, *, max_bytes: int = DEFAULT_MAX_BYTES):
        if not (key and all(c.isalnum() or c in "-_." for c in key)):
            raise ValueError(f"cache key must be a plain name, got {key!r}")
        self.root, self.key, self.max_bytes = Path(root), key, int(max_bytes)
        self.dir = self.root / key
        self.rejected: list[tuple[Path, str]] = []  # shards removed: (their .keys.npy, why)
        self.untrusted: str | None = None  # why the folder is not used, or None
        self._check_trust()

    def _check_trust(self) -> bool:
        for folder, sticky_ok in ((self.root, True), (self.dir, False)):
            why = _check_folder(folder, sticky_ok=sticky_ok)
            if why is not None:
                self.untrusted = f"{folder}: {why}"
                return False
        return True

    def _reject(self, keys_path: Path, emb_path: Path, why: str) -> None:
        _remove(keys_path, emb_path)
        self.rejected.append((keys_path, why))

    # ------------------------------------------------------------------ reading
    def _shards(self) -> list[str]:
        if self.untrusted is not None or not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(".keys.npy")] for p in self.dir.glob("*.keys.npy") if not p.name.startswith("."))

    def width(self) -> int | None:
        """The embedding size of the first readable shard (None: no shard)."""
        for shard in self._shards():
            path = self.dir / f"{shard}.emb.npy"
            try:
                if not _regular(path, self.max_bytes):
                    continue
                emb = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                continue
            if emb.ndim == 2 and emb.dtype == np.float32:
                return int(emb.shape[1])
        return None

    def _open_shard(self, keys_path: Path, emb_path: Path, width: int | None) -> tuple[np.ndarray, np.ndarray]:
        if not (_regular(keys_path, self.max_bytes) and _regular(emb_path, self.max_bytes)):
            raise ValueError("not a regular file of a shard's size")
        keys = np.load(keys_path, allow_pickle=False)
        emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
        if (keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != _KEY_BYTES or emb.dtype != np.float32
                or emb.ndim != 2 or len(emb) != len(keys) or (width is not None and emb.shape[1] != width)):
            raise ValueError("wrong dtype or shape")
        return keys, emb

    def lookup(self, digests: Sequence[bytes], width: int | None = None,
               out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows for ``digests``: ``(embeddings, found)`` where ``found`` is a boolean mask and
        ``embeddings[i]`` is valid where ``found[i]`` (zeros elsewhere). ``width`` (the
        embedding size, when known) refuses shards of another size. ``out`` (``[n, width]``,
        a memory-mapped :class:`~edgetl.core.rowstore.RowStore` array, say) receives the rows
        instead of a new array; shards are read in chunks, their pages given back after each.
        Every row's integrity digest is checked: a shard with a row that fails is removed
        (see :attr:`rejected`) and its rows count as not found."""
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
                keys, emb = self._open_shard(keys_path, emb_path, width)
            except FileNotFoundError:
                continue  # removed by an evicting writer meanwhile: a miss
            except (OSError, ValueError, EOFError) as exc:
                self._reject(keys_path, emb_path, f"unreadable ({' '.join(str(exc).split())[:80]})")
                continue
            rows, targets = [], []
            for r, k in enumerate(keys):
                idx = wanted.pop(k[:_DIGEST_BYTES].tobytes(), None)
                if idx is not None:
                    rows.append(r)
                    targets.append(idx)
            if not rows:
                continue
            if out is None:
                out = np.zeros((len(digests), emb.shape[1]), np.float32)
            step = chunk_rows(emb.shape[1], 4)
            bad = None
            for s in range(0, len(rows), step):
                chunk = rows[s:s + step]
                block = np.asarray(emb[chunk])
                for r, row, h in zip(chunk, block, _row_hashes(block)):
                    if _row_digest(self.key, keys[r, :_DIGEST_BYTES].tobytes(), h) != keys[r, _DIGEST_BYTES:].tobytes():
                        bad = f"row {r} fails its integrity check"
                        break
                    if not np.isfinite(row).all():
                        bad = f"row {r} is not finite"
                        break
                if bad:
                    break
                for row, idx in zip(block, targets[s:s + step]):
                    out[idx] = row
                    found[idx] = True
                release(emb)
                release(out)
            if bad:
                # nothing of a tampered shard is used: its rows are wanted again (another shard, or computed)
                for r, idx in zip(rows, targets):
                    found[idx] = False
                    wanted[keys[r, :_DIGEST_BYTES].tobytes()] = idx
                del emb
                self._reject(keys_path, emb_path, bad)
                continue
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
        only once :meth:`ShardWriter.commit` renames it; None when it would not fit the bound
        or the folder is not trusted."""
        if n <= 0 or n * width * 4 > self.max_bytes or self.untrusted is not None:
            return None
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        if not self._check_trust():  # made by someone else meanwhile
            return None
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
    """One shard being written: rows streamed to ``.tmp-ID.emb.npy``, then the keys (file
    digests and row digests), then the two renamed (embeddings first, keys last). A row that
    is not finite spoils the shard: it is never committed. :meth:`close` without a commit
    removes the temporary files."""

    def __init__(self, cache: EmbeddingCache, n: int, width: int):
        self.cache, self.n, self.width, self.count = cache, int(n), int(width), 0
        self.id = uuid.uuid4().hex
        self.tmp_emb = cache.dir / f".tmp-{self.id}.emb.npy"
        self.tmp_keys = cache.dir / f".tmp-{self.id}.keys.npy"
        self._hashes: list[bytes] = []
        self.spoiled = False
        self._f = open(self.tmp_emb, "xb")
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
        if not np.isfinite(rows).all():
            self.spoiled = True  # NaN or infinity: the caller reports it; the cache never keeps it
        self._f.write(rows.tobytes())
        self._hashes.extend(_row_hashes(rows))
        self.count += len(rows)

    def commit(self, digests: Sequence[bytes]) -> None:
        if self.count != self.n or len(digests) != self.n:
            raise ValueError(f"{self.count} rows written and {len(digests)} digests for a shard of {self.n}")
        self._f.close()
        if self.spoiled:
            self.close()
            return
        key = self.cache.key
        table = b"".join(bytes(d) + _row_digest(key, bytes(d), h) for d, h in zip(digests, self._hashes))
        keys = np.frombuffer(table, np.uint8).reshape(self.n, _KEY_BYTES)
        with open(self.tmp_keys, "xb") as f:
            np.save(f, keys, allow_pickle=False)
        d = self.cache.dir
        os.replace(self.tmp_emb, d / f"{self.id}.emb.npy")
        os.replace(self.tmp_keys, d / f"{self.id}.keys.npy")  # the shard exists from here on
        self.cache._evict()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        _remove(self.tmp_emb, self.tmp_keys)
