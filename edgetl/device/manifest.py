"""Reading and checking a manifest: its schema, its paths, its files, and its agreement
with the hashed head model. Part of :mod:`edgetl.device.bundle`, the one owner of
manifest.json (which re-exports :func:`check_manifest` and :func:`verify_bundle`).

A manifest comes from elsewhere (an archive, a copied folder): every field the device reads
is checked here, once, and a bad one is named in one line. The file hashes protect the
model files, not the manifest's own fields; but head.onnx records the labels and the
preprocessing in its (hashed) ONNX metadata, so :func:`check_head_agrees` holds the
manifest to them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from edgetl.core.files import sha256_file
from edgetl.core.reading import parse_json, read_regular
from edgetl.core.formats import (META_ARTIFACTS, META_LABELS, META_MODALITY, META_NUM_FEATURES, META_PREPROCESS,
                                 META_TASK)
from edgetl.core.targets import Precision, Runtime, Target
from edgetl.errors import BundleError, EdgeTLError
from edgetl.modalities import DEFAULT_MODALITY, get_modality

__all__ = ["FORMAT_VERSION", "MANIFEST", "check_manifest", "check_fields", "check_head_agrees", "check_head",
           "check_relpath", "path_kind", "manifest_paths", "covered", "read_json", "read_manifest", "verify_files",
           "quick_check", "verify_bundle"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # 10,000 files take ~1.5 MB
# --no-verify still checks every size, and hashes the files up to this size (heads,
# adapters, replay memories: what carries the labels' meaning), which costs milliseconds.
QUICK_HASH_BYTES = 1 << 20
OPTIONAL_PATHS = ("training", "memory", "adapter", "source_stats")

MAX_VERSION = 999_999_999  # version folders are v1 .. v999999999
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 1024
MAX_FILE_BYTES = 1 << 40
MAX_HISTORY = 100_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Bad(Exception):
    """A field's problem, without the field's name (added by the caller)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(lo: int, hi: int) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise _Bad(f"must be an integer from {lo} to {hi:,}, got {_show(v)}")
    return check


def _str(max_chars: int = 4096) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, str) or len(v) > max_chars:
            raise _Bad(f"must be a string of at most {max_chars:,} characters, got {_show(v)}")
    return check


def _optional(check: Callable[[Any], None]) -> Callable[[Any], None]:
    def opt(v: Any) -> None:
        if v is not None:
            check(v)
    return opt


def _dict(v: Any) -> None:
    if not isinstance(v, dict):
        raise _Bad(f"must be a JSON object, got {_show(v)}")


def _choice(enum: Any) -> Callable[[Any], None]:
    values = [e.value for e in enum]

    def check(v: Any) -> None:
        if v not in values:
            raise _Bad(f"must be one of {', '.join(values)}, got {_show(v)}")
    return check


def _labels(v: Any) -> None:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_LABELS:
        raise _Bad(f"must be a list of 1 to {MAX_LABELS:,} label strings, got {_show(v)}")
    for i, label in enumerate(v):
        if not isinstance(label, str) or not 1 <= len(label) <= MAX_LABEL_CHARS:
            raise _Bad(f"[{i}] must be a non-empty string of at most {MAX_LABEL_CHARS} characters, got {_show(label)}")
    if len(set(v)) != len(v):
        raise _Bad("holds the same label twice")


def _str_map(v: Any) -> None:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(p, str) for k, p in v.items()):
        raise _Bad(f"must map names to paths, got {_show(v)}")


def _models(v: Any) -> None:
    _str_map(v)
    if not {"backbone", "head"} <= set(v):
        raise _Bad("must name a backbone and a head")


def _files(v: Any) -> None:
    if not isinstance(v, dict):
        raise _Bad(f"must map paths to {{sha256, bytes}}, got {_show(v)}")
    for rel, entry in v.items():
        if not isinstance(entry, dict):
            raise _Bad(f"[{rel!r}] must be {{sha256, bytes}}, got {_show(entry)}")
        digest, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise _Bad(f"[{rel!r}].sha256 must be 64 lowercase hex digits, got {_show(digest)}")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
            raise _Bad(f"[{rel!r}].bytes must be an integer from 0 to {MAX_FILE_BYTES:,}, got {_show(size)}")


def _history(v: Any) -> None:
    if not isinstance(v, list) or len(v) > MAX_HISTORY or not all(isinstance(h, dict) for h in v):
        raise _Bad(f"must be a list of JSON objects, got {_show(v)}")


def _task(v: Any) -> None:
    _str(64)(v)
    from edgetl.tasks import get_task

    try:
        get_task(v)
    except (EdgeTLError, KeyError, ImportError) as exc:
        raise _Bad(f"names no known task ({exc})") from None


def _modality(v: Any) -> None:
    _str(64)(v)
    try:
        get_modality(v)
    except (EdgeTLError, KeyError, ImportError) as exc:
        raise _Bad(f"names no known modality ({exc})") from None


def _conformance(v: Any) -> None:
    _dict(v)
    items, threshold = v.get("items"), v.get("min_agreement")
    if not isinstance(items, int) or isinstance(items, bool) or not 1 <= items <= 4096:
        raise _Bad(f".items must be an integer from 1 to 4,096, got {_show(items)}")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise _Bad(f".min_agreement must be a number from 0 to 1, got {_show(threshold)}")


# key -> (required, check). format_version is checked first, on its own (see check_manifest).
_SCHEMA: dict[str, tuple[bool, Callable[[Any], None]]] = {
    "version": (True, _int(1, MAX_VERSION)),
    "labels": (True, _labels),
    "preprocess": (True, _dict),  # then through the modality's spec, below
    "target": (True, _dict),  # then through the target schema, below
    "models": (True, _models),
    "files": (True, _files),
    "created": (False, _optional(_str(64))),
    "modality": (False, _optional(_modality)),
    "task": (False, _optional(_task)),
    "num_features": (False, _optional(_int(1, 1 << 20))),
    "backbone": (False, _optional(_str(256))),
    "runtime": (False, _optional(_choice(Runtime))),
    "precision": (False, _optional(_choice(Precision))),
    "training": (False, _optional(_str())),
    "memory": (False, _optional(_str())),
    "adapter": (False, _optional(_str())),
    "source_stats": (False, _optional(_str())),
    "artifacts": (False, _optional(_str_map)),
    "onnx": (False, _optional(_dict)),
    "versions": (False, _optional(_dict)),
    "accuracy": (False, _optional(_dict)),
    "conformance": (False, _optional(_conformance)),  # the set's size, threshold and reference (device/conformance.py)
    "validated": (False, _optional(_dict)),  # where packaging ran the set: runtime, its version, CPU, agreement
    "history": (False, _optional(_history)),
}


def _bad(source: str, field: str, problem: str) -> BundleError:
    return BundleError(f"{source}: manifest field {field!r} {problem}; re-package the bundle")


def check_fields(m: dict[str, Any], source: str) -> None:
    """Every field against the schema (unknown keys are kept: a newer edgetl may add some)."""
    missing = [k for k, (required, _) in _SCHEMA.items() if required and k not in m]
    if missing:
        raise BundleError(f"{source}: manifest is missing {', '.join(missing)}; re-package the bundle")
    for key, (_, check) in _SCHEMA.items():
        if key in m:
            try:
                check(m[key])
            except _Bad as exc:
                raise _bad(source, key, str(exc)) from None
    modality = get_modality(m.get("modality") or DEFAULT_MODALITY)
    try:
        modality.spec_from_dict(m["preprocess"])
    except (EdgeTLError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise _bad(source, "preprocess", f"is not valid ({_one_line(exc)})") from None
    try:
        target = Target.from_dict(m["target"], source="target")
    except (EdgeTLError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise _bad(source, "target", f"is not valid ({_one_line(exc)})") from None
    runtime = m.get("runtime") or target.runtime.value
    precision = m.get("precision") or target.precision.value
    if precision == Precision.BF16.value and runtime != Runtime.OPENVINO.value:
        raise _bad(source, "precision", f"'bf16' needs runtime 'openvino', not {runtime!r}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


MAX_HEAD_BYTES = 1 << 30


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Any:
    """``(field number, wire type, value)`` of a protobuf message, top level only; a
    length-delimited value is a memoryview, not parsed."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _head_metadata(path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX model (ModelProto field 14: key = 1, value = 2), read
    from the protobuf wire format directly: ``import onnx`` costs more than the whole check,
    and this runs on every open."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HEAD_BYTES + 1)
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError(f"larger than {MAX_HEAD_BYTES:,} bytes")
        meta: dict[str, str] = {}
        for number, wire, value in _fields(memoryview(data)):
            if number == 14 and wire == 2:
                entry = {n: bytes(v).decode("utf-8") for n, w, v in _fields(value) if n in (1, 2) and w == 2}
                meta[entry.get(1, "")] = entry.get(2, "")
        return meta
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # and UnicodeDecodeError
        raise BundleError(f"{path}: not a readable ONNX model ({_one_line(exc)}); re-package the bundle") from None


def _normal_spec(modality: Any, d: Any, where: str) -> dict[str, Any]:
    try:
        return modality.spec_from_dict(d).to_dict()
    except (EdgeTLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{where}: preprocessing is not valid ({_one_line(exc)}); re-package the bundle") from None


def check_head_agrees(m: Mapping[str, Any], head: Path, source: str) -> None:
    """The manifest's ``labels``, ``num_features``, ``preprocess`` and ``modality`` must be those
    recorded in the head's ONNX metadata (``edgetl.labels``, ``edgetl.num_features``,
    ``edgetl.preprocess``, ``edgetl.modality``),
    where the head records them. A target's ``input_size`` may replace the recorded input size
    (``edgetl package`` does that for targets that set one)."""
    if head.suffix.lower() != ".onnx":
        return
    from edgetl.tasks import get_task

    meta = _head_metadata(head)
    tampered = "the manifest was modified or corrupted; re-package the bundle"
    if META_LABELS in meta:
        try:
            recorded = json.loads(meta[META_LABELS])
        except ValueError:
            raise BundleError(f"{head}: edgetl.labels is not valid JSON; re-package the bundle") from None
        if recorded != get_task(m.get("task")).head_labels(m["labels"]):
            raise BundleError(f"{source}: manifest field 'labels' differs from the labels recorded in "
                              f"{head.name} ({META_LABELS}); {tampered}")
    if META_NUM_FEATURES in meta and m.get("num_features") is not None:
        if meta[META_NUM_FEATURES] != str(m["num_features"]):
            raise BundleError(f"{source}: manifest field 'num_features' ({m['num_features']}) differs from the "
                              f"{_show(meta[META_NUM_FEATURES])} features recorded in {head.name} "
                              f"({META_NUM_FEATURES}); {tampered}")
    modality_name = m.get("modality") or DEFAULT_MODALITY
    if META_MODALITY in meta and meta[META_MODALITY] != modality_name:
        raise BundleError(f"{source}: manifest field 'modality' differs from {head.name}'s {META_MODALITY} "
                          f"({meta[META_MODALITY]!r}); {tampered}")
    from edgetl.tasks import DEFAULT_TASK

    task_name = m.get("task") or DEFAULT_TASK
    if meta.get(META_TASK, DEFAULT_TASK) != task_name:
        raise BundleError(f"{source}: manifest field 'task' ({task_name!r}) differs from {head.name}'s {META_TASK} "
                          f"({meta.get(META_TASK, DEFAULT_TASK)!r}); {tampered}")
    if META_ARTIFACTS in meta:
        try:
            hashes = json.loads(meta[META_ARTIFACTS])
        except ValueError:
            raise BundleError(f"{head}: {META_ARTIFACTS} is not valid JSON; re-package the bundle") from None
        artifacts, files = m.get("artifacts") or {}, m.get("files") or {}
        for name, digest in (hashes.items() if isinstance(hashes, dict) else []):
            rel = artifacts.get(name)
            if rel is None:
                raise BundleError(f"{source}: the model needs its {name} file ({head.name} records it), "
                                  f"but the manifest lists no {name!r} artifact; {tampered}")
            have = (files.get(rel) or {}).get("sha256")
            if have != digest:
                raise BundleError(f"{source}: artifact {name!r} ({rel}) is not the file the model was exported "
                                  f"with (sha256 differs from {head.name}'s {META_ARTIFACTS}); {tampered}")
    if META_PREPROCESS in meta:
        modality = get_modality(modality_name)
        try:
            recorded = json.loads(meta[META_PREPROCESS])
        except ValueError:
            raise BundleError(f"{head}: edgetl.preprocess is not valid JSON; re-package the bundle") from None
        want = _normal_spec(modality, recorded, str(head))
        have = _normal_spec(modality, m["preprocess"], source)
        override = m["target"].get("input_size") if isinstance(m.get("target"), dict) else None
        if "input_size" in want and override is not None and have.get("input_size") == override:
            want["input_size"] = override
        if want != have:
            keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise BundleError(f"{source}: manifest field {'preprocess.' + keys[0]!r} differs from the preprocessing "
                              f"recorded in {head.name} ({META_PREPROCESS}); {tampered}")


# --- reading a manifest, checking its paths and files ------------------------------------------

def path_kind(path: Path) -> str | None:
    """``"dir"``, ``"file"``, ``"other"`` or None (no such path); a path the system refuses
    (a name too long, a folder that cannot be searched) raises :class:`BundleError`."""
    import stat

    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def check_relpath(root: Path, rel: Any) -> Path:
    """``root / rel`` if ``rel`` stays inside ``root`` (no absolute path, ``..``, or symlink)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise BundleError(f"{root}: manifest path {rel!r} is not a relative POSIX path; re-package the bundle")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")) or ":" in pure.parts[0]:
        raise BundleError(f"{root}: manifest path {rel!r} points outside the bundle; refusing it (re-package the bundle)")
    here = root
    for part in pure.parts:
        here = here / part
        try:
            link = here.is_symlink()
        except OSError as exc:  # a name too long, say
            raise BundleError(f"{root}: manifest path {rel[:80]!r}: {exc.strerror or exc}; "
                              "re-package the bundle") from None
        if link:
            raise BundleError(f"{root}: {rel!r} goes through a symbolic link; refusing it (re-package the bundle)")
    return root / rel


def manifest_paths(m: Mapping[str, Any]) -> list[str]:
    """Every path the version uses: models, the named optional files, and the open map
    ``artifacts`` (``{name: relpath}``; a tokenizer, say), so a new kind of file stays hashed,
    carried across retrain/adapt and archived without this module knowing it."""
    models = m.get("models") or {}
    artifacts = m.get("artifacts") or {}
    return [*models.values(), *(m[k] for k in OPTIONAL_PATHS if m.get(k)), *artifacts.values()]


def covered(rel: str, files: Mapping[str, Any]) -> bool:
    return rel in files or any(f.startswith(rel + "/") for f in files)


def check_manifest(root: Path, m: Any, source: str) -> dict[str, Any]:
    """``m`` if it is a manifest this edgetl reads: every field against the schema
    (``_SCHEMA``), every path inside the bundle and listed in ``files``.
    Raises :class:`BundleError` naming the first bad field."""
    if not isinstance(m, dict):
        raise BundleError(f"{source}: not a bundle manifest (expected a JSON object); re-package the bundle")
    fv = m.get("format_version")
    if type(fv) is not int or fv != FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format_version {fv!r} is not supported (this edgetl reads format_version "
            f"{FORMAT_VERSION}); re-package the bundle with this edgetl, or use the edgetl that made it"
        )
    check_fields(m, source)
    files = m["files"]
    for rel in files:
        check_relpath(root, rel)
    for rel in manifest_paths(m):
        check_relpath(root, rel)
        if not covered(rel, files):
            raise BundleError(f"{source}: {rel!r} is used but not listed in 'files'; re-package the bundle")
    return m


def read_json(path: Path, limit: int, what: str) -> Any:
    """A JSON file from the bundle, refused in one line when it is not a regular file (a
    device, a FIFO), too large, not UTF-8, not JSON, or nested beyond what the parser can take."""
    hint = "the bundle is corrupted, re-package it"
    return parse_json(read_regular(path, limit, what, BundleError, hint), str(path), what, BundleError, hint)


def read_manifest(root: Path, name: str = MANIFEST) -> dict[str, Any]:
    path = root / name
    if name == MANIFEST and not path.exists():
        try:
            path.lstat()
        except FileNotFoundError:
            raise BundleError(
                f"{root}: not a bundle (no {MANIFEST}); make one with 'edgetl package RUN --target NAME --out {root}'"
            ) from None
        except OSError:
            pass  # a name too long, say: reported by the read below
    m = read_json(path, MAX_MANIFEST_BYTES, "bundle manifest")
    return check_manifest(root, m, str(path))


def verify_files(root: Path, m: Mapping[str, Any]) -> None:
    for rel, entry in m["files"].items():
        path = check_relpath(root, rel)
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise BundleError(f"{root}: {rel} is missing; the bundle was modified or corrupted; re-package it or pass --no-verify") from None
        except OSError as exc:
            raise BundleError(f"{root}: {rel}: cannot read ({exc.strerror or exc})") from None
        if not path.is_file():
            raise BundleError(f"{root}: {rel} is not a regular file; the bundle was modified or corrupted; re-package it")
        try:
            matches = st.st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
        except OSError as exc:
            raise BundleError(f"{root}: {rel}: cannot read ({exc.strerror or exc})") from None
        if not matches:
            raise BundleError(
                f"{root}: {rel} does not match its SHA-256 in the manifest; the bundle was modified or corrupted; "
                "re-package it or pass --no-verify"
            )


def quick_check(root: Path, m: Mapping[str, Any]) -> list[str]:
    """What ``--no-verify`` still checks: every file's presence and size, and the SHA-256 of
    files up to ``QUICK_HASH_BYTES``. Returns the paths that fail."""
    failed = []
    for rel, entry in m["files"].items():
        path = root / rel
        try:
            st = path.lstat()
            ok = path.is_file() and st.st_size == entry["bytes"]
            if ok and st.st_size <= QUICK_HASH_BYTES:
                ok = sha256_file(path) == entry["sha256"]
        except OSError:
            ok = False
        if not ok:
            failed.append(rel)
    return failed


def check_head(root: Path, m: Mapping[str, Any], source: str) -> None:
    check_head_agrees(m, check_relpath(root, m["models"]["head"]), source)


def verify_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Check a bundle folder without loading any model: a known ``format_version``, every
    field of the manifest, every path inside the bundle, every listed file present with its
    size and SHA-256, and the labels and preprocessing those of the (hashed) head model.
    Returns the manifest; raises :class:`BundleError` naming the first problem."""
    root = Path(path)
    if path_kind(root) != "dir":
        raise BundleError(f"{root}: no such bundle folder")
    m = read_manifest(root)
    verify_files(root, m)
    check_head(root, m, str(root / MANIFEST))
    return m
