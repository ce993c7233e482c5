"""What every backbone source returns, and the two registries: built-in names and sources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from edgetl.core.registry import Registry
from edgetl.errors import BackboneError
from edgetl.modalities.image import Interpolation, PreprocessSpec

__all__ = ["Backbone", "BUILTIN", "SOURCES", "IMAGENET", "offline_error", "create_backbone"]

IMAGENET = PreprocessSpec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), Interpolation.BICUBIC, 0.875)


@dataclass
class Backbone:
    """A feature extractor: ``module(*inputs) -> (N, num_features)`` pooled embeddings, with
    the spec its inputs need (image preprocessing, or tokenisation for text)."""

    name: str
    module: nn.Module
    preprocess: object  # the modality's spec: a PreprocessSpec for images
    num_features: int
    pretrained: bool
    arch: str = ""  # the registry name that rebuilds this architecture without weights
    modality: str = "image"
    files: dict = None  # type: ignore[assignment]  # extra files the RUN carries, e.g. {"tokenizer": path}

    def __post_init__(self) -> None:
        self.arch = self.arch or self.name
        self.files = dict(self.files or {})


# name -> factory(pretrained) -> Backbone
BUILTIN: Registry[Callable[[bool], Backbone]] = Registry("backbone", BackboneError)
# source prefix ("timm" in "timm:NAME") -> factory(arg, pretrained) -> Backbone
SOURCES: Registry[Callable[[str, bool], Backbone]] = Registry("backbone source", BackboneError)


def offline_error(source: str, exc: BaseException) -> BackboneError:
    return BackboneError(
        f"could not load pretrained weights for {source} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}); "
        "if this machine is offline, save the weights on a connected machine and use 'file:PATH', "
        "or train from scratch with --no-pretrained"
    )


def create_backbone(name: str, *, pretrained: bool = True) -> Backbone:
    """A built-in name, or ``SOURCE:ARG`` for a registered source (the sources register
    themselves when :mod:`edgetl.workstation.backbones` is imported)."""
    source, sep, arg = name.partition(":")
    if sep:
        if source not in SOURCES:
            known = ", ".join(f"{s}:..." for s in SOURCES.names())
            raise BackboneError(f"unknown backbone source {source!r}; use one of {known}")
        if not arg:
            raise BackboneError(f"{name!r}: name what to load after '{source}:'")
        return SOURCES.get(source)(arg, pretrained)
    return BUILTIN.get(name)(pretrained)
