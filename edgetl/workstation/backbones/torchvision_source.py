"""``torchvision:NAME``: a torchvision model with its final Linear replaced by Identity."""

from __future__ import annotations

from torch import nn

from edgetl.errors import BackboneError
from edgetl.modalities.image import Interpolation, PreprocessSpec
from edgetl.workstation.backbones.base import IMAGENET, SOURCES, Backbone, offline_error


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


@SOURCES.register("torchvision")
def _torchvision_backbone(name: str, pretrained: bool) -> Backbone:
    import torchvision

    if name not in torchvision.models.list_models():
        from edgetl.core.registry import did_you_mean

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
        raise offline_error(f"torchvision:{name}", exc) from None
    width = _strip_classifier(model)
    return Backbone(f"torchvision:{name}", model, spec, width, pretrained)
