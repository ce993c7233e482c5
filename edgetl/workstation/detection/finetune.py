"""Fine-tuning a detector: ``edgetl train DATA --task detection --strategy finetune``.

It starts from the heads the linear probe solved exactly and trains them with the last
``--unfreeze`` stages of the feature map (FeatureMap.blocks(); all of them with
``--unfreeze all``) by AdamW on views of each training image (``--augment``, the default): the
image, its mirror image, and ``CROPS`` random crops (each mirrored or not) that zoom in by 1.1x
to 2x and keep the boxes whose centre they hold, clipped to the crop (scale and crop
augmentation, as SSD's; a view's boxes follow its pixels); what a crop shows of a box it cuts
off is ignored, not taught as background. The views are drawn once, seeded, so
the frozen stages run once per view:

- the class head by cross-entropy on every location, the background weighted by the rate the
  probe sampled it at and the background logit's prior shift taken off while training, so the
  objective is the probe's own (in expectation over its sampling) and the shift still applies
  after; locations inside a box but not assigned to it count for nothing, as in the probe;
- the box head by the squared error of the FCOS box codes on the positive locations (the ridge
  head's loss).

Batch norm stays frozen (detection batches are a few images). What the frozen stages make of
each image is computed once and kept (a bounded cache, else recomputed each batch), so an
epoch runs only the trainable stages. Every epoch is scored by validation mAP@.5, decoded as
the device decodes; the best epoch is kept, the probe's heads (epoch 0) included, so
fine-tuning never returns a model worse on the validation images than the probe it started from.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgetl.core import ui as _ui

__all__ = ["finetune", "views_of", "view_image", "view_boxes", "CACHE_BYTES", "CROPS"]

View = tuple  # (image index, mirrored, crop (x0, y0, side) in the letterboxed input's pixels or None)

CACHE_BYTES = 2 * 1024**3  # the frozen stages' outputs are kept in memory up to this size
CROPS = 1  # random zoomed crops per training image, beside the image and its mirror
ZOOM = (0.5, 0.9)  # a crop's side as a fraction of the input's: objects grow 1.1x to 2x
BOX_WEIGHT = 1.0  # the box codes' squared error next to the class cross-entropy


def views_of(n: int, size: int, augment: bool, rng: np.random.Generator) -> list[View]:
    """The training views of ``n`` images: each image alone, or (``augment``) with its mirror and
    :data:`CROPS` random zoomed crops, each mirrored with probability one half."""
    if not augment:
        return [(i, False, None) for i in range(n)]
    views: list[View] = []
    for i in range(n):
        views += [(i, False, None), (i, True, None)]
        for _ in range(CROPS):
            side = int(round(size * rng.uniform(*ZOOM)))
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
            views.append((i, bool(rng.integers(2)), (x0, y0, side)))
    return views


def view_image(image: np.ndarray, view: View) -> np.ndarray:
    """A letterboxed model input [3, S, S] as ``view`` sees it: mirrored, then cropped and
    resized back to S x S (bilinear)."""
    _, flip, crop = view
    if flip:
        image = image[..., ::-1]
    if crop is not None:
        import torch

        x0, y0, side = crop
        size = image.shape[-1]
        patch = torch.from_numpy(np.ascontiguousarray(image[:, y0:y0 + side, x0:x0 + side]))[None]
        image = torch.nn.functional.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    return np.ascontiguousarray(image)


def view_boxes(item, size: int, view: View) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An item's boxes and classes as ``view`` sees them (letterboxed input pixels): mirrored;
    in a crop, the boxes whose centre it holds, moved and scaled with it, clipped to it. Third:
    what the crop shows of the boxes it cuts off (their centre outside it), clipped to it:
    neither object nor background (no loss there), else an object's visible half would be
    taught as background."""
    from edgetl.tasks.detection.rows import item_boxes

    _, flip, crop = view
    boxes, classes = item_boxes(item, size, flip=flip)
    if crop is None:
        return boxes, classes, np.zeros((0, 4), np.float32)
    x0, y0, side = crop
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    keep = np.all((centres >= (x0, y0)) & (centres < (x0 + side, y0 + side)), axis=1)
    moved = np.clip((boxes - np.float32([x0, y0, x0, y0])) * np.float32(size / side), 0, size).astype(np.float32)
    cut = moved[~keep]
    cut = cut[(cut[:, 2] > cut[:, 0]) & (cut[:, 3] > cut[:, 1])]  # those the crop shows at all
    return moved[keep], np.asarray(classes)[keep], cut


def _targets(item, size: int, grid: tuple[int, int], view: View, rate: float) -> tuple[np.ndarray, ...]:
    """(labels [L], box codes [L, 4], class weights [L]) of one view of an image over the
    ``grid``'s locations, as the probe's rows assign them (edgetl.tasks.detection.rows); the
    locations inside a box the view cuts off weigh nothing."""
    from edgetl.tasks.detection.rows import location_targets

    boxes, classes, cut = view_boxes(item, size, view)
    assigned, inside = location_targets(boxes, classes, grid[0], grid[1], size, ignore=cut)
    weights = np.where(assigned.labels > 0, 1.0, np.where(inside, 0.0, rate)).astype(np.float32)
    return assigned.labels, assigned.targets.astype(np.float32), weights


class _Split:
    """The feature map cut where training starts: ``prefix`` (frozen, no gradient) and ``rest``."""

    def __init__(self, fm, unfreeze: int | None):
        self.stages = fm.blocks()
        n = len(self.stages)
        self.first = 0 if unfreeze is None else max(0, n - unfreeze)  # the first trainable stage
        self.early_end = 1 + len(fm.early)  # stages[:early_end] make the stride-8 features

    def trainable(self) -> list:
        return [p for s in self.stages[self.first:] for p in s.parameters()]

    def prefix(self, x):
        """images -> (stride-8 features when already made, else None; the first trainable stage's input)."""
        h, f8 = x, None
        for i, stage in enumerate(self.stages[:self.first]):
            h = stage(h)
            if i == self.early_end - 1:
                f8 = h
        return f8, h

    def rest(self, f8, h):
        import torch
        from torch import nn

        for i in range(self.first, len(self.stages)):
            h = self.stages[i](h)
            if i == self.early_end - 1:
                f8 = h
        return torch.cat([f8, nn.functional.interpolate(h, size=f8.shape[-2:], mode="nearest")], dim=1)


def finetune(model, found, train_idx: np.ndarray, val_idx: np.ndarray, spec, cfg, device,
             prior_shift: float) -> tuple[list[dict], dict[str, Any]]:
    """Train ``model`` (heads solved, background logit shifted by ``prior_shift``) in place;
    returns (history, what run.json records). The model ends with the best epoch's weights."""
    import copy

    import torch

    from edgetl.modalities import batches, get_modality
    from edgetl.workstation.detection.evaluation import evaluate_items

    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    size = spec.input_size
    items = [found.items[j] for j in train_idx]
    val_items = [found.items[j] for j in val_idx]
    split = _Split(model.backbone, cfg.unfreeze)
    for p in model.parameters():
        p.requires_grad_(False)
    params = split.trainable() + list(model.head.parameters()) + list(model.box_head.parameters())
    for p in params:
        p.requires_grad_(True)
    model.eval()  # batch norm frozen: its running statistics are the pretrained ones
    rate = float(np.exp(-prior_shift))  # background rows sampled / background locations
    with torch.no_grad():
        model.head.bias[0] -= prior_shift

    # the frozen stages' outputs (and the targets) of every view of every image, once
    samples = views_of(len(items), size, cfg.augment, rng)
    per_image: dict[int, list[View]] = {}
    for view in samples:
        per_image.setdefault(view[0], []).append(view)
    cache: dict[View, tuple] = {}
    targets: dict[View, tuple] = {}
    cache_bytes, cache_on = 0, True
    modality = get_modality("image")
    with torch.no_grad():
        grid = tuple(int(d) for d in model.forward_features(torch.zeros(1, 3, size, size)).shape[-2:])
    with torch.no_grad(), _ui.progress_bar("fine-tuning: frozen stages", len(items)) as advance:
        for indices, x, _ in batches(modality, [it.path for it in items], spec, 8, strict=True):
            for k in range(len(per_image[indices[0]])):  # every image has as many views
                views = [per_image[i][k] for i in indices]
                for view in views:
                    targets[view] = _targets(items[view[0]], size, grid, view, rate)
                if not cache_on:  # past the cache's bound: the prefix is computed per batch instead
                    continue
                images = np.stack([view_image(x["images"][row], view) for row, view in enumerate(views)])
                f8, h = split.prefix(torch.from_numpy(images))
                for row, view in enumerate(views):
                    if cache_on:
                        kept = (None if f8 is None else f8[row].clone(), h[row].clone())
                        cache_bytes += sum(t.numel() * 4 for t in kept if t is not None)
                        cache[view] = kept
                        if cache_bytes > CACHE_BYTES:
                            cache_on = False
                            cache.clear()
            advance(len(indices))

    def inputs(batch: list[View]):
        if cache_on:
            f8s = [cache[s][0] for s in batch]
            f8 = None if f8s[0] is None else torch.stack(f8s)
            return f8, torch.stack([cache[s][1] for s in batch])
        arrays = []
        for view in batch:
            _, x, _ = next(iter(batches(modality, [items[view[0]].path], spec, 1, strict=True)))
            arrays.append(view_image(x["images"][0], view))
        with torch.no_grad():
            return split.prefix(torch.from_numpy(np.stack(arrays)))

    def score() -> dict[str, Any]:
        with torch.no_grad():
            model.head.bias[0] += prior_shift
            try:
                return evaluate_items(model, val_items, found.labels, spec) if val_items else {"map50": None, "map": None}
            finally:
                model.head.bias[0] -= prior_shift

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(samples) / cfg.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(1, steps),
                                                   pct_start=min(0.3, 1 / max(1, cfg.epochs)))
    start = score()
    history = [{"epoch": 0, "train_loss": None, "class_loss": None, "box_loss": None, "val_map50": start["map50"],
                "val_map": start["map"], "lr": 0.0, "seconds": 0.0}]
    best = (start["map50"] if start["map50"] is not None else -1.0, 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(samples))
        totals = np.zeros(3)
        with _ui.progress_bar(f"fine-tuning epoch {epoch}/{cfg.epochs}", len(order)) as advance:
            for s in range(0, len(order), cfg.batch_size):
                batch = [samples[k] for k in order[s:s + cfg.batch_size]]
                f8, h = inputs(batch)
                z = split.rest(f8, h)
                logits, codes = model.forward_head(z)
                y = torch.from_numpy(np.stack([targets[b][0] for b in batch]))
                t = torch.from_numpy(np.stack([targets[b][1] for b in batch]))
                w = torch.from_numpy(np.stack([targets[b][2] for b in batch]))
                ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                       reduction="none")
                class_loss = (ce * w.reshape(-1)).sum() / w.sum().clamp_min(1e-6)
                pos = y > 0
                box_loss = ((codes[pos] - t[pos]) ** 2).sum(-1).mean() if pos.any() else codes.sum() * 0.0
                loss = class_loss + BOX_WEIGHT * box_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                totals += np.array([float(loss.detach()), float(class_loss.detach()), float(box_loss.detach())]) * len(batch)
                advance(len(batch))
        val = score()
        totals /= len(samples)
        history.append({"epoch": epoch, "train_loss": totals[0], "class_loss": totals[1], "box_loss": totals[2],
                        "val_map50": val["map50"], "val_map": val["map"], "lr": float(schedule.get_last_lr()[0]),
                        "seconds": time.perf_counter() - t0})
        _ui.info(f"epoch {epoch}: loss {totals[0]:.4f}, validation mAP@.5 "
                 + ("-" if val["map50"] is None else f"{100 * val['map50']:.1f}%"))
        if val["map50"] is None or val["map50"] > best[0]:
            best = (-1.0 if val["map50"] is None else val["map50"], epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    with torch.no_grad():
        model.head.bias[0] += prior_shift
    for p in model.parameters():
        p.requires_grad_(False)
    info = {"unfreeze": "all" if cfg.unfreeze is None else cfg.unfreeze, "epochs": cfg.epochs, "lr": cfg.lr,
            "batch_size": cfg.batch_size, "best_epoch": best[1], "trainable_stages": len(split.stages) - split.first,
            "trainable_parameters": int(sum(p.numel() for p in params)), "cached": cache_on,
            "views": {"per_image": len(samples) // max(1, len(items)),
                      "kinds": ["image", "mirror", *(["zoomed crop"] * CROPS)] if cfg.augment else ["image"]},
            "background_rate": rate, "history": history}
    return history, info
