"""Image paths to torch batches, through exactly the device preprocessing (or augmentation)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from edgetl.core import ui as _ui
from edgetl.modalities.image import PreprocessSpec, load_image, normalize, preprocess
from edgetl.workstation.backbones.base import Backbone

__all__ = ["ImageDataset", "make_loader", "embed_images", "ItemDataset", "make_dataset", "make_item_loader",
           "as_inputs", "embed_items", "modality_for"]


class ImageDataset(torch.utils.data.Dataset):
    """Image paths -> (tensor, label), through the evaluation preprocessing or augmentation."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], spec: PreprocessSpec, augment: bool = False):
        self.paths, self.labels, self.spec = list(paths), list(labels), spec
        self.train_tf = None
        if augment:
            from torchvision import transforms as T

            self.train_tf = T.Compose([
                T.RandomResizedCrop(spec.input_size, scale=(0.6, 1.0), interpolation=tv_interp(spec)),
                T.RandomHorizontalFlip(),
            ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.train_tf is None:
            x = preprocess(self.paths[i], self.spec)
        else:
            x = normalize(self.train_tf(load_image(self.paths[i])), self.spec)
        return torch.from_numpy(x), self.labels[i]


def tv_interp(spec: PreprocessSpec):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(spec.interpolation.value)


def make_loader(ds: torch.utils.data.Dataset, batch_size: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


def embed_images(backbone, paths: Sequence[Path], spec: PreprocessSpec, device: torch.device,
                 batch_size: int = 64, description: str = "embedding", options=None,
                 report: dict | None = None, skip_unreadable: bool = False) -> torch.Tensor:
    """Embeddings of images through a frozen backbone (a module, or a
    :class:`~edgetl.workstation.backbones.Backbone`), once each, in eval mode. Without
    ``options`` PyTorch computes them, uncached; with :class:`~edgetl.workstation.embedding.
    EmbedOptions` the runtime and the cache may (``report`` receives what happened). With
    ``skip_unreadable`` an image that does not decode gets a row of zeros and is listed in
    ``report["failed"]``."""
    from edgetl.workstation.embedding import EmbedOptions, embed_paths

    options = options or EmbedOptions(engine="torch", cache=False, batch_size=batch_size)
    z, info = embed_paths(backbone, paths, spec, device, options, description, skip_unreadable=skip_unreadable)
    if report is not None:
        report.update(info)
    return torch.from_numpy(z)


# --- any modality: texts (token ids) as well as images ---------------------------------------

def modality_for(spec):
    """The modality whose spec ``spec`` is (the loops get the spec, not the name)."""
    from edgetl.modalities import get_modality

    return get_modality("image" if isinstance(spec, PreprocessSpec) else "text")


class ItemDataset(torch.utils.data.Dataset):
    """Items of a non-image modality (texts) -> (rows of model inputs, label); batched by
    :func:`collate_items` through the modality's own collate (padding to the longest)."""

    def __init__(self, items: Sequence, labels: Sequence[int], spec, modality):
        self.items, self.labels, self.spec, self.modality = list(items), list(labels), spec, modality

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.modality.load(self.items[i], self.spec), self.labels[i]

    def collate(self, batch):
        rows, ys = zip(*batch)
        x = self.modality.collate(rows, self.spec)
        return tuple(torch.from_numpy(x[i.name]) for i in self.modality.inputs(self.spec)), torch.as_tensor(ys)


def make_dataset(items: Sequence, labels: Sequence[int], spec, augment: bool = False):
    if isinstance(spec, PreprocessSpec):
        return ImageDataset(items, labels, spec, augment=augment)
    return ItemDataset(items, labels, spec, modality_for(spec))


def make_item_loader(ds, batch_size: int, shuffle: bool, seed: int, sampler=None) -> torch.utils.data.DataLoader:
    """A loader of ``ds`` (shuffled by a seeded generator, or drawn by ``sampler``)."""
    if isinstance(ds, ImageDataset) and sampler is None:
        return make_loader(ds, batch_size, shuffle, seed)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, generator=g,
                                       num_workers=0, sampler=sampler,
                                       collate_fn=None if isinstance(ds, ImageDataset) else ds.collate)


def as_inputs(x, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A loader's batch (an image tensor, or a tuple of input tensors) -> the model's arguments."""
    return tuple(t.to(device) for t in x) if isinstance(x, (tuple, list)) else (x.to(device),)


@torch.no_grad()
def embed_items(backbone, items: Sequence, spec, device: torch.device, batch_size: int = 64,
                description: str = "embedding", options=None, report: dict | None = None,
                skip_unreadable: bool = False) -> torch.Tensor:
    """Embeddings of items of any modality through a frozen backbone (a module, or a
    :class:`~edgetl.workstation.backbones.Backbone`), once each (texts in order of length,
    so batches pad little). ``skip_unreadable``: see :func:`embed_images` (texts always load)."""
    if isinstance(spec, PreprocessSpec):
        return embed_images(backbone, items, spec, device, batch_size, description, options=options, report=report,
                            skip_unreadable=skip_unreadable)
    import numpy as np

    modality = modality_for(spec)
    backbone = (backbone.module.to(device) if isinstance(backbone, Backbone) else backbone).eval()  # built on first use
    t0 = time.perf_counter()
    order = np.argsort([len(t) for t in items], kind="stable")
    out = [None] * len(items)
    with _ui.progress_bar(description, len(items)) as advance:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = modality.collate([modality.load(items[i], spec) for i in idx], spec)
            z = backbone(*(torch.from_numpy(x[i.name]).to(device) for i in modality.inputs(spec))).float().cpu()
            for row, i in enumerate(idx):
                out[i] = z[row]
            advance(len(idx))
    if report is not None:  # texts: PyTorch, uncached (the runtime path is for images so far)
        seconds = time.perf_counter() - t0
        report.update(engine="torch", why="text backbone", images=len(items), computed=len(items), cached=0,
                      seconds=round(seconds, 3), images_per_s=round(len(items) / seconds, 1) if seconds else None,
                      workers=1, cache=None, **({"failed": []} if skip_unreadable else {}))
    return torch.stack(out) if out else torch.zeros(0)
