"""Backbone sources: a registry of pretrained feature extractors, each with the spec its
inputs need and the width of the embedding it produces.

Names: built-ins (``efficientnet_lite0``, ...: weights ship in packages, nothing downloaded),
and ``SOURCE:ARG`` for each registered source: ``timm:NAME``, ``torchvision:NAME``,
``file:PATH`` (a local checkpoint loaded with ``weights_only=True``). One module per source
registers itself here; :func:`create_backbone` is the one entry point.
"""

from __future__ import annotations

from torch import nn

from edgetl.workstation.backbones import file_source, text_source, timm_source, torchvision_source  # noqa: F401 - register
from edgetl.workstation.backbones.base import BUILTIN, SOURCES, Backbone, create_backbone, weights_digest

__all__ = ["Backbone", "create_backbone", "weights_digest", "list_backbones", "BUILTIN", "SOURCES", "backbone_blocks"]


def list_backbones() -> list[str]:
    return BUILTIN.names() + [{"file": "file:PATH", "hf": "hf:NAME_OR_PATH"}.get(s, f"{s}:NAME") for s in SOURCES.names()]


def backbone_blocks(module: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of blocks, input side first, for ``--unfreeze N``
    (a sentence encoder's: its transformer layers)."""
    if type(module).__name__ == "SentenceEncoder":
        from edgetl.workstation.text_encoder import transformer_blocks

        return list(transformer_blocks(module))
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
