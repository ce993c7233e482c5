"""What every backbone source returns, and the two registries: built-in names and sources."""

from __future__ import annotations

import hashlib
from typing import Callable

from torch import nn

from edgetl.core.registry import Registry
from edgetl.errors import BackboneError
from edgetl.modalities.image import Interpolation, PreprocessSpec

__all__ = ["Backbone", "weights_digest", "BUILTIN", "SOURCES", "IMAGENET", "offline_error", "create_backbone"]

IMAGENET = PreprocessSpec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), Interpolation.BICUBIC, 0.875)


class Backbone:
    """A feature extractor: ``module(*inputs) -> (N, num_features)`` pooled embeddings, with
    the spec its inputs need (image preprocessing, or tokenisation for text).

    A built-in is described before it is built: with ``build`` (a callable returning the
    module), :attr:`module` is built on first use, and ``weights`` (a callable returning
    :attr:`weights_id`) names its pretrained weights from the file they ship in. A linear
    probe whose embeddings are all cached never builds it (nor imports its framework), and
    its RUN refers to the weights (:attr:`reference`) instead of copying them."""

    def __init__(self, name: str, module: nn.Module | None, preprocess: object, num_features: int, pretrained: bool,
                 arch: str = "", modality: str = "image", files: dict | None = None, *,
                 build: Callable[[], nn.Module] | None = None, weights: Callable[[], str] | None = None):
        if module is None and build is None:
            raise ValueError("a Backbone needs a module or a build callable")
        self.name, self.preprocess, self.num_features, self.pretrained = name, preprocess, int(num_features), pretrained
        self.arch = arch or name
        self.modality = modality
        self.files = dict(files or {})  # extra files the RUN carries, e.g. {"tokenizer": path}
        self._module, self._build, self._weights, self._weights_id = module, build, weights, None

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            self._module = self._build()
        return self._module

    @property
    def weights_id(self) -> str:
        """SHA-256 of the weights (:func:`weights_digest`): from the file they ship in where
        ``weights`` was given, else from the module."""
        if self._weights_id is None:
            self._weights_id = self._weights() if self._weights is not None else weights_digest(self.module)
        return self._weights_id

    @property
    def reference(self) -> dict | None:
        """``{"builtin": name, "sha256": weights_id}`` for pretrained weights installed with
        edgetl (a RUN that did not change them names them instead of copying them), else None."""
        if self._weights is None or not self.pretrained:
            return None
        return {"builtin": self.name, "sha256": self.weights_id}

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, {self.num_features} features, {self.modality})"


def weights_digest(module_or_state) -> str:
    """SHA-256 over a module's (or a state dict's) tensors: dtype, shape and bytes, in order,
    leaving out BatchNorm's ``num_batches_tracked`` counters (they change no output). Names
    are left out too, so a built-in's digest can be read from the file its weights ship in
    (the same tensors in the same order under other names; see ``map_by_order``) without
    building the model."""
    import torch

    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    h = hashlib.sha256()
    for name, t in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
