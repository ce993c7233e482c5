"""Safe extraction of bundle archives: a ``.tar.gz`` from elsewhere is untrusted input."""

from __future__ import annotations

import os
import secrets
import tarfile
from pathlib import Path, PurePosixPath

from edgetl.core.files import remove, sha256_file
from edgetl.errors import BundleError

MAX_ARCHIVE_BYTES = 4 << 30  # zip-bomb guard: a bundle is tens of MB
MAX_ARCHIVE_MEMBERS = 10_000
_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python >= 3.11.4 (PEP 706)


def check_member(tar_path: Path, m: tarfile.TarInfo) -> None:
    name = m.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or "\\" in name:
        raise BundleError(f"{tar_path}: member {name!r} has an absolute or non-POSIX path; refusing to extract this archive")
    if ".." in parts:
        raise BundleError(f"{tar_path}: member {name!r} climbs out with '..'; refusing to extract this archive")
    if m.issym() or m.islnk():
        raise BundleError(f"{tar_path}: member {name!r} is a link; refusing to extract this archive")
    if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir()):
        raise BundleError(f"{tar_path}: member {name!r} is a device, fifo or special file; refusing to extract this archive")


def extract_archive(
    tar_path: str | os.PathLike, dest: str | os.PathLike, *, max_bytes: int = MAX_ARCHIVE_BYTES
) -> Path:
    """Extract a bundle archive into ``dest`` (which must not exist or be empty), refusing
    absolute paths, ``..``, links, device files, fifos and archives that unpack to more
    than ``max_bytes``. Extracts beside ``dest`` and renames, so ``dest`` is all or nothing."""
    tar_path, dest = Path(tar_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest}: already exists and is not empty; extract somewhere else")
    tmp = dest.with_name(f".{dest.name}.tmp-{secrets.token_hex(4)}")
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members, total = [], 0
            for member in tar:  # streams headers: a bomb is stopped before it is written
                check_member(tar_path, member)
                total += member.size
                members.append(member)
                if total > max_bytes or len(members) > MAX_ARCHIVE_MEMBERS:
                    raise BundleError(
                        f"{tar_path}: unpacks to more than {max_bytes:,} bytes or {MAX_ARCHIVE_MEMBERS:,} files; "
                        "refusing to extract it"
                    )
            tmp.mkdir(parents=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706; our own checks above still hold
                tar.extractall(tmp, members=members)
        os.replace(tmp, dest)
    except _FILTER_ERROR as exc:
        raise BundleError(f"{tar_path}: unsafe member ({exc}); refusing to extract this archive") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{tar_path}: not a readable bundle archive ({exc}); re-create it with 'edgetl package --archive'") from None
    except OSError as exc:
        raise BundleError(f"{tar_path}: cannot extract to {dest} ({exc.strerror or exc})") from None
    finally:
        remove(tmp)
    return dest


def write_tar(root: Path, relpaths: list[str], tar_path: Path) -> Path:
    """``root``'s files under one top folder named like ``root``, owner and modes
    normalized, written beside ``tar_path`` and renamed into place."""
    top = root.resolve().name

    def normalize(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mode = 0o755 if ti.isdir() else 0o644
        return ti

    tmp = tar_path.with_name(f".{tar_path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for rel in relpaths:
                tar.add(root / rel, arcname=f"{top}/{rel}", recursive=False, filter=normalize)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, tar_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"{tar_path}: cannot write the archive ({exc.strerror or exc})") from None
    return tar_path


def extract_cached(tar_path: Path, cache_parent: Path, marker: str) -> Path:
    """Extract once per archive content, into ``cache_parent/.<name>.<hash>``; return the
    folder inside holding ``marker`` (the archive has one top folder)."""
    if not tar_path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise BundleError(f"{tar_path}: not a bundle folder or a .tar.gz bundle archive")
    dest = cache_parent / f".{tar_path.name}.{sha256_file(tar_path)[:16]}"
    if not dest.is_dir():
        try:
            extract_archive(tar_path, dest)
        except BundleError:
            if not dest.is_dir():  # another process may have extracted it at the same time
                raise
    if (dest / marker).is_file():
        return dest
    tops = [p for p in dest.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(tops) == 1 and (tops[0] / marker).is_file():
        return tops[0]
    raise BundleError(f"{tar_path}: the archive holds no bundle ({marker} not found)")
