"""``finetune`` for token classification: the last ``--unfreeze`` transformer layers (``all``:
every layer and the embeddings) train with the head, starting from the solved probe's head (LP-FT),
cross-entropy over the first subword of each word (``ignore_index`` -100 on the other tokens,
[CLS], [SEP], padding and unknown labels). AdamW, the head at ``--lr``, the encoder at
``backbone_lr_scale`` times it; the epoch with the best validation entity F1 is kept, and
training stops after ``--patience`` epochs without a better one."""

from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import numpy as np

from edgetl.core import ui as _ui

__all__ = ["finetune", "set_trainable"]


def set_trainable(model, unfreeze: int | None) -> int:
    """Freeze the encoder but its last ``unfreeze`` layers (None: all of it); return how many train."""
    blocks = model.backbone.blocks()
    n = len(blocks) if unfreeze is None else min(unfreeze, len(blocks))
    for p in model.backbone.parameters():
        p.requires_grad_(unfreeze is None)
    for block in blocks[len(blocks) - n:]:
        for p in block.parameters():
            p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return n


def _batches(encodings, labels, order: np.ndarray, batch_size: int):
    import torch

    from edgetl.tasks.token_classification.align import pad_labels, stack

    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        x = stack([encodings[i] for i in idx])
        yield (torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"]),
               torch.from_numpy(pad_labels([labels[i] for i in idx], x["input_ids"].shape[1])))


def _token_labels(examples, encodings, tags) -> list[np.ndarray]:
    from edgetl.tasks.token_classification.align import token_labels

    index = {t: i for i, t in enumerate(tags)}
    return [token_labels(e, c, index) for e, c in zip(examples, encodings)]


def finetune(model, train: Sequence[Any], enc_train, val: Sequence[Any], enc_val, tags: Sequence[str], cfg,
             device) -> tuple[list[dict], dict[str, Any], Any]:
    """Train in place; return ``(history, record, validation scores of the kept epoch)``."""
    import torch
    from torch import nn

    from edgetl.workstation.token_classification.rows import val_scores, word_rows

    n_layers = set_trainable(model, cfg.unfreeze)
    y_train = _token_labels(train, enc_train, tags)
    y_val = _token_labels(val, enc_val, tags)
    head = list(model.head.parameters())
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    optim = torch.optim.AdamW([{"params": head, "lr": cfg.lr},
                               {"params": body, "lr": cfg.lr * cfg.backbone_lr_scale}], weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    model.to(device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    index = {t: i for i, t in enumerate(tags)}
    history: list[dict] = []
    best, best_state, best_epoch, best_scores, waited = -1.0, None, 0, None, 0

    @torch.no_grad()
    def features(x: dict) -> np.ndarray:
        ids = torch.from_numpy(x["input_ids"]).to(device)
        mask = torch.from_numpy(x["attention_mask"]).to(device)
        return model.forward_features(ids, mask).cpu().numpy()

    def val_loss() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, mask, y in _batches(enc_val, y_val, np.arange(len(enc_val)), 64):
                logits = model(ids.to(device), mask.to(device))
                y = y.to(device)
                total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                           ignore_index=-100, reduction="sum"))
                count += int((y != -100).sum())
        return total / max(count, 1)

    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        order = rng.permutation(len(enc_train))
        steps = (len(order) + cfg.batch_size - 1) // cfg.batch_size
        with _ui.progress_bar(f"fine-tuning, epoch {epoch}/{cfg.epochs}", steps) as advance:
            for ids, mask, y in _batches(enc_train, y_train, order, cfg.batch_size):
                ids, mask, y = ids.to(device), mask.to(device), y.to(device)
                logits = model(ids, mask)
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                n = int((y != -100).sum())
                total += float(loss) * n
                count += n
                advance(1)
        model.eval()
        row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(count, 1), "seconds": time.perf_counter() - t0}
        if val:
            rows = word_rows(val, enc_val, index, features, progress="scoring validation sentences")
            W = model.head.weight.detach().cpu().numpy()
            b = model.head.bias.detach().cpu().numpy()
            scores = val_scores(rows, W, b, val, tags)
            row.update(val_loss=val_loss(), val_f1=scores.f1)
            if scores.f1 > best:
                best, best_epoch, best_scores, waited = scores.f1, epoch, scores, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                waited += 1
        history.append(row)
        _ui.info(f"epoch {epoch}: train loss {row['train_loss']:.4f}"
                 + (f", validation loss {row['val_loss']:.4f}, entity F1 {100 * row['val_f1']:.1f}%" if val else ""))
        if val and waited >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval().cpu()
    for p in model.parameters():
        p.requires_grad_(False)
    record = {"unfreeze": cfg.unfreeze, "layers_trained": n_layers, "epochs_run": len(history), "best_epoch": best_epoch,
              "lr": cfg.lr, "backbone_lr": cfg.lr * cfg.backbone_lr_scale, "batch_size": cfg.batch_size}
    return history, record, best_scores
