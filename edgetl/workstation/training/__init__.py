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
from edgetl.workstation.embedding import scratch_folder
from edgetl.workstation.training.data import embed_images
from edgetl.workstation.training import adapt, loops  # noqa: F401 - register the strategies
from edgetl.workstation.training.strategies import STRATEGIES, FitData
from edgetl.workstation.training.outputs import plot_curves, prepare_out, write_history

__all__ = ["Strategy", "TrainConfig", "TrainReport", "TrainResult", "train", "pick_device", "embed_images"]


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked, but no CUDA GPU is available here; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _check_kind(modality: str, data: Path, backbone: str) -> None:
    """Data of the wrong kind for the backbone is one clear line, before anything is read."""
    from edgetl.errors import DataError
    from edgetl.modalities.text import TEXT_SUFFIXES

    if modality == "text" and data.is_dir():
        from edgetl.modalities.image import find_images

        if not any(data.rglob("*.txt")) and find_images(data):
            raise DataError(f"{data}: holds images, but {backbone} is a text backbone; pass a CSV/TSV/JSONL file "
                            "(text and label columns) or a folder of class subfolders of .txt files")
    if modality == "image" and data.is_file() and data.suffix.lower() in (*TEXT_SUFFIXES, ".txt"):
        raise DataError(f"{data}: is text data, but {backbone} is an image backbone; "
                        "use a text backbone (--backbone all_minilm_l6_v2 or hf:NAME_OR_PATH)")


def _text_spec(backbone: Backbone, cfg: TrainConfig, out: Path, copy: bool = True):
    """The text spec with the requested max_length, bound to the RUN's copy of tokenizer.json."""
    import shutil
    from dataclasses import replace

    from edgetl.modalities.text import TOKENIZER

    spec = backbone.preprocess
    if cfg.max_length is not None:
        spec = type(spec)(cfg.max_length)
    src = backbone.files.get(TOKENIZER)
    if src is None:
        raise ConfigError(f"{backbone.name}: the text backbone has no tokenizer.json")
    if copy:
        shutil.copyfile(src, out / "tokenizer.json")
    return replace(spec, tokenizer=str(out / "tokenizer.json")), {TOKENIZER: "tokenizer.json"}


def train(data: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None, *,
          overwrite: bool = False) -> TrainReport:
    """Train a classifier head (and optionally backbone blocks) on labelled data (an image
    folder, or texts for a text backbone); write RUN ``out``."""
    from edgetl.modalities import get_modality

    cfg = (config or TrainConfig()).resolved()
    out = Path(out)
    data_path = Path(data)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    dist, device = distributed.setup(device)  # under torchrun: join the job (only rank 0 writes)
    backbone: Backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained)
    modality = get_modality(backbone.modality)
    from edgetl.tasks import get_task, infer_task
    from edgetl.workstation.task_hooks import hooks

    task = get_task(cfg.task or infer_task(data_path, modality.name))
    if modality.name not in task.modalities:
        raise ConfigError(f"task {task.name!r} takes {' or '.join(task.modalities)} data; {backbone.name} is a "
                          f"{modality.name} backbone")
    task_hooks = hooks(task.name)
    if task_hooks is not None:  # the task trains its own way (a detector's per-location heads)
        return task_hooks.train(data_path, out, cfg, backbone, device, overwrite, dist)
    _check_kind(modality.name, data_path, backbone.name)
    if modality.name == "image":
        if cfg.max_length is not None:
            raise ConfigError(f"--max-length is for text backbones; {backbone.name} takes images")
        return _train_images(data, out, cfg, backbone, device, overwrite, dist)
    if cfg.image_size is not None:
        raise ConfigError(f"--image-size is for image backbones; {backbone.name} takes text")
    if cfg.strategy is Strategy.ADAPT:
        raise ConfigError("strategy 'adapt' is for images; text backbones train with linear-probe or finetune")
    items = modality.scan(data, strict=cfg.strict, text_column=cfg.text_column, label_column=cfg.label_column)
    if dist.main:
        prepare_out(out, overwrite)
    spec, artifacts = _text_spec(backbone, cfg, out, copy=dist.main)
    distributed.barrier(dist)  # the other ranks read rank 0's copy of tokenizer.json
    model = EdgeModel(backbone.module, backbone.num_features, len(items.labels), cfg.dropout).to(device)
    train_idx, val_idx = stratified_split(items.targets, cfg.val_split, cfg.seed)
    _ui.info(f"{len(items.labels)} classes, {len(train_idx)} training and {len(val_idx)} validation texts"
             + (f", {len(items.skipped)} unusable skipped" if items.skipped else ""))
    pick = lambda idx: [items.items[i] for i in idx]  # noqa: E731
    fit = FitData(model, cfg, pick(train_idx), items.targets[train_idx].tolist(), pick(val_idx),
                  items.targets[val_idx].tolist(), spec, device)
    split = {"train": train_idx.tolist(), "val": val_idx.tolist(), "val_fraction": cfg.val_split, "seed": cfg.seed,
             "items": len(items.items)}
    return _fit_and_write(fit, out, backbone, modality.name, spec, str(Path(items.root).resolve()), split,
                          len(items.skipped), artifacts, labels=items.labels, dist=dist)


def _train_images(data, out: Path, cfg: TrainConfig, backbone: Backbone, device, overwrite: bool,
                  dist) -> TrainReport:
    folder = scan_folder(data, strict=cfg.strict)
    if dist.main:
        prepare_out(out, overwrite)
    spec = backbone.preprocess if cfg.image_size is None else backbone.preprocess.with_input_size(cfg.image_size)
    # a linear probe of installed weights trains the head alone: its RUN names the backbone
    # (run.json's backbone_weights), and the backbone is built only if some image is not cached
    head_only = cfg.strategy is Strategy.LINEAR_PROBE and backbone.reference is not None
    model = EdgeModel(None if head_only else backbone.module, backbone.num_features, len(folder.labels),
                      cfg.dropout).to(device)

    train_idx, val_idx = stratified_split(folder.targets, cfg.val_split, cfg.seed)
    tr, va = folder.subset(train_idx), folder.subset(val_idx)
    if dist.main:
        _ui.info(f"{len(folder.labels)} classes, {len(tr.samples)} training and {len(va.samples)} validation images"
                 + (f", {len(folder.skipped)} unreadable skipped" if folder.skipped else "")
                 + (f"; {dist.world} processes ({dist.backend})" if dist.active else ""))
    fit = FitData(model, cfg, tr.paths, tr.targets.tolist(), va.paths, va.targets.tolist(), spec, device, backbone)
    rel = lambda s: [p.relative_to(folder.root).as_posix() for p in s.paths]  # noqa: E731
    split = {"train": rel(tr), "val": rel(va), "val_fraction": cfg.val_split, "seed": cfg.seed}
    return _fit_and_write(fit, out, backbone, "image", spec, str(folder.root.resolve()), split,
                          len(folder.skipped), {}, labels=folder.labels, dist=dist)


def _fit_and_write(fit: FitData, out: Path, backbone: Backbone, modality: str, spec, data_root: str,
                   split: dict, skipped: int, artifacts: dict, labels, dist) -> TrainReport:
    cfg, model = fit.cfg, fit.model
    t0 = time.perf_counter()
    with scratch_folder(out):  # frozen-backbone embeddings stream to a store inside the RUN (an unnamed file)
        fitted = STRATEGIES.get(cfg.strategy.value)(fit)
    history, stop, extra = fitted.history, fitted.stop, fitted.extra
    skipped += len((extra.get("embedding") or {}).get("failed") or [])  # scanned, but did not decode
    model.load_state_dict(stop.state)
    model.eval().cpu()
    seconds = time.perf_counter() - t0
    metrics_extra = {"distributed": dist.to_dict()} if dist.active else {}
    if not dist.main:  # rank 0 writes the RUN
        return TrainReport(out, stop.best, stop.best_epoch, history, {"val_accuracy": stop.best, **extra,
                                                                     **metrics_extra})

    torch.save(model.state_dict(), out / "model.pt")
    metrics = dict(val_accuracy=stop.best, best_epoch=stop.best_epoch, epochs_run=len(history),
                   train_seconds=seconds, n_train=len(fit.train_items), n_val=len(fit.val_items),
                   skipped_files=skipped, **extra, **metrics_extra)
    info = {
        "format": RUN_FORMAT,
        "labels": list(labels),
        "backbone": backbone.name,
        "arch": backbone.arch,
        "pretrained": backbone.pretrained,
        "modality": modality,
        "task": "classification",
        "preprocess": spec.to_dict(),
        "num_features": backbone.num_features,
        "strategy": cfg.strategy.value,
        "config": cfg.to_dict(),
        "data_root": data_root,
        "split": split,
        "metrics": metrics,
        "distributed": dist.to_dict(),
        "versions": package_versions("edgetl", "torch", "torchvision", "timm", "transformers", "tokenizers", "numpy"),
    }
    if artifacts:
        info["artifacts"] = artifacts
    if model.backbone is None:  # model.pt holds the head; these installed weights are the backbone
        info["backbone_weights"] = backbone.reference
    write_run_json(out, info)
    write_history(out, history)
    plot_curves(out, history, f"{backbone.name} · {cfg.strategy.value}")
    return TrainReport(out, stop.best, stop.best_epoch, history, metrics)
