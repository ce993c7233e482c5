"""The RUN directory: what ``train`` writes and every later stage reads.

``read_run_json`` is torch-free; ``load_run`` rebuilds the trained model (torch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ._files import write_json_atomic
from .errors import RunDirError
from .preprocess import PreprocessSpec

__all__ = ["RUN_FORMAT", "Run", "read_run_json", "write_run_json", "update_run_json", "load_run", "package_versions",
           "deployed_accuracy"]

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


@dataclass
class Run:
    """A loaded RUN directory: its run.json and the rebuilt model (eval mode)."""

    root: Path
    info: dict[str, Any]
    model: Any  # edgetl.model.EdgeModel

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.info["preprocess"])

    def split_paths(self, which: str) -> tuple[list[Path], list[int]]:
        """Files of the ``train`` or ``val`` split with class indices, as recorded at training."""
        split = self.info.get("split", {})
        root = Path(self.info.get("data_root", ""))
        items = split.get(which, [])
        if not items:
            raise RunDirError(f"{self.root}: run.json records no {which} split")
        index = {name: i for i, name in enumerate(self.labels)}
        paths = [root / rel for rel in items]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise RunDirError(
                f"{missing[0]}: the {which} images recorded at training time are gone; pass the data folder explicitly"
            )
        return paths, [index[Path(rel).parts[0]] for rel in items]


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read run.json and rebuild the trained model from model.pt (weights only)."""
    import torch

    from .backbones import create_backbone
    from .model import EdgeModel

    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise RunDirError(f"{run_dir}: model.pt is missing; re-run 'edgetl train'")
    backbone = create_backbone(info.get("arch", info["backbone"]), pretrained=False)
    model = EdgeModel(backbone.module, int(info["num_features"]), len(info["labels"]))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - corrupt or mismatched file
        raise RunDirError(f"{weights}: cannot load the trained weights ({exc.__class__.__name__}); re-run 'edgetl train'") from None
    model.eval()
    return Run(run_dir, info, model)
