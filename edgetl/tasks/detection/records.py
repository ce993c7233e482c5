"""Annotated images, whatever the file format they came in, and what every reader shares:
bounds on hostile input, paths kept inside the data root, image sizes read from headers, and
the accounting of what was clipped or skipped (``strict`` refuses instead of skipping).

Torch-free. The readers (``coco``, ``yolo``, ``voc``) build a :class:`DetectionData` through
a :class:`Collector`, so every format clips, skips and counts by the same rules.
"""

from __future__ import annotations

import os
import stat
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from edgetl.errors import DataError
from edgetl.modalities.image import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS
from edgetl.modalities.image.preprocess import check_shape

__all__ = ["DetectionItem", "DetectionData", "COUNT_KEYS", "MAX_JSON_BYTES", "MAX_LABEL_FILE_BYTES",
           "MAX_CLASSES", "MAX_SKIPPED_LISTED"]

# Hostile-input bounds. COCO's largest official file (instances_train2017, polygons included)
# is 448 MB; a box-only file for 100k images is ~30 MB. A YOLO .txt or a VOC .xml holds one
# image's boxes: 16 MiB is ~300k boxes.
MAX_JSON_BYTES = 512 << 20
MAX_LABEL_FILE_BYTES = 16 << 20
MAX_CLASSES = 10_000
MAX_NAME_CHARS = 256
# ``skipped`` lists the first this-many (where, reason) pairs; ``counts`` has every one.
MAX_SKIPPED_LISTED = 1000
# Raster formats only: PIL opens others by content (EPS would run Ghostscript when loaded).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # JPEG covers MPO (phones)

# What ``DetectionData.counts`` holds (every key always present).
COUNT_KEYS = (
    "images",                  # images kept
    "boxes",                   # boxes kept (crowd boxes not included)
    "boxes_crowd",             # COCO iscrowd=1 boxes kept, flagged (ignored by the metric, not trained on)
    "boxes_clipped",           # kept boxes that reached outside the image and were clipped to it
    "boxes_degenerate",        # skipped: zero or negative width or height as written
    "boxes_outside",           # skipped: no area left inside the image after clipping
    "boxes_unknown_class",     # skipped: category id / class index not among the classes
    "boxes_difficult",         # left out: VOC difficult=1 (as ultralytics' VOC conversion does; not refused by strict)
    "boxes_unknown_image",     # skipped: COCO annotation whose image_id is not in images
    "images_missing",          # skipped: image file absent, or outside the data folder
    "images_unreadable",       # skipped: not a readable image (corrupt, too large, too elongated)
    "images_size_mismatch",    # skipped: the annotation's width/height differ from the file's
    "images_without_labels",   # kept as background: a YOLO image with no label file
)


@dataclass(frozen=True)
class DetectionItem:
    """One annotated image: ``boxes`` float32 [k, 4] as x1, y1, x2, y2 in the image's own pixels
    (as :func:`edgetl.modalities.image.load_image` returns it: JPEG EXIF orientation applied),
    ``classes`` int64 [k] indexing ``DetectionData.labels``, ``crowd`` bool [k] (COCO iscrowd:
    an ignore region for the metric; training should leave these boxes out)."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    crowd: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.crowd is None:
            object.__setattr__(self, "crowd", np.zeros(len(self.classes), dtype=bool))


@dataclass(frozen=True)
class DetectionData:
    """Annotated images read from ``root`` (the folder, or the COCO file) in ``format``
    ("coco", "yolo", "voc").

    ``labels``: class names in a stable order — COCO: by category id; YOLO: by class index (the
    names file's order); VOC: sorted by name. ``items``: COCO in the file's ``images`` order,
    YOLO and VOC sorted by path. ``skipped``: (where, reason) for the first
    :data:`MAX_SKIPPED_LISTED` things skipped; ``counts``: every key of :data:`COUNT_KEYS`.
    """

    root: Path
    format: str
    labels: tuple[str, ...]
    items: tuple[DetectionItem, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_boxes(self) -> int:
        return int(sum(int((~it.crowd).sum()) for it in self.items))

    def class_counts(self) -> dict[str, int]:
        """Boxes per class name (crowd boxes left out), every label present."""
        n = np.zeros(len(self.labels), dtype=np.int64)
        for it in self.items:
            np.add.at(n, it.classes[~it.crowd], 1)
        return {name: int(c) for name, c in zip(self.labels, n)}

    def subset(self, indices: Sequence[int]) -> "DetectionData":
        return DetectionData(self.root, self.format, self.labels, tuple(self.items[i] for i in indices),
                             self.skipped, dict(self.counts))


# --- shared by the readers --------------------------------------------------------------------


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else one-line :class:`DataError`."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file; the {what} must be a file")
        if st.st_size > limit:
            raise DataError(f"{path}: {st.st_size:,} bytes, more than the {limit:,} allowed for a {what}")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(raw) > limit:  # grew since stat
        raise DataError(f"{path}: more than the {limit:,} bytes allowed for a {what}")
    return raw


def clean_name(name: object, where: str) -> str:
    """A class name as written, stripped; refuses non-strings, empty names, control characters."""
    if not isinstance(name, str):
        raise DataError(f"{where}: a class name must be text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise DataError(f"{where}: empty class name")
    if len(name) > MAX_NAME_CHARS:
        raise DataError(f"{where}: class name longer than {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise DataError(f"{where}: class name {name[:40]!r} holds control characters")
    return name


def check_labels(labels: Sequence[str], where: str) -> tuple[str, ...]:
    if not labels:
        raise DataError(f"{where}: no classes defined; a detection data set needs at least one class")
    if len(labels) > MAX_CLASSES:
        raise DataError(f"{where}: {len(labels):,} classes, more than the {MAX_CLASSES:,} allowed")
    seen: set[str] = set()
    for name in labels:
        if name in seen:
            raise DataError(f"{where}: class name {name!r} appears twice; class names must be unique")
        seen.add(name)
    return tuple(labels)


def inside(root_real: str, path: Path) -> Path | None:
    """``path`` with symlinks resolved if it lies under ``root_real`` (itself resolved), else None."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return None
    if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep):
        return Path(real)
    return None


class ImageProblem(Exception):
    """Why an image cannot be used: ``key`` is the counts key, ``args[0]`` the reason."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, no pixel decoded; EXIF orientation applied for
    JPEG, as :func:`~edgetl.modalities.image.load_image` does. Raises :class:`ImageProblem`."""
    try:
        if not path.is_file():
            raise ImageProblem("images_missing", "no such image file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=PIL_FORMATS) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112) if img.format in ("JPEG", "MPO") else None
    except ImageProblem:
        raise
    except Image.DecompressionBombError:
        raise ImageProblem("images_unreadable", f"larger than {MAX_IMAGE_PIXELS:,} pixels") from None
    except (OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise ImageProblem("images_missing", "no such image file") from None
        raise ImageProblem("images_unreadable", f"not a readable image ({exc.__class__.__name__})") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt headers
        raise ImageProblem("images_unreadable", f"not a readable image ({exc.__class__.__name__})") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageProblem("images_unreadable", f"larger than {MAX_IMAGE_PIXELS:,} pixels")
    try:
        check_shape(w, h, "image")
    except DataError as exc:
        raise ImageProblem("images_unreadable", str(exc).split(": ", 1)[-1]) from None
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: load_image swaps the sides
        w, h = h, w
    return int(w), int(h)


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, symlinked folders not followed, hidden skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return sorted(found)


class Collector:
    """Accumulates items, applying the shared rules: boxes outside the image are clipped and
    counted; degenerate boxes, unknown classes and unusable images are skipped and counted;
    with ``strict`` the first thing skipped raises :class:`DataError` naming where it is."""

    def __init__(self, root: Path, fmt: str, *, strict: bool):
        """``root``: what was read (a folder, or a COCO file); images must lie in it (or in
        the file's folder)."""
        self.root, self.format, self.strict = Path(root), fmt, strict
        self.root_real = os.path.realpath(root if Path(root).is_dir() else Path(root).parent)
        self.counts = {k: 0 for k in COUNT_KEYS}
        self.skipped: list[tuple[str, str]] = []
        self.items: list[DetectionItem] = []

    def skip(self, key: str, where: str, reason: str) -> None:
        if self.strict:
            raise DataError(f"{where}: {reason} (fix it, or drop --strict to skip and count such cases)")
        self.counts[key] += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append((where, reason))

    def locate(self, candidates: Sequence[Path], where: str) -> tuple[Path, int, int] | None:
        """The first existing candidate inside the data root, with its size; None (skipped) if none."""
        outside = False
        for path in candidates:
            real = inside(self.root_real, path)
            if real is None:
                outside = outside or os.path.lexists(path) or os.path.isabs(path)
                continue
            if not real.is_file():
                continue
            try:
                w, h = image_size(real)
            except ImageProblem as exc:
                self.skip(exc.key, where if str(path) == where else f"{where}: {path}", str(exc))
                return None
            return path, w, h
        reason = ("image is outside the data folder (absolute path, '..' or a symlink out of it)" if outside
                  else "image file not found")
        shown = str(candidates[0]) if candidates else where
        self.skip("images_missing", where if shown == where else f"{where}: {shown}", reason)
        return None

    def add(self, path: Path, width: int, height: int, xyxy: np.ndarray, classes: np.ndarray,
            n_labels: int, where: Callable[[int], str], crowd: np.ndarray | None = None,
            stated: tuple[int | None, int | None] | None = None, stated_where: str = "") -> None:
        """Add one image with boxes ``xyxy`` (float64 [k, 4], pixels) of ``classes`` (int64 [k]);
        ``where(i)`` names box ``i`` in messages; ``stated`` is the annotation's (width, height)."""
        if stated is not None and all(s is not None for s in stated) and tuple(stated) != (width, height):
            self.skip("images_size_mismatch", stated_where or str(path),
                      f"annotated as {stated[0]}x{stated[1]} pixels but the image is {width}x{height}")
            return
        xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        crowd = np.zeros(len(classes), dtype=bool) if crowd is None else np.asarray(crowd, dtype=bool)
        keep = np.ones(len(classes), dtype=bool)
        unknown = (classes < 0) | (classes >= n_labels)
        degenerate = ~unknown & ((xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1]))
        clipped = xyxy.copy()
        np.clip(clipped[:, 0::2], 0.0, float(width), out=clipped[:, 0::2])
        np.clip(clipped[:, 1::2], 0.0, float(height), out=clipped[:, 1::2])
        outside = ~unknown & ~degenerate & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
        for mask, key, reason in (
            (unknown, "boxes_unknown_class", "class {c} is not among the {n} classes"),
            (degenerate, "boxes_degenerate", "box has no area (x2 <= x1 or y2 <= y1)"),
            (outside, "boxes_outside", "box lies outside the {w}x{h} image"),
        ):
            for i in np.flatnonzero(mask):
                self.skip(key, where(int(i)), reason.format(c=int(classes[i]), n=n_labels, w=width, h=height))
            keep &= ~mask
        was_clipped = keep & np.any(clipped != xyxy, axis=1)
        self.counts["boxes_clipped"] += int(was_clipped.sum())
        self.counts["boxes"] += int((keep & ~crowd).sum())
        self.counts["boxes_crowd"] += int((keep & crowd).sum())
        self.counts["images"] += 1
        self.items.append(DetectionItem(Path(path), int(width), int(height),
                                        clipped[keep].astype(np.float32), classes[keep], crowd[keep]))

    def finish(self, labels: Sequence[str]) -> DetectionData:
        where = str(self.root)
        if not self.items:
            reason = f"; {len(self.skipped)} skipped, e.g. {self.skipped[0][0]}: {self.skipped[0][1]}" \
                if self.skipped else ""
            raise DataError(f"{where}: no usable annotated images{reason}")
        if self.counts["boxes"] == 0:
            raise DataError(f"{where}: {len(self.items)} image(s) but no usable boxes; nothing to detect "
                            f"(skipped: {', '.join(f'{k}={v}' for k, v in self.counts.items() if v and k != 'images')})")
        return DetectionData(self.root, self.format, tuple(labels), tuple(self.items), tuple(self.skipped),
                             dict(self.counts))
