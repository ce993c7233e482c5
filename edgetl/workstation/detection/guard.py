"""How the quantization guard scores a detector's int8 backbone: its outputs through the RUN's
fp32 heads, decoded as the device decodes, scored with COCO mAP@.5 on the held-out images
(``accuracy`` in the guard's record is mAP@.5, ``drop`` its fall from the fp32 backbone's), and
``agreement`` the share of the fp32 backbone's detections (score >= edgetl's reporting
threshold) that the int8 backbone also finds (same class, IoU >= 0.5, with at least half that
score), averaged with the same share the other way round: 1.0 when int8 finds the same boxes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["scorer", "DetectionScorer", "box_agreement"]


def box_agreement(a: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  b: list[tuple[np.ndarray, np.ndarray, np.ndarray]], threshold: float) -> float:
    """Symmetric share of confident detections found again (see the module docstring)."""
    from edgetl.tasks.detection.boxes import box_iou

    def found(x, y) -> tuple[int, int]:
        hit = total = 0
        for (bx, sx, cx), (by, sy, cy) in zip(x, y):
            mine = sx >= threshold
            total += int(mine.sum())
            if not mine.any():
                continue
            theirs = sy >= threshold / 2
            if not theirs.any():
                continue
            iou = box_iou(bx[mine], by[theirs])
            same = cx[mine][:, None] == cy[theirs][None, :]
            hit += int(((iou >= 0.5) & same).any(axis=1).sum())
        return hit, total

    h1, t1 = found(a, b)
    h2, t2 = found(b, a)
    shares = [h / t for h, t in ((h1, t1), (h2, t2)) if t]
    return float(np.mean(shares)) if shares else 1.0


class DetectionScorer:
    def __init__(self, ctx: Any, z_fp32: np.ndarray):
        from edgetl.workstation.quantization import ort_qdq as qort

        self.items = list(ctx.y_val)
        self.sizes = ctx.cache["inputs_extra"]["image_size"]
        self.input_size = int(ctx.xv["images"].shape[-1])
        self.head, self.box_head = ctx.head, ctx.head.with_name("box_head.onnx")
        self._run = qort.run_batched
        info = json.loads((ctx.root / "run.json").read_text())
        self.labels = list(info["labels"])
        self.fp32 = self._decode(z_fp32, threshold=None)
        self.fp32_accuracy = self._map50(self.fp32)

    def _decode(self, z: np.ndarray, threshold: float | None):
        from edgetl.tasks.detection.task import EVAL_THRESHOLD, decode

        n, f, h, w = z.shape
        rows = np.ascontiguousarray(np.moveaxis(z, 1, -1).reshape(-1, f))
        logits = self._run(self.head, rows, batch=4096).reshape(n, h * w, -1)
        codes = self._run(self.box_head, rows, batch=4096).reshape(n, h * w, 4)
        return [decode(logits[i], codes[i], (h, w), self.input_size, self.sizes[i],
                       score_threshold=EVAL_THRESHOLD if threshold is None else threshold) for i in range(n)]

    def _map50(self, dets) -> float:
        from edgetl.tasks.detection.metric import coco_evaluate

        preds = [{"boxes": b, "scores": s, "classes": c} for b, s, c in dets]
        value = coco_evaluate(preds, self.items, self.labels)["map50"]
        return float(value) if value is not None else 0.0

    def __call__(self, z: np.ndarray) -> dict[str, float]:
        from edgetl.tasks.detection.task import SCORE_THRESHOLD

        dets = self._decode(z, threshold=None)
        score = self._map50(dets)
        return {"accuracy": score, "drop": self.fp32_accuracy - score,
                "agreement": box_agreement(self.fp32, dets, SCORE_THRESHOLD)}


def scorer(ctx: Any, z_fp32: np.ndarray) -> DetectionScorer:
    return DetectionScorer(ctx, z_fp32)
