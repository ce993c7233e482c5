"""YOLO folders: the reader.

Layout (ultralytics, darknet): ``images/**/<name>.<ext>`` and ``labels/**/<name>.txt``
mirroring it, one line per box: ``class cx cy w h``, all but the class normalised to [0, 1]
by the image's width and height (a polygon line ``class x1 y1 x2 y2 ...``, ultralytics'
segmentation format, becomes its bounding box). An image without a label file is background.
Class names, first found: ``data.yaml`` / ``dataset.yaml`` (``names:`` a list, or a map from
index to name), ``classes.txt``, ``obj.names`` (one name per line) in the folder, then
``labels/classes.txt`` (where labelImg writes it). Torch-free; no YAML library needed: only
the ``names`` key is read, by the small parser below.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from edgetl.errors import DataError
from edgetl.tasks.detection.records import (MAX_CLASSES, MAX_LABEL_FILE_BYTES, Collector, DetectionData,
                                            check_labels, clean_name, image_files, inside, read_bounded)

__all__ = ["read_yolo", "looks_like_yolo", "NAME_FILES"]

NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names", "labels/classes.txt")


def looks_like_yolo(root: Path) -> bool:
    """A folder with ``images/`` and ``labels/`` subfolders."""
    root = Path(root)
    return (root / "images").is_dir() and (root / "labels").is_dir()


def _text(path: Path) -> str:
    raw = read_bounded(path, MAX_LABEL_FILE_BYTES, "label file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _scalar(token: str, where: str) -> str:
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token.split(" #", 1)[0].strip()


def _split_flow(body: str, where: str) -> list[str]:
    """Items of a YAML flow sequence body (between the brackets), commas inside quotes kept."""
    items, cur, quote = [], [], ""
    for c in body:
        if quote:
            cur.append(c)
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
            cur.append(c)
        elif c == ",":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if quote:
        raise DataError(f"{where}: unterminated quote in names")
    items.append("".join(cur))
    return [i for i in items if i.strip()]


def _names_from_yaml(text: str, where: str) -> list[str]:
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if not line.startswith("names:") and not line.startswith("names :"):
            continue
        rest = line.split(":", 1)[1].strip()
        if rest.startswith("[") or rest.startswith("{"):
            close = "]" if rest[0] == "[" else "}"
            body = rest
            for more in lines[n + 1:]:  # a flow collection may span lines
                if close in body:
                    break
                body += " " + more.strip()
            if close not in body:
                raise DataError(f"{where}: 'names' opens {rest[0]} but never closes it")
            items = _split_flow(body[1:body.rindex(close)], where)
            if close == "]":
                return [_scalar(i, where) for i in items]
            pairs = [i.split(":", 1) for i in items]
            return _ordered(pairs, where)
        if rest and not rest.startswith("#"):
            raise DataError(f"{where}: 'names' must be a list or a map from class index to name")
        seq, pairs = [], []
        for more in lines[n + 1:]:
            if not more.strip() or more.strip().startswith("#"):
                continue
            if not more[0].isspace() and not more.startswith("-"):
                break  # the next top-level key
            item = more.strip()
            if item.startswith("- ") or item == "-":
                seq.append(_scalar(item[1:], where))
            elif ":" in item:
                pairs.append(item.split(":", 1))
            else:
                raise DataError(f"{where}: cannot read the 'names' entry {item[:40]!r}")
        if seq and pairs:
            raise DataError(f"{where}: 'names' mixes a list and a map")
        return seq if seq else _ordered(pairs, where)
    raise DataError(f"{where}: no 'names:' key; list the class names there (or in classes.txt)")


def _ordered(pairs: list[list[str]], where: str) -> list[str]:
    by_index = {}
    for pair in pairs:
        if len(pair) != 2:
            raise DataError(f"{where}: a 'names' map entry must be 'index: name'")
        key = _scalar(pair[0], where)
        if not key.isdigit() or int(key) in by_index:
            raise DataError(f"{where}: 'names' map keys must be distinct class indices, got {key[:20]!r}")
        by_index[int(key)] = _scalar(pair[1], where)
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{where}: 'names' map keys must be 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def _class_names(root: Path, root_real: str) -> tuple[tuple[str, ...], Path]:
    for rel in NAME_FILES:
        path = root / rel
        if not path.is_file():
            continue
        if inside(root_real, path) is None:
            raise DataError(f"{path}: a symlink out of the data folder; copy the file in")
        text = _text(path)
        where = str(path)
        if path.suffix == ".yaml":
            raw = _names_from_yaml(text, where)
        else:
            raw = text.splitlines()
            while raw and not raw[-1].strip():
                raw.pop()
        if len(raw) > MAX_CLASSES:
            raise DataError(f"{where}: more than {MAX_CLASSES:,} class names")
        names = [clean_name(n, f"{where}: class {i}") for i, n in enumerate(raw)]
        return check_labels(names, where), path
    raise DataError(f"{root}: a YOLO folder needs its class names: add classes.txt (one name per line, "
                    "in class-index order) or data.yaml with a 'names:' list")


def _parse_labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(xyxy float64 [k, 4] in pixels, classes int64 [k], line number of each box)."""
    boxes, classes, lines = [], [], []
    for n, line in enumerate(_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            raise DataError(f"{where}: expected 'class cx cy w h' (5 fields) or a polygon 'class x1 y1 x2 y2 "
                            f"x3 y3 ...', got {len(fields)} fields")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DataError(f"{where}: expected numbers, got {line.strip()[:60]!r}") from None
        if not all(math.isfinite(v) for v in values) or not values[0].is_integer():
            raise DataError(f"{where}: the class must be an integer and the coordinates finite numbers")
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            xs, ys = values[1::2], values[2::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        boxes.append((box[0] * width, box[1] * height, box[2] * width, box[3] * height))
        classes.append(int(values[0]))
        lines.append(n)
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes, np.int64), lines


def read_yolo(root: Path, *, strict: bool = False) -> DetectionData:
    """Read a YOLO folder. A malformed label file is one :class:`DataError` naming its line;
    unusable images and boxes are skipped and counted (``strict`` refuses them)."""
    root = Path(root)
    col = Collector(root, "yolo", strict=strict)
    labels, names_file = _class_names(root, col.root_real)
    images_dir, labels_dir = root / "images", root / "labels"
    used: set[str] = set()
    for img in image_files(images_dir):
        label = labels_dir / img.relative_to(images_dir).with_suffix(".txt")
        used.add(os.path.normcase(str(label)))
        found = col.locate([img], str(img))
        if found is None:
            continue
        img, width, height = found
        if not label.is_file():
            col.counts["images_without_labels"] += 1
            col.add(img, width, height, np.zeros((0, 4)), np.zeros(0, np.int64), len(labels), str)
            continue
        if inside(col.root_real, label) is None:
            col.skip("images_missing", str(label), "label file is a symlink out of the data folder")
            continue
        xyxy, classes, lines = _parse_labels(label, width, height)
        col.add(img, width, height, xyxy, classes, len(labels), lambda j, lines=lines, label=label: f"{label}:{lines[j]}")
    for dirpath, dirnames, filenames in os.walk(labels_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(".txt") and not name.startswith(".") and path not in (names_file, labels_dir / "classes.txt") \
                    and os.path.normcase(str(path)) not in used:
                col.skip("images_missing", str(path), "label file without an image in images/")
    return col.finish(labels)
