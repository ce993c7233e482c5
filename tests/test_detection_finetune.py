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
