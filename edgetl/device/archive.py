"""Safe extraction of bundle archives: a ``.tar.gz`` from elsewhere is untrusted input.

Two passes over the (decompressed) stream. The first reads the raw 512-byte tar headers
itself, before :mod:`tarfile` sees anything: tarfile reads a GNU long name or a PAX header
into memory whole, so a 1 GiB one would be allocated before any check of ours ran. It
refuses oversized or unusual headers and sums the sizes. The second pass extracts member
by member from the stream, re-checking every member and the running total, into a hidden
folder beside the destination that is renamed into place, and removed on any refusal.
A folder left by a killed extraction is removed by the next one (see
:class:`edgetl.core.files.OwnedDir`).
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from edgetl.core.files import OwnedDir, remove, remove_stale, sha256_file
from edgetl.errors import BundleError

MAX_ARCHIVE_BYTES = 4 << 30  # zip-bomb guard: a bundle is tens of MB
MAX_ARCHIVE_MEMBERS = 10_000
# A GNU long name or a PAX header carries a path (at most 4 KiB on Linux) and a few fields.
MAX_HEADER_BYTES = 64 << 10
MAX_NAME_CHARS = 4096
# A bundle's members are three or four folders deep; extraction makes the folders with
# os.makedirs, which recurses once per level (RecursionError past ~1,000).
MAX_MEMBER_DEPTH = 64
# Unpacked bytes per packed byte. ONNX weights and IR compress 1.1-3x; a file of zeros 1000x.
# Small zero-filled files are common (fresh optimizer state), so the ratio is enforced only
# once the archive unpacks to more than RATIO_FREE_BYTES.
MAX_RATIO = 100
RATIO_FREE_BYTES = 64 << 20
EXTRACT_PREFIX = ".edgetl-extract-"
_LEGACY_TMP = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")  # extraction folders of edgetl before OwnedDir
_LEGACY_AGE_S = 3600
_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python >= 3.11.4 (PEP 706)
_BLOCK = 512
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_DATA_TYPES = tarfile.REGULAR_TYPES  # members whose data follows the header, besides unknown types


def check_member(tar_path: Path, m: tarfile.TarInfo) -> None:
    name = m.name
    parts = PurePosixPath(name).parts
    if len(name) > MAX_NAME_CHARS:
        raise BundleError(f"{tar_path}: member name of {len(name):,} characters; refusing to extract this archive")
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or "\\" in name:
        raise BundleError(f"{tar_path}: member {name!r} has an absolute or non-POSIX path; refusing to extract this archive")
    if ".." in parts:
        raise BundleError(f"{tar_path}: member {name!r} climbs out with '..'; refusing to extract this archive")
    if len(parts) > MAX_MEMBER_DEPTH:
        raise BundleError(f"{tar_path}: member {name[:60]!r}... is {len(parts):,} folders deep (a bundle's are a few); "
                          "refusing to extract this archive")
    if m.issym() or m.islnk():
        raise BundleError(f"{tar_path}: member {name!r} is a link; refusing to extract this archive")
    if m.issparse():
        raise BundleError(f"{tar_path}: member {name!r} is a sparse file; refusing to extract this archive")
    if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir()):
        raise BundleError(f"{tar_path}: member {name!r} is a device, fifo or special file; refusing to extract this archive")


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (tarfile's open errors list every method tried)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _open_stream(tar_path: Path) -> BinaryIO:
    """The decompressed tar stream: gzip or plain tar only (what ``edgetl package --archive``
    writes; tarfile's own detection would also try bz2 and xz, and report every failure)."""
    f = open(tar_path, "rb")
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        f.close()
        return gzip.open(tar_path, "rb")
    return f


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError("the archive ends in the middle of a member")
    return data


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise EOFError("the archive ends in the middle of a member")
        n -= len(chunk)


def _header_size(tar_path: Path, block: bytes, offset: int) -> int:
    field = block[124:136]
    if field[0] & 0x80:  # GNU base-256
        if field[0] == 0xFF:
            raise BundleError(f"{tar_path}: negative member size at byte {offset:,}; refusing to extract this archive")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise BundleError(f"{tar_path}: damaged tar header at byte {offset:,}; "
                          "refusing to extract this archive") from None


def _check_checksum(tar_path: Path, block: bytes, offset: int) -> None:
    text = block[148:156].split(b"\0", 1)[0].strip()
    try:
        stored = int(text or b"x", 8)
    except ValueError:
        stored = -1
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
    if stored not in (unsigned, signed):
        what = "not a tar archive" if offset == 0 else f"damaged tar header at byte {offset:,}"
        raise BundleError(f"{tar_path}: not a readable bundle archive ({what}); "
                          "re-create it with 'edgetl package --archive'")


def _check_pax(tar_path: Path, data: bytes, offset: int) -> None:
    """Refuse PAX records that change where the next member's data ends (``size``, GNU
    sparse maps): the first pass could then no longer follow tarfile through the stream."""
    pos = 0
    while (m := _PAX_RECORD.match(data, pos)) is not None:
        length, key = int(m.group(1)), m.group(2)
        if length <= 0:
            break
        if key == b"size" or key.startswith(b"GNU.sparse"):
            raise BundleError(f"{tar_path}: PAX header at byte {offset:,} sets {key.decode('ascii', 'replace')!r}; "
                              "refusing to extract this archive")
        pos += length


def prescan(tar_path: Path, max_bytes: int) -> tuple[int, int]:
    """``(members, unpacked bytes)`` from the raw headers, refusing an archive that is not a
    gzip or plain tar, has a long-name/PAX header over ``MAX_HEADER_BYTES``, a global PAX
    header, a sparse member, too many members, or unpacks to more than ``max_bytes``."""
    members = total = offset = 0
    with _open_stream(tar_path) as f:
        while True:
            block = f.read(_BLOCK)
            if not block or block.count(0) == _BLOCK:
                if offset == 0:
                    raise BundleError(f"{tar_path}: not a readable bundle archive (empty); "
                                      "re-create it with 'edgetl package --archive'")
                break
            if len(block) != _BLOCK:
                raise EOFError("the archive ends in the middle of a header")
            _check_checksum(tar_path, block, offset)
            kind, size = block[156:157], _header_size(tar_path, block, offset)
            offset += _BLOCK
            padded = -(-size // _BLOCK) * _BLOCK
            if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                if size > MAX_HEADER_BYTES:
                    raise BundleError(f"{tar_path}: a {size:,}-byte long-name or PAX header at byte {offset - _BLOCK:,} "
                                      f"(at most {MAX_HEADER_BYTES:,}); refusing to extract this archive")
                data = _read_exactly(f, padded)
                if kind in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                    _check_pax(tar_path, data[:size], offset - _BLOCK)
                offset += padded
                continue
            if kind == tarfile.XGLTYPE:
                raise BundleError(f"{tar_path}: global PAX header at byte {offset - _BLOCK:,}; "
                                  "refusing to extract this archive")
            if kind == tarfile.GNUTYPE_SPARSE:
                raise BundleError(f"{tar_path}: sparse member at byte {offset - _BLOCK:,}; "
                                  "refusing to extract this archive")
            members += 1
            if members > MAX_ARCHIVE_MEMBERS:
                raise BundleError(f"{tar_path}: holds more than {MAX_ARCHIVE_MEMBERS:,} files; refusing to extract it")
            if kind in _DATA_TYPES or kind not in tarfile.SUPPORTED_TYPES:  # what tarfile skips over
                total += size
                if total > max_bytes:
                    raise _too_big(tar_path, max_bytes)
                _skip(f, padded)
                offset += padded
    return members, total


def _too_big(tar_path: Path, limit: int) -> BundleError:
    return BundleError(f"{tar_path}: unpacks to more than {limit:,} bytes or {MAX_ARCHIVE_MEMBERS:,} files; "
                       "refusing to extract it")


def unpack_limit(tar_path: Path, max_bytes: int) -> int:
    """What ``tar_path`` may unpack to: ``max_bytes``, and ``MAX_RATIO`` times its size
    once that is over ``RATIO_FREE_BYTES``."""
    return min(max_bytes, max(RATIO_FREE_BYTES, MAX_RATIO * tar_path.stat().st_size))


def clean_stale_extractions(parent: Path) -> None:
    """Remove extraction folders that killed processes left in ``parent``."""
    remove_stale(parent, EXTRACT_PREFIX)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            if _LEGACY_TMP.match(entry.name) and entry.is_dir() and now - entry.stat().st_mtime > _LEGACY_AGE_S:
                remove(entry)
        except OSError:
            pass


def extract_archive(
    tar_path: str | os.PathLike, dest: str | os.PathLike, *, max_bytes: int = MAX_ARCHIVE_BYTES
) -> Path:
    """Extract a bundle archive into ``dest`` (which must not exist or be empty), refusing
    absolute paths, ``..``, links, device files, fifos, oversized headers, and archives that
    unpack to more than ``max_bytes`` (or to more than ``MAX_RATIO`` times their size, above
    ``RATIO_FREE_BYTES``). Extracts beside ``dest`` and renames, so ``dest`` is all or nothing."""
    tar_path, dest = Path(tar_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest}: already exists and is not empty; extract somewhere else")
    tmp: OwnedDir | None = None
    try:
        limit = unpack_limit(tar_path, max_bytes)
        prescan(tar_path, limit)
        dest.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_extractions(dest.parent)
        tmp = OwnedDir(dest.parent, EXTRACT_PREFIX)
        with _open_stream(tar_path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            members = total = 0
            for member in tar:  # stream mode: each member is written before the next header is read
                check_member(tar_path, member)
                members += 1
                total += member.size if member.isfile() else 0
                if total > limit or members > MAX_ARCHIVE_MEMBERS:
                    raise _too_big(tar_path, limit)
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, tmp.path, filter="data")
                else:  # pragma: no cover - Python without PEP 706; our own checks above still hold
                    tar.extract(member, tmp.path)
        os.replace(tmp.path, dest)
    except _FILTER_ERROR as exc:
        raise BundleError(f"{tar_path}: unsafe member ({_one_line(exc)}); refusing to extract this archive") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BundleError(f"{tar_path}: not a readable bundle archive ({_one_line(exc)}); "
                          "re-create it with 'edgetl package --archive'") from None
    except OSError as exc:
        raise BundleError(f"{tar_path}: cannot extract to {dest} ({exc.strerror or _one_line(exc)})") from None
    finally:
        if tmp is not None:
            tmp.close()  # removes what is left of it (nothing after the rename)
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


def cache_dir(tar_path: Path, cache_parent: Path) -> Path:
    """Where :func:`extract_cached` extracts ``tar_path``: named by its content's hash."""
    try:
        digest = sha256_file(tar_path)
    except OSError as exc:
        raise BundleError(f"{tar_path}: cannot read the archive ({exc.strerror or exc})") from None
    return cache_parent / f".{tar_path.name}.{digest[:16]}"


def extract_cached(tar_path: Path, cache_parent: Path, marker: str, dest: Path | None = None) -> Path:
    """Extract once per archive content, into ``cache_parent/.<name>.<hash>`` (or ``dest``);
    return the folder inside holding ``marker`` (the archive has one top folder). An
    extraction that holds no bundle is removed again."""
    if not tar_path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise BundleError(f"{tar_path}: not a bundle folder or a .tar.gz bundle archive")
    dest = dest or cache_dir(tar_path, cache_parent)
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
    remove(dest)
    raise BundleError(f"{tar_path}: the archive holds no bundle ({marker} not found)")
