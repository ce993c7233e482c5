"""Annotated images for detection, in whichever format they come: the one entry point.

``read_detection_data(DATA)`` finds the format (:func:`detect_format`) and hands DATA to its
reader: COCO JSON (:mod:`.coco`), YOLO folders (:mod:`.yolo`), Pascal VOC XML (:mod:`.voc`).
Every reader clips, skips and counts by the same rules (:class:`~.records.Collector`).
Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgetl.errors import ConfigError, DataError
from edgetl.tasks.detection.coco import looks_like_coco, read_coco, write_coco
from edgetl.tasks.detection.records import DetectionData, DetectionItem
from edgetl.tasks.detection.voc import looks_like_voc, read_voc
from edgetl.tasks.detection.yolo import looks_like_yolo, read_yolo

__all__ = ["read_detection_data", "detect_format", "DETECTION_FORMATS", "DetectionData", "DetectionItem",
           "write_coco"]

DETECTION_FORMATS = ("coco", "yolo", "voc")
_READERS = {"coco": read_coco, "yolo": read_yolo, "voc": read_voc}
_EXPECTED = ("a COCO .json file (or a folder holding exactly one), a YOLO folder (images/ and labels/), "
             "or Pascal VOC XML (Annotations/ or .xml files)")


def _coco_in_folder(folder: Path) -> Path | None:
    try:
        found = [p for p in folder.iterdir() if p.suffix.lower() == ".json" and not p.name.startswith(".")
                 and p.is_file() and looks_like_coco(p)]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def _locate(data: str | os.PathLike) -> tuple[str, Path] | None:
    path = Path(data)
    try:
        if path.is_file():
            return ("coco", path) if looks_like_coco(path) else None
        if not path.is_dir():
            return None
    except OSError:
        return None
    # A folder: YOLO's layout is the most specific, then VOC's XML files, then one COCO file.
    if looks_like_yolo(path):
        return "yolo", path
    if looks_like_voc(path):
        return "voc", path
    coco = _coco_in_folder(path)
    return ("coco", coco) if coco is not None else None


def detect_format(data: str | os.PathLike) -> str | None:
    """"coco", "yolo" or "voc" when DATA looks like detection annotations, else None (an image
    folder for classification, a text file, a missing path). Cheap: reads at most the first
    MiB of one JSON file and lists folders; parses nothing."""
    found = _locate(data)
    return found[0] if found else None


def read_detection_data(data: str | os.PathLike, *, strict: bool = False,
                        format: str | None = None) -> DetectionData:
    """Read annotated images from DATA: a COCO JSON file (or a folder holding exactly one), a
    YOLO folder, or a Pascal VOC folder; ``format`` forces one of :data:`DETECTION_FORMATS`.

    Boxes reaching outside their image are clipped and counted; degenerate boxes, unknown
    classes and missing or unreadable images are skipped and counted (``counts``, ``skipped``)
    or, with ``strict``, refused. A malformed file or an empty data set is one
    :class:`DataError` line."""
    if isinstance(data, str) and not data:
        raise DataError(f"DATA is an empty path; pass {_EXPECTED}")
    path = Path(data)
    if not os.path.lexists(path):
        raise DataError(f"{path}: no such file or folder; DATA must be {_EXPECTED}")
    if format is not None:
        if format not in _READERS:
            raise ConfigError(f"unknown detection format {format!r}; choose one of {', '.join(DETECTION_FORMATS)}")
        if format == "coco" and path.is_dir():
            coco = _coco_in_folder(path)
            if coco is None:
                raise DataError(f"{path}: expected exactly one COCO .json file in this folder")
            path = coco
        return _READERS[format](path, strict=strict)
    found = _locate(path)
    if found is None:
        raise DataError(f"{path}: not detection annotations; DATA must be {_EXPECTED}")
    fmt, where = found
    return _READERS[fmt](where, strict=strict)
