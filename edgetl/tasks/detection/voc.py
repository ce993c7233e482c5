"""Pascal VOC XML: the reader.

One ``.xml`` per image (``annotation/filename``, ``size/width,height``, ``object/name``,
``object/difficult``, ``object/bndbox/xmin,ymin,xmax,ymax``), either in ``Annotations/``
beside ``JPEGImages/`` or loose in the folder. Coordinates are taken as written (no 1-based
shift), as torchvision and deepforest read them; ``difficult`` objects are skipped and counted,
as ultralytics' VOC conversion does. The image is ``filename`` looked up beside the XML, then
in ``JPEGImages/`` and ``images/``, then the XML's own name with an image extension.
``ImageSets/`` split lists are not read: every XML is. Torch-free.

XML is parsed with expat directly so that a DOCTYPE (and with it every entity declaration,
the billion-laughs attack and external entities) is refused before anything is expanded,
whatever the file's encoding.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

import numpy as np

from edgetl.errors import DataError
from edgetl.modalities.image import IMAGE_SUFFIXES
from edgetl.tasks.detection.records import (MAX_LABEL_FILE_BYTES, Collector, DetectionData, check_labels,
                                            clean_name, inside, read_bounded)

__all__ = ["read_voc", "looks_like_voc", "parse_xml", "MAX_XML_DEPTH"]

MAX_XML_DEPTH = 64


class _Refused(Exception):
    pass


def parse_xml(raw: bytes, where: str) -> Element:
    """The root element of an XML document with no DOCTYPE, nested at most :data:`MAX_XML_DEPTH`
    deep. Raises one-line :class:`DataError`."""
    builder = TreeBuilder()
    depth = [0]

    def start(name, attrs):
        depth[0] += 1
        if depth[0] > MAX_XML_DEPTH:
            raise _Refused(f"nested more than {MAX_XML_DEPTH} elements deep")
        builder.start(name, attrs)

    def end(name):
        depth[0] -= 1
        builder.end(name)

    def doctype(*_):
        raise _Refused("holds a DOCTYPE declaration; refused (entity expansion attacks). Remove it")

    def entity(*_):
        raise _Refused("declares an entity; refused (entity expansion attacks). Remove it")

    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.ExternalEntityRefHandler = lambda *_: 0  # never fetch anything
    try:
        parser.Parse(raw, True)
        return builder.close()
    except _Refused as exc:
        raise DataError(f"{where}: XML {exc}") from None
    except (expat.ExpatError, RecursionError, ValueError, AssertionError) as exc:
        raise DataError(f"{where}: not well-formed XML ({str(exc).splitlines()[0][:100]})") from None


def _xml_files(root: Path) -> tuple[list[Path], Path | None]:
    ann = root / "Annotations"
    folder = ann if ann.is_dir() else root
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and not p.name.startswith(".")
                       and p.is_file())
    except OSError as exc:
        raise DataError(f"{folder}: cannot read this folder ({exc.strerror or exc})") from None
    return files, (ann if ann.is_dir() else None)


def looks_like_voc(root: Path) -> bool:
    """A folder with ``Annotations/`` or with ``.xml`` files at its top level."""
    root = Path(root)
    try:
        return bool(_xml_files(root)[0])
    except DataError:
        return False


def _number(el: Element | None, tag: str, where: str) -> float:
    text = el.findtext(tag) if el is not None else None
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: <{tag}> must be a finite number, got {text!r:.40}")
    return value


def _parse(xml: Path) -> tuple[str | None, tuple[int | None, int | None], list[tuple[str, bool, tuple]]]:
    """(filename, stated (width, height), [(name, difficult, (x1, y1, x2, y2))])."""
    where = str(xml)
    tree = parse_xml(read_bounded(xml, MAX_LABEL_FILE_BYTES, "VOC annotation file"), where)
    if tree.tag != "annotation":
        raise DataError(f"{where}: not a Pascal VOC file (the root element is <{tree.tag[:40]}>, not <annotation>)")
    filename = (tree.findtext("filename") or "").strip() or None
    size = tree.find("size")
    stated: tuple[int | None, int | None] = (None, None)
    if size is not None and size.findtext("width") and size.findtext("height"):
        w, h = _number(size, "width", f"{where}: <size>"), _number(size, "height", f"{where}: <size>")
        if w > 0 and h > 0:  # 0x0 is how some tools say "unknown"
            stated = (int(w), int(h))
    objects = []
    for i, obj in enumerate(tree.iter("object"), start=1):
        ow = f"{where}: object {i}"
        name = clean_name(obj.findtext("name"), ow) if obj.find("name") is not None else None
        if name is None:
            raise DataError(f"{ow}: has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{ow}: has no <bndbox>")
        coords = tuple(_number(box, t, ow) for t in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        objects.append((name, difficult, coords))
    return filename, stated, objects


def read_voc(root: Path, *, strict: bool = False) -> DetectionData:
    """Read a VOC folder. A malformed XML is one :class:`DataError` naming the file; unusable
    images and boxes are skipped and counted (``strict`` refuses them). Classes: every object
    name seen, sorted."""
    root = Path(root)
    files, ann_dir = _xml_files(root)
    if not files:
        raise DataError(f"{root}: no .xml annotation files (here or in Annotations/)")
    col = Collector(root, "voc", strict=strict)
    parsed = []
    for xml in files:
        if inside(col.root_real, xml) is None:
            col.skip("images_missing", str(xml), "annotation file is a symlink out of the data folder")
            continue
        parsed.append((xml, *_parse(xml)))
    labels = check_labels(sorted({name for *_, objects in parsed for name, _, _ in objects}), str(root))
    index = {name: k for k, name in enumerate(labels)}
    dirs = [root / "JPEGImages", root / "images", root]
    for xml, filename, stated, objects in parsed:
        folders = [xml.parent] + [d for d in dirs if d != xml.parent]
        names = ([PurePosixPath(filename.replace("\\", "/")).name] if filename else []) + \
            [xml.stem + s for s in IMAGE_SUFFIXES] + [xml.stem + s.upper() for s in IMAGE_SUFFIXES]
        candidates = [f / n for n in names for f in folders]
        existing = [c for c in candidates if os.path.lexists(c)]
        found = col.locate(existing or candidates[:1], str(xml))
        if found is None:
            continue
        img, width, height = found
        # Not an error in the data: counted, never refused by --strict.
        keep = [i for i, (_, difficult, _) in enumerate(objects) if not difficult]
        col.counts["boxes_difficult"] += len(objects) - len(keep)
        xyxy = np.asarray([objects[i][2] for i in keep], np.float64).reshape(-1, 4)
        classes = np.asarray([index[objects[i][0]] for i in keep], np.int64)
        col.add(img, width, height, xyxy, classes, len(labels), lambda j, keep=keep, xml=xml: f"{xml}: object {keep[j] + 1}",
                stated=stated, stated_where=f"{xml}: {img}")
    return col.finish(labels)
