"""``file:PATH``: a local weights-only checkpoint ``{"arch": NAME, "state_dict": {...}}``
(never unpickled beyond tensors: ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgetl.errors import BackboneError
from edgetl.workstation.backbones.base import SOURCES, Backbone, create_backbone
from edgetl.workstation.backbones.timm_source import map_by_order


@SOURCES.register("file")
def _file_backbone(path: str, pretrained: bool = True) -> Backbone:
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
        module.load_state_dict(map_by_order(state, module), strict=False)
    elif missing:
        raise BackboneError(f"file:{path}: {len(missing)} weights of {arch} missing, e.g. {missing[0]}")
    return Backbone(f"file:{path}", module, backbone.preprocess, backbone.num_features, True, arch=arch)
