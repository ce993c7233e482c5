"""The training loops: a head on cached embeddings, and fine-tuning with unfrozen blocks."""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np

import torch
from torch import nn

from edgetl.core import ui as _ui
from edgetl.modalities.image import PreprocessSpec
from edgetl.workstation.backbones import backbone_blocks
from edgetl.workstation.model import EdgeModel
from edgetl.workstation.training import distributed
from edgetl.workstation.training.config import TrainConfig
from edgetl.workstation.training.data import as_inputs, embed_items, make_dataset, make_item_loader
from edgetl.workstation.training.strategies import STRATEGIES, FitData, Fitted

__all__ = ["EarlyStop", "train_probe", "train_finetune", "set_trainable", "evaluate_model", "cosine_with_warmup",
           "batchnorms"]


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EarlyStop:
    """Keeps the best state by validation loss (accuracy breaks ties); says when patience ran out.
    Validation sets are small: accuracy moves in steps of one sample and its maximum is often a
    lucky early epoch, while the loss is smooth (measured: selection by accuracy kept a
    barely trained epoch-1 head on a 28-image split)."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.state, self.bad = patience, -1.0, 0, None, 0
        self.best_key = (float("inf"), 0.0)

    def update(self, epoch: int, acc: float, model: nn.Module, loss: float = float("nan")) -> bool:
        key = (loss if math.isfinite(loss) else float("inf"), -acc)
        if self.state is None or key < self.best_key:
            self.best, self.best_epoch, self.best_key, self.bad = acc, epoch, key, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.bad += 1
        return self.bad >= self.patience


def _probe_history(sol, train_loss: float, train_acc: float, seconds: float) -> list[dict]:
    """One row per L2 strength tried (``epoch`` numbers them), the chosen one with its
    training loss and accuracy (the history.csv columns)."""
    rows = []
    for i, (C, val_loss, val_acc) in enumerate(sol.table, 1):
        chosen = C == sol.C
        rows.append(dict(epoch=i, C=C, train_loss=train_loss if chosen else None,
                         train_acc=train_acc if chosen else None, val_loss=val_loss, val_acc=val_acc,
                         lr=None, seconds=seconds if chosen else 0.0))
    return rows


def solve_head(model: EdgeModel, cfg: TrainConfig, train_paths, train_y, val_paths, val_y, spec: PreprocessSpec,
               device: torch.device, *, refit: bool, backbone=None):
    """Embed once with the frozen backbone (``backbone``, a Backbone built only if some row is
    not cached, else ``model.backbone``), solve the multinomial logistic regression head
    exactly (L2 strength chosen by validation log-loss, or k-fold for small splits), load it
    into ``model.head``. Returns the solution, the training embeddings' loss/accuracy and
    how the embeddings were computed."""
    from edgetl.workstation.probe_solver import score_head, solve_probe

    d = distributed.current()  # under torchrun each rank embeds its shard; rank 0 solves
    items = [*train_paths, *val_paths]  # one pass: one export, one weights digest, one report
    mine = distributed.shard(len(items), d)
    seen: dict = {}
    # an image the scan passed may still not decode (sound headers and checksums, a broken
    # compressed stream): skipped and counted, as the scan does, not the end of the run
    z = embed_items(backbone or model.backbone, [items[i] for i in mine], spec, device, description="embedding",
                    options=cfg.embed_options(), report=seen, skip_unreadable=True).numpy()
    failed_here = np.zeros((len(mine), 1), np.float32)
    for f in seen.get("failed") or []:
        failed_here[f["index"]] = 1.0
        f["index"] = mine[f["index"]]
    if d.active:  # counts of the whole job; seconds and images/s stay this rank's
        seen["images"], seen["computed"], seen["cached"] = (int(v) for v in distributed.all_sum(
            [seen["images"], seen["computed"], seen["cached"]], d))
        seen["ranks"] = d.world
    z = distributed.gather_rows(z, len(items), d)
    usable = distributed.gather_rows(failed_here, len(items), d)[:, 0] == 0
    if not usable.all():
        bad = [items[i] for i in np.flatnonzero(~usable)]
        why = next((f["error"] for f in seen.get("failed") or []), "")
        _ui.warn(f"skipped {len(bad)} image(s) that do not decode, e.g. {why or bad[0]}")
    z_train, z_val = z[:len(train_paths)], z[len(train_paths):]
    if not usable.all():  # (only then: a mask copies the rows out of their memory-mapped store)
        keep_train, keep_val = usable[:len(train_paths)], usable[len(train_paths):]
        z_train, z_val = z_train[keep_train], z_val[keep_val]
        train_y = [y for y, ok in zip(train_y, keep_train) if ok]
        val_y = [y for y, ok in zip(val_y, keep_val) if ok]
    seen["failed"] = [str(items[i]) for i in np.flatnonzero(~usable)]
    n_classes = model.head.out_features
    sol = None
    if d.main:
        sol = solve_probe(z_train, np.asarray(train_y), z_val, np.asarray(val_y), n_classes, refit=refit,
                          seed=cfg.seed)
    sol = distributed.broadcast_object(sol, d)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(sol.W))
        model.head.bias.copy_(torch.from_numpy(sol.b))
    # the head in eval mode is logits = z W^T + b: scored over row chunks of the (memory-mapped) rows
    train_loss, train_acc = score_head(sol.W, sol.b, z_train, np.asarray(train_y))
    return sol, train_loss, train_acc, seen


def train_probe(model: EdgeModel, cfg: TrainConfig, train_paths, train_y, val_paths, val_y,
                spec: PreprocessSpec, device: torch.device, backbone=None) -> tuple[list[dict], EarlyStop, dict]:
    """The linear probe: the frozen backbone runs once per image, then the head is the
    convex optimum (no epochs, no early stopping). ``stop.best`` is the chosen strength's
    held-out accuracy (validation split, or out-of-fold). A head-only ``model`` (no
    backbone) embeds with ``backbone``, which is built only if some row is not cached."""
    if model.backbone is not None:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    t0 = time.perf_counter()
    sol, train_loss, train_acc, embedding = solve_head(model, cfg, train_paths, train_y, val_paths, val_y, spec, device,
                                                       refit=cfg.refit, backbone=backbone)
    stop = EarlyStop(cfg.patience)
    stop.update(0, sol.val_accuracy, model, sol.val_loss)
    history = _probe_history(sol, train_loss, train_acc, time.perf_counter() - t0)
    stop.best_epoch = next(i for i, row in enumerate(history, 1) if row["C"] == sol.C)
    probe = {"C": sol.C, "selection": sol.selection, "refit": sol.refit, "n_fit": sol.n_train,
             "val_loss": sol.val_loss, "table": [list(row) for row in sol.table]}
    return history, stop, {"probe": probe, "embedding": embedding}


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


def _evaluate_sums(model: EdgeModel, loader, device: torch.device) -> tuple[float, int, int]:
    model.eval()
    loss_fn, total, correct, n = nn.CrossEntropyLoss(reduction="sum"), 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(*as_inputs(x, device))
            y = y.to(device)
            total += float(loss_fn(logits, y))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return total, correct, n


def evaluate_model(model: EdgeModel, loader, device: torch.device) -> tuple[float, float]:
    total, correct, n = _evaluate_sums(model, loader, device)
    return total / max(n, 1), correct / max(n, 1)


class _Step(nn.Module):
    """One training forward: features, head, cross-entropy (+ the adaptation loss). A module,
    so that DDP wraps the whole step (its parameters: the model's and the extra loss's)."""

    def __init__(self, model: EdgeModel, features: Callable[[torch.Tensor], torch.Tensor], extra_loss=None):
        super().__init__()
        self.model, self.extra = model, extra_loss
        self._features = features

    def forward(self, x: tuple[torch.Tensor, ...], y: torch.Tensor, progress: float):
        z = self._features(*x)
        logits = self.model.forward_head(z)
        loss = nn.functional.cross_entropy(logits, y)
        if self.extra is not None:
            loss = loss + self.extra(z, progress)
        return loss, logits


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The backbone's BatchNorm layers that keep running statistics."""
    return [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


def train_finetune(model: EdgeModel, cfg: TrainConfig, train_paths, train_y, val_paths, val_y,
                   spec: PreprocessSpec, device: torch.device, extra_loss=None,
                   features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[dict], EarlyStop]:
    """Fine-tune the last ``cfg.unfreeze`` blocks and the head. With ``cfg.lp_ft`` the head
    starts from the solved linear probe (LP-FT, Kumar et al. 2022: fine-tuning from a good
    head distorts the pretrained features less than from a random one). ``features``
    replaces ``model.forward_features`` during training (adaptation embeds target images in
    the same pass). The best epoch is kept by validation loss."""
    if cfg.lp_ft or (cfg.lp_ft is None and cfg.strategy.value == "finetune"):
        seen = solve_head(model, cfg, train_paths, train_y, val_paths, val_y, spec, device, refit=False)[3]
        failed = set(seen.get("failed") or [])
        if failed:  # what does not decode for the probe does not for the loaders either
            train_y = [y for p, y in zip(train_paths, train_y) if str(p) not in failed]
            train_paths = [p for p in train_paths if str(p) not in failed]
            val_y = [y for p, y in zip(val_paths, val_y) if str(p) not in failed]
            val_paths = [p for p in val_paths if str(p) not in failed]
    features = features or model.forward_features
    frozen = set_trainable(model, cfg.unfreeze)
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.lr * cfg.backbone_lr_scale})
    if extra_loss is not None:
        groups.append({"params": list(extra_loss.parameters()), "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    d = distributed.current()
    train_ds = make_dataset(train_paths, train_y, spec, augment=cfg.augment)
    sampler = None
    if d.active:  # each rank its shard of every epoch; padded to equal length, as DDP needs
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=d.world, rank=d.rank, shuffle=True,
                                                      seed=cfg.seed)
        train_loader = make_item_loader(train_ds, cfg.batch_size, False, cfg.seed, sampler=sampler)
    else:
        train_loader = make_item_loader(train_ds, cfg.batch_size, True, cfg.seed)
    mine = distributed.shard(len(val_paths), d)  # validation: no padding, nothing counted twice
    val_loader = make_item_loader(make_dataset([val_paths[i] for i in mine], [val_y[i] for i in mine], spec),
                                  cfg.batch_size, False, 0)
    step_module: nn.Module = _Step(model, features, extra_loss)
    if d.active:
        from torch.nn.parallel import DistributedDataParallel

        # Frozen parameters (requires_grad False) are not synchronised. BatchNorm of frozen
        # blocks stays in eval mode below; trainable blocks keep per-rank statistics and rank
        # 0's are saved (SyncBatchNorm does not run on the CPU). Unused parameters: none when
        # the last N blocks train; a fully unfrozen backbone may hold some.
        step_module = DistributedDataParallel(step_module, find_unused_parameters=cfg.unfreeze is None,
                                              broadcast_buffers=False)
    steps = len(train_loader)
    sched = cosine_with_warmup(opt, cfg.warmup_epochs * steps, cfg.epochs * steps)
    stop, history = EarlyStop(cfg.patience), []
    total_steps = cfg.epochs * steps
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        for block in frozen:  # frozen blocks keep their BatchNorm statistics (after model.train())
            block.eval()
        # BatchNorm normalises with its running statistics and keeps them, trainable blocks'
        # too (their affine parameters still learn). Measured (300 digits at 64 px, LP-FT, last
        # 2 blocks, 3 epochs): held-out 0.81 vs 0.33 with batch statistics, which the head solved
        # on the running statistics' features does not survive (first-epoch loss 1.7 vs 27).
        if cfg.batchnorm == "frozen":
            for m in batchnorms(model):
                m.eval()
        total, correct, n = 0.0, 0, 0
        for step, (x, y) in enumerate(_ui.progress(train_loader, f"epoch {epoch}/{cfg.epochs}")):
            x, y = as_inputs(x, device), y.to(device)
            loss, logits = step_module(x, y, ((epoch - 1) * steps + step) / max(1, total_steps))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
        total, correct, n = distributed.all_sum([total, correct, n], d)
        val_total, val_correct, val_n = distributed.all_sum(_evaluate_sums(model, val_loader, device), d)
        if int(val_n) != len(val_paths):  # every validation image once, over all ranks
            raise RuntimeError(f"validation counted {int(val_n)} images of {len(val_paths)}")
        val_loss, val_acc = val_total / max(val_n, 1), val_correct / max(val_n, 1)
        row = dict(epoch=epoch, train_loss=total / n, train_acc=correct / n, val_loss=val_loss, val_acc=val_acc,
                   lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        if stop.update(epoch, val_acc, model, val_loss):
            break
    return history, stop


@STRATEGIES.register("linear-probe")
def _linear_probe(data: FitData) -> Fitted:
    return Fitted(*train_probe(*data.loop_args(), backbone=data.backbone))


@STRATEGIES.register("finetune")
def _finetune(data: FitData) -> Fitted:
    return Fitted(*train_finetune(*data.loop_args()))
