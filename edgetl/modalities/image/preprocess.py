"""Image loading and the preprocessing spec shared by training and the device.

Torch-free on purpose: the device runs exactly this code, and the training pipeline's
evaluation transform is built from the same :class:`PreprocessSpec`, so the tensors
match bit for bit (``tests/test_preprocess.py`` checks it against torchvision).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
from PIL import Image, ImageOps

from edgetl.core.reading import file_kind
from edgetl.errors import ConfigError, DataError

_OPEN_LOCK = threading.Lock()  # see load_image

__all__ = ["Interpolation", "PreprocessSpec", "load_image", "preprocess", "preprocess_with_size", "preprocess_batch",
           "ImageInput", "check_shape", "letterbox", "letterbox_geometry", "MAX_ASPECT", "MAX_RESIZED_PIXELS"]

# Refuse decompression bombs: PIL warns above this many pixels and raises above twice it;
# we refuse both (an edge device has no business decoding a 90-megapixel image).
MAX_IMAGE_PIXELS = 64_000_000
# The pixel guard alone does not bound the work: resizing scales the *shorter* side to the
# resize size, so a 118-byte 1x20000 PNG would become 256x5,120,000 pixels (6.3 GB of RGB)
# before the centre crop. Refuse images longer than MAX_ASPECT times their width (a
# panorama is 4:1 to 12:1; a receipt strip about 10:1) and any resize to more than
# MAX_RESIZED_PIXELS (192 MB of RGB).
MAX_ASPECT = 50
MAX_RESIZED_PIXELS = MAX_IMAGE_PIXELS
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageInput = Union[str, Path, Image.Image, np.ndarray]


class Interpolation(str, Enum):
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"

    @property
    def pil(self) -> int:
        return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[self.value]


RESIZES = ("crop", "letterbox")


@dataclass(frozen=True)
class PreprocessSpec:
    """What a backbone needs from an image: resize shorter side to ``input_size / crop_pct``,
    center-crop ``input_size``, scale to [0, 1], normalize with ``mean`` and ``std``; NCHW float32.

    ``resize="letterbox"`` (detection) instead fits the whole image into ``input_size`` square,
    keeping its aspect, centred, the rest filled with the mean colour (0 once normalized):
    nothing is cropped away, and :func:`letterbox_geometry` maps coordinates both ways."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Interpolation = Interpolation.BICUBIC
    crop_pct: float = 0.875
    resize: str = "crop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))
        if self.resize not in RESIZES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not (isinstance(self.input_size, int) and 8 <= self.input_size <= 4096):
            raise ConfigError(f"input_size must be an integer between 8 and 4096, got {self.input_size!r}")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in [0.1, 1.0], got {self.crop_pct!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need three values each, std all positive")

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interpolation"] = self.interpolation.value
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.resize == "crop":
            del d["resize"]  # what specs written before letterboxing say by leaving it out
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "PreprocessSpec":
        """From :meth:`to_dict`'s output (run.json, a manifest, ONNX metadata: untrusted), each
        field checked for its type; raises :class:`ConfigError` naming the field."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"preprocess must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k not in d]
        if missing:
            raise ConfigError(f"preprocess is missing {', '.join(missing)}")
        size = d["input_size"]
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        if not isinstance(size, int) or isinstance(size, bool):
            raise ConfigError(f"preprocess.input_size must be an integer, got {_show(size)}")
        for key in ("mean", "std"):
            v = d[key]
            if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_finite(x) for x in v)):
                raise ConfigError(f"preprocess.{key} must be three finite numbers, got {_show(v)}")
        if d["interpolation"] not in [i.value for i in Interpolation]:
            raise ConfigError(f"preprocess.interpolation must be one of {', '.join(i.value for i in Interpolation)}, "
                              f"got {_show(d['interpolation'])}")
        if not _finite(d["crop_pct"]):
            raise ConfigError(f"preprocess.crop_pct must be a number, got {_show(d['crop_pct'])}")
        resize = d.get("resize", "crop")
        if resize not in RESIZES:
            raise ConfigError(f"preprocess.resize must be one of {', '.join(RESIZES)}, got {_show(resize)}")
        try:
            return cls(input_size=size, mean=tuple(d["mean"]), std=tuple(d["std"]),
                       interpolation=Interpolation(d["interpolation"]), crop_pct=float(d["crop_pct"]), resize=resize)
        except ConfigError as exc:
            raise ConfigError(f"preprocess.{exc}") from None

    def with_input_size(self, size: int) -> "PreprocessSpec":
        return PreprocessSpec(size, self.mean, self.std, self.interpolation, self.crop_pct, self.resize)

    def letterboxed(self) -> "PreprocessSpec":
        return PreprocessSpec(self.input_size, self.mean, self.std, self.interpolation, self.crop_pct, "letterbox")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_shape(width: int, height: int, name: str = "image") -> None:
    """Refuse an image so elongated that resizing its shorter side blows up (see
    ``MAX_ASPECT``), or an empty one. Raises :class:`DataError` naming ``name``."""
    if width < 1 or height < 1:
        raise DataError(f"{name}: image has no pixels ({width}x{height})")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise DataError(f"{name}: image is {width}x{height} pixels, more than {MAX_ASPECT}:1; refusing it "
                        "(resizing its shorter side would make a huge image)")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16-bit is rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():  # a float TIFF with NaN: the cast below would make up pixels
            raise DataError("image has pixels that are not numbers (NaN or infinity); refusing it")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if a.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(a * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def load_image(source: ImageInput) -> Image.Image:
    """Open a file, PIL image or HxW[xC] uint8 array as RGB. Raises :class:`DataError` on
    unreadable, corrupt or oversized images."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            raise DataError(f"array images must be uint8 HxW or HxWxC, got dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise DataError(f"array images must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        return _to_rgb(Image.fromarray(arr))
    path = Path(source)
    if not str(source):
        raise DataError("an empty path is not an image file")
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError as exc:  # a name too long, say
        raise DataError(f"{path}: {exc.strerror or exc}") from None
    if is_dir:
        try:
            os.listdir(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read this folder ({exc.strerror or exc})") from None
        raise DataError(f"{path}: no such image file (a folder, holding no {', '.join(IMAGE_SUFFIXES)} files)")
    if not is_file:
        try:  # a device (/dev/zero never ends) or a FIFO (blocks its reader) is never opened
            kind = file_kind(path.stat().st_mode)
        except OSError:
            raise DataError(f"{path}: no such image file") from None
        raise DataError(f"{path}: is {kind}, not an image file")
    try:
        # Opening reads the header only; PIL's bomb check happens there and reads process-wide
        # settings (the warnings filter, MAX_IMAGE_PIXELS), so that part is serialised.
        # Decoding, the slow part, runs in parallel in the loading threads.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            try:
                opened = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = old
        with opened as img:
            check_shape(*img.size, name=str(path))  # before decoding a single pixel
            img = ImageOps.exif_transpose(img) if img.format == "JPEG" else img
            img.load()
            try:
                return _to_rgb(img)
            except DataError as exc:
                raise DataError(f"{path}: {exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image is larger than {MAX_IMAGE_PIXELS:,} pixels; refusing to decode it") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for corrupt files
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def resize_and_crop(img: Image.Image, spec: PreprocessSpec, *, name: str = "image") -> Image.Image:
    """torchvision ``Resize(resize_size)`` + ``CenterCrop(input_size)``, same arithmetic.
    Refuses (:class:`DataError` naming ``name``) an image whose resize would exceed
    ``MAX_RESIZED_PIXELS`` or whose aspect ratio exceeds ``MAX_ASPECT``."""
    w, h = img.size
    check_shape(w, h, name)
    size = spec.resize_size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise DataError(f"{name}: resizing {w}x{h} to {new_w}x{new_h} pixels exceeds {MAX_RESIZED_PIXELS:,}; "
                        "refusing it")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=spec.interpolation.pil)
    crop = spec.input_size
    if new_w < crop or new_h < crop:  # torchvision pads; never happens with crop_pct <= 1
        raise ConfigError("crop larger than resized image")
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """[3, 256] float32: each channel's normalized value of every uint8 level, computed with
    torchvision's float32 operations (``ToTensor``'s / 255, then ``Normalize``'s - mean, / std)."""
    levels = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
    levels = levels - np.asarray(mean, dtype=np.float32)[:, None]
    return np.ascontiguousarray(levels / np.asarray(std, dtype=np.float32)[:, None])


def normalize(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """HxWx3 uint8 image -> 3xHxW float32 normalized, as ``ToTensor`` + ``Normalize``."""
    # A uint8 level's normalized value depends on its channel alone, so the same float32
    # operations as torchvision's, done once per level (a 3 x 256 table), give every pixel
    # by lookup from each band: the same bits, C-contiguous (runtimes want that), at a
    # fraction of the cost of computing them per pixel (measured at 224 px: 0.33 vs 0.73 ms
    # on the digits' PNGs, 0.21 vs 1.0 ms on noise).
    table = _normalize_table(spec.mean, spec.std)
    bands = img.split() if isinstance(img, Image.Image) else np.moveaxis(np.asarray(img, np.uint8), 2, 0)
    out = np.empty((3, img.size[1], img.size[0]) if isinstance(img, Image.Image) else bands.shape, np.float32)
    for c, band in enumerate(bands):
        np.take(table[c], np.asarray(band), out=out[c])
    return out


def letterbox_geometry(width: int, height: int, size: int) -> tuple[float, int, int, int, int]:
    """``(scale, new_width, new_height, pad_x, pad_y)``: an image of ``width`` x ``height`` fitted
    into ``size`` x ``size`` keeping its aspect, centred. A point (x, y) of the image is at
    (x * scale + pad_x, y * scale + pad_y) in the model's input."""
    scale = size / max(width, height)
    new_w, new_h = max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))
    return scale, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def letterbox(img: Image.Image, spec: PreprocessSpec, *, name: str = "image") -> Image.Image:
    """The whole image fitted into ``input_size`` square (see :func:`letterbox_geometry`), the
    rest filled with the normalisation mean (0 once normalized)."""
    w, h = img.size
    check_shape(w, h, name)
    _, new_w, new_h, pad_x, pad_y = letterbox_geometry(w, h, spec.input_size)
    fill = tuple(int(round(m * 255)) for m in spec.mean)
    canvas = Image.new("RGB", (spec.input_size, spec.input_size), fill)
    canvas.paste(img.resize((new_w, new_h), resample=spec.interpolation.pil) if (new_w, new_h) != (w, h) else img,
                 (pad_x, pad_y))
    return canvas


def preprocess(source: ImageInput, spec: PreprocessSpec) -> np.ndarray:
    """One image -> 3xHxW float32, ready for the backbone."""
    return preprocess_with_size(source, spec)[0]


def preprocess_with_size(source: ImageInput, spec: PreprocessSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (3xHxW float32, its original (width, height))."""
    name = str(source) if isinstance(source, (str, Path)) else "image"
    img = load_image(source)
    fit = letterbox if spec.resize == "letterbox" else resize_and_crop
    return normalize(fit(img, spec, name=name), spec), img.size


def preprocess_batch(sources: list[ImageInput], spec: PreprocessSpec) -> np.ndarray:
    """Images -> Nx3xHxW float32."""
    return np.stack([preprocess(s, spec) for s in sources]) if sources else np.zeros(
        (0, 3, spec.input_size, spec.input_size), np.float32
    )
