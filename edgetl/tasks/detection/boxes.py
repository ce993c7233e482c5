"""Box geometry in numpy, the same on the workstation and the device: letterboxing, IoU, NMS
(what ``torchvision.ops.nms`` / ``batched_nms`` return, index for index), and FCOS-style
box coding with centre-sampling assignment of ground truth to feature-map cells.

Boxes are float [N, 4] ``x1, y1, x2, y2`` in pixels. Feature-map cells are numbered row-major
(``index = row * width + col``); cell ``(row, col)`` at stride ``s`` is centred at
``((col + 0.5) * s, (row + 0.5) * s)`` in letterboxed-input pixels. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgetl.errors import ConfigError

__all__ = ["Letterbox", "letterbox", "letterbox_image", "to_letterbox", "from_letterbox", "LETTERBOX_FILL",
           "box_iou", "nms", "batched_nms", "BATCHED_NMS_VANILLA_ABOVE", "cell_centers", "encode_boxes",
           "decode_boxes", "Assignment", "assign_targets", "MAX_LOG_DISTANCE"]

# The pad: ImageNet's mean colour in 8 bits, which the usual normalisation maps to ~0, so the
# padding reads as "no signal" to a backbone trained on ImageNet statistics.
LETTERBOX_FILL = (124, 116, 104)


@dataclass(frozen=True)
class Letterbox:
    """How an image of ``width`` x ``height`` sits in the ``size`` x ``size`` letterboxed input:
    resized to ``new_width`` x ``new_height`` (aspect kept, longer side = ``size``) and placed at
    (``pad_x``, ``pad_y``), centred. ``scale_x = new_width / width`` (and y) is the exact per-axis
    scale of the resize (rounding the sides makes it differ from ``size / max(w, h)`` a little)."""

    width: int
    height: int
    size: int
    new_width: int
    new_height: int
    pad_x: int
    pad_y: int

    @property
    def scale_x(self) -> float:
        return self.new_width / self.width

    @property
    def scale_y(self) -> float:
        return self.new_height / self.height


def letterbox(width: int, height: int, size: int) -> Letterbox:
    """The letterbox transform of a ``width`` x ``height`` image into a ``size`` square."""
    if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in (width, height, size)):
        raise ConfigError(f"letterbox needs positive integer sizes, got {width}x{height} into {size}")
    scale = size / max(width, height)
    new_w = min(size, max(1, int(round(width * scale))))
    new_h = min(size, max(1, int(round(height * scale))))
    return Letterbox(int(width), int(height), int(size), new_w, new_h, (size - new_w) // 2, (size - new_h) // 2)


def letterbox_image(image: Image.Image | np.ndarray, size: int, *, fill: tuple[int, int, int] = LETTERBOX_FILL,
                    resample: int = Image.BILINEAR) -> tuple[Image.Image, Letterbox]:
    """An RGB image (PIL or HxWx3 uint8) resized to fit ``size`` x ``size`` with its aspect kept,
    centred on a ``fill`` background (default :data:`LETTERBOX_FILL`). Returns the square PIL
    image and its :class:`Letterbox` (to map boxes back with :func:`from_letterbox`)."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
    if img.mode != "RGB":
        img = img.convert("RGB")
    lb = letterbox(img.width, img.height, size)
    if (lb.new_width, lb.new_height) != (img.width, img.height):
        img = img.resize((lb.new_width, lb.new_height), resample=resample)
    if (lb.new_width, lb.new_height) == (size, size):
        return img, lb
    canvas = Image.new("RGB", (size, size), tuple(int(c) for c in fill))
    canvas.paste(img, (lb.pad_x, lb.pad_y))
    return canvas, lb


def to_letterbox(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Boxes in original pixels -> letterboxed-input pixels, clipped to the image's area there."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0::2] = b[:, 0::2] * np.float32(lb.scale_x) + np.float32(lb.pad_x)
    out[:, 1::2] = b[:, 1::2] * np.float32(lb.scale_y) + np.float32(lb.pad_y)
    np.clip(out[:, 0::2], lb.pad_x, lb.pad_x + lb.new_width, out=out[:, 0::2])
    np.clip(out[:, 1::2], lb.pad_y, lb.pad_y + lb.new_height, out=out[:, 1::2])
    return out


def from_letterbox(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Boxes in letterboxed-input pixels -> the original image's pixels, clipped to the image."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0::2] = (b[:, 0::2] - np.float32(lb.pad_x)) / np.float32(lb.scale_x)
    out[:, 1::2] = (b[:, 1::2] - np.float32(lb.pad_y)) / np.float32(lb.scale_y)
    np.clip(out[:, 0::2], 0, lb.width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, lb.height, out=out[:, 1::2])
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of boxes ``a`` [N, 4] and ``b`` [M, 4] (``torchvision.ops.box_iou``'s arithmetic)."""
    a = np.asarray(a).reshape(-1, 4)
    b = np.asarray(b).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def _check(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes)
    boxes = boxes if boxes.dtype in (np.float32, np.float64) else boxes.astype(np.float32)
    scores = np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),):
        raise ValueError(f"nms needs boxes [N, 4] and scores [N], got {boxes.shape} and {scores.shape}")
    if np.isnan(scores).any() or not np.isfinite(boxes).all():
        raise ValueError("nms: scores hold NaN or boxes non-finite numbers")
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: int64 indices of the boxes kept, by decreasing score.

    Returns what ``torchvision.ops.nms`` returns on the same inputs (its CPU kernel, replayed):
    a stable descending sort of the scores (ties keep input order); a box is dropped when its
    IoU with a kept box is ``> iou_threshold``; the IoU is computed in the boxes' own dtype
    (float32 unless float64), with the kernel's operations in its order, and compared with
    the threshold in float64."""
    boxes, scores = _check(boxes, scores)
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]  # rank order from here on
    cols = tuple(np.ascontiguousarray(b[:, k]) for k in range(4))
    if iou_threshold < 0:  # every pair "overlaps": only the kernel's own loop is right
        return order[_greedy_rows(cols, iou_threshold, np.arange(n))[0]].astype(np.int64)
    # Two exact ways, chosen by cost: row by row (cost ~ boxes kept x boxes standing) suits a
    # detector's output, piles of candidates of which few are kept; a sweep that lists the pairs
    # of intersecting boxes, then one greedy pass (cost ~ pairs) suits spread-out boxes, most of
    # them kept. A few rows first tell how many boxes get kept. The rows decide boxes in rank
    # order, so the sweep can take over the boxes still standing at any point.
    alive = np.arange(n)
    keep = np.zeros(0, dtype=np.int64)
    plan = _sweep_plan(cols, alive)
    if plan[0] > _SPARSE_PAIRS_PER_BOX * n:
        keep, alive = _greedy_rows(cols, iou_threshold, alive, max_steps=_PROBE_ROWS)
        if alive.size:
            rate = len(keep) / (n - alive.size)  # boxes kept per box decided so far
            rows_cost = rate * alive.size * (_ROW_US + _ELEMENT_US * alive.size / 2)
            plan = _sweep_plan(cols, alive)
            if rows_cost <= _PAIR_US * plan[0] + _ROW_US:
                more, alive = _greedy_rows(cols, iou_threshold, alive)
                keep = np.concatenate([keep, more])
    if alive.size:
        keep = np.concatenate([keep, alive[_greedy_edges(len(alive), *_overlap_edges(cols, alive, plan, iou_threshold))]])
    return order[keep].astype(np.int64)


# Costs measured on a 2-core EPYC (numpy 2): one row step ~40 us plus ~0.02 us per box still
# standing; the sweep ~0.25 us per candidate pair. Below 8 pairs per box the sweep wins outright.
_ROW_US, _ELEMENT_US, _PAIR_US = 40.0, 0.02, 0.25
_SPARSE_PAIRS_PER_BOX = 8
_PROBE_ROWS = 16


def _pair_iou(x1, y1, x2, y2, areas, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The kernel's IoU of box i (kept) with box j, elementwise, in the coordinates' dtype."""
    w = np.maximum(np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]), 0)
    h = np.maximum(np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]), 0)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (areas[i] + areas[j] - inter)


def _sweep_plan(cols, idx: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """For boxes ``idx``: (candidate pairs, boxes sorted along the sweep axis, pairs per box).
    Only boxes that intersect can exceed a threshold >= 0 (the kernel's IoU of a box with no
    width or height, or inverted, is 0 or NaN: it neither suppresses nor is suppressed); the
    sweep runs along the axis where fewer of them overlap."""
    x1, y1, x2, y2 = cols
    valid = idx[(x2[idx] > x1[idx]) & (y2[idx] > y1[idx])]
    best = None
    for lo, hi in ((x1, x2), (y1, y2)):
        by = valid[np.argsort(lo[valid], kind="stable")]
        end = np.searchsorted(lo[by], hi[by], side="left")  # boxes starting before this one ends
        count = np.maximum(end - np.arange(len(by)) - 1, 0)
        total = int(count.sum())
        if best is None or total < best[0]:
            best = (total, by, count)
    return best


def _overlap_edges(cols, idx: np.ndarray, plan, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The suppression graph among boxes ``idx`` (rank positions, ascending) for a threshold
    >= 0, in positions of ``idx``: CSR (indptr, targets) of the edges r -> s, r ranked before
    s, IoU(r, s) > threshold."""
    x1, y1, x2, y2 = cols
    total, by, count = plan
    first = np.repeat(np.arange(len(by)), count)
    second = np.arange(total) - np.repeat(np.cumsum(count) - count, count) + first + 1
    p, q = by[first], by[second]
    keep = (np.maximum(y1[p], y1[q]) < np.minimum(y2[p], y2[q])) & (np.maximum(x1[p], x1[q]) < np.minimum(x2[p], x2[q]))
    p, q = p[keep], q[keep]
    r, s = np.minimum(p, q), np.maximum(p, q)  # r is ranked first: the box that suppresses
    hit = _pair_iou(x1, y1, x2, y2, (x2 - x1) * (y2 - y1), r, s).astype(np.float64) > threshold
    local = np.searchsorted(idx, np.stack([r[hit], s[hit]]))  # rank positions -> positions in idx
    by_r = np.argsort(local[0], kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(local[0], minlength=len(idx)))])
    return indptr, local[1][by_r]


def _greedy_edges(n: int, indptr: np.ndarray, targets: np.ndarray) -> np.ndarray:
    removed = np.zeros(n, dtype=bool)
    keep = []
    starts, stops = indptr[:-1].tolist(), indptr[1:].tolist()
    for r in range(n):
        if removed[r]:
            continue
        keep.append(r)
        if stops[r] > starts[r]:
            removed[targets[starts[r]:stops[r]]] = True
    return np.asarray(keep, dtype=np.int64)


def _greedy_rows(cols, threshold: float, alive: np.ndarray, max_steps: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's loop: the best box still standing is kept and drops every later one it
    overlaps by more than ``threshold`` (any finite input, negative thresholds included).
    Stops after ``max_steps`` kept boxes; returns (kept, still standing), rank positions."""
    x1, y1, x2, y2 = cols
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while alive.size and (max_steps is None or len(keep) < max_steps):
        i, rest = alive[0], alive[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            ovr = inter / (areas[i] + areas[rest] - inter)
        alive = rest[~(ovr.astype(np.float64) > threshold)]
    return np.asarray(keep, dtype=np.int64), alive


# torchvision switches from the coordinate trick to one NMS per class above this many box
# coordinates on the CPU (``boxes.numel() > 4000``); the two differ in float32 rounding.
BATCHED_NMS_VANILLA_ABOVE = 4000


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each class: int64 indices kept, by decreasing score — what
    ``torchvision.ops.batched_nms`` returns, including its two paths: up to 1,000 boxes it
    offsets each class's boxes by ``class * (max coordinate + 1)`` and runs one NMS (in float32
    that offset rounds the coordinates, so replaying it is what makes the indices agree);
    above, one NMS per class, merged by a descending sort of the scores."""
    boxes, scores = _check(boxes, scores)
    classes = np.asarray(classes).reshape(-1)
    if classes.shape != scores.shape:
        raise ValueError(f"batched_nms: classes {classes.shape} do not match scores {scores.shape}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if boxes.size > BATCHED_NMS_VANILLA_ABOVE:
        keep_mask = np.zeros(len(boxes), dtype=bool)
        for c in np.unique(classes):
            idx = np.flatnonzero(classes == c)
            keep_mask[idx[nms(boxes[idx], scores[idx], iou_threshold)]] = True
        kept = np.flatnonzero(keep_mask)
        return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)
    one = boxes.dtype.type(1)
    offsets = classes.astype(boxes.dtype) * (boxes.max() + one)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# --- FCOS-style box coding ------------------------------------------------------------------

# Decoded log-distances are clipped here before exp: e^9.2 ~ 10,000 strides, far beyond any
# input, and float32 exp overflows at 88.
MAX_LOG_DISTANCE = math.log(10_000.0)


def cell_centers(height: int, width: int, stride: float) -> np.ndarray:
    """float32 [height * width, 2] (x, y) centres of a feature map's cells, row-major."""
    ys, xs = np.meshgrid((np.arange(height, dtype=np.float32) + 0.5) * np.float32(stride),
                         (np.arange(width, dtype=np.float32) + 0.5) * np.float32(stride), indexing="ij")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


def encode_boxes(boxes: np.ndarray, centers: np.ndarray, stride: float) -> np.ndarray:
    """float32 [N, 4]: ``log(d / stride)`` of the distances (left, top, right, bottom) from each
    centre [N, 2] to its box [N, 4]. Distances are floored at 1/64 of a stride (a centre on or
    outside an edge has no log distance); :func:`assign_targets` only pairs inside centres."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    c = np.asarray(centers, dtype=np.float32).reshape(-1, 2)
    d = np.stack([c[:, 0] - b[:, 0], c[:, 1] - b[:, 1], b[:, 2] - c[:, 0], b[:, 3] - c[:, 1]], axis=1)
    return np.log(np.maximum(d / np.float32(stride), np.float32(1 / 64))).astype(np.float32)


def decode_boxes(deltas: np.ndarray, centers: np.ndarray, stride: float) -> np.ndarray:
    """Inverse of :func:`encode_boxes`: float32 [N, 4] boxes from log distances [N, 4] (clipped
    at :data:`MAX_LOG_DISTANCE`) around centres [N, 2]."""
    d = np.exp(np.minimum(np.asarray(deltas, dtype=np.float32).reshape(-1, 4), np.float32(MAX_LOG_DISTANCE)))
    d = d * np.float32(stride)
    c = np.asarray(centers, dtype=np.float32).reshape(-1, 2)
    return np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], axis=1)


@dataclass(frozen=True)
class Assignment:
    """Per cell (row-major): ``labels`` int64 (0 = background, k + 1 = class k), ``targets``
    float32 [cells, 4] (:func:`encode_boxes` of the assigned box; zeros on background),
    ``box_index`` int64 (the assigned box, -1 on background); ``unassigned``: indices of boxes
    that got no cell (smaller than the stride, or centred between cells: use a finer stride)."""

    labels: np.ndarray
    targets: np.ndarray
    box_index: np.ndarray
    unassigned: np.ndarray


def assign_targets(boxes: np.ndarray, classes: np.ndarray, height: int, width: int, stride: float,
                   radius: float = 1.5) -> Assignment:
    """Assign ground-truth ``boxes`` [K, 4] (letterboxed-input pixels) of ``classes`` [K] to the
    cells of a ``height`` x ``width`` feature map at ``stride``. A cell is positive for a box when
    its centre lies strictly inside the box and within ``radius`` strides of the box's centre
    on both axes (FCOS centre sampling, torchvision's default radius 1.5); a cell claimed by
    several boxes takes the smallest (by area; equal areas: the first)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(classes) != len(boxes):
        raise ValueError(f"assign_targets: {len(boxes)} boxes but {len(classes)} classes")
    centers = cell_centers(height, width, stride)
    n = len(centers)
    labels = np.zeros(n, dtype=np.int64)
    targets = np.zeros((n, 4), dtype=np.float32)
    box_index = np.full(n, -1, dtype=np.int64)
    if len(boxes) == 0:
        return Assignment(labels, targets, box_index, np.zeros(0, dtype=np.int64))
    cx, cy = centers[:, 0:1], centers[:, 1:2]  # [N, 1]
    inside = (cx > boxes[None, :, 0]) & (cx < boxes[None, :, 2]) & (cy > boxes[None, :, 1]) & (cy < boxes[None, :, 3])
    bcx = (boxes[:, 0] + boxes[:, 2]) / 2
    bcy = (boxes[:, 1] + boxes[:, 3]) / 2
    reach = np.float32(radius * stride)
    near = (np.abs(cx - bcx[None, :]) < reach) & (np.abs(cy - bcy[None, :]) < reach)
    candidate = inside & near  # [N, K]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = np.where(candidate, area[None, :], np.inf)
    best = np.argmin(cost, axis=1)  # first of equal areas
    positive = np.isfinite(cost[np.arange(n), best])
    box_index[positive] = best[positive]
    labels[positive] = classes[best[positive]] + 1
    targets[positive] = encode_boxes(boxes[best[positive]], centers[positive], stride)
    unassigned = np.setdiff1d(np.arange(len(boxes)), box_index[positive])
    return Assignment(labels, targets, box_index, unassigned.astype(np.int64))
