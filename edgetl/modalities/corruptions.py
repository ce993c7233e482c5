"""Deterministic, seeded image corruptions in the style of ImageNet-C (Hendrycks and
Dietterich, 2019), for building a real domain shift from real images. Torch-free.

Each corruption has five severities. Parameters follow ImageNet-C where they are
defined in intensity (noise, contrast); blur sigmas are ImageNet-C's, which are in pixels
of a 224-pixel image, scaled to the image's shorter side so that a severity means the
same on a 32-pixel digit as on a photo:

==============  ===============================================  ========================
corruption      what it does (x in [0, 1])                       severity 1 .. 5
==============  ===============================================  ========================
gaussian_noise  x + N(0, c^2) per pixel and channel, clipped     c = .08 .12 .18 .26 .38
gaussian_blur   Gaussian blur, sigma = c * min(w, h) / 224       c = 1 2 3 4 6
contrast        (x - mean) * c + mean, mean per channel          c = .4 .3 .2 .1 .05
invert          1 - x (not in ImageNet-C; severity ignored)      -
==============  ===============================================  ========================

Corruptions compose: ``"contrast+gaussian_noise"`` applies contrast, then noise. The
random draw of an image depends only on ``seed`` and the image's path relative to the
folder, so a copy is identical whatever the file order or the machine.
"""

from __future__ import annotations

import os
import zlib
from enum import Enum
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from edgetl.errors import ConfigError, DataError
from edgetl.modalities.image import IMAGE_SUFFIXES, load_image

__all__ = ["Corruption", "SEVERITIES", "corrupt", "parse_corruptions", "write_shifted"]


class Corruption(str, Enum):
    GAUSSIAN_NOISE = "gaussian_noise"
    GAUSSIAN_BLUR = "gaussian_blur"
    CONTRAST = "contrast"
    INVERT = "invert"


SEVERITIES: dict[Corruption, tuple[float, ...]] = {
    Corruption.GAUSSIAN_NOISE: (0.08, 0.12, 0.18, 0.26, 0.38),
    Corruption.GAUSSIAN_BLUR: (1.0, 2.0, 3.0, 4.0, 6.0),
    Corruption.CONTRAST: (0.4, 0.3, 0.2, 0.1, 0.05),
    Corruption.INVERT: (1.0,) * 5,
}


def parse_corruptions(spec: str | Corruption | list) -> list[Corruption]:
    """``"contrast+gaussian_noise"`` (or a list of names) -> corruptions in order."""
    names = spec.split("+") if isinstance(spec, str) else [spec] if isinstance(spec, Corruption) else list(spec)
    out = []
    for name in names:
        try:
            out.append(Corruption(getattr(name, "value", name).strip()))
        except ValueError:
            known = ", ".join(c.value for c in Corruption)
            raise ConfigError(f"unknown corruption {name!r}; choose from {known} (join several with '+')") from None
    if not out:
        raise ConfigError("no corruption given; choose from " + ", ".join(c.value for c in Corruption))
    return out


def _to_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64) / 255.0


def _to_image(x: np.ndarray, mode: str) -> Image.Image:
    return Image.fromarray((np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode)


def _noise(img: Image.Image, c: float, rng: np.random.Generator) -> Image.Image:
    x = _to_float(img)
    return _to_image(x + rng.normal(0.0, c, size=x.shape), img.mode)


def _blur(img: Image.Image, c: float, rng: np.random.Generator) -> Image.Image:
    # PIL's GaussianBlur radius is the standard deviation of the kernel.
    return img.filter(ImageFilter.GaussianBlur(radius=c * min(img.size) / 224.0))


def _contrast(img: Image.Image, c: float, rng: np.random.Generator) -> Image.Image:
    x = _to_float(img)
    mean = x.mean(axis=(0, 1), keepdims=True)  # per channel, as ImageNet-C
    return _to_image((x - mean) * c + mean, img.mode)


def _invert(img: Image.Image, c: float, rng: np.random.Generator) -> Image.Image:
    return _to_image(1.0 - _to_float(img), img.mode)


_APPLY: dict[Corruption, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    Corruption.GAUSSIAN_NOISE: _noise,
    Corruption.GAUSSIAN_BLUR: _blur,
    Corruption.CONTRAST: _contrast,
    Corruption.INVERT: _invert,
}


def corrupt(img: Image.Image, corruption: str | Corruption | list, severity: int = 3, *,
            rng: np.random.Generator | int = 0) -> Image.Image:
    """Corrupted copy of a PIL image (mode L or RGB kept; other modes become RGB)."""
    if not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ConfigError(f"severity must be an integer from 1 to 5, got {severity!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = img if img.mode in ("L", "RGB") else load_image(img)
    for c in parse_corruptions(corruption):
        out = _APPLY[c](out, SEVERITIES[c][severity - 1], rng)
    return out


def write_shifted(src_folder: str | os.PathLike, out: str | os.PathLike, corruption: str | Corruption | list,
                  severity: int = 3, seed: int = 0) -> Path:
    """Write a corrupted copy of an image folder (any depth: class subfolders are kept) to
    ``out`` as PNG files with the same relative names. Returns ``out``."""
    src, out = Path(src_folder), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder; give a folder of images to corrupt")
    corruptions = parse_corruptions(corruption)
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not files:
        raise DataError(f"{src}: no images found; give a folder of images to corrupt")
    for path in files:
        rel = path.relative_to(src)
        # one generator per image, keyed by its relative path: order- and machine-independent
        rng = np.random.default_rng([seed, zlib.crc32(rel.as_posix().encode())])
        with Image.open(path) as img:
            img.load()
            shifted = corrupt(img, corruptions, severity, rng=rng)
        target = (out / rel).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        shifted.save(target)
    return out
