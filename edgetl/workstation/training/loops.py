"""The training loops: a head on cached embeddings, and fine-tuning with unfrozen blocks."""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import nn

from edgetl.core import ui as _ui
from edgetl.modalities.image import PreprocessSpec
from edgetl.workstation.backbones import backbone_blocks
from edgetl.workstation.model import EdgeModel
from edgetl.workstation.training.config import TrainConfig
from edgetl.workstation.training.data import ImageDataset, embed_images, make_loader
from edgetl.workstation.training.strategies import STRATEGIES, FitData, Fitted

__all__ = ["EarlyStop", "train_probe", "train_finetune", "set_trainable", "evaluate_model", "cosine_with_warmup"]


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


class EarlyStop:
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


def train_probe(model: EdgeModel, cfg: TrainConfig, train_paths, train_y, val_paths, val_y,
                 spec: PreprocessSpec, device: torch.device) -> tuple[list[dict], EarlyStop]:
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
    sched = cosine_with_warmup(opt, cfg.warmup_epochs * steps, cfg.epochs * steps)
    g = torch.Generator().manual_seed(cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    stop, history = EarlyStop(cfg.patience), []
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


def set_trainable(model: EdgeModel, unfreeze: int | None) -> list[nn.Module]:
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


def train_finetune(model: EdgeModel, cfg: TrainConfig, train_paths, train_y, val_paths, val_y,
                    spec: PreprocessSpec, device: torch.device, extra_loss=None,
                   features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[dict], EarlyStop]:
    """``features`` replaces ``model.forward_features`` during training (domain adaptation
    embeds target images in the same pass)."""
    features = features or model.forward_features
    frozen = set_trainable(model, cfg.unfreeze)
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.lr * cfg.backbone_lr_scale})
    if extra_loss is not None:
        groups.append({"params": list(extra_loss.parameters()), "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    train_loader = make_loader(ImageDataset(train_paths, train_y, spec, augment=cfg.augment), cfg.batch_size, True, cfg.seed)
    val_loader = make_loader(ImageDataset(val_paths, val_y, spec), cfg.batch_size, False, 0)
    steps = len(train_loader)
    sched = cosine_with_warmup(opt, cfg.warmup_epochs * steps, cfg.epochs * steps)
    loss_fn = nn.CrossEntropyLoss()
    stop, history = EarlyStop(cfg.patience), []
    total_steps = cfg.epochs * steps
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for block in frozen:  # frozen blocks keep their BatchNorm statistics
            block.eval()
        total, correct, n = 0.0, 0, 0
        for step, (x, y) in enumerate(_ui.progress(train_loader, f"epoch {epoch}/{cfg.epochs}")):
            x, y = x.to(device), y.to(device)
            z = features(x)
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


@STRATEGIES.register("linear-probe")
def _linear_probe(data: FitData) -> Fitted:
    return Fitted(*train_probe(*data.loop_args()))


@STRATEGIES.register("finetune")
def _finetune(data: FitData) -> Fitted:
    return Fitted(*train_finetune(*data.loop_args()))
