"""Transfer learning on the workstation: linear probe, fine-tuning, domain adaptation.

``train(data, out, config)`` writes a RUN directory (see docs/INTERNALS.md)."""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import _ui
from .backbones import Backbone, backbone_blocks, create_backbone
from .data import ImageFolder, scan_folder, stratified_split
from .errors import ConfigError, RunDirError
from .model import EdgeModel
from .preprocess import PreprocessSpec, load_image, normalize, preprocess, resize_and_crop
from .run import RUN_FORMAT, package_versions, write_run_json

__all__ = ["Strategy", "TrainConfig", "TrainResult", "train", "pick_device", "embed_images"]


class Strategy(str, Enum):
    LINEAR_PROBE = "linear-probe"
    FINETUNE = "finetune"
    ADAPT = "adapt"


# Per-strategy defaults where the user gave none: a probe trains only a Linear layer on
# cached embeddings (cheap epochs, higher rate); fine-tuning moves the backbone too.
_DEFAULTS = {
    Strategy.LINEAR_PROBE: dict(epochs=30, lr=3e-3, batch_size=64),
    Strategy.FINETUNE: dict(epochs=8, lr=1e-3, batch_size=32),
    Strategy.ADAPT: dict(epochs=8, lr=1e-3, batch_size=32),
}


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``edgetl train``; ``None`` means the strategy's default."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    strategy: Strategy = Strategy.LINEAR_PROBE
    unfreeze: int | None = 2  # last N blocks trainable in finetune/adapt; None = all
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    backbone_lr_scale: float = 0.1  # the backbone learns this much slower than the head
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5  # early stopping: epochs without a better validation accuracy
    val_split: float = 0.2
    seed: int = 0
    image_size: int | None = None  # override the backbone's input size
    augment: bool = True  # fine-tuning only: random resized crop + horizontal flip
    dropout: float = 0.0
    device: str = "auto"
    strict: bool = False
    # domain adaptation (strategy "adapt"), see edgetl.adapt_train
    target_data: str | None = None
    adapt_method: str = "coral"
    adapt_weight: float = 1.0
    target_eval: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        for name in ("epochs", "batch_size", "image_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.unfreeze is not None and (not isinstance(self.unfreeze, int) or self.unfreeze < 0):
            raise ConfigError(f"unfreeze must be a number of blocks >= 0 or None (all), got {self.unfreeze!r}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 < self.val_split < 1.0:
            raise ConfigError(f"val_split must be in (0, 1), got {self.val_split}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.strategy is Strategy.ADAPT and not self.target_data:
            raise ConfigError("strategy 'adapt' needs target data: pass --target-data UNLABELLED_DIR")

    def resolved(self) -> "TrainConfig":
        d = _DEFAULTS[self.strategy]
        return replace(
            self,
            epochs=self.epochs or d["epochs"],
            lr=self.lr or d["lr"],
            batch_size=self.batch_size or d["batch_size"],
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strategy"] = self.strategy.value
        return d


@dataclass
class TrainResult:
    run_dir: Path
    val_accuracy: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked, but no CUDA GPU is available here; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# --------------------------------------------------------------------------- data


class _Images(torch.utils.data.Dataset):
    """Image paths -> (tensor, label), through the evaluation preprocessing or augmentation."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], spec: PreprocessSpec, augment: bool = False):
        self.paths, self.labels, self.spec = list(paths), list(labels), spec
        self.train_tf = None
        if augment:
            from torchvision import transforms as T

            self.train_tf = T.Compose([
                T.RandomResizedCrop(spec.input_size, scale=(0.6, 1.0), interpolation=_tv_interp(spec)),
                T.RandomHorizontalFlip(),
            ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.train_tf is None:
            x = preprocess(self.paths[i], self.spec)
        else:
            x = normalize(self.train_tf(load_image(self.paths[i])), self.spec)
        return torch.from_numpy(x), self.labels[i]


def _tv_interp(spec: PreprocessSpec):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(spec.interpolation.value)


def _loader(ds: torch.utils.data.Dataset, batch_size: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


@torch.no_grad()
def embed_images(backbone: nn.Module, paths: Sequence[Path], spec: PreprocessSpec, device: torch.device,
                 batch_size: int = 64, description: str = "embedding") -> torch.Tensor:
    """Embeddings of images through a frozen backbone, once each, in eval mode."""
    backbone.eval()
    ds = _Images(paths, [0] * len(paths), spec)
    out = []
    loader = _loader(ds, batch_size, False, 0)
    for x, _ in _ui.progress(loader, description):
        out.append(backbone(x.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


# --------------------------------------------------------------------------- loops


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


class _EarlyStop:
    """Keeps the best state by validation accuracy; says when patience ran out."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.state, self.bad = patience, -1.0, 0, None, 0

    def update(self, epoch: int, acc: float, model: nn.Module) -> bool:
        if acc > self.best:
            self.best, self.best_epoch, self.bad = acc, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.bad += 1
        return self.bad >= self.patience


def _train_probe(model: EdgeModel, cfg: TrainConfig, train_paths, train_y, val_paths, val_y,
                 spec: PreprocessSpec, device: torch.device) -> tuple[list[dict], _EarlyStop]:
    # The frozen backbone runs once per image; every epoch after that trains the head on
    # cached embeddings, which is why a linear probe costs little more than one pass.
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    z_train = embed_images(model.backbone, train_paths, spec, device, description="embedding train")
    z_val = embed_images(model.backbone, val_paths, spec, device, description="embedding val")
    y_train, y_val = torch.as_tensor(train_y), torch.as_tensor(val_y)
    head = model.head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(y_train) / cfg.batch_size)
    sched = _cosine_with_warmup(opt, cfg.warmup_epochs * steps, cfg.epochs * steps)
    g = torch.Generator().manual_seed(cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    stop, history = _EarlyStop(cfg.patience), []
    for epoch in _ui.progress(range(1, cfg.epochs + 1), "training head"):
        t0 = time.perf_counter()
        head.train()
        order = torch.randperm(len(y_train), generator=g)
        total, correct = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i: i + cfg.batch_size]
            z, y = z_train[idx].to(device), y_train[idx].to(device)
            logits = model.forward_head(z)
            loss = loss_fn(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        head.eval()
        with torch.no_grad():
            val_logits = model.forward_head(z_val.to(device))
            val_loss = float(loss_fn(val_logits, y_val.to(device)))
        row = dict(epoch=epoch, train_loss=total / len(y_train), train_acc=correct / len(y_train),
                   val_loss=val_loss, val_acc=_accuracy(val_logits.cpu(), y_val),
                   lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        if stop.update(epoch, row["val_acc"], model):
            break
    return history, stop


def _set_trainable(model: EdgeModel, unfreeze: int | None) -> list[nn.Module]:
    """Freeze the backbone except its last ``unfreeze`` blocks (None: all). Returns frozen blocks."""
    blocks = backbone_blocks(model.backbone)
    n = len(blocks) if unfreeze is None else min(unfreeze, len(blocks))
    frozen = blocks[: len(blocks) - n]
    for p in model.backbone.parameters():
        p.requires_grad_(unfreeze is None)
    for block in blocks[len(blocks) - n:]:
        for p in block.parameters():
            p.requires_grad_(True)
    return frozen


def evaluate_model(model: EdgeModel, loader, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_fn, total, correct, n = nn.CrossEntropyLoss(reduction="sum"), 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x.to(device))
            y = y.to(device)
            total += float(loss_fn(logits, y))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return total / max(n, 1), correct / max(n, 1)


def _train_finetune(model: EdgeModel, cfg: TrainConfig, train_paths, train_y, val_paths, val_y,
                    spec: PreprocessSpec, device: torch.device, extra_loss=None) -> tuple[list[dict], _EarlyStop]:
    frozen = _set_trainable(model, cfg.unfreeze)
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.lr * cfg.backbone_lr_scale})
    if extra_loss is not None:
        groups.append({"params": list(extra_loss.parameters()), "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    train_loader = _loader(_Images(train_paths, train_y, spec, augment=cfg.augment), cfg.batch_size, True, cfg.seed)
    val_loader = _loader(_Images(val_paths, val_y, spec), cfg.batch_size, False, 0)
    steps = len(train_loader)
    sched = _cosine_with_warmup(opt, cfg.warmup_epochs * steps, cfg.epochs * steps)
    loss_fn = nn.CrossEntropyLoss()
    stop, history = _EarlyStop(cfg.patience), []
    total_steps = cfg.epochs * steps
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for block in frozen:  # frozen blocks keep their BatchNorm statistics
            block.eval()
        total, correct, n = 0.0, 0, 0
        for step, (x, y) in enumerate(_ui.progress(train_loader, f"epoch {epoch}/{cfg.epochs}")):
            x, y = x.to(device), y.to(device)
            z = model.forward_features(x)
            logits = model.forward_head(z)
            loss = loss_fn(logits, y)
            if extra_loss is not None:
                loss = loss + extra_loss(z, ((epoch - 1) * steps + step) / max(1, total_steps))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
        val_loss, val_acc = evaluate_model(model, val_loader, device)
        row = dict(epoch=epoch, train_loss=total / n, train_acc=correct / n, val_loss=val_loss, val_acc=val_acc,
                   lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        if stop.update(epoch, val_acc, model):
            break
    return history, stop


# --------------------------------------------------------------------------- outputs


def _write_history(run_dir: Path, history: list[dict]) -> None:
    keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    with open(run_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def _plot_curves(run_dir: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="validation")
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    b.plot(epochs, [h["train_acc"] for h in history], label="train")
    b.plot(epochs, [h["val_acc"] for h in history], label="validation")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RunDirError(f"{out}: folder exists and is not empty; choose another --out or pass --force")
    out.mkdir(parents=True, exist_ok=True)


def train(data: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None, *,
          overwrite: bool = False) -> TrainResult:
    """Train a classifier head (and optionally backbone blocks) on an image folder; write RUN ``out``."""
    cfg = (config or TrainConfig()).resolved()
    out = Path(out)
    folder = scan_folder(data, strict=cfg.strict)
    _prepare_out(out, overwrite)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)

    backbone: Backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained)
    spec = backbone.preprocess if cfg.image_size is None else backbone.preprocess.with_input_size(cfg.image_size)
    model = EdgeModel(backbone.module, backbone.num_features, len(folder.labels), cfg.dropout).to(device)

    train_idx, val_idx = stratified_split(folder.targets, cfg.val_split, cfg.seed)
    tr, va = folder.subset(train_idx), folder.subset(val_idx)
    _ui.info(f"{len(folder.labels)} classes, {len(tr.samples)} training and {len(va.samples)} validation images"
             + (f", {len(folder.skipped)} unreadable skipped" if folder.skipped else ""))
    args = (model, cfg, tr.paths, tr.targets.tolist(), va.paths, va.targets.tolist(), spec, device)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if cfg.strategy is Strategy.LINEAR_PROBE:
        history, stop = _train_probe(*args)
    elif cfg.strategy is Strategy.FINETUNE:
        history, stop = _train_finetune(*args)
    else:
        from .adapt_train import train_adapt

        history, stop, extra = train_adapt(*args, train_finetune=_train_finetune)
    model.load_state_dict(stop.state)
    model.eval().cpu()
    seconds = time.perf_counter() - t0

    torch.save(model.state_dict(), out / "model.pt")
    rel = lambda s: [p.relative_to(folder.root).as_posix() for p in s.paths]  # noqa: E731
    metrics = dict(val_accuracy=stop.best, best_epoch=stop.best_epoch, epochs_run=len(history),
                   train_seconds=seconds, n_train=len(tr.samples), n_val=len(va.samples),
                   skipped_files=len(folder.skipped), **extra)
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
        "versions": package_versions("edgetl", "torch", "torchvision", "timm", "numpy"),
    })
    _write_history(out, history)
    _plot_curves(out, history, f"{backbone.name} · {cfg.strategy.value}")
    return TrainResult(out, stop.best, stop.best_epoch, history, metrics)
