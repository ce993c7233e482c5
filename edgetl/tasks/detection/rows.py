"""Detection data as the head's rows: each image through the frozen backbone to its feature map,
every location labelled by FCOS assignment (edgetl.tasks.detection.boxes.assign_targets), and the
rows a linear head is solved on: every positive location, a seeded sample of the background
(``NEGATIVES`` per positive, at least ``MIN_NEGATIVES`` per image), none of the locations that lie
inside a box without being assigned to it (neither object nor background).

Sampling the background changes the class prior the solver sees: the background logit is then
corrected by log(background rows in the images / background rows sampled), the intercept shift
that undoes case-control sampling for a logistic model (King and Zeng 2001), so scores keep their
meaning. Torch-free (the backbone call is given as a function): the workstation's training
and the device's retraining make their rows here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Rows", "image_rows", "location_rows", "location_targets", "embed_items", "item_boxes", "solve_box_head",
           "NEGATIVES", "MIN_NEGATIVES", "RIDGE"]

NEGATIVES = 4  # background rows sampled per positive location
MIN_NEGATIVES = 64  # at least this many per image (an image without objects still teaches background)


@dataclass
class Rows:
    """Rows of many images: features [R, F], class labels [R] (0 = background), box codes [R, 4]
    (meaningful where the label is not 0), the image each row comes from, and how many
    background locations there were in all and how many were sampled."""

    X: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)
    image: list[np.ndarray] = field(default_factory=list)
    background_total: int = 0
    background_sampled: int = 0
    unassigned: int = 0  # boxes too small for any location at this stride

    def add(self, X: np.ndarray, y: np.ndarray, codes: np.ndarray, image: int) -> None:
        self.X.append(X)
        self.y.append(y)
        self.codes.append(codes)
        self.image.append(np.full(len(y), image, np.int64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.X:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return (np.concatenate(self.X), np.concatenate(self.y), np.concatenate(self.codes), np.concatenate(self.image))

    @property
    def prior_shift(self) -> float:
        """log(background locations / background rows sampled): added to the background logit."""
        if not self.background_sampled:
            return 0.0
        return float(np.log(self.background_total / self.background_sampled))


def image_rows(features: np.ndarray, boxes: np.ndarray, classes: np.ndarray, input_size: int,
               rng: np.random.Generator, rows: Rows, image: int, *, negatives: int = NEGATIVES,
               min_negatives: int = MIN_NEGATIVES, all_rows: bool = False) -> None:
    """Add one image's rows: ``features`` [F, H, W]; ``boxes`` [k, 4] in the letterboxed input's
    pixels; ``classes`` [k]. ``all_rows``: every location (validation scored on whole maps)."""
    f, h, w = features.shape
    X = np.ascontiguousarray(np.moveaxis(features, 0, -1).reshape(-1, f))
    location_rows(X, h, w, boxes, classes, input_size, rng, rows, image, negatives=negatives,
                  min_negatives=min_negatives, all_rows=all_rows)


def location_rows(X: np.ndarray, h: int, w: int, boxes: np.ndarray, classes: np.ndarray, input_size: int,
                  rng: np.random.Generator, rows: Rows, image: int, *, negatives: int = NEGATIVES,
                  min_negatives: int = MIN_NEGATIVES, all_rows: bool = False) -> None:
    """:func:`image_rows` for an image whose locations are already rows ``X`` [h * w, F]."""
    assigned, inside = location_targets(boxes, classes, h, w, input_size)
    positive = np.flatnonzero(assigned.labels > 0)
    rows.unassigned += len(assigned.unassigned)
    if all_rows:
        rows.add(X, assigned.labels, assigned.targets, image)
        return
    background = np.flatnonzero((assigned.labels == 0) & ~inside)
    take = min(len(background), max(min_negatives, negatives * len(positive)))
    sampled = np.sort(rng.choice(background, take, replace=False)) if take < len(background) else background
    rows.background_total += len(background)
    rows.background_sampled += len(sampled)
    keep = np.concatenate([positive, sampled])
    rows.add(X[keep], assigned.labels[keep], assigned.targets[keep], image)


def location_targets(boxes: np.ndarray, classes: np.ndarray, h: int, w: int, input_size: int,
                     ignore: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """The FCOS assignment of an ``h`` x ``w`` map's locations (edgetl.tasks.detection.boxes.
    assign_targets) and which locations lie inside some box: those not assigned to it are
    neither object nor background, and no row is made of them. ``ignore``: more boxes [m, 4]
    whose locations count as inside without being assigned to anything (e.g. what a crop shows
    of an object it cuts off)."""
    from edgetl.tasks.detection.boxes import assign_targets, cell_centers

    stride = input_size / w
    assigned = assign_targets(boxes, classes, h, w, stride)
    centers = cell_centers(h, w, stride)
    inside = np.zeros(h * w, bool)
    regions = np.asarray(boxes, np.float32).reshape(-1, 4)
    if ignore is not None:
        regions = np.concatenate([regions, np.asarray(ignore, np.float32).reshape(-1, 4)])
    for b in regions:
        inside |= (centers[:, 0] > b[0]) & (centers[:, 0] < b[2]) & (centers[:, 1] > b[1]) & (centers[:, 1] < b[3])
    return assigned, inside


def embed_items(items: Sequence[Any], spec: Any, forward: Callable[[dict], np.ndarray], *, batch_size: int = 8,
                flip: bool = False, progress: str = "embedding images") -> Any:
    """``(index, feature map [F, H, W], boxes in the letterboxed input, classes)`` of each
    annotated item (and of its mirror image, with ``flip``), in order; ``forward`` maps model
    inputs to feature maps [N, F, H, W]."""
    from edgetl.core import ui
    from edgetl.modalities import batches, get_modality

    modality = get_modality("image")
    size = spec.input_size
    with ui.progress_bar(progress, len(items)) as advance:
        for indices, x, errors in batches(modality, [it.path for it in items], spec, batch_size, strict=True):
            images = x["images"]
            maps = forward({"images": images})
            mirrored = forward({"images": np.ascontiguousarray(images[..., ::-1])}) if flip else None
            for row, i in enumerate(indices):
                yield (i, maps[row], *item_boxes(items[i], size))
                if mirrored is not None:
                    yield (i, mirrored[row], *item_boxes(items[i], size, flip=True))
            advance(len(indices))


def item_boxes(item: Any, size: int, *, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An annotated item's boxes in its ``size`` letterboxed input (mirrored left to right with
    ``flip``) and their classes; crowd boxes left out."""
    from edgetl.tasks.detection.boxes import letterbox, to_letterbox

    keep = ~np.asarray(item.crowd, bool)
    boxes = to_letterbox(item.boxes[keep], letterbox(item.width, item.height, size))
    if flip:
        boxes = boxes.copy()
        boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
    return boxes, np.asarray(item.classes)[keep]


RIDGE = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # box-head penalties tried (on standardised rows)


def solve_box_head(X: np.ndarray, T: np.ndarray, X_val: np.ndarray, T_val: np.ndarray,
                   anchor: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression of box codes ``T`` [n, 4] on rows ``X`` [n, F], exact: the rows
    standardised, the penalty chosen by mean absolute error on the validation rows, then refit on
    all rows; returned as a Linear layer (W [4, F], b [4]) on the raw rows.

    ``anchor`` (an old box head W [4, F], b [4]): the penalty pulls toward it instead of toward
    zero, so what the old head learnt from all its training rows stays where the rows given
    (a replay memory and a few new images) say little. The device's class addition needs it:
    re-solved from the memory alone, the box head lost old classes 0.515 -> 0.461 mAP@.5 on
    composite scenes (the class rows kept exactly); kept as it was, new classes' boxes were
    poor (horse 0.08)."""
    X64 = np.concatenate([X, X_val]).astype(np.float64) if len(X_val) else X.astype(np.float64)
    mu, sd = X64.mean(0), X64.std(0) + 1e-6
    beta_old = None
    if anchor is not None:
        beta_old = (np.asarray(anchor[0], np.float64) * sd).T  # the old head on standardised rows, [F, 4]

    def fit(A: np.ndarray, B: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
        Z = (A - mu) / sd
        if beta_old is None:
            t0 = B.mean(0)
            beta = np.linalg.solve(Z.T @ Z + lam * len(Z) * np.eye(Z.shape[1]), Z.T @ (B - t0))
            return beta, t0
        # min |Z beta + t0 - B|^2 + lam n |beta - beta_old|^2 (t0 free): centre Z and B, solve, t0 after
        zc, bc = Z.mean(0), B.mean(0)
        Zc = Z - zc
        beta = np.linalg.solve(Zc.T @ Zc + lam * len(Z) * np.eye(Z.shape[1]),
                               Zc.T @ (B - bc) + lam * len(Z) * beta_old)
        return beta, bc - zc @ beta

    best = RIDGE[0]
    if len(X_val):
        errors = []
        for lam in RIDGE:
            beta, t0 = fit(X.astype(np.float64), T, lam)
            errors.append(float(np.abs((X_val - mu) / sd @ beta + t0 - T_val).mean()))
        best = RIDGE[int(np.argmin(errors))]
    beta, t0 = fit(X64, np.concatenate([T, T_val]) if len(T_val) else T, best)
    W = (beta / sd[:, None]).T  # [4, F]
    b = t0 - W @ mu
    return W.astype(np.float32), b.astype(np.float32), best
