"""The detection model: a frozen (or partly unfrozen) backbone cut at stride 8, under a
per-location linear head — torchvision's backbone -> head -> decode as separate pieces, with the
head the same kind of layer the device already trains (a Linear over rows; here a row is a
feature-map location).

:class:`FeatureMap` takes a timm EfficientNet/MobileNet-style model (``conv_stem``, ``bn1``,
``blocks``) and returns its stride-8 features concatenated with its stride-16 features
upsampled to stride 8 (EfficientNet-Lite0: 40 + 112 = 152 channels; a 320-pixel input gives a
40 x 40 map): fine enough for objects of about 16 pixels, with the context of the deeper blocks,
and the blocks past stride 16 are not run at all.

:class:`DetectionModel`: ``head`` maps each location's features to K + 1 class logits
(index 0 = background, k + 1 = class k) and ``box_head`` to the box as FCOS-style log distances
from the location's centre to the box's sides, in strides (edgetl.tasks.detection).
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl.errors import BackboneError

__all__ = ["FeatureMap", "DetectionModel", "STRIDE"]

STRIDE = 8


class FeatureMap(nn.Module):
    """images [N, 3, S, S] -> features [N, C8 + C16, S/8, S/8] (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks")):
            raise BackboneError(f"detection needs an EfficientNet or MobileNet backbone (timm's conv_stem, bn1, blocks); "
                                f"{type(model).__name__} has no such stages")
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        cut8, cut16, widths = _cuts(model)
        self.early = nn.Sequential(*list(model.blocks)[:cut8])
        self.late = nn.Sequential(*list(model.blocks)[cut8:cut16])
        self.num_features = widths[0] + widths[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f8 = self.early(self.stem(images))
        f16 = self.late(f8)
        return torch.cat([f8, nn.functional.interpolate(f16, size=f8.shape[-2:], mode="nearest")], dim=1)

    def blocks(self) -> list[nn.Module]:
        """The stages, first to last (what ``--unfreeze N`` counts from the end)."""
        return [self.stem, *self.early, *self.late]


def _cuts(model: nn.Module) -> tuple[int, int, tuple[int, int]]:
    """How many of ``model.blocks`` reach stride 8 and stride 16, and their widths (probed on a
    small input)."""
    with torch.no_grad():
        x = torch.zeros(1, 3, 64, 64)
        y = model.bn1(model.conv_stem(x))
        cut8 = cut16 = None
        widths = [0, 0]
        for i, block in enumerate(model.blocks):
            y = block(y)
            stride = 64 // y.shape[-1]
            if stride <= 8:
                cut8, widths[0] = i + 1, y.shape[1]
            if stride <= 16:
                cut16, widths[1] = i + 1, y.shape[1]
    if cut8 is None or cut16 is None or cut16 <= cut8:
        raise BackboneError("the backbone has no stride-8 and stride-16 stages to take features from")
    return cut8, cut16, (widths[0], widths[1])


class DetectionModel(nn.Module):
    """Backbone features under a per-location class head (K + 1 logits) and box head (4)."""

    def __init__(self, backbone: FeatureMap, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.head = nn.Linear(self.num_features, num_classes + 1)
        self.box_head = nn.Linear(self.num_features, 4)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, S, S] -> features [N, F, H, W]."""
        return self.backbone(images)

    @staticmethod
    def rows(z: torch.Tensor) -> torch.Tensor:
        """features [N, F, H, W] -> rows [N, H*W, F], locations in row-major (y, x) order."""
        return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])

    def forward_head(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features -> class logits [N, H*W, K+1] and box codes [N, H*W, 4]."""
        r = self.rows(z)
        return self.head(r), self.box_head(r)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(images))
