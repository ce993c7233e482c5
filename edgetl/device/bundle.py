"""The bundle: what ships to a device. A folder (or its ``.tar.gz``) with a manifest,
SHA-256 hashes of every file, immutable version folders, atomic updates and rollback.

Layout and manifest keys are the contract in ``docs/INTERNALS.md`` ("Bundle directory").
All paths inside a manifest are POSIX paths relative to the bundle root (``v1/head.onnx``).
Torch-free; onnx is imported only while packaging.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping

from edgetl.device import archive as _archive
from edgetl.device.archive import extract_archive
from edgetl.core.files import fsync_dir, fsync_tree, hash_dir, remove, sha256_file, utc_now, write_json_atomic
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
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREVIOUS = "previous.json"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")
_OPTIONAL_PATHS = ("training", "memory", "adapter", "source_stats")
_REQUIRED = ("format_version", "version", "labels", "preprocess", "target", "models", "files")


# --- manifest checks --------------------------------------------------------------------------

def _check_relpath(root: Path, rel: Any) -> Path:
    """``root / rel`` if ``rel`` stays inside ``root`` (no absolute path, ``..``, or symlink)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise BundleError(f"{root}: manifest path {rel!r} is not a relative POSIX path; re-package the bundle")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")) or ":" in pure.parts[0]:
        raise BundleError(f"{root}: manifest path {rel!r} points outside the bundle; refusing it (re-package the bundle)")
    here = root
    for part in pure.parts:
        here = here / part
        if here.is_symlink():
            raise BundleError(f"{root}: {rel!r} goes through a symbolic link; refusing it (re-package the bundle)")
    return root / rel


def _manifest_paths(m: Mapping[str, Any]) -> list[str]:
    """Every path the version uses: models, the named optional files, and the open map
    ``artifacts`` (``{name: relpath}``; a tokenizer, say), so a new kind of file stays hashed,
    carried across retrain/adapt and archived without this module knowing it."""
    models = m.get("models") or {}
    artifacts = m.get("artifacts") or {}
    return [*models.values(), *(m[k] for k in _OPTIONAL_PATHS if m.get(k)), *artifacts.values()]


def _covered(rel: str, files: Mapping[str, Any]) -> bool:
    return rel in files or any(f.startswith(rel + "/") for f in files)


def check_manifest(root: Path, m: Any, source: str) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise BundleError(f"{source}: not a bundle manifest (expected a JSON object); re-package the bundle")
    fv = m.get("format_version")
    if fv != FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format_version {fv!r} is not supported (this edgetl reads format_version "
            f"{FORMAT_VERSION}); re-package the bundle with this edgetl, or use the edgetl that made it"
        )
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise BundleError(f"{source}: manifest is missing {', '.join(missing)}; re-package the bundle")
    files, models = m["files"], m["models"]
    if not isinstance(files, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int) for e in files.values()
    ):
        raise BundleError(f"{source}: 'files' must map paths to {{sha256, bytes}}; re-package the bundle")
    if not isinstance(models, dict) or not {"backbone", "head"} <= set(models):
        raise BundleError(f"{source}: 'models' must name a backbone and a head; re-package the bundle")
    artifacts = m.get("artifacts", {})
    if artifacts is not None and not (isinstance(artifacts, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in artifacts.items())):
        raise BundleError(f"{source}: 'artifacts' must map names to paths; re-package the bundle")
    for rel in files:
        _check_relpath(root, rel)
    for rel in _manifest_paths(m):
        _check_relpath(root, rel)
        if not _covered(rel, files):
            raise BundleError(f"{source}: {rel!r} is used but not listed in 'files'; re-package the bundle")
    return m


def _read_manifest(root: Path, name: str = MANIFEST) -> dict[str, Any]:
    path = root / name
    try:
        text = path.read_text()
    except FileNotFoundError:
        if name == MANIFEST:
            raise BundleError(
                f"{root}: not a bundle (no {MANIFEST}); make one with 'edgetl package RUN --target NAME --out {root}'"
            ) from None
        raise
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); the bundle is corrupted, re-package it") from None
    return check_manifest(root, m, str(path))


def _verify_files(root: Path, m: Mapping[str, Any]) -> None:
    for rel, entry in m["files"].items():
        path = _check_relpath(root, rel)
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise BundleError(f"{root}: {rel} is missing; the bundle was modified or corrupted; re-package it or pass --no-verify") from None
        if not path.is_file():
            raise BundleError(f"{root}: {rel} is not a regular file; the bundle was modified or corrupted; re-package it")
        if st.st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(
                f"{root}: {rel} does not match its SHA-256 in the manifest; the bundle was modified or corrupted; "
                "re-package it or pass --no-verify"
            )


def verify_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Check a bundle folder without loading any model: a known ``format_version``, every
    path inside the bundle, every listed file present with its size and SHA-256. Returns
    the manifest; raises :class:`BundleError` naming the first problem."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    m = _read_manifest(root)
    _verify_files(root, m)
    return m


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
    def spec(self) -> Any:
        """The modality's preprocessing spec (an image bundle's :class:`PreprocessSpec`)."""
        return get_modality(self.modality).spec_from_dict(self.manifest["preprocess"])

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
        return _check_relpath(self.root, relpath)

    def model_path(self, which: str) -> Path:
        """``"backbone"`` (an OpenVINO backbone is its ``.xml``) or ``"head"``."""
        models = self.manifest["models"]
        if which not in models:
            raise BundleError(f"{self.root}: no model {which!r} in this bundle (it has {', '.join(models)})")
        return self.path(models[which])

    def optional_path(self, key: str) -> Path | None:
        """The ``training``, ``memory``, ``adapter`` or ``source_stats`` path, or an entry of
        ``artifacts`` (e.g. ``tokenizer``); None when the bundle has none."""
        rel = self.manifest.get(key) if key in _OPTIONAL_PATHS else (self.manifest.get("artifacts") or {}).get(key)
        return self.path(rel) if rel else None


def open_bundle(
    path: str | os.PathLike, *, verify: bool = True, extract_to: str | os.PathLike | None = None
) -> Bundle:
    """Open a bundle folder or a ``.tar.gz`` of one. An archive is extracted safely into a
    hidden folder beside it (or under ``extract_to``), named by its hash and reused. With
    ``verify`` (the default) every file's size and SHA-256 is checked."""
    p = Path(path)
    if p.is_file():
        p = _archive.extract_cached(p, Path(extract_to) if extract_to else p.parent, MANIFEST)
    elif not p.exists():
        raise BundleError(f"{p}: no such bundle; make one with 'edgetl package RUN --target NAME --out {p}'")
    m = verify_bundle(p) if verify else _read_manifest(p)
    return Bundle(p, m)


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
    if not (root / PREVIOUS).is_file():
        return None
    return _read_manifest(root, PREVIOUS)


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
    for rel in _manifest_paths(new):
        if rel.split("/", 1)[0] == prefix:
            if not _covered(rel, files):
                raise BundleError(f"{root}: the update refers to {rel}, but did not write it")
        elif _covered(rel, live["files"]):
            files.update(_carried_files(rel, live["files"]))
        else:
            raise BundleError(f"{root}: the update refers to {rel}, which is in neither the new nor the live version")
    now = utc_now()
    new.update(format_version=FORMAT_VERSION, version=n, created=now, files=files)
    new["history"] = [*live.get("history", []), {"version": n, "event": event, "time": now, **details}]
    return check_manifest(root, new, "updated manifest")


def update_bundle(
    path: str | os.PathLike,
    event: str,
    write: Callable[[Path, dict[str, Any]], dict[str, Any]],
    *,
    details: Mapping[str, Any] | None = None,
    lock_timeout: float = 60.0,
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
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (an archive must be extracted before it can be updated)")
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
            new = _finish_manifest(root, staging, n, live, write(staging, draft), event, dict(details or {}))
            fsync_tree(staging)
            os.rename(staging, final)
            fsync_dir(root)
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
        return int(json.loads((root / MANIFEST).read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
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
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder")
    with _locked(root, lock_timeout):
        live = _read_manifest(root)  # not hash-checked: rolling back from a damaged version must work
        previous = _read_previous(root)
        if previous is None or int(previous["version"]) == int(live["version"]):
            raise BundleError(f"{root}: nothing to roll back to (no previous version; version {live['version']} is the only one)")
        try:
            _verify_files(root, previous)
        except BundleError as exc:
            raise BundleError(f"cannot roll back to version {previous['version']}: {exc}") from None
        restored = copy.deepcopy(previous)
        restored["history"] = [
            *live.get("history", []),
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
    """Write the live version of a bundle (its manifest and the files it lists, in a
    folder named like the bundle) to a ``.tar.gz``, atomically."""
    root = Path(bundle_dir)
    m = verify_bundle(root)
    return _archive.write_tar(root, [MANIFEST, *sorted(m["files"])], Path(tar_path))
