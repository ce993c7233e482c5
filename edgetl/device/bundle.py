"""The bundle: what ships to a device. A folder (or its ``.tar.gz``) with a manifest,
SHA-256 hashes of every file, immutable version folders, atomic updates and rollback.

Layout and manifest keys are the contract in ``docs/INTERNALS.md`` ("Bundle directory").
All paths inside a manifest are POSIX paths relative to the bundle root (``v1/head.onnx``).
Torch-free; onnx is imported only while packaging.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from edgetl.core import ui as _ui
from edgetl.device import archive as _archive
from edgetl.device.archive import extract_archive
from edgetl.device.manifest import (FORMAT_VERSION, MANIFEST, MAX_MANIFEST_BYTES, OPTIONAL_PATHS, check_head,
                                    check_manifest, check_relpath, covered, manifest_paths, path_kind, quick_check,
                                    read_json, read_manifest, verify_bundle, verify_files)
from edgetl.core.files import (OwnedDir, fsync_dir, fsync_tree, hash_dir, remove, remove_stale, utc_now,
                               write_json_atomic)
from edgetl.core.reading import file_kind
from edgetl.core.report import Report
from edgetl.errors import BundleError
from edgetl.modalities import DEFAULT_MODALITY, get_modality
from edgetl.modalities.image import PreprocessSpec
from edgetl.core.targets import Precision, Runtime, Target

try:  # POSIX only; edge devices run Linux. Without it, updates are not locked against each other.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "open_bundle",
    "verify_bundle",
    "update_bundle",
    "rollback",
    "RollbackReport",
    "write_archive",
    "extract_archive",
    "work_dir",
    "sign_bundle",
    "check_trust",
]

PREVIOUS = "previous.json"
SIGNATURES = "manifest.sig"  # Ed25519 signatures of manifests (see sign_bundle); not hashed, it authenticates
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
WORK_PREFIX = ".work-"  # scratch folders of retrain/adapt (work_dir); a killed one's is garbage
MAX_SIGNATURES_BYTES = 1 << 20
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")
_OPTIONAL_PATHS = OPTIONAL_PATHS  # the name tests/test_adapt.py reads (now owned by device/manifest.py)


# --- the bundle object ------------------------------------------------------------------------

@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its root folder and the live manifest (read once; the files it
    names are immutable, so no lock is needed to read them)."""

    root: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def modality(self) -> str:
        """The input kind (``image`` for bundles made before text existed)."""
        return str(self.manifest.get("modality") or DEFAULT_MODALITY)

    @property
    def task(self) -> str:
        """What a prediction is (``classification`` for bundles made before tasks)."""
        from edgetl.tasks import DEFAULT_TASK

        return str(self.manifest.get("task") or DEFAULT_TASK)

    @property
    def spec(self) -> Any:
        """The modality's preprocessing spec (an image bundle's :class:`PreprocessSpec`)."""
        modality = get_modality(self.modality)
        return modality.bind(modality.spec_from_dict(self.manifest["preprocess"]), self.optional_path)

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def target(self) -> Target:
        return Target.from_dict(self.manifest["target"], source=f"{self.root / MANIFEST} target")

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.manifest.get("runtime") or self.manifest["target"]["runtime"])

    @property
    def precision(self) -> Precision:
        return Precision(self.manifest.get("precision") or self.manifest["target"]["precision"])

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("history") or [])

    def path(self, relpath: str) -> Path:
        """The absolute path of a manifest path; refuses one that leaves the bundle."""
        return check_relpath(self.root, relpath)

    def model_path(self, which: str) -> Path:
        """``"backbone"`` (an OpenVINO backbone is its ``.xml``) or ``"head"``."""
        models = self.manifest["models"]
        if which not in models:
            raise BundleError(f"{self.root}: no model {which!r} in this bundle (it has {', '.join(models)})")
        return self.path(models[which])

    def optional_path(self, key: str) -> Path | None:
        """The ``training``, ``memory``, ``adapter`` or ``source_stats`` path, or an entry of
        ``artifacts`` (e.g. ``tokenizer``); None when the bundle has none."""
        rel = self.manifest.get(key) if key in OPTIONAL_PATHS else (self.manifest.get("artifacts") or {}).get(key)
        return self.path(rel) if rel else None


def open_bundle(
    path: str | os.PathLike,
    *,
    verify: bool = True,
    extract_to: str | os.PathLike | None = None,
    trust: Sequence[str | os.PathLike] | None = None,
    warn: bool = True,
) -> Bundle:
    """Open a bundle folder or a ``.tar.gz`` of one. An archive is extracted safely into a
    hidden folder beside it (or under ``extract_to``), named by its hash and reused; an
    extraction that turns out not to be a good bundle is removed again. With ``verify`` (the
    default) every file's size and SHA-256 is checked; without, sizes and small files only,
    with a warning naming the files that fail. With ``trust`` (public key files), the
    manifest must carry a valid signature by one of them (see :func:`check_trust`), and
    every file is hashed whatever ``verify`` says: the signature vouches for the manifest,
    and only the manifest's hashes vouch for the files."""
    verify = verify or bool(trust)
    p = Path(path)
    extracted = None
    kind = path_kind(p)
    if kind == "file":
        extracted = _archive.cache_dir(p, Path(extract_to) if extract_to else p.parent)
        p = _archive.extract_cached(p, extracted.parent, MANIFEST, dest=extracted)
    elif kind is None:
        raise BundleError(f"{p}: no such bundle; make one with 'edgetl package RUN --target NAME --out {p}'")
    elif kind == "other":  # a device or FIFO: never opened (/dev/zero never ends, a FIFO blocks)
        raise BundleError(f"{p}: no such bundle (it is {file_kind(p.stat().st_mode)}, not a bundle folder or archive)")
    try:
        if verify:
            m = verify_bundle(p)
        else:
            m = read_manifest(p)
            failed = quick_check(p, m)
            if failed and warn:
                more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
                _ui.warn(f"{p}: --no-verify, but {len(failed)} file(s) differ from the manifest: "
                         f"{', '.join(failed[:3])}{more}; the bundle was modified or corrupted")
            if m["models"]["head"] not in failed:  # a damaged head was named above; the user opted out
                check_head(p, m, str(p / MANIFEST))
        bundle = Bundle(p, m)
        if trust:
            check_trust(bundle, trust)
    except BundleError:
        if extracted is not None:
            remove(extracted)  # a refused extraction is useless; the next open extracts again
        raise
    return bundle


# --- signatures ---------------------------------------------------------------------------------
# A signature covers the manifest without its ``history``: the device appends to the history
# (a rollback does) without the signer's key, and nothing the device runs depends on it. So a
# rollback to a signed version is signed again, by the signature it had.

def signed_part(m: Mapping[str, Any]) -> dict[str, Any]:
    """What a manifest's signature covers: every field but ``history``."""
    return {k: v for k, v in m.items() if k != "history"}


def _read_signatures(root: Path) -> list[dict[str, Any]]:
    """The entries of ``manifest.sig`` (none when the bundle is unsigned)."""
    path = root / SIGNATURES
    if not path.exists():
        return []
    doc = read_json(path, MAX_SIGNATURES_BYTES, "signature file")
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise BundleError(f"{path}: not an edgetl signature file (format 1); re-sign the bundle")
    entries = doc.get("signatures")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BundleError(f"{path}: 'signatures' must be a list of objects; re-sign the bundle")
    return entries


def _write_signatures(root: Path, entries: list[dict[str, Any]], keep: Sequence[Mapping[str, Any] | None]) -> None:
    """Keep the entries of the manifests in ``keep`` (live, previous, new), written before
    the manifests are replaced: a kill in between leaves a file that covers either."""
    from edgetl.core.signing import document_digest

    wanted = {document_digest(signed_part(m)) for m in keep if m}
    kept = [e for e in entries if e.get("document_sha256") in wanted]
    unique = {(e.get("document_sha256"), e.get("key_id")): e for e in kept}
    write_json_atomic(root / SIGNATURES, {"format": 1, "signatures": list(unique.values())})


def check_trust(bundle: Bundle, trust: Sequence[str | os.PathLike]) -> str:
    """Refuse ``bundle`` unless ``manifest.sig`` holds a valid Ed25519 signature of its
    manifest by one of the public keys in ``trust``; returns that key's id."""
    from edgetl.core.signing import verify

    return verify(signed_part(bundle.manifest), _read_signatures(bundle.root), trust, str(bundle.root))


def sign_bundle(path: str | os.PathLike, key: str | os.PathLike, *, lock_timeout: float = 60.0) -> str:
    """Sign the live manifest of a bundle folder with the private key file ``key`` (from
    ``edgetl keygen``): the signature goes to ``manifest.sig`` beside it. Returns the key id."""
    from edgetl.core.signing import load_signing_key, sign

    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (sign the folder before archiving it)")
    private, key_id = load_signing_key(key)
    with _locked(root, lock_timeout):
        live = read_manifest(root)
        previous = _read_previous(root)
        try:
            entries = [*_read_signatures(root), sign(signed_part(live), private, key_id)]
            _write_signatures(root, entries, [live, previous])
        except OSError as exc:
            raise BundleError(f"{root}: cannot write {SIGNATURES} ({exc.strerror or exc})") from None
    return key_id


# --- scratch space for updates ----------------------------------------------------------------

@contextmanager
def work_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch folder ``BUNDLE/.work-<random>`` for an update being prepared (retrain's
    trained heads, say), removed on exit. One that a killed process left is removed by the
    next update's garbage collection or the next ``work_dir``; a live one never is (its
    owner holds a lock on it). Inside the bundle, so it is on the same file system and
    counted against the bundle's space, never left in /tmp."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (an archive must be extracted before it can be updated)")
    remove_stale(root, WORK_PREFIX)
    try:
        owned = OwnedDir(root, WORK_PREFIX)
    except OSError as exc:
        raise BundleError(f"{root}: cannot make a work folder in the bundle ({exc.strerror or exc})") from None
    with owned as folder:
        yield folder


# --- atomic updates and rollback --------------------------------------------------------------

@contextmanager
def _locked(root: Path, timeout: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``BUNDLE/.lock``: two updates never interleave. The kernel
    drops it if the holder dies, so a killed update never leaves the bundle locked."""
    try:
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BundleError(f"{root}: cannot lock the bundle for an update ({exc.strerror or exc})") from None
    try:
        if fcntl is not None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BundleError(
                            f"{root}: another process is updating this bundle; try again when it has finished"
                        ) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _read_previous(root: Path) -> dict[str, Any] | None:
    if not os.path.lexists(root / PREVIOUS):
        return None  # (a FIFO or device in its place is for read_json to refuse, not to pass over)
    return read_manifest(root, PREVIOUS)


def _collect_garbage(root: Path, live: Mapping[str, Any], previous: Mapping[str, Any] | None) -> None:
    """Remove version folders neither manifest uses, stale staging folders and temp files:
    leftovers of updates that were killed or failed."""
    keep = {rel.split("/", 1)[0] for m in (live, previous) if m for rel in m["files"]}
    for entry in root.iterdir():
        name = entry.name
        garbage = (
            (_VERSION_DIR.match(name) and name not in keep)
            or name.startswith(STAGING_PREFIX)
            or name.startswith((f".{MANIFEST}.tmp-", f".{PREVIOUS}.tmp-"))
        )
        if garbage:
            remove(entry)
    remove_stale(root, WORK_PREFIX)  # scratch folders of killed retrains (live ones hold their lock)


def _next_version(root: Path, live: Mapping[str, Any], previous: Mapping[str, Any] | None) -> int:
    numbers = [int(live["version"]), int(previous["version"]) if previous else 0]
    numbers += [int(m.group(1)) for e in root.iterdir() if (m := _VERSION_DIR.match(e.name))]
    return max(numbers) + 1


def _carried_files(rel: str, files: Mapping[str, Any]) -> dict[str, Any]:
    """Entries of the live version's ``files`` that an unchanged path brings along."""
    out = {f: e for f, e in files.items() if f == rel or f.startswith(rel + "/")}
    if rel.endswith(".xml") and rel[:-4] + ".bin" in files:  # OpenVINO IR: the weights file
        out[rel[:-4] + ".bin"] = files[rel[:-4] + ".bin"]
    return out


def _finish_manifest(
    root: Path, staging: Path, n: int, live: Mapping[str, Any], new: Any, event: str, details: Mapping[str, Any]
) -> dict[str, Any]:
    if not isinstance(new, dict):
        raise TypeError(f"update_bundle's write() must return the new manifest dict, got {type(new).__name__}")
    prefix = f"v{n}"
    files = hash_dir(staging, prefix)
    for rel in manifest_paths(new):
        if rel.split("/", 1)[0] == prefix:
            if not covered(rel, files):
                raise BundleError(f"{root}: the update refers to {rel}, but did not write it")
        elif covered(rel, live["files"]):
            files.update(_carried_files(rel, live["files"]))
        else:
            raise BundleError(f"{root}: the update refers to {rel}, which is in neither the new nor the live version")
    now = utc_now()
    new.update(format_version=FORMAT_VERSION, version=n, created=now, files=files)
    new["history"] = [*(live.get("history") or []), {"version": n, "event": event, "time": now, **details}]
    return check_manifest(root, new, "updated manifest")


def update_bundle(
    path: str | os.PathLike,
    event: str,
    write: Callable[[Path, dict[str, Any]], dict[str, Any]],
    *,
    details: Mapping[str, Any] | None = None,
    lock_timeout: float = 60.0,
    sign_key: str | os.PathLike | None = None,
) -> Bundle:
    """Make a new version of a bundle, atomically.

    ``write(staging, manifest)`` gets an empty folder that becomes ``BUNDLE/vN/`` and a
    copy of the live manifest with ``manifest["version"] == N``; it writes the new files
    and returns the new manifest, naming new files ``f"vN/{name}"`` and unchanged ones by
    their current paths (which are then shared, not copied). ``files``, ``version``,
    ``created`` and ``history`` (``event`` plus ``details``) are filled in here.

    A kill at any moment leaves the old or the new version live, both complete. An
    ``OSError`` (disk full, permissions) raises :class:`BundleError`; any failure leaves
    the old version live. The old manifest becomes ``previous.json`` (see :func:`rollback`).

    The history entry records ``"device_made": true`` and ``"signed_by"``: the id of
    ``sign_key`` (a private key file; the new manifest is then signed in ``manifest.sig``),
    or null (the new version is unsigned; signatures of the old versions are kept, so a
    rollback to a signed version is signed again).
    """
    root = Path(path)
    if path_kind(root) != "dir":
        raise BundleError(f"{root}: not a bundle folder (an archive must be extracted before it can be updated)")
    signer = None
    if sign_key is not None:
        from edgetl.core.signing import load_signing_key, sign

        signer = load_signing_key(sign_key)  # a bad key fails before anything is done
    details = {**(details or {}), "device_made": True, "signed_by": signer[1] if signer else None}
    with _locked(root, lock_timeout):
        live = verify_bundle(root)
        previous = _read_previous(root)
        try:
            _collect_garbage(root, live, previous)
            n = _next_version(root, live, previous)
            staging, final = root / f"{STAGING_PREFIX}{secrets.token_hex(4)}", root / f"v{n}"
            staging.mkdir()
        except OSError as exc:
            raise BundleError(f"{root}: cannot update the bundle ({exc.strerror or exc}); it is unchanged") from None
        committed = False
        try:
            draft = copy.deepcopy(live)
            draft["version"] = n
            new = _finish_manifest(root, staging, n, live, write(staging, draft), event, details)
            fsync_tree(staging)
            os.rename(staging, final)
            fsync_dir(root)
            check_head(root, new, "updated manifest")
            signatures = _read_signatures(root)
            if signer is not None or signatures:
                entries = [*signatures, sign(signed_part(new), *signer)] if signer is not None else signatures
                _write_signatures(root, entries, [live, previous, new])
            # previous.json first: a kill between the two replaces leaves the old version live
            # with itself as previous, never a previous.json naming a folder GC may remove.
            write_json_atomic(root / PREVIOUS, live)
            write_json_atomic(root / MANIFEST, new)
            committed = True
        except OSError as exc:
            # The replace may have happened before a later fsync failed: then the update is live.
            committed = _live_version(root) == n
            if not committed:
                raise BundleError(
                    f"{root}: update '{event}' failed ({exc.strerror or exc}); version {live['version']} is still live"
                ) from None
        finally:
            remove(staging)
            if not committed and _live_version(root) != n:
                remove(final)
    return Bundle(root, new)


def _live_version(root: Path) -> int | None:
    try:
        return int(read_json(root / MANIFEST, MAX_MANIFEST_BYTES, "bundle manifest")["version"])
    except (BundleError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class RollbackReport(Report):
    """What :func:`rollback` did: the version now live and the one rolled back from."""

    bundle: str
    version: int
    from_version: int
    history: list[dict[str, Any]]


def rollback(path: str | os.PathLike, *, lock_timeout: float = 60.0) -> RollbackReport:
    """Make the previous version live again. The version rolled back from becomes the
    previous one, so a second rollback returns to it. Raises :class:`BundleError` when
    there is nothing to roll back to."""
    root = Path(path)
    if path_kind(root) != "dir":
        raise BundleError(f"{root}: not a bundle folder")
    with _locked(root, lock_timeout):
        live = read_manifest(root)  # not hash-checked: rolling back from a damaged version must work
        previous = _read_previous(root)
        if previous is None or int(previous["version"]) == int(live["version"]):
            raise BundleError(f"{root}: nothing to roll back to (no previous version; version {live['version']} is the only one)")
        try:
            verify_files(root, previous)
            check_head(root, previous, str(root / PREVIOUS))
        except BundleError as exc:
            raise BundleError(f"cannot roll back to version {previous['version']}: {exc}") from None
        restored = copy.deepcopy(previous)
        restored["history"] = [
            *(live.get("history") or []),
            {"version": previous["version"], "event": "rollback", "time": utc_now(), "from_version": live["version"]},
        ]
        try:
            # manifest first: a kill in between leaves the rollback done, with the restored
            # version as its own previous (rolling forward again is then not possible).
            write_json_atomic(root / MANIFEST, restored)
            write_json_atomic(root / PREVIOUS, live)
        except OSError as exc:
            raise BundleError(f"{root}: rollback failed ({exc.strerror or exc})") from None
    return RollbackReport(str(root), int(restored["version"]), int(live["version"]), list(restored["history"]))


# --- archives ---------------------------------------------------------------------------------

def write_archive(bundle_dir: str | os.PathLike, tar_path: str | os.PathLike) -> Path:
    """Write the live version of a bundle (its manifest, its signatures if any, and the files
    it lists, in a folder named like the bundle) to a ``.tar.gz``, atomically."""
    root = Path(bundle_dir)
    m = verify_bundle(root)
    signed = [SIGNATURES] if (root / SIGNATURES).is_file() else []
    return _archive.write_tar(root, [MANIFEST, *signed, *sorted(m["files"])], Path(tar_path))
