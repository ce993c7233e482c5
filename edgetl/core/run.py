"""The RUN directory: what ``train`` writes and every later stage reads.

``read_run_json`` is torch-free; ``load_run`` rebuilds the trained model (torch)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from edgetl.core.files import write_json_atomic
from edgetl.core.reading import parse_json, read_regular
from edgetl.errors import RunDirError

__all__ = ["RUN_FORMAT", "read_run_json", "write_run_json", "update_run_json", "package_versions", "deployed_accuracy"]

RUN_FORMAT = 1
MAX_RUN_JSON_BYTES = 256 << 20  # the split lists every training image's path
_REQUIRED = ("format", "labels", "backbone", "preprocess", "num_features", "strategy")


def _check_fields(info: Any, path: Path) -> None:
    """The types of the fields every stage reads (the workstation builds the spec and the
    model from them); one line naming the first bad one."""
    def bad(field: str, problem: str, value: Any) -> RunDirError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return RunDirError(f"{path}: run.json field {field!r} {problem}, got {shown}; re-run 'edgetl train'")

    labels = info["labels"]
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)):
        raise bad("labels", "must be a non-empty list of label strings", labels)
    if len(set(labels)) != len(labels):
        raise bad("labels", "holds the same label twice", labels)
    for key in ("backbone", "strategy"):
        if not isinstance(info[key], str):
            raise bad(key, "must be a string", info[key])
    if not isinstance(info["preprocess"], dict):
        raise bad("preprocess", "must be a JSON object", info["preprocess"])
    n = info["num_features"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1 << 20:
        raise bad("num_features", "must be an integer from 1 to 1,048,576", n)
    for key in ("modality", "task"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise bad(key, "must be a string", info[key])
    for key in ("artifacts", "config", "split", "metrics", "export", "quantize"):
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise bad(key, "must be a JSON object", info[key])
    artifacts = info.get("artifacts") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in artifacts.items()):
        raise bad("artifacts", "must map names to paths", artifacts)
    ref = info.get("backbone_weights")  # a head-only model.pt: the installed built-in named by its digest
    if ref is not None and not (isinstance(ref, dict) and set(ref) == {"builtin", "sha256"}
                                and ref["builtin"] == info["backbone"] and isinstance(ref["sha256"], str)
                                and re.fullmatch(r"[0-9a-f]{64}", ref["sha256"])):
        raise bad("backbone_weights", "must be {\"builtin\": the backbone's name, \"sha256\": 64 hex digits}", ref)


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    run_dir = Path(run_dir)
    try:
        is_dir = run_dir.is_dir()
    except OSError as exc:  # a name too long, say
        raise RunDirError(f"{run_dir}: {exc.strerror or exc}") from None
    if not is_dir:
        raise RunDirError(f"{run_dir}: no such RUN directory; create one with 'edgetl train DATA --out {run_dir}'")
    path = run_dir / "run.json"
    if not os.path.lexists(path):
        raise RunDirError(f"{run_dir}: not a RUN directory (no run.json); create one with 'edgetl train'")
    hint = "re-run 'edgetl train'"
    info = parse_json(read_regular(path, MAX_RUN_JSON_BYTES, "run.json", RunDirError, hint), str(path), "run.json",
                      RunDirError, hint)
    if not isinstance(info, dict):
        raise RunDirError(f"{path}: corrupt run.json (expected a JSON object); re-run 'edgetl train'")
    missing = [k for k in _REQUIRED if k not in info]
    if missing:
        raise RunDirError(f"{path}: incomplete run.json, missing {', '.join(missing)}; re-run 'edgetl train'")
    if type(info["format"]) is not int or info["format"] != RUN_FORMAT:
        raise RunDirError(f"{path}: RUN format {info['format']!r} is not supported (this edgetl reads {RUN_FORMAT})")
    _check_fields(info, path)
    return info


def write_run_json(run_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / "run.json", info)


def update_run_json(run_dir: str | os.PathLike, key: str, value: Any) -> dict[str, Any]:
    """Set one top-level section (``export``, ``quantize``, ...) of run.json atomically."""
    info = read_run_json(run_dir)
    info[key] = value
    write_run_json(run_dir, info)
    return info


def deployed_accuracy(run_info: Mapping[str, Any], runtime: str, precision: str) -> dict[str, Any] | None:
    """From a run.json dict: ``{"fp32", "deployed", "precision_executed", "agreement"}`` for
    ``runtime`` ("onnxruntime" | "openvino") and ``precision`` ("fp32" | "int8" | "bf16"),
    or None when ``edgetl quantize`` measured no such row. Torch-free: reads the dict only."""
    section = run_info.get("quantize")
    rows = section.get("report") if isinstance(section, Mapping) else None
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, Mapping) and row.get("runtime") == runtime and row.get("precision") == precision:
            return {"fp32": row.get("fp32_accuracy", row.get("accuracy")), "deployed": row.get("accuracy"),
                    "precision_executed": row.get("precision_executed"), "agreement": row.get("agreement")}
    return None


def package_versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
