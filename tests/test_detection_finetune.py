"""Detection fine-tuning's cut of the feature map: wherever ``--unfreeze`` puts it, the frozen
prefix then the trainable rest compute the feature map the detector computes (the stride-8
features are taken where they are made, also when the cut lies past them), and only the rest's
parameters train. The training itself runs end to end in test_detection_pipeline.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_every_cut_computes_the_same_feature_map():
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.detection.finetune import _Split
    from edgetl.workstation.detection.model import FeatureMap

    fm = FeatureMap(create_backbone("efficientnet_lite0", pretrained=False).module).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = fm(x)
        stages = fm.blocks()
        for unfreeze in (None, *range(len(stages) + 2)):
            split = _Split(fm, unfreeze)
            torch.testing.assert_close(split.rest(*split.prefix(x)), ref, rtol=0, atol=0)
            trainable = {id(p) for p in split.trainable()}
            expected = len(stages) if unfreeze is None else min(unfreeze, len(stages))
            assert trainable == {id(p) for s in stages[len(stages) - expected:] for p in s.parameters()}, unfreeze


def test_augmented_views_move_the_boxes_with_the_pixels(tmp_path):
    """Every training view (the image, its mirror, zoomed crops mirrored or not) of real
    composite scenes: each box the view keeps frames the same pixels it framed in the image
    (mean colour inside the box, per channel), boxes lie within the input, and a crop keeps
    exactly the boxes whose centre it holds (what it shows of the others is returned apart, to
    be ignored)."""
    import numpy as np

    from edgetl.modalities import batches, get_modality
    from edgetl.tasks.detection.data import read_detection_data
    from edgetl.tasks.detection.rows import item_boxes
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.detection.finetune import CROPS, view_boxes, view_image, views_of
    from edgetl.workstation.detection_data import write_composite_scenes

    size = 160
    write_composite_scenes(tmp_path / "scenes", ["face", "cat", "coffee"], per_class=6, seed=0, size=size,
                           object_px=(32, 56))
    items = read_detection_data(tmp_path / "scenes").items
    spec = create_backbone("efficientnet_lite0", pretrained=False).preprocess.with_input_size(size).letterboxed()
    views = views_of(len(items), size, True, np.random.default_rng(0))
    assert len(views) == len(items) * (2 + CROPS) and views_of(len(items), size, False, None) == \
        [(i, False, None) for i in range(len(items))]
    crops = {v for v in views if v[2] is not None}
    assert {v[1] for v in crops} == {False, True} and all(0.5 * size <= v[2][2] <= 0.9 * size for v in crops)

    def box_means(image, boxes):
        out = []
        for x1, y1, x2, y2 in np.round(boxes).astype(int):
            out.append(image[:, y1 + 3:y2 - 3, x1 + 3:x2 - 3].mean(axis=(1, 2)))  # clear of the edges' blending
        return np.asarray(out)

    compared = 0
    for indices, x, _ in batches(get_modality("image"), [it.path for it in items], spec, 8, strict=True):
        for row, i in enumerate(indices):
            for view in (v for v in views if v[0] == i):
                image = view_image(x["images"][row], view)
                boxes, classes, cut = view_boxes(items[i], size, view)
                assert image.shape == x["images"][row].shape and np.all((boxes >= 0) & (boxes <= size))
                seen, _ = item_boxes(items[i], size, flip=view[1])  # in the mirrored (or not) input
                if view[2] is None:
                    np.testing.assert_array_equal(boxes, seen)
                    assert len(cut) == 0
                    continue
                x0, y0, side = view[2]
                centres = (seen[:, :2] + seen[:, 2:]) / 2
                held = np.all((centres >= (x0, y0)) & (centres < (x0 + side, y0 + side)), axis=1)
                assert len(boxes) == held.sum() and len(cut) <= (~held).sum()
                assert np.all((cut >= 0) & (cut <= size)) and np.all(cut[:, 2:] > cut[:, :2])
                whole = held & np.all((seen[:, :2] >= (x0, y0)) & (seen[:, 2:] <= (x0 + side, y0 + side)), axis=1)
                if whole.any():
                    before = box_means(x["images"][row][..., ::-1] if view[1] else x["images"][row], seen[whole])
                    after = box_means(image, boxes[whole[held]])
                    np.testing.assert_allclose(after, before, atol=0.08)
                    compared += int(whole.sum())
    assert compared >= 5


def test_a_box_a_crop_cuts_off_is_ignored_not_taught_as_background(tmp_path):
    """An object whose centre falls outside a crop is not one of the crop's objects, but what the
    crop shows of it is not background either: those locations weigh nothing in the loss."""
    import numpy as np

    from edgetl.tasks.detection.boxes import cell_centers
    from edgetl.tasks.detection.records import DetectionItem
    from edgetl.workstation.detection.finetune import _targets, view_boxes

    item = DetectionItem(tmp_path / "unused.png", 160, 160, np.float32([[20, 20, 60, 60], [96, 96, 150, 150]]),
                         np.int64([0, 1]), np.zeros(2, bool))
    view = (0, False, (0, 0, 110))  # the second box's centre (123, 123) lies outside
    boxes, classes, cut = view_boxes(item, 160, view)
    assert classes.tolist() == [0] and len(cut) == 1
    np.testing.assert_allclose(cut[0], np.float32([96, 96, 110, 110]) * 160 / 110, rtol=1e-6)
    labels, _, weights = _targets(item, 160, (20, 20), view, rate=0.25)
    c = cell_centers(20, 20, 8.0)
    shown = (c[:, 0] > cut[0, 0]) & (c[:, 0] < cut[0, 2]) & (c[:, 1] > cut[0, 1]) & (c[:, 1] < cut[0, 3])
    assert shown.sum() >= 4 and np.all(weights[shown] == 0) and np.all(labels[shown] == 0)
    assert (labels > 0).any() and set(np.unique(weights[~shown & (labels == 0)])) <= {0.0, 0.25}
    assert (weights == 0.25).sum() > 300  # the background elsewhere is still background
