"""Small file-system helpers for the bundle store: hashes, fsync, atomic JSON writes, and
scratch folders that the next run can tell apart from a live process's (:class:`OwnedDir`)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgetl.errors import BundleError

try:  # POSIX only; edge devices run Linux. Without it, stale folders are removed by age only.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"
# Without flock (not POSIX), a scratch folder counts as stale only after this long.
STALE_WITHOUT_LOCK_S = 24 * 3600


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (and ``root``), so a rename that
    publishes it never exposes data still in the page cache only."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def hash_dir(root: Path, prefix: str) -> dict[str, dict[str, Any]]:
    """``{prefix/relpath: {"sha256", "bytes"}}`` for every file under ``root``."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        if path.is_symlink():
            raise BundleError(f"{path}: symbolic links are not allowed in a bundle; write a real file")
        rel = path.relative_to(root).as_posix()
        try:
            out[f"{prefix}/{rel}"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        except OSError as exc:
            raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return out


def remove(path: Path) -> None:
    """Best-effort removal (garbage and cleanup after a failure: the error being handled matters more)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class OwnedDir:
    """A new folder ``parent/<prefix><random>`` for scratch work, held by its process with
    ``flock`` on ``<folder>.lock`` beside it, and removed (with the lock file) by
    :meth:`close`. The kernel drops the lock when the process dies, so :func:`remove_stale`
    removes exactly the folders that killed processes left, never a live one's. Raises
    ``OSError`` when the folder cannot be made."""

    def __init__(self, parent: Path, prefix: str):
        self._fd: int | None = None
        for _ in range(16):
            name = f"{prefix}{secrets.token_hex(4)}"
            lock = parent / f"{name}{LOCK_SUFFIX}"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # remove_stale may have taken and unlinked the new lock file before our flock.
                if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                    raise FileNotFoundError(str(lock))
                (parent / name).mkdir()
            except (BlockingIOError, FileNotFoundError, FileExistsError):
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                lock.unlink(missing_ok=True)
                raise
            self.path, self._lock, self._fd = parent / name, lock, fd
            return
        raise FileExistsError(f"{parent}: cannot make a scratch folder {prefix}*")

    def close(self) -> None:
        if self._fd is None:
            return
        remove(self.path)
        self._lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.close()


def _take_if_stale(lock: Path, folder: Path) -> int | None:
    """An fd holding ``lock`` if its owner is gone (None: alive, or cannot tell)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    if fcntl is None:
        try:
            old = time.time() - folder.stat().st_mtime > STALE_WITHOUT_LOCK_S
        except OSError:
            old = True
        if old:
            return fd
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove the :class:`OwnedDir` folders ``parent/<prefix>*`` whose process is gone (and
    stray lock files); returns what was removed. Best effort: errors are ignored."""
    try:
        entries = sorted(p for p in parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []
    removed = []
    for entry in entries:
        is_lock = entry.name.endswith(LOCK_SUFFIX)
        folder = entry.with_name(entry.name[: -len(LOCK_SUFFIX)]) if is_lock else entry
        lock = entry if is_lock else entry.with_name(entry.name + LOCK_SUFFIX)
        if is_lock and folder.exists():
            continue  # handled with its folder
        if not is_lock and not lock.exists():
            # Owners create the lock first and remove it last: a folder without one is an orphan.
            remove(folder)
            removed.append(folder)
            continue
        fd = _take_if_stale(lock, folder)
        if fd is None:
            continue
        try:
            if not is_lock:
                remove(folder)
                removed.append(folder)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return removed
