"""COCO JSON, the interchange format: the one reader and the one writer of it.

A COCO file holds ``images`` (``id``, ``file_name`` relative to the file's folder, ``width``,
``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in pixels,
``iscrowd`` optional) and ``categories`` (``id``, ``name``). Image files are looked up at
``<folder of the JSON>/<file_name>``, then ``<folder>/images/<file_name>``; never outside that
folder. Torch-free.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from edgetl.core.files import write_json_atomic
from edgetl.errors import ConfigError, DataError
from edgetl.tasks.detection.records import (MAX_JSON_BYTES, Collector, DetectionData, check_labels, clean_name,
                                            read_bounded)

__all__ = ["read_coco", "write_coco", "looks_like_coco", "COCO_KEYS"]

COCO_KEYS = ("images", "annotations", "categories")
PEEK_BYTES = 1 << 20


def looks_like_coco(path: Path) -> bool:
    """A ``.json`` file whose first MiB names a COCO key (cheap: the file is not parsed)."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(PEEK_BYTES)
    except OSError:
        return False
    return any(f'"{key}"'.encode() in head for key in COCO_KEYS)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _load(path: Path) -> dict:
    raw = read_bounded(path, MAX_JSON_BYTES, "COCO annotation file")
    try:
        obj = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise DataError(f"{path}: not a COCO annotation file (JSON nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), list) for k in COCO_KEYS):
        raise DataError(f"{path}: not a COCO annotation file (the top level must be an object with the lists "
                        "'images', 'annotations' and 'categories')")
    return obj


def _int(value: Any, where: str, what: str, *, positive: bool = False) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or (positive and value <= 0):
        raise DataError(f"{where}: {what} must be a{' positive' if positive else 'n'} integer, got {value!r:.40}")
    return value


def _id(value: Any, where: str, what: str) -> int | str:
    if isinstance(value, str) and value:
        return value
    return _int(value, where, what)


def read_coco(path: Path, *, strict: bool = False) -> DetectionData:
    """Read one COCO JSON file. Malformed structure is one :class:`DataError`; unusable images
    and boxes are skipped and counted (``strict`` refuses them)."""
    path = Path(path)
    obj = _load(path)
    root = path.parent
    where_file = str(path)

    cats: list[tuple[int, str]] = []
    seen: set[int] = set()
    for i, cat in enumerate(obj["categories"]):
        where = f"{where_file}: categories[{i}]"
        if not isinstance(cat, dict):
            raise DataError(f"{where}: must be an object with 'id' and 'name'")
        cid = _int(cat.get("id"), where, "'id'")
        if cid in seen:
            raise DataError(f"{where}: category id {cid} appears twice")
        seen.add(cid)
        cats.append((cid, clean_name(cat.get("name"), where)))
    cats.sort(key=lambda c: c[0])
    labels = check_labels([name for _, name in cats], where_file)
    cat_index = {cid: k for k, (cid, _) in enumerate(cats)}

    images: dict[int | str, tuple[str, int | None, int | None]] = {}
    for i, im in enumerate(obj["images"]):
        where = f"{where_file}: images[{i}]"
        if not isinstance(im, dict):
            raise DataError(f"{where}: must be an object with 'id' and 'file_name'")
        iid = _id(im.get("id"), where, "'id'")
        if iid in images:
            raise DataError(f"{where}: image id {iid!r} appears twice")
        name = im.get("file_name")
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise DataError(f"{where}: 'file_name' must be a non-empty path")
        w = None if im.get("width") in (None, 0) else _int(im.get("width"), where, "'width'", positive=True)
        h = None if im.get("height") in (None, 0) else _int(im.get("height"), where, "'height'", positive=True)
        images[iid] = (name, w, h)

    per_image: dict[int | str, list[int]] = {iid: [] for iid in images}
    boxes = np.zeros((len(obj["annotations"]), 4), dtype=np.float64)
    classes = np.zeros(len(obj["annotations"]), dtype=np.int64)
    crowd = np.zeros(len(obj["annotations"]), dtype=bool)
    col = Collector(path, "coco", strict=strict)
    for i, ann in enumerate(obj["annotations"]):
        where = f"{where_file}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: must be an object with 'image_id', 'category_id' and 'bbox'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            raise DataError(f"{where}: 'bbox' must be [x, y, width, height], four finite numbers")
        iid = _id(ann.get("image_id"), where, "'image_id'")
        cid = _int(ann.get("category_id"), where, "'category_id'")
        is_crowd = ann.get("iscrowd", 0)
        if is_crowd not in (0, 1, True, False):
            raise DataError(f"{where}: 'iscrowd' must be 0 or 1, got {is_crowd!r:.40}")
        if iid not in per_image:
            col.skip("boxes_unknown_image", where, f"image_id {iid!r} is not among the images")
            continue
        x, y, w, h = (float(v) for v in bbox)
        boxes[i] = (x, y, x + w, y + h)
        classes[i] = cat_index.get(cid, -1)
        if classes[i] < 0:  # name the category id as written, not the index
            col.skip("boxes_unknown_class", where, f"category_id {cid} is not among the categories")
            continue
        crowd[i] = bool(is_crowd)
        per_image[iid].append(i)

    for iid, (name, w, h) in images.items():
        rel = PurePosixPath(name.replace("\\", "/"))
        where = f"{where_file}: image {iid!r}"
        found = col.locate([root / rel, root / "images" / rel], where)
        if found is None:
            continue
        img_path, width, height = found
        idx = np.asarray(per_image[iid], dtype=np.int64)
        col.add(img_path, width, height, boxes[idx], classes[idx], len(labels),
                lambda j, idx=idx: f"{where_file}: annotations[{int(idx[j])}]", crowd=crowd[idx],
                stated=(w, h), stated_where=f"{where}: {img_path}")
    return col.finish(labels)


def _num(v: float) -> float | int:
    r = round(float(v), 3)
    return int(r) if r.is_integer() and abs(r) < 2**53 else r


def write_coco(data: DetectionData, path: str | os.PathLike, *, info: Mapping[str, Any] | None = None) -> Path:
    """Write ``data`` as one COCO JSON file at ``path`` (atomically): categories ``1..K`` in
    ``data.labels`` order, images ``1..N`` with ``file_name`` relative to ``path``'s folder
    (every image must lie under it), boxes rounded to 1/1000 pixel. ``info`` becomes the
    file's ``info`` object (say there how the data was made). Returns ``path``."""
    path = Path(path)
    folder = os.path.realpath(path.parent)
    images, annotations = [], []
    for i, item in enumerate(data.items, start=1):
        real = os.path.realpath(item.path)
        if not real.startswith(folder.rstrip(os.sep) + os.sep):
            raise ConfigError(f"{item.path}: outside {path.parent}; COCO file names are relative to the "
                              "JSON file's folder, so write it in a folder above every image")
        images.append({"id": i, "file_name": Path(os.path.relpath(real, folder)).as_posix(),
                       "width": int(item.width), "height": int(item.height)})
        for box, cls, is_crowd in zip(item.boxes.tolist(), item.classes.tolist(), item.crowd.tolist()):
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(cls) + 1,
                                "bbox": [_num(x1), _num(y1), _num(w), _num(h)], "area": _num(w * h),
                                "iscrowd": int(is_crowd)})
    categories = [{"id": k + 1, "name": name, "supercategory": ""} for k, name in enumerate(data.labels)]
    doc = {"info": dict(info or {}), "images": images, "annotations": annotations, "categories": categories}
    write_json_atomic(path, doc)
    return path
