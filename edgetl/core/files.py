"""Small file-system helpers for the bundle store: hashes, fsync, atomic JSON writes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgetl.errors import BundleError


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
        out[f"{prefix}/{rel}"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
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
