"""Training a detector on a frozen backbone (``edgetl train DATA --task detection``).

``linear-probe``: every training image (and its mirror image) through the frozen backbone once;
the class head solved exactly on the rows (edgetl.tasks.detection.rows), as the
classification probe is (multinomial logistic regression, C chosen on the validation images'
rows; edgetl.workstation.probe_solver), its background logit corrected for the sampled
background; the box head solved exactly too (ridge regression of the FCOS box codes on the
positive rows, the penalty chosen on the validation rows). ``finetune`` then trains the last
``--unfreeze`` stages with the heads by gradient descent (edgetl.workstation.detection.finetune).
The validation images are scored with COCO mAP, as ``edgetl evaluate`` does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core import ui as _ui
from edgetl.errors import ConfigError, DataError

__all__ = ["train_detection", "split_images", "DEFAULT_SIZE"]

DEFAULT_SIZE = 320  # a 40 x 40 map at stride 8: objects down to about 16 pixels


def split_images(data: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the images; every class keeps at least one training image."""
    n = len(data.items)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = int(round(val_fraction * n)) if n >= 5 else 0
    val, train = order[:n_val], order[n_val:]
    have = set(np.concatenate([np.asarray(data.items[i].classes) for i in train]).tolist()) if len(train) else set()
    for j in list(val):  # a class only in validation images: move one such image to training
        classes = set(np.asarray(data.items[j].classes).tolist())
        if classes - have:
            val = val[val != j]
            train = np.append(train, j)
            have |= classes
    return np.sort(train), np.sort(val)


def train_detection(data, out: Path, cfg, backbone, device, overwrite: bool, dist) -> Any:
    """Write a detection RUN (model.pt, run.json) trained on annotated images ``data``."""
    import torch

    from edgetl.core.run import RUN_FORMAT, package_versions, write_run_json
    from edgetl.tasks.detection.data import read_detection_data
    from edgetl.workstation.detection.model import DetectionModel, FeatureMap
    from edgetl.tasks.detection.rows import Rows, embed_items, image_rows, solve_box_head
    from edgetl.workstation.probe_solver import solve_probe
    from edgetl.workstation.training.config import Strategy, TrainReport
    from edgetl.workstation.training.outputs import prepare_out

    if backbone.modality != "image":
        raise ConfigError(f"detection takes images; {backbone.name} is a {backbone.modality} backbone")
    if cfg.strategy is Strategy.ADAPT:
        raise ConfigError("strategy 'adapt' is for classification; detection trains with linear-probe or finetune")
    if dist.active:
        raise ConfigError("detection trains in one process; run it without --nproc-per-node")
    found = read_detection_data(data, strict=cfg.strict)
    if not found.items:
        raise DataError(f"{data}: no annotated images to train on")
    skipped = sum(int(v) for k, v in found.counts.items() if k not in ("boxes_clipped",))
    prepare_out(out, overwrite)
    size = cfg.image_size or DEFAULT_SIZE
    spec = backbone.preprocess.with_input_size(size).letterboxed()
    train_idx, val_idx = split_images(found, cfg.val_split, cfg.seed)
    K = len(found.labels)
    _ui.info(f"{K} class(es), {len(train_idx)} training and {len(val_idx)} validation images, {found.n_boxes} boxes"
             + (f"; {found.counts.get('boxes_clipped', 0)} boxes clipped to their image" if found.counts.get("boxes_clipped") else ""))
    model = DetectionModel(FeatureMap(backbone.module), K).eval()
    t0 = time.perf_counter()

    @torch.no_grad()
    def forward(x: dict) -> np.ndarray:
        return model.forward_features(torch.from_numpy(x["images"])).numpy()

    rng = np.random.default_rng(cfg.seed)
    train_rows, val_rows, val_maps = Rows(), Rows(), {}
    items = found.items
    for i, z, boxes, classes in embed_items([items[j] for j in train_idx], spec, forward, flip=cfg.augment,
                                            progress="embedding training images"):
        image_rows(z, boxes, classes, size, rng, train_rows, int(train_idx[i]))
    for i, z, boxes, classes in embed_items([items[j] for j in val_idx], spec, forward,
                                            progress="embedding validation images"):
        image_rows(z, boxes, classes, size, rng, val_rows, int(val_idx[i]))
        val_maps[int(val_idx[i])] = z
    X, y, codes, _ = train_rows.arrays()
    Xv, yv, codes_v, _ = val_rows.arrays()
    embed_seconds = time.perf_counter() - t0
    if not (y > 0).any():
        raise DataError(f"{data}: no box is large enough for a location of the {model.num_features}-feature map at "
                        f"stride {size // next(iter(val_maps.values())).shape[-1] if val_maps else 8}; "
                        "train at a larger --image-size")
    solution = solve_probe(X, y, Xv, yv, K + 1, refit=cfg.refit)
    W, b = np.asarray(solution.W, np.float32), np.asarray(solution.b, np.float32).copy()
    b[0] += train_rows.prior_shift  # undo the background sampling (see rows.py)
    pos, pos_v = y > 0, yv > 0
    Wb, bb, lam = solve_box_head(X[pos], codes[pos], Xv[pos_v], codes_v[pos_v])
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(W))
        model.head.bias.copy_(torch.from_numpy(b))
        model.box_head.weight.copy_(torch.from_numpy(Wb))
        model.box_head.bias.copy_(torch.from_numpy(bb))
    history: list[dict] = []
    extra: dict[str, Any] = {"probe": {"C": solution.C, "selection": solution.selection, "refit": cfg.refit,
                                       "rows": int(len(y)), "positive_rows": int(pos.sum()),
                                       "background_prior_shift": train_rows.prior_shift, "box_ridge": lam,
                                       "boxes_without_a_location": train_rows.unassigned}}
    if cfg.strategy is Strategy.FINETUNE:
        from edgetl.workstation.detection.finetune import finetune

        history, extra["finetune"] = finetune(model, found, train_idx, val_idx, spec, cfg, device,
                                                train_rows.prior_shift)
        val_maps = {}
    val = _val_metrics(model, found, val_idx, val_maps, spec)
    seconds = time.perf_counter() - t0
    torch.save(model.state_dict(), out / "model.pt")
    metrics = {"val_map": val["map"], "val_map50": val["map50"], "val_per_class": val["per_class"],
               "n_train": int(len(train_idx)), "n_val": int(len(val_idx)), "train_seconds": seconds,
               "embed_seconds": embed_seconds, "skipped": skipped, "counts": dict(found.counts), **extra}
    info = {
        "format": RUN_FORMAT, "task": "detection", "labels": list(found.labels), "backbone": backbone.name,
        "arch": backbone.arch, "pretrained": backbone.pretrained, "modality": "image", "preprocess": spec.to_dict(),
        "num_features": model.num_features, "strategy": cfg.strategy.value, "config": cfg.to_dict(),
        "data_root": str(Path(found.root).resolve()),
        "split": {"train": train_idx.tolist(), "val": val_idx.tolist(), "items": len(items), "format": found.format,
                  "val_fraction": cfg.val_split, "seed": cfg.seed},
        "metrics": metrics, "distributed": dist.to_dict(),
        "versions": package_versions("edgetl", "torch", "torchvision", "timm", "numpy"),
    }
    write_run_json(out, info)
    _ui.info(f"validation mAP@.5 {_pct(val['map50'])}, mAP@[.5:.95] {_pct(val['map'])} on {len(val_idx)} image(s)")
    return TrainReport(out, val["map50"], 0, history, metrics)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _val_metrics(model, found, val_idx: np.ndarray, maps: dict[int, np.ndarray], spec) -> dict[str, Any]:
    """COCO mAP of the model on the validation images, decoded as the device decodes."""
    from edgetl.workstation.detection.evaluation import evaluate_items

    if not len(val_idx):
        return {"map": None, "map50": None, "per_class": {}}
    items = [found.items[j] for j in val_idx]
    known = {i: maps[int(j)] for i, j in enumerate(val_idx) if int(j) in maps}
    return evaluate_items(model, items, found.labels, spec, known)
