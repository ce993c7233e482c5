"""COCO detection metrics: every figure equal to pycocotools' COCOeval (bbox) on the very same
predictions, within 1e-6 (measured: ~1e-16)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from edgetl.tasks.detection import DetectionItem, coco_evaluate

HAS_PYCOCOTOOLS = importlib.util.find_spec("pycocotools") is not None
TOL = 1e-6


def _pycocotools(preds, gts, K):
    """(mAP, mAP@.5, {k: (mAP, mAP@.5) or (None, None)}) from COCOeval on the same boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (pred, gt) in enumerate(zip(preds, gts), start=1):  # image ids in our order
        images.append({"id": i, "width": 2000, "height": 2000, "file_name": f"{i}.png"})
        crowd = gt.get("crowd", np.zeros(len(gt["classes"]), bool))
        for b, c, cr in zip(np.asarray(gt["boxes"], np.float64).tolist(), gt["classes"], crowd):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": int(cr)})
        for b, s, c in pred:
            b = [float(v) for v in b]
            dets.append({"image_id": i, "category_id": int(c) + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": k + 1, "name": str(k)} for k in range(K)]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, 2]  # [T, R, K] at area "all", 100 detections
    per = {}
    for k in range(K):
        s, s50 = prec[:, :, k], prec[0, :, k]
        per[k] = (float(s[s > -1].mean()) if (s > -1).any() else None,
                  float(s50[s50 > -1].mean()) if (s50 > -1).any() else None)
    return float(ev.stats[0]), float(ev.stats[1]), per


def _random_case(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(1, 6))
    n_img = int(rng.integers(1, 25))
    quant = 4 if seed % 2 else None  # coarse coordinates and scores: ties in IoU and in score
    preds, gts = [], []
    for _ in range(n_img):
        k = int(rng.integers(0, 9))
        xy, wh = rng.uniform(0, 400, (k, 2)), rng.uniform(5, 120, (k, 2))
        if quant:
            xy, wh = np.round(xy / quant) * quant, np.round(wh / quant) * quant + quant
        gt = {"boxes": np.concatenate([xy, xy + wh], 1).astype(np.float32), "classes": rng.integers(0, K, k),
              "crowd": rng.random(k) < 0.1}
        if seed % 5 == 0 and k:  # duplicated ground truth: equal IoUs
            gt = {key: np.concatenate([v, v[:1]]) for key, v in gt.items()}
        gts.append(gt)
        pred = []
        score = (lambda: float(np.round(rng.random(), 1))) if quant else (lambda: float(rng.random()))
        for b, c in zip(gt["boxes"], gt["classes"]):
            for _ in range(int(rng.integers(0, 3))):  # misses, hits and duplicates
                pred.append(((b + rng.normal(0, 6, 4)).astype(np.float32), score(),
                             int(c) if rng.random() < 0.9 else int(rng.integers(0, K))))
        for _ in range(int(rng.integers(0, 5))):  # false positives
            xy, wh = rng.uniform(0, 400, 2), rng.uniform(5, 120, 2)
            pred.append((np.concatenate([xy, xy + wh]).astype(np.float32), score(), int(rng.integers(0, K))))
        preds.append(pred)
    return preds, gts, K


def _crowded_case():
    """More than 100 detections of one class in an image (COCOeval keeps the best 100), empty
    images, an image with detections and no ground truth, a class with detections only."""
    rng = np.random.default_rng(7)
    gts, preds = [], []
    xy = rng.uniform(0, 1500, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (60, 2))], 1).astype(np.float32)
    gts.append({"boxes": boxes, "classes": np.zeros(60, np.int64)})
    preds.append([((b + rng.normal(0, 3, 4)).astype(np.float32), float(rng.random()), 0) for b in np.repeat(boxes, 3, 0)])
    gts.append({"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64)})
    preds.append([])
    gts.append({"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64)})
    preds.append([(np.array([10, 10, 50, 50], np.float32), 0.99, 0), (np.array([5, 5, 9, 9], np.float32), 0.5, 2)])
    gts.append({"boxes": np.array([[0, 0, 30, 30], [100, 100, 140, 150]], np.float32), "classes": np.array([1, 1])})
    preds.append([(np.array([1, 1, 31, 29], np.float32), 0.8, 1)])
    return preds, gts, 3


def _realistic_case():
    """Detections that look like a detector's: most objects found with a tight box and a high
    score, a few loose boxes, duplicates at lower scores, background false positives."""
    rng = np.random.default_rng(11)
    preds, gts = [], []
    for _ in range(40):
        k = int(rng.integers(0, 15))
        ctr, size = rng.uniform(40, 600, (k, 2)), rng.uniform(16, 80, (k, 2))
        boxes = np.concatenate([ctr - size / 2, ctr + size / 2], 1).astype(np.float32)
        classes = rng.integers(0, 4, k)
        gts.append({"boxes": boxes, "classes": classes})
        pred = []
        for b, c, s in zip(boxes, classes, size):
            if rng.random() < 0.85:
                pred.append(((b + rng.normal(0, 0.08, 4) * np.r_[s, s]).astype(np.float32), float(rng.beta(8, 2)), int(c)))
                if rng.random() < 0.3:
                    pred.append(((b + rng.normal(0, 0.3, 4) * np.r_[s, s]).astype(np.float32), float(rng.beta(2, 5)), int(c)))
        for _ in range(int(rng.poisson(3))):
            c, s = rng.uniform(20, 620, 2), rng.uniform(16, 80, 2)
            pred.append((np.r_[c - s / 2, c + s / 2].astype(np.float32), float(rng.beta(2, 8)), int(rng.integers(0, 4))))
        preds.append(pred)
    return preds, gts, 4


def _tie_case():
    """A detection with exactly equal IoU (0.6) to two boxes: COCOeval matches the later one,
    which leaves the earlier one for the next detection (two hits; the other choice: one)."""
    gt = {"boxes": np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32), "classes": np.array([0, 0])}
    pred = [(np.array([2.5, 0, 12.5, 10], np.float32), 0.9, 0), (np.array([0, 0, 10, 10], np.float32), 0.8, 0)]
    crowd = {"boxes": np.array([[0, 0, 10, 10], [0, 0, 40, 40]], np.float32), "classes": np.array([0, 0]),
             "crowd": np.array([False, True])}  # a crowd region matches any number of detections
    crowd_pred = [(np.array([0, 0, 10, 10], np.float32), 0.9, 0), (np.array([20, 20, 30, 30], np.float32), 0.95, 0),
                  (np.array([25, 25, 35, 35], np.float32), 0.85, 0), (np.array([60, 60, 70, 70], np.float32), 0.7, 0)]
    return [pred, crowd_pred], [gt, crowd], 1


def _cases():
    yield from (_random_case(seed) for seed in range(24))
    yield _crowded_case()
    yield _realistic_case()
    yield _tie_case()


@pytest.mark.skipif(not HAS_PYCOCOTOOLS, reason="pycocotools is the reference (pip install pycocotools)")
def test_equals_pycocotools():
    worst = 0.0
    for preds, gts, K in _cases():
        if not any(preds):
            continue  # COCO.loadRes cannot take an empty result list
        ours = coco_evaluate(preds, gts, [str(k) for k in range(K)])
        ref_map, ref_map50, ref_per = _pycocotools(preds, gts, K)
        assert ours["n"] == len(gts)
        pairs = [(ours["map"], ref_map), (ours["map50"], ref_map50)]
        for k in range(K):
            mine = ours["per_class"][str(k)]
            pairs += [(mine["map"], ref_per[k][0]), (mine["map50"], ref_per[k][1])]
            assert mine["n"] == sum(int(((g["classes"] == k) & ~g.get("crowd", np.zeros(len(g["classes"]), bool))).sum())
                                    for g in gts)
        for a, b in pairs:
            if b is None or b == -1:  # no ground truth: pycocotools says -1, we say None
                assert a is None
            else:
                worst = max(worst, abs(a - b))
    assert worst <= TOL, worst


def test_perfect_empty_and_named_predictions():
    gt = [DetectionItem(Path("a.png"), 100, 100, np.array([[0, 0, 10, 10], [20, 20, 60, 50]], np.float32),
                        np.array([0, 1])),
          {"boxes": np.array([[5, 5, 25, 25]], np.float32), "classes": np.array([0]), "crowd": np.array([False])}]
    perfect = [[([0, 0, 10, 10], 0.9, "cat"), ([20, 20, 60, 50], 0.8, "dog")], [([5, 5, 25, 25], 0.7, "cat")]]
    r = coco_evaluate(perfect, gt, ["cat", "dog", "bird"])
    assert r["map"] == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0) and r["n"] == 2
    assert r["per_class"]["bird"] == {"map": None, "map50": None, "n": 0}
    assert r["per_class"]["cat"]["n"] == 2
    assert coco_evaluate([[], []], gt, ["cat", "dog"])["map"] == 0.0
    arrays = [{"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.5]), "classes": np.array([0])}, []]
    assert coco_evaluate(arrays, gt, ["cat", "dog"])["per_class"]["cat"]["map50"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="not among the labels"):
        coco_evaluate([[([0, 0, 1, 1], 0.5, "fish")], []], gt, ["cat", "dog"])
    with pytest.raises(ValueError, match="outside the 2 labels"):
        coco_evaluate([[([0, 0, 1, 1], 0.5, 7)], []], gt, ["cat", "dog"])
    with pytest.raises(ValueError, match="images"):
        coco_evaluate([[]], gt, ["cat", "dog"])
    assert coco_evaluate([[]], [{"boxes": np.zeros((0, 4)), "classes": np.zeros(0)}], ["cat"])["map"] is None
