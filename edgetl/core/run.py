"""The RUN directory: what ``train`` writes and every later stage reads.

``read_run_json`` is torch-free; ``load_run`` rebuilds the trained model (torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from edgetl.core.files import write_json_atomic
from edgetl.errors import RunDirError

__all__ = ["RUN_FORMAT", "read_run_json", "write_run_json", "update_run_json", "package_versions", "deployed_accuracy"]

RUN_FORMAT = 1
_REQUIRED = ("format", "labels", "backbone", "preprocess", "num_features", "strategy")


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such RUN directory; create one with 'edgetl train DATA --out {run_dir}'")
    path = run_dir / "run.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a RUN directory (no run.json); create one with 'edgetl train'")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: corrupt run.json ({exc}); re-run 'edgetl train'") from None
    missing = [k for k in _REQUIRED if k not in info]
    if missing:
        raise RunDirError(f"{path}: incomplete run.json, missing {', '.join(missing)}; re-run 'edgetl train'")
    if info["format"] != RUN_FORMAT:
        raise RunDirError(f"{path}: RUN format {info['format']} is not supported (this edgetl reads {RUN_FORMAT})")
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
