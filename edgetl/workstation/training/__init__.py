"""Transfer learning on the workstation: linear probe, fine-tuning, domain adaptation.

``train(data, out, config)`` writes a RUN directory (see docs/INTERNALS.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetl.core import ui as _ui
from edgetl.workstation.backbones import Backbone, create_backbone
from edgetl.core.data import stratified_split
from edgetl.modalities.image import scan_folder
from edgetl.errors import ConfigError, RunDirError
from edgetl.workstation.model import EdgeModel
from edgetl.core.run import RUN_FORMAT, package_versions, write_run_json
from edgetl.workstation.training.config import Strategy, TrainConfig, TrainReport, TrainResult
from edgetl.workstation.training import distributed
from edgetl.workstation.training.data import embed_images
from edgetl.workstation.training import adapt, loops  # noqa: F401 - register the strategies
from edgetl.workstation.training.strategies import STRATEGIES, FitData
from edgetl.workstation.training.outputs import plot_curves, write_history

__all__ = ["Strategy", "TrainConfig", "TrainReport", "TrainResult", "train", "pick_device", "embed_images"]


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked, but no CUDA GPU is available here; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RunDirError(f"{out}: folder exists and is not empty; choose another --out or pass --force")
    out.mkdir(parents=True, exist_ok=True)


def train(data: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None, *,
          overwrite: bool = False) -> TrainReport:
    """Train a classifier head (and optionally backbone blocks) on an image folder; write RUN ``out``."""
    cfg = (config or TrainConfig()).resolved()
    out = Path(out)
    folder = scan_folder(data, strict=cfg.strict)
    device = pick_device(cfg.device)
    dist, device = distributed.setup(device)  # under torchrun: join the job (only rank 0 writes)
    if dist.main:
        _prepare_out(out, overwrite)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    backbone: Backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained)
    spec = backbone.preprocess if cfg.image_size is None else backbone.preprocess.with_input_size(cfg.image_size)
    model = EdgeModel(backbone.module, backbone.num_features, len(folder.labels), cfg.dropout).to(device)

    train_idx, val_idx = stratified_split(folder.targets, cfg.val_split, cfg.seed)
    tr, va = folder.subset(train_idx), folder.subset(val_idx)
    if dist.main:
        _ui.info(f"{len(folder.labels)} classes, {len(tr.samples)} training and {len(va.samples)} validation images"
                 + (f", {len(folder.skipped)} unreadable skipped" if folder.skipped else "")
                 + (f"; {dist.world} processes ({dist.backend})" if dist.active else ""))
    data = FitData(model, cfg, tr.paths, tr.targets.tolist(), va.paths, va.targets.tolist(), spec, device)
    t0 = time.perf_counter()
    fitted = STRATEGIES.get(cfg.strategy.value)(data)
    history, stop, extra = fitted.history, fitted.stop, fitted.extra
    model.load_state_dict(stop.state)
    model.eval().cpu()
    seconds = time.perf_counter() - t0
    metrics_extra = {"distributed": dist.to_dict()} if dist.active else {}
    if not dist.main:  # rank 0 writes the RUN
        return TrainReport(out, stop.best, stop.best_epoch, history, {"val_accuracy": stop.best, **extra,
                                                                     **metrics_extra})

    torch.save(model.state_dict(), out / "model.pt")
    rel = lambda s: [p.relative_to(folder.root).as_posix() for p in s.paths]  # noqa: E731
    metrics = dict(val_accuracy=stop.best, best_epoch=stop.best_epoch, epochs_run=len(history),
                   train_seconds=seconds, n_train=len(tr.samples), n_val=len(va.samples),
                   skipped_files=len(folder.skipped), **extra, **metrics_extra)
    write_run_json(out, {
        "format": RUN_FORMAT,
        "labels": list(folder.labels),
        "backbone": backbone.name,
        "arch": backbone.arch,
        "pretrained": backbone.pretrained,
        "preprocess": spec.to_dict(),
        "num_features": backbone.num_features,
        "strategy": cfg.strategy.value,
        "config": cfg.to_dict(),
        "data_root": str(folder.root.resolve()),
        "split": {"train": rel(tr), "val": rel(va), "val_fraction": cfg.val_split, "seed": cfg.seed},
        "metrics": metrics,
        "distributed": dist.to_dict(),
        "versions": package_versions("edgetl", "torch", "torchvision", "timm", "numpy"),
    })
    write_history(out, history)
    plot_curves(out, history, f"{backbone.name} · {cfg.strategy.value}")
    return TrainReport(out, stop.best, stop.best_epoch, history, metrics)
