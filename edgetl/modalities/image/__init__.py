"""Images: files (or PIL images, uint8 arrays) through exactly the training preprocessing
to ``images`` float32 [N, 3, S, S]. Torch-free; registered as the modality ``image``."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.errors import DataError
from edgetl.modalities import MODALITIES, InputSpec, LabelledItems
from edgetl.modalities.image.folder import (ImageFolder, check_image, find_images, list_images, scan_folder,
                                            stratified_split, write_digits)
from edgetl.modalities.image.preprocess import (IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, ImageInput, Interpolation,
                                                PreprocessSpec, letterbox, letterbox_geometry, load_image, normalize,
                                                preprocess, preprocess_batch, preprocess_with_size, resize_and_crop)

__all__ = ["ImageModality", "IMAGE", "PreprocessSpec", "Interpolation", "ImageInput", "load_image", "preprocess",
           "preprocess_batch", "preprocess_with_size", "normalize", "resize_and_crop", "letterbox", "letterbox_geometry", "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "ImageFolder",
           "scan_folder", "find_images", "list_images", "check_image", "stratified_split", "write_digits"]


class ImageModality:
    """Images: files (or PIL images, uint8 arrays) -> ``images`` float32 [N, 3, S, S]."""

    name = "image"
    item_noun = "image"
    INPUT = "images"
    SIZE = "image_size"  # letterboxed inputs also carry each image's original (width, height): not a model input

    def spec_from_dict(self, d: Any) -> PreprocessSpec:
        return PreprocessSpec.from_dict(d)

    def inputs(self, spec: PreprocessSpec) -> tuple[InputSpec, ...]:
        return (InputSpec(self.INPUT, "float32", (None, 3, spec.input_size, spec.input_size)),)

    def load(self, item: ImageInput, spec: PreprocessSpec) -> dict[str, np.ndarray]:
        if spec.resize == "letterbox":  # the way back to the image's pixels travels with it
            x, size = preprocess_with_size(item, spec)
            return {self.INPUT: x, self.SIZE: np.asarray(size, np.int64)}
        return {self.INPUT: preprocess(item, spec)}

    def collate(self, rows, spec: PreprocessSpec) -> dict[str, np.ndarray]:
        if len(rows) == 1:  # a batch of one (a batch-1 target): a view, not a 600 KB copy per image
            return {k: v[None] for k, v in rows[0].items()}
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def example(self, spec: PreprocessSpec, batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        shape = (batch, 3, spec.input_size, spec.input_size)
        return {self.INPUT: rng.standard_normal(shape, dtype=np.float32)}

    def scan(self, data, *, strict: bool = False, min_classes: int = 2):
        folder = scan_folder(data, strict=strict, min_classes=min_classes)
        return LabelledItems(folder.root, folder.labels, tuple(folder.paths), folder.targets,
                             tuple((str(p), r) for p, r in folder.skipped))

    def bind(self, spec: PreprocessSpec, locate) -> PreprocessSpec:
        return spec  # an image spec needs no file

    def describe(self, item: Any) -> str | None:
        import os

        return str(item) if isinstance(item, (str, os.PathLike)) else None

    # An image file up to this size is stored as it is (its own decoder is then part of the
    # check); a larger one as the PNG of its resized image, which preprocessing keeps as it is.
    ENCODE_AS_IS_BYTES = 32 << 10

    def encode(self, item: Any, spec: PreprocessSpec) -> bytes:
        import io
        import os

        if isinstance(item, (str, os.PathLike)):
            try:
                if os.path.getsize(item) <= self.ENCODE_AS_IS_BYTES:
                    load_image(item)  # refuses what does not decode
                    with open(item, "rb") as f:
                        return f.read(self.ENCODE_AS_IS_BYTES + 1)
            except OSError as exc:
                raise DataError(f"{item}: {exc.strerror or exc}") from None
        img = load_image(item)
        w, h = img.size
        if spec.resize == "letterbox":  # fitted into the input square already: letterboxed again, as it is
            new = letterbox_geometry(w, h, spec.input_size)[1:3]
        else:
            size = spec.resize_size  # resize_and_crop's first step, its arithmetic: applied again, a no-op
            new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if new[0] * new[1] > MAX_IMAGE_PIXELS:
            raise DataError(f"{self.describe(item) or 'image'}: too elongated to store")
        resized = img.resize(new, resample=spec.interpolation.pil) if new != (w, h) else img
        buffer = io.BytesIO()
        resized.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()

    def decode(self, data: bytes) -> Any:
        import io

        from PIL import Image

        from edgetl.modalities.image.preprocess import check_shape

        try:
            img = Image.open(io.BytesIO(data))
            check_shape(*img.size, name="stored image")
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                raise DataError(f"a stored image is larger than {MAX_IMAGE_PIXELS:,} pixels")
            img.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"a stored image does not decode ({exc.__class__.__name__}: {exc})") from None
        return img

    def check_session(self, session: Any, spec: PreprocessSpec) -> None:
        from edgetl.errors import BundleError

        shape, size = tuple(session.input_shape), spec.input_size
        if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size))):
            raise BundleError(f"backbone input is {list(shape)}, but the preprocessing makes [N, 3, {size}, {size}]")


IMAGE = ImageModality()


MODALITIES.register("image", IMAGE)
