"""Image paths to torch batches, through exactly the device preprocessing (or augmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from edgetl.modalities.image import PreprocessSpec, load_image, normalize, preprocess

__all__ = ["ImageDataset", "make_loader", "embed_images"]


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


def embed_images(backbone: nn.Module, paths: Sequence[Path], spec: PreprocessSpec, device: torch.device,
                 batch_size: int = 64, description: str = "embedding", options=None,
                 report: dict | None = None) -> torch.Tensor:
    """Embeddings of images through a frozen backbone, once each, in eval mode. Without
    ``options`` PyTorch computes them, uncached; with :class:`~edgetl.workstation.embedding.
    EmbedOptions` the runtime and the cache may (``report`` receives what happened)."""
    from edgetl.workstation.embedding import EmbedOptions, embed_paths

    options = options or EmbedOptions(engine="torch", cache=False, batch_size=batch_size)
    z, info = embed_paths(backbone, paths, spec, device, options, description)
    if report is not None:
        report.update(info)
    return torch.from_numpy(z)
