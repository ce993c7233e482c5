"""Detection geometry: letterboxing, IoU and NMS (index for index what torchvision returns),
FCOS box coding and centre-sampling assignment, and drawing detections."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import ConfigError
from edgetl.tasks.detection import (LETTERBOX_FILL, assign_targets, batched_nms, box_iou, cell_centers,
                                    decode_boxes, draw_detections, encode_boxes, from_letterbox, letterbox,
                                    letterbox_image, nms, sanitize_label, to_letterbox)
from edgetl.tasks.detection.boxes import BATCHED_NMS_VANILLA_ABOVE

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is the reference (workstation venv)")


# --- letterbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize("w, h, size, expect", [
    (640, 480, 320, (320, 240, 0, 40)),
    (480, 640, 320, (240, 320, 40, 0)),
    (100, 100, 64, (64, 64, 0, 0)),
    (1000, 3, 100, (100, 1, 0, 49)),     # a sliver keeps at least one row
    (33, 17, 64, (64, 33, 0, 15)),       # upscaled; 17 * 64/33 = 32.97 -> 33 rows
])
def test_letterbox_geometry(w, h, size, expect):
    lb = letterbox(w, h, size)
    assert (lb.new_width, lb.new_height, lb.pad_x, lb.pad_y) == expect
    assert lb.scale_x == lb.new_width / w and lb.scale_y == lb.new_height / h
    full = np.array([[0, 0, w, h]], np.float32)
    np.testing.assert_allclose(to_letterbox(full, lb), [[lb.pad_x, lb.pad_y, lb.pad_x + lb.new_width,
                                                         lb.pad_y + lb.new_height]], atol=1e-4)


def test_letterbox_bad_sizes():
    with pytest.raises(ConfigError):
        letterbox(0, 10, 32)


def test_boxes_round_trip_and_clip():
    rng = np.random.default_rng(0)
    for w, h in ((640, 480), (300, 900), (77, 1023)):
        lb = letterbox(w, h, 256)
        xy = rng.uniform(0, [w, h], (50, 2))
        boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(1, 100, (50, 2)), [w, h])], 1).astype(np.float32)
        back = from_letterbox(to_letterbox(boxes, lb), lb)
        np.testing.assert_allclose(back, boxes, atol=1e-3 * max(w, h) / 256 + 1e-3)
    lb = letterbox(200, 100, 100)  # 100x50 at pad_y 25
    np.testing.assert_allclose(to_letterbox([[-10, -10, 300, 300]], lb), [[0, 25, 100, 75]])
    np.testing.assert_allclose(from_letterbox([[-5, 0, 120, 100]], lb), [[0, 0, 200, 100]])


def test_letterbox_image_places_content_and_pads():
    img = np.zeros((60, 120, 3), np.uint8)
    img[20:40, 30:60] = (255, 0, 0)  # a red box at x 30..60, y 20..40
    out, lb = letterbox_image(img, 96)
    assert out.size == (96, 96) and (lb.pad_x, lb.pad_y) == (0, 24)
    a = np.asarray(out)
    assert tuple(a[0, 0]) == LETTERBOX_FILL and tuple(a[-1, -1]) == LETTERBOX_FILL
    x1, y1, x2, y2 = to_letterbox([[30, 20, 60, 40]], lb)[0].round().astype(int)
    assert (x1, y1, x2, y2) == (24, 40, 48, 56)
    inner = a[y1 + 2:y2 - 2, x1 + 2:x2 - 2]
    assert (inner[..., 0] > 240).all() and (inner[..., 1] < 15).all()
    same, lb2 = letterbox_image(Image.new("RGB", (96, 96)), 96)
    assert same.size == (96, 96) and (lb2.pad_x, lb2.pad_y) == (0, 0)


# --- IoU and NMS against torchvision ------------------------------------------------------------------


def _random_boxes(rng, n, grid=None, extent=600.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, 150, (n, 2))
    if grid:  # integer-ish coordinates make exact IoU ties
        xy, wh = np.round(xy / grid) * grid, np.round(wh / grid) * grid + grid
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _clustered(rng, n_obj, per):
    ctr = rng.uniform(0, 320, (n_obj, 2))
    sz = rng.uniform(10, 64, (n_obj, 2))
    base = np.concatenate([ctr - sz / 2, ctr + sz / 2], 1)
    return (np.repeat(base, per, 0) + rng.normal(0, 3, (n_obj * per, 4))).astype(np.float32)  # some inverted


def _cases():
    rng = np.random.default_rng(0)
    for seed in range(60):
        n = [0, 1, 2, 50, 300, 1000, 1001, 1800][seed % 8]
        boxes = _random_boxes(rng, n, grid=8 if seed % 3 == 0 else None) if seed % 2 else _clustered(rng, max(1, n // 30), 30)[:n]
        scores = rng.random(len(boxes)).astype(np.float32)
        if seed % 4 < 2:
            scores = np.round(scores, 1).astype(np.float32)  # many ties
        classes = rng.integers(0, 1 + seed % 5, len(boxes))
        threshold = [0.5, 0.3, 0.7, 0.45, 0.0, 0.999][seed % 6]
        yield boxes, scores, classes, threshold


@needs_torchvision
def test_nms_equals_torchvision():
    import torch
    import torchvision

    n_cases = 0
    for boxes, scores, classes, t in _cases():
        tb, ts, tc = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
        ours = nms(boxes, scores, t)
        ref = torchvision.ops.nms(tb, ts, t).numpy()
        assert ours.dtype == np.int64 and np.array_equal(ours, ref), (len(boxes), t)
        ours = batched_nms(boxes, scores, classes, t)
        ref = torchvision.ops.batched_nms(tb, ts, tc, t).numpy()
        if boxes.size <= BATCHED_NMS_VANILLA_ABOVE:
            assert np.array_equal(ours, ref), (len(boxes), t)
        else:
            # torchvision's per-class path merges with an unstable sort: among equal scores its
            # order is arbitrary; ours keeps input order. Same boxes, same score sequence.
            assert set(ours.tolist()) == set(ref.tolist()) and np.array_equal(scores[ours], scores[ref])
        n_cases += 1
    assert n_cases == 60
    b64 = _random_boxes(np.random.default_rng(1), 200).astype(np.float64)
    s64 = np.random.default_rng(2).random(200)
    assert np.array_equal(nms(b64, s64, 0.4), torchvision.ops.nms(torch.from_numpy(b64), torch.from_numpy(s64), 0.4).numpy())
    neg = _random_boxes(np.random.default_rng(3), 30)
    assert np.array_equal(nms(neg, s64[:30].astype(np.float32), -0.1),
                          torchvision.ops.nms(torch.from_numpy(neg), torch.from_numpy(s64[:30].astype(np.float32)), -0.1).numpy())


@needs_torchvision
def test_box_iou_equals_torchvision():
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 40, grid=4), _random_boxes(rng, 70)
    np.testing.assert_array_equal(box_iou(a, b), torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy())


def test_nms_basics_without_torchvision():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.9], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 2])  # tie at 0.9: input order
    np.testing.assert_array_equal(batched_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.5), [0, 3, 2])
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="NaN"):
        nms(boxes, np.array([np.nan, 1, 1, 1], np.float32), 0.5)


# --- box coding and assignment --------------------------------------------------------------------


def test_cell_centers_row_major():
    c = cell_centers(2, 3, 8)
    np.testing.assert_array_equal(c, [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]])


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    centers = rng.uniform(50, 250, (500, 2)).astype(np.float32)
    d = rng.uniform(0.5, 120, (500, 4)).astype(np.float32)
    boxes = np.concatenate([centers - d[:, :2], centers + d[:, 2:]], 1)
    codes = encode_boxes(boxes, centers, 16)
    np.testing.assert_allclose(codes, np.log(d / 16), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decode_boxes(codes, centers, 16), boxes, rtol=1e-5, atol=1e-3)
    huge = decode_boxes(np.full((1, 4), 1e4, np.float32), centers[:1], 16)
    assert np.isfinite(huge).all()


def _assign_brute(boxes, classes, h, w, stride, radius):
    labels = np.zeros(h * w, np.int64)
    index = np.full(h * w, -1)
    for r in range(h):
        for c in range(w):
            x, y = (c + 0.5) * stride, (r + 0.5) * stride
            best, best_area = -1, np.inf
            for k, (x1, y1, x2, y2) in enumerate(boxes):
                bx, by = (x1 + x2) / 2, (y1 + y2) / 2
                if x1 < x < x2 and y1 < y < y2 and abs(x - bx) < radius * stride and abs(y - by) < radius * stride:
                    area = (x2 - x1) * (y2 - y1)
                    if area < best_area:
                        best, best_area = k, area
            if best >= 0:
                labels[r * w + c], index[r * w + c] = classes[best] + 1, best
    return labels, index


def test_assign_targets_matches_the_rule():
    rng = np.random.default_rng(0)
    for radius in (1.5, 0.75, 10.0):
        xy = rng.uniform(0, 300, (25, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 120, (25, 2))], 1).astype(np.float32)
        classes = rng.integers(0, 4, 25)
        a = assign_targets(boxes, classes, 40, 40, 8, radius=radius)
        labels, index = _assign_brute(boxes, classes, 40, 40, 8, radius)
        np.testing.assert_array_equal(a.labels, labels)
        np.testing.assert_array_equal(a.box_index, index)
        pos = a.box_index >= 0
        # exact but where a centre lies within 1/64 stride of an edge (encode floors the distance)
        np.testing.assert_allclose(decode_boxes(a.targets[pos], cell_centers(40, 40, 8)[pos], 8),
                                   boxes[a.box_index[pos]], atol=8 / 64 + 1e-3)
        assert (a.targets[~pos] == 0).all()
        assert set(a.unassigned.tolist()) == set(range(25)) - set(index[index >= 0].tolist())


def test_assign_targets_ties_small_boxes_and_empty():
    big = [0, 0, 64, 64]
    small = [8, 8, 40, 40]
    a = assign_targets(np.array([big, small], np.float32), np.array([0, 1]), 8, 8, 8, radius=10)
    grid = a.labels.reshape(8, 8)
    assert (grid[1:5, 1:5] == 2).all()  # the smaller box takes the shared cells
    assert grid[0, 0] == 1 and grid[6, 6] == 1
    tiny = assign_targets(np.array([[1, 1, 3, 3]], np.float32), np.array([0]), 4, 4, 8)
    assert tiny.unassigned.tolist() == [0] and (tiny.labels == 0).all()
    same = assign_targets(np.array([[0, 0, 16, 16], [0, 0, 16, 16]], np.float32), np.array([2, 3]), 2, 2, 8)
    assert set(same.box_index[same.box_index >= 0].tolist()) == {0}  # equal areas: the first
    empty = assign_targets(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 3, 3, 8)
    assert (empty.labels == 0).all() and empty.targets.shape == (9, 4)


# --- drawing --------------------------------------------------------------------------------------


def test_draw_detections(tmp_path):
    img = Image.new("RGB", (200, 120), (0, 0, 0))
    out = draw_detections(img, [{"label": "tree\x1b[31m\n\u202eevil", "score": 0.87, "box": [20, 30, 120, 100]},
                                ([150, 10, 190, 50], 0.5, "bush")], tmp_path / "out.png")
    assert out == tmp_path / "out.png" and [p.name for p in tmp_path.iterdir()] == ["out.png"]
    a = np.asarray(Image.open(out))
    assert a.shape == (120, 200, 3)
    assert a[60, 20].any() and a[60, 120].any() and not a[60, 70].any()  # outline only
    assert sanitize_label("tree\x1b[31m\n\u202eevil") == "tree?[31m ?evil"
    assert len(sanitize_label("x" * 500)) == 48
    with pytest.raises(ConfigError, match="format"):
        draw_detections(img, [], tmp_path / "out.unknown")


def test_detection_runs_with_torch_blocked(tmp_path):
    """The task's building blocks are the device's too: they import and run without torch."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import numpy as np\n"
        "from edgetl.tasks.detection import nms, batched_nms, coco_evaluate, letterbox_image, assign_targets\n"
        "b = np.array([[0, 0, 10, 10], [1, 1, 10, 10]], np.float32); s = np.array([0.9, 0.8], np.float32)\n"
        "assert nms(b, s, 0.5).tolist() == [0]\n"
        "gt = [{'boxes': b[:1], 'classes': np.array([0])}]\n"
        "assert coco_evaluate([[(b[0], 0.9, 0)]], gt, ['a'])['map'] > 0.999999\n"
        "letterbox_image(np.zeros((5, 9, 3), np.uint8), 16); assign_targets(b, [0, 0], 4, 4, 4)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
