"""Detection data readers: COCO JSON, YOLO folders, Pascal VOC XML — one rule set for clipping,
skipping and counting, one line for a malformed file, and hostile input refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import DataError
from edgetl.tasks.detection import (COUNT_KEYS, DetectionData, detect_format, read_detection_data,
                                    write_coco)


def _image(path: Path, w: int, h: int, color=(90, 120, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)
    return path


def _coco(tmp_path: Path, annotations, images=None, categories=None, name="ann.json") -> Path:
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "sub/b.png", "width": 60, "height": 60},
    ]
    for im in images:
        if not (tmp_path / im["file_name"]).exists() and not im.get("_absent"):
            _image(tmp_path / im["file_name"], im.get("width") or 50, im.get("height") or 50)
    doc = {"images": [{k: v for k, v in im.items() if k != "_absent"} for im in images],
           "annotations": annotations,
           "categories": categories if categories is not None else [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


# --- COCO ---------------------------------------------------------------------------------------


def test_coco_boxes_labels_and_counts(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [90, 70, 20, 20]},     # clipped to 100x80
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10]},       # degenerate
        {"id": 4, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]},       # unknown category
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [200, 200, 5, 5]},    # outside
        {"id": 6, "image_id": 2, "category_id": 3, "bbox": [0, 0, 60, 60], "iscrowd": 1},
        {"id": 7, "image_id": 42, "category_id": 3, "bbox": [0, 0, 6, 6]},       # unknown image
    ])
    assert detect_format(path) == "coco" and detect_format(tmp_path) == "coco"
    data = read_detection_data(path)
    assert isinstance(data, DetectionData) and data.format == "coco"
    assert data.labels == ("cat", "dog")  # by category id: 3, 7
    a, b = data.items
    assert a.path == tmp_path / "a.png" and (a.width, a.height) == (100, 80)
    np.testing.assert_array_equal(a.boxes, [[10, 20, 40, 60], [90, 70, 100, 80]])
    assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int64
    np.testing.assert_array_equal(a.classes, [1, 0])
    np.testing.assert_array_equal(b.crowd, [True])
    assert set(data.counts) == set(COUNT_KEYS)
    assert {k: v for k, v in data.counts.items() if v} == {
        "images": 2, "boxes": 2, "boxes_crowd": 1, "boxes_clipped": 1, "boxes_degenerate": 1,
        "boxes_unknown_class": 1, "boxes_outside": 1, "boxes_unknown_image": 1}
    assert len(data.skipped) == 4 and data.n_boxes == 2
    assert data.class_counts() == {"cat": 1, "dog": 1}
    assert read_detection_data(tmp_path).items[0].path == a.path  # a folder holding one COCO file


def test_coco_strict_refuses_with_the_file(tmp_path):
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]},
                            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DataError, match=r"ann\.json: annotations\[0\]: category_id 5") as exc:
        read_detection_data(path, strict=True)
    assert "\n" not in str(exc.value)
    assert read_detection_data(path).counts["boxes_unknown_class"] == 1


def test_coco_missing_outside_and_mismatched_images(tmp_path):
    outside = _image(tmp_path.parent / f"{tmp_path.name}-outside.png", 50, 50)
    (tmp_path / "link.png").symlink_to(outside)
    images = [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "gone.png", "width": 10, "height": 10, "_absent": True},
        {"id": 3, "file_name": f"../{outside.name}", "width": 50, "height": 50},
        {"id": 4, "file_name": "link.png", "width": 50, "height": 50},
        {"id": 5, "file_name": str(outside), "width": 50, "height": 50},
        {"id": 6, "file_name": "c.png", "width": 50, "height": 50},
        {"id": 7, "file_name": "bad.png", "width": 8, "height": 8, "_absent": True},
    ]
    _image(tmp_path / "c.png", 40, 50)  # annotated as 50x50
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}], images=images)
    data = read_detection_data(path)
    assert [it.path.name for it in data.items] == ["a.png"]
    c = data.counts
    assert (c["images_missing"], c["images_size_mismatch"], c["images_unreadable"]) == (4, 1, 1)
    reasons = " ".join(r for _, r in data.skipped)
    assert "outside the data folder" in reasons and "not found" in reasons and "40x50" in reasons


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    import struct
    import zlib

    _image(path, 4, 4)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # chunk type + data
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


def test_image_sizes_come_from_headers_and_bombs_are_skipped(tmp_path):
    _png_claiming(tmp_path / "bomb.png", 60_000, 60_000)
    _png_claiming(tmp_path / "sliver.png", 5000, 2)
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
              {"id": 2, "file_name": "bomb.png", "width": 60_000, "height": 60_000, "_absent": True},
              {"id": 3, "file_name": "sliver.png", "width": 5000, "height": 2, "_absent": True}]
    path = _coco(tmp_path, [{"id": 1, "image_id": i, "category_id": 7, "bbox": [0, 0, 2, 2]} for i in (1, 2, 3)],
                 images=images)
    data = read_detection_data(path)
    assert [it.path.name for it in data.items] == ["a.png"] and data.counts["images_unreadable"] == 2
    reasons = dict(data.skipped)
    assert any("larger than" in r for r in reasons.values()) and any("5000x2" in r for r in reasons.values())


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"images": [], "annotations": []}', "not a COCO annotation file"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply|not valid JSON"),
    ('{"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [NaN, 0, 1, 1]}], '
     '"categories": [{"id": 1, "name": "a"}]}', "not valid JSON"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "category_id": 1, '
     '"bbox": [0, 0, 1]}], "categories": [{"id": 1, "name": "a"}]}', r"annotations\[0\]: 'bbox'"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
     "appears twice"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a\\u0007"}]}', "control characters"),
    ('{"images": [], "annotations": [], "categories": []}', "no classes"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', "no usable annotated images"),
])
def test_coco_malformed_is_one_line(tmp_path, text, match):
    path = tmp_path / "ann.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as exc:
        read_detection_data(path, format="coco")
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_no_boxes_and_oversized_files_are_refused(tmp_path, monkeypatch):
    path = _coco(tmp_path, [])
    with pytest.raises(DataError, match="no usable boxes"):
        read_detection_data(path)
    from edgetl.tasks.detection import records

    monkeypatch.setattr(records, "MAX_JSON_BYTES", 100)
    monkeypatch.setattr("edgetl.tasks.detection.coco.MAX_JSON_BYTES", 100)
    with pytest.raises(DataError, match="more than the 100 allowed"):
        read_detection_data(path)


# --- YOLO ---------------------------------------------------------------------------------------


def _yolo(tmp_path: Path, names_file=("classes.txt", "cat\ndog\n")) -> Path:
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "a.jpg", 200, 100)
    _image(root / "images" / "train" / "b.png", 50, 50)
    _image(root / "images" / "c.png", 40, 40)  # no label file: background
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"
        "1 0.95 0.5 0.2 0.2\n"         # reaches past the right edge: clipped
        "\n"
        "1 0.1 0.1 0.2 0.2 0.2 0.3\n"  # a polygon (3 points): its bounding box
        "5 0.5 0.5 0.1 0.1\n")          # class 5 of 2: skipped
    (root / "labels" / "train" / "b.txt").write_text("1 0.5 0.5 0 0.5\n")  # degenerate
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    if names_file:
        (root / names_file[0]).parent.mkdir(parents=True, exist_ok=True)
        (root / names_file[0]).write_text(names_file[1])
    return root


def test_yolo_boxes_and_counts(tmp_path):
    root = _yolo(tmp_path)
    assert detect_format(root) == "yolo"
    data = read_detection_data(root)
    assert data.labels == ("cat", "dog") and data.format == "yolo"
    by_name = {it.path.name: it for it in data.items}
    a = by_name["a.jpg"]
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [170, 40, 200, 60], [20, 10, 40, 30]], atol=1e-4)
    np.testing.assert_array_equal(a.classes, [0, 1, 1])
    assert len(by_name["b.png"].boxes) == 0 and len(by_name["c.png"].boxes) == 0
    c = data.counts
    assert (c["boxes"], c["boxes_clipped"], c["boxes_unknown_class"], c["boxes_degenerate"]) == (3, 1, 1, 1)
    assert (c["images_without_labels"], c["images_missing"], c["images"]) == (1, 1, 3)
    assert any(w.endswith("a.txt:5") for w, _ in data.skipped)
    with pytest.raises(DataError, match=r"a\.txt:5: class 5 is not among the 2 classes"):
        read_detection_data(root, strict=True)


@pytest.mark.parametrize("names_file", [
    ("data.yaml", "path: .\ntrain: images\nnames: ['cat', \"dog\"]  # two\nnc: 2\n"),
    ("data.yaml", "names: [cat,\n  dog]\n"),
    ("dataset.yaml", "nc: 2\nnames:\n  - cat\n  - dog   # comment\ntrain: x\n"),
    ("data.yaml", "names:\n  0: cat\n  1: 'dog'\n"),
    ("data.yaml", "names: {0: cat, 1: dog}\n"),
    ("obj.names", "cat\ndog"),
    ("labels/classes.txt", "cat\ndog\n\n"),
])
def test_yolo_class_names(tmp_path, names_file):
    assert read_detection_data(_yolo(tmp_path, names_file)).labels == ("cat", "dog")


@pytest.mark.parametrize("names_file, line, match", [
    (None, None, "needs its class names"),
    (("data.yaml", "names:\n  0: cat\n  2: dog\n"), None, "without gaps"),
    (("data.yaml", "nc: 2\n"), None, "no 'names:' key"),
    (("classes.txt", "cat\ncat\n"), None, "appears twice"),
    (("classes.txt", "cat\ndog\n"), "0 0.5 0.5 0.1\n", r"a\.txt:1: expected 'class cx cy w h'"),
    (("classes.txt", "cat\ndog\n"), "0 0.5 nan 0.1 0.1\n", r"a\.txt:1: the class must be an integer"),
    (("classes.txt", "cat\ndog\n"), "zero 0.5 0.5 0.1 0.1\n", r"a\.txt:1: expected numbers"),
])
def test_yolo_malformed_is_one_line(tmp_path, names_file, line, match):
    root = _yolo(tmp_path, names_file)
    if line:
        (root / "labels" / "train" / "a.txt").write_text(line)
    with pytest.raises(DataError, match=match) as exc:
        read_detection_data(root)
    assert "\n" not in str(exc.value)


# --- Pascal VOC ---------------------------------------------------------------------------------

VOC = """<annotation>
  <filename>{filename}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  <object><name>tree</name><difficult>0</difficult>
    <bndbox><xmin>10</xmin><ymin>12.5</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
  <object><name>bush</name><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>
  <object><name>bush</name>
    <bndbox><xmin>40</xmin><ymin>40</ymin><xmax>90</xmax><ymax>55</ymax></bndbox></object>
</annotation>
"""


def test_voc_layouts(tmp_path):
    root = tmp_path / "voc"
    _image(root / "JPEGImages" / "x1.jpg", 64, 48)
    _image(root / "JPEGImages" / "x2.png", 64, 48)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "x1.xml").write_text(VOC.format(filename="x1.jpg", w=64, h=48))
    (root / "Annotations" / "x2.xml").write_text(VOC.format(filename="elsewhere.tif", w=0, h=0))  # by stem
    assert detect_format(root) == "voc"
    data = read_detection_data(root)
    assert data.labels == ("bush", "tree")  # sorted
    assert [it.path.name for it in data.items] == ["x1.jpg", "x2.png"]
    np.testing.assert_array_equal(data.items[0].boxes, [[10, 12.5, 30, 40], [40, 40, 64, 48]])
    np.testing.assert_array_equal(data.items[0].classes, [1, 0])
    assert data.counts["boxes_difficult"] == 2 and data.counts["boxes_clipped"] == 2
    read_detection_data(root, strict=True)  # difficult boxes are not an error

    loose = tmp_path / "loose"
    _image(loose / "y.png", 100, 100)
    (loose / "y.xml").write_text(VOC.format(filename="y.png", w=50, h=100))  # size disagrees
    (loose / "z.xml").write_text(VOC.format(filename="z.png", w=100, h=100))  # no image
    _image(loose / "w.png", 100, 100)
    (loose / "w.xml").write_text(VOC.format(filename="w.png", w=100, h=100))
    data = read_detection_data(loose)
    assert [it.path.name for it in data.items] == ["w.png"]
    assert data.counts["images_size_mismatch"] == 1 and data.counts["images_missing"] == 1


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>
"""


@pytest.mark.parametrize("content, match", [
    (BILLION_LAUGHS.encode(), "DOCTYPE"),
    (BILLION_LAUGHS.replace('"1.0"', '"1.0" encoding="UTF-16"').encode("utf-16"), "DOCTYPE"),
    (b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><annotation/>', "DOCTYPE"),
    (b"<annotation><object>", "not well-formed"),
    (b"<a>" * 100 + b"</a>" * 100, "nested more than"),
    (b"<html><body/></html>", "not a Pascal VOC file"),
    (b"<annotation><object><name>a</name></object></annotation>", "has no <bndbox>"),
    (b"<annotation><object><name>a</name><bndbox><xmin>x</xmin></bndbox></object></annotation>",
     "<xmin> must be a finite number"),
])
def test_voc_hostile_and_malformed_xml(tmp_path, content, match):
    (tmp_path / "a.xml").write_bytes(content)
    _image(tmp_path / "a.png", 20, 20)
    with pytest.raises(DataError, match=match) as exc:
        read_detection_data(tmp_path)
    assert "\n" not in str(exc.value) and "a.xml" in str(exc.value)


# --- the entry point, the writer ------------------------------------------------------------------


def test_detect_format_says_none_for_other_data(tmp_path):
    _image(tmp_path / "cls" / "cat" / "1.png", 10, 10)
    _image(tmp_path / "cls" / "dog" / "1.png", 10, 10)
    (tmp_path / "t.csv").write_text("text,label\nhi,a\n")
    (tmp_path / "other.json").write_text('{"text": "x"}')
    for data in (tmp_path / "cls", tmp_path / "t.csv", tmp_path / "other.json", tmp_path / "nope", ""):
        assert detect_format(data) is None
    with pytest.raises(DataError, match="not detection annotations"):
        read_detection_data(tmp_path / "cls")
    with pytest.raises(DataError, match="no such file"):
        read_detection_data(tmp_path / "nope")


def test_write_coco_round_trip(tmp_path):
    data = read_detection_data(_yolo(tmp_path))
    out = write_coco(data, tmp_path / "yolo" / "all.json", info={"description": "round trip"})
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    back = read_detection_data(out)
    assert back.labels == data.labels and len(back.items) == len(data.items)
    for a, b in zip(data.items, back.items):
        assert a.path.resolve() == b.path.resolve() and (a.width, a.height) == (b.width, b.height)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.classes, b.classes)
    assert json.loads(out.read_text())["info"] == {"description": "round trip"}
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match="outside"):
        write_coco(data, tmp_path / "yolo" / "labels" / "x.json")


DEEPFOREST = importlib.util.find_spec("deepforest")


@pytest.mark.skipif(DEEPFOREST is None, reason="deepforest is not installed (pip install --no-deps deepforest)")
def test_reads_deepforest_scenes():
    folder = Path(DEEPFOREST.submodule_search_locations[0]) / "data"
    data = read_detection_data(folder, strict=True)
    assert data.format == "voc" and len(data.items) == 4 and data.n_boxes == 951
    sizes = {it.path.stem: (it.width, it.height) for it in data.items}
    assert sizes["2019_YELL_2_528000_4978000_image_crop2"] == (2299, 2472)
    assert sizes["OSBS_029"] == (400, 400)


# --- data that ships in packages (workstation generators) ----------------------------------------


def test_composite_scenes(tmp_path):
    from edgetl.workstation.detection_data import COMPOSITE_CLASSES, write_composite_scenes

    classes = ["digit_3", "face", "cat", "horse"]
    kw = dict(per_class=6, seed=1, size=160, object_px=(20, 48), objects_per_image=(2, 3))
    path = write_composite_scenes(tmp_path / "a", classes, **kw)
    data = read_detection_data(path, strict=True)
    assert data.labels == tuple(classes) and data.class_counts() == {c: 6 for c in classes}
    assert data.counts["boxes_clipped"] == 0
    for it in data.items:
        assert (it.width, it.height) == (160, 160) and 1 <= len(it.boxes) <= 3
        side = np.maximum(it.boxes[:, 2] - it.boxes[:, 0], it.boxes[:, 3] - it.boxes[:, 1])
        assert (side <= 48).all() and (side >= 4).all()
        inter = np.clip(np.minimum(it.boxes[:, None, 2:], it.boxes[None, :, 2:])
                        - np.maximum(it.boxes[:, None, :2], it.boxes[None, :, :2]), 0, None).prod(-1)
        area = (it.boxes[:, 2:] - it.boxes[:, :2]).prod(-1)
        np.fill_diagonal(inter, 0)
        assert (inter <= 0.1 * np.minimum(area[:, None], area[None, :]) + 1e-3).all()  # no heavy overlaps
    assert "COMPOSITES" in json.loads(path.read_text())["info"]["description"]
    again = write_composite_scenes(tmp_path / "b", classes, **kw)  # seeded: the same files
    assert json.loads(again.read_text())["annotations"] == json.loads(path.read_text())["annotations"]
    assert (tmp_path / "a" / "images" / "train_1_00000.png").read_bytes() == \
        (tmp_path / "b" / "images" / "train_1_00000.png").read_bytes()
    test = read_detection_data(write_composite_scenes(tmp_path / "c", classes, split="test", **kw))
    assert test.class_counts() == {c: 6 for c in classes}
    assert len(COMPOSITE_CLASSES) == 17
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match="classes"):
        write_composite_scenes(tmp_path / "d", ["digit_3", "unicorn"])


@pytest.mark.skipif(DEEPFOREST is None, reason="deepforest is not installed (pip install --no-deps deepforest)")
def test_deepforest_split_holds_out_a_whole_scene(tmp_path):
    from edgetl.workstation.detection_data import DEEPFOREST_TEST_SCENE, deepforest_scenes, write_deepforest_split

    scenes = deepforest_scenes()
    assert scenes.labels == ("Tree",) and scenes.n_boxes == 951 and len(scenes.items) == 4
    split = write_deepforest_split(tmp_path)
    assert split.counts == {"train": {"tiles": 134, "boxes": 2318, "boxes_clipped": 427},
                            "test": {"tiles": 9, "boxes": 277, "boxes_clipped": 41}}  # as the docstring says
    train, test = read_detection_data(split.train, strict=True), read_detection_data(split.test, strict=True)
    assert all(it.path.name.startswith(DEEPFOREST_TEST_SCENE) for it in test.items)
    assert not any(it.path.name.startswith(DEEPFOREST_TEST_SCENE) for it in train.items)
    assert {(it.width, it.height) for it in train.items} == {(400, 400)}
    assert sum(it.width * it.height for it in test.items) == 1249 * 1035  # a partition: each crown scored once
    assert train.n_boxes == 2318 and test.n_boxes == 277
