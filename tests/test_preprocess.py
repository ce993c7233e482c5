"""Device preprocessing equals torchvision's evaluation transform, built from the same
PreprocessSpec, on real photos and digits and on every image mode the device may meet."""

from __future__ import annotations

import struct
import zlib
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import DataError
from edgetl.modalities.image import Interpolation, PreprocessSpec, load_image, preprocess, preprocess_batch

SPECS = {
    "imagenet-bicubic-224": PreprocessSpec(),  # resize 256, crop 224
    "bilinear-96": PreprocessSpec(input_size=96, interpolation=Interpolation.BILINEAR, crop_pct=0.9),
    "nearest-64-nocrop": PreprocessSpec(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                                        interpolation=Interpolation.NEAREST, crop_pct=1.0),
    "digits-32": PreprocessSpec(input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                                interpolation=Interpolation.BILINEAR, crop_pct=0.875),
}


def torchvision_transform(spec: PreprocessSpec):
    T = pytest.importorskip("torchvision.transforms")
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
            "nearest": T.InterpolationMode.NEAREST}[spec.interpolation.value]
    return T.Compose([
        T.Resize(spec.resize_size, interpolation=mode),
        T.CenterCrop(spec.input_size),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])


def _photos() -> dict[str, Image.Image]:
    skdata = pytest.importorskip("skimage.data")
    chelsea = Image.fromarray(skdata.chelsea())  # 451x300 RGB photo
    coffee = Image.fromarray(skdata.coffee())  # 600x400 RGB photo
    gray = chelsea.convert("L")
    rgba = chelsea.convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[:, :, 3] = np.linspace(0, 255, alpha.shape[1]).astype(np.uint8)[None, :]  # a real gradient
    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # mode I;16
    return {
        "chelsea": chelsea,
        "coffee": coffee,
        "tall": chelsea.transpose(Image.Transpose.ROTATE_90),  # 300x451
        "strip": coffee.crop((0, 0, 600, 90)),  # very wide
        "tiny": coffee.resize((20, 13)),  # upscaled, not downscaled
        "gray": gray,
        "palette": coffee.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "rgba": Image.fromarray(alpha, "RGBA"),
        "la": gray.convert("LA"),
        "cmyk": coffee.convert("CMYK"),
        "gray16": sixteen,
        "bilevel": gray.convert("1"),
    }


PHOTOS = list(_photos()) if find_spec("skimage") else []


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for name, img in _photos().items():
        suffix = ".jpg" if name == "cmyk" else ".tif" if name == "gray16" else ".png"
        path = root / f"{name}{suffix}"
        img.save(path, **({"quality": 95} if suffix == ".jpg" else {}))
        out[name] = path
    return out


def _assert_same(ours: np.ndarray, img: Image.Image, spec: PreprocessSpec) -> None:
    theirs = torchvision_transform(spec)(img).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (3, spec.input_size, spec.input_size)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("name", PHOTOS)
def test_matches_torchvision_on_photos(photo_files, name, spec_name):
    spec = SPECS[spec_name]
    path = photo_files[name]
    rgb = load_image(path)  # what both pipelines see: the same 8-bit RGB image
    assert rgb.mode == "RGB"
    _assert_same(preprocess(path, spec), rgb, spec)
    with Image.open(path) as original:  # a PIL image in its own mode gives the same tensor
        np.testing.assert_array_equal(preprocess(original, spec), preprocess(path, spec))


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_matches_torchvision_on_digits(digits_dir, spec_name):
    spec = SPECS[spec_name]
    files = sorted(digits_dir.rglob("*.png"))[::37]
    batch = preprocess_batch(files, spec)
    assert batch.shape == (len(files), 3, spec.input_size, spec.input_size) and batch.flags.c_contiguous
    for x, f in zip(batch, files):
        _assert_same(x, load_image(f), spec)


def test_mode_conversions_mean_what_they_say():
    photos = _photos() if PHOTOS else pytest.skip("scikit-image not installed")
    gray = np.asarray(photos["gray"])
    # 16-bit rescales to exactly the 8-bit original; grayscale becomes three equal channels
    np.testing.assert_array_equal(np.asarray(load_image(photos["gray16"]))[:, :, 0], gray)
    rgb = np.asarray(load_image(photos["gray"]))
    assert (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all()
    # transparency is composited on white: the fully transparent column is white
    rgba = np.asarray(load_image(photos["rgba"]))
    assert (rgba[:, 0] == 255).all()
    np.testing.assert_array_equal(rgba[:, -1], np.asarray(photos["chelsea"])[:, -1])
    # arrays: HxW, HxWx1, HxWx3, HxWx4 uint8
    arr = np.asarray(photos["chelsea"])
    np.testing.assert_array_equal(np.asarray(load_image(arr)), arr)
    np.testing.assert_array_equal(np.asarray(load_image(gray[:, :, None])), rgb)
    with pytest.raises(DataError, match="uint8"):
        load_image(arr.astype(np.float32))
    with pytest.raises(DataError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [9_000, 20_000])  # above the limit, and above twice it
def test_decompression_bomb_is_refused(tmp_path, side):
    bomb = _png_header_only(tmp_path / "bomb.png", side, side)
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="larger than"):
        preprocess(bomb, PreprocessSpec())
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's global limit is left as it was


def test_corrupt_and_missing_files_raise_data_error(tmp_path, digits_dir):
    good = sorted(digits_dir.rglob("*.png"))[0]
    cases = {
        "truncated.png": good.read_bytes()[: len(good.read_bytes()) // 2],
        "empty.jpg": b"",
        "text.png": b"hello, not an image",
        "header_only.png": good.read_bytes()[:40],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=name):
            preprocess(tmp_path / name, PreprocessSpec())
    with pytest.raises(DataError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="no such image file"):
        load_image(tmp_path)  # a folder is not an image
