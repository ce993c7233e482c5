"""COCO detection metrics, exactly as ``pycocotools``' ``COCOeval`` computes them for boxes.

``coco_evaluate`` reports mAP@[.50:.05:.95] (``map``) and mAP@.50 (``map50``), overall and per
class, with COCOeval's semantics: IoU thresholds ``linspace(.5, .95, 10)``, 101-point
interpolated precision, at most 100 detections per image and class (highest scores first,
ties in input order), area range "all", crowd boxes as ignore regions (a detection matched to
one counts neither way; its IoU with a crowd box is intersection / detection area), images
without detections, and classes without ground truth left out of the mean (COCOeval's -1;
reported here as ``None``). ``tests/test_detection_metric.py`` checks every figure against
pycocotools on the same predictions. Torch-free; per image and class the greedy matching runs
over detections with all thresholds and ground-truth boxes at once in numpy.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["coco_evaluate", "IOU_THRESHOLDS", "RECALL_THRESHOLDS", "MAX_DETECTIONS"]

# COCOeval's Params, bit for bit.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = 100
_AREA_ALL = (0.0, 1e5 ** 2)
_THRESH = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)  # COCOeval: iou = min([t, 1 - 1e-10])


def _classes(classes: Any, index: Mapping[str, int], where: str) -> np.ndarray:
    c = np.asarray(classes).reshape(-1)
    if c.dtype.kind in "UO" and len(c):  # label names (predict's output): map them to indices
        try:
            return np.asarray([index[str(x)] for x in c], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"{where}: label {exc.args[0]!r} is not among the labels") from None
    return c.astype(np.int64)


def _predictions(pred: Any, where: str, index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's predictions -> (xywh float64 [n, 4], scores float64 [n], classes int64 [n])."""
    if isinstance(pred, Mapping):
        boxes, scores, classes = pred["boxes"], pred["scores"], pred["classes"]
    else:
        pred = list(pred)
        boxes = [p[0] for p in pred]
        scores = [p[1] for p in pred]
        classes = [p[2] for p in pred]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = _classes(classes, index, where)
    if not (len(boxes) == len(scores) == len(classes)):
        raise ValueError(f"{where}: {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes")
    if not np.isfinite(boxes).all() or not np.isfinite(scores).all():
        raise ValueError(f"{where}: boxes and scores must be finite")
    return _xywh(boxes), scores, classes


def _ground_truth(gt: Any, where: str, index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's ground truth -> (xywh float64 [k, 4], classes int64 [k], crowd bool [k])."""
    if isinstance(gt, Mapping):
        boxes, classes, crowd = gt["boxes"], gt["classes"], gt.get("crowd")
    else:  # a DetectionItem, or anything with the same attributes
        boxes, classes, crowd = gt.boxes, gt.classes, getattr(gt, "crowd", None)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes = _classes(classes, index, where)
    crowd = np.zeros(len(classes), bool) if crowd is None else np.asarray(crowd, dtype=bool).reshape(-1)
    if not (len(boxes) == len(classes) == len(crowd)):
        raise ValueError(f"{where}: {len(boxes)} boxes, {len(classes)} classes, {len(crowd)} crowd flags")
    return _xywh(boxes), classes, crowd


def _xywh(b: np.ndarray) -> np.ndarray:
    # COCO's own box form; pycocotools computes every IoU from it (x + w, not x2).
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def _iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[D, G] IoU from xywh, in pycocotools' (maskApi.c bbIou) arithmetic."""
    w = np.minimum(d[:, None, 2] + d[:, None, 0], g[None, :, 2] + g[None, :, 0]) - np.maximum(d[:, None, 0], g[None, :, 0])
    h = np.minimum(d[:, None, 3] + d[:, None, 1], g[None, :, 3] + g[None, :, 1]) - np.maximum(d[:, None, 1], g[None, :, 1])
    da = (d[:, 2] * d[:, 3])[:, None]
    ga = (g[:, 2] * g[:, 3])[None, :]
    inter = w * h
    union = np.where(crowd[None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = inter / union
    return np.where((w <= 0) | (h <= 0), 0.0, out)


def _match(ious: np.ndarray, ignore: np.ndarray, crowd: np.ndarray, d_area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg for one image and class: detections (sorted by score, at most 100)
    against ground truth (sorted regular first). Returns (matched [T, D], ignored [T, D])."""
    T, (D, G) = len(_THRESH), ious.shape
    matched = np.zeros((T, D), dtype=bool)
    det_ignore = np.zeros((T, D), dtype=bool)
    if G:
        taken = np.zeros((T, G), dtype=bool)
        rows = np.arange(T)
        regular = ~ignore
        for d in range(D):
            free = ~taken | crowd[None, :]  # a matched crowd box can match again
            ok = free & (ious[d][None, :] >= _THRESH[:, None])  # [T, G]
            # Among candidates, the highest IoU wins; equal IoUs: the last one (COCOeval replaces
            # its best on >=). Regular boxes come first: an ignored one is taken only when no
            # regular box qualifies.
            for group in (regular, ~regular):
                cand = ok & group[None, :]
                score = np.where(cand, ious[d][None, :], -np.inf)
                best = G - 1 - np.argmax(score[:, ::-1], axis=1)
                hit = cand[rows, best] & ~matched[:, d]
                matched[hit, d] = True
                det_ignore[hit, d] = ignore[best[hit]]
                taken[rows[hit], best[hit]] = True
    outside = (d_area < _AREA_ALL[0]) | (d_area > _AREA_ALL[1])
    det_ignore |= ~matched & outside[None, :]
    return matched, det_ignore


def _precision(scores: list[np.ndarray], matched: list[np.ndarray], ignored: list[np.ndarray],
               n_gt: int) -> np.ndarray:
    """COCOeval.accumulate for one class: precision [T, R] at the recall thresholds."""
    T, R = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    s = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-s, kind="mergesort")
    tm = np.concatenate(matched, axis=1)[:, order] if matched else np.zeros((T, 0), bool)
    ti = np.concatenate(ignored, axis=1)[:, order] if ignored else np.zeros((T, 0), bool)
    tp = np.cumsum(tm & ~ti, axis=1).astype(np.float64)
    fp = np.cumsum(~tm & ~ti, axis=1).astype(np.float64)
    out = np.zeros((T, R))
    nd = tp.shape[1]
    if nd == 0:
        return out
    rc = tp / n_gt
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope, right to left
    for t in range(T):
        idx = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
        valid = idx < nd
        out[t, valid] = pr[t, idx[valid]]
    return out


def coco_evaluate(predictions: Sequence[Any], ground_truth: Sequence[Any], labels: Sequence[str]) -> dict:
    """COCO box metrics of ``predictions`` against ``ground_truth``, image by image.

    ``predictions[i]``: image i's detections, a list of ``(box, score, class)`` with box
    ``[x1, y1, x2, y2]`` in pixels and class an index into ``labels``, or a mapping with arrays
    ``boxes`` [n, 4], ``scores`` [n], ``classes`` [n] (a class may also be given by its label
    name). ``ground_truth[i]``: a
    :class:`~edgetl.tasks.detection.DetectionItem` or a mapping with ``boxes``, ``classes`` and
    optionally ``crowd``. Returns ``{"map", "map50", "per_class": {label: {"map", "map50", "n"}},
    "n"}``: ``n`` per class counts its non-crowd ground-truth boxes, the top-level ``n`` the
    images; a class without ground truth has ``None`` for its mAPs and is left out of the mean
    (``map`` is ``None`` when no class has any)."""
    labels = list(labels)
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} images of predictions but {len(ground_truth)} of ground truth")
    K = len(labels)
    index = {name: k for k, name in enumerate(labels)}
    per_class: list[dict[str, list]] = [{"s": [], "m": [], "i": []} for _ in range(K)]
    n_gt = np.zeros(K, dtype=np.int64)
    for img, (pred, gt) in enumerate(zip(predictions, ground_truth)):
        d_box, d_score, d_cls = _predictions(pred, f"predictions[{img}]", index)
        g_box, g_cls, g_crowd = _ground_truth(gt, f"ground_truth[{img}]", index)
        for name, c in (("predictions", d_cls), ("ground_truth", g_cls)):
            if len(c) and (c.min() < 0 or c.max() >= K):
                raise ValueError(f"{name}[{img}]: class index {int(c.max() if c.max() >= K else c.min())} "
                                 f"outside the {K} labels")
        for k in np.union1d(np.unique(d_cls), np.unique(g_cls)):
            di = np.flatnonzero(d_cls == k)
            di = di[np.argsort(-d_score[di], kind="mergesort")][:MAX_DETECTIONS]
            gi = np.flatnonzero(g_cls == k)
            g_ignore = g_crowd[gi]
            gi = gi[np.argsort(g_ignore, kind="mergesort")]  # regular first, order kept
            g_ignore, g_is_crowd = g_crowd[gi], g_crowd[gi]
            n_gt[k] += int((~g_ignore).sum())
            d = d_box[di]
            m, ig = _match(_iou(d, g_box[gi], g_is_crowd), g_ignore, g_is_crowd, d[:, 2] * d[:, 3])
            slot = per_class[k]
            slot["s"].append(d_score[di])
            slot["m"].append(m)
            slot["i"].append(ig)
    result: dict[str, Any] = {"per_class": {}, "n": len(ground_truth)}
    maps, maps50 = [], []
    for k, name in enumerate(labels):
        if n_gt[k] == 0:
            result["per_class"][name] = {"map": None, "map50": None, "n": 0}
            continue
        prec = _precision(per_class[k]["s"], per_class[k]["m"], per_class[k]["i"], int(n_gt[k]))
        ap, ap50 = float(prec.mean()), float(prec[0].mean())
        maps.append(ap)
        maps50.append(ap50)
        result["per_class"][name] = {"map": ap, "map50": ap50, "n": int(n_gt[k])}
    result["map"] = float(np.mean(maps)) if maps else None
    result["map50"] = float(np.mean(maps50)) if maps50 else None
    return {"map": result["map"], "map50": result["map50"], "per_class": result["per_class"], "n": result["n"]}
