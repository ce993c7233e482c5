"""Annotated detection data that ships inside installed packages; nothing is downloaded.

``deepforest_scenes`` / ``write_deepforest_split``: real aerial RGB photos with tree-crown
boxes (NEON orthophotos, 10 cm pixels) from the ``deepforest`` wheel (MIT), read from its
``data/`` folder without importing it (that would pull pytorch_lightning): install with
``pip install --no-deps deepforest``. ``write_composite_scenes``: many classes for tests —
real objects (scikit-learn's handwritten digits, LFW faces, crops of scikit-image photos)
pasted at known boxes onto real photos; composites, and said so in every file written.

Workstation layer; imports numpy and PIL at module import, scikit-learn and scikit-image only
inside the functions that need them, never torch.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from edgetl.errors import ConfigError, DataError
from edgetl.modalities.image import load_image
from edgetl.tasks.detection import DetectionData, DetectionItem, read_detection_data, write_coco

__all__ = ["DEEPFOREST_SCENES", "DEEPFOREST_TEST_SCENE", "deepforest_folder", "deepforest_scenes",
           "write_deepforest_split", "DeepForestSplit", "COMPOSITE_CLASSES", "write_composite_scenes"]

# The four annotated scenes in deepforest 2.1.0's data/ (Pascal VOC XML beside each image):
# name -> (width, height, boxes). SOAP_061 labels its crowns Alive (9) / Dead (28): all are trees.
DEEPFOREST_SCENES = {
    "2019_YELL_2_528000_4978000_image_crop2": (2299, 2472, 574),  # Yellowstone, the large orthophoto
    "2019_YELL_2_541000_4977000_image_crop": (1249, 1035, 279),   # Yellowstone, a second area
    "OSBS_029": (400, 400, 61),                                    # Ordway-Swisher, Florida
    "SOAP_061": (400, 400, 37),                                    # Soaproot Saddle, California
}
DEEPFOREST_TEST_SCENE = "2019_YELL_2_541000_4977000_image_crop"
TREE = "Tree"


def deepforest_folder() -> Path:
    """deepforest's ``data/`` folder, found with ``importlib.util.find_spec`` (not imported)."""
    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the deepforest scenes need the deepforest package's data: "
                        "pip install --no-deps deepforest==2.1.0")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [n for n in DEEPFOREST_SCENES if not (folder / f"{n}.xml").is_file()]
    if missing:
        raise DataError(f"{folder}: deepforest's data lacks {', '.join(missing)}.xml; "
                        "reinstall it: pip install --no-deps --force-reinstall deepforest==2.1.0")
    return folder


def deepforest_scenes() -> DetectionData:
    """The four annotated deepforest scenes (951 boxes, one class ``"Tree"``) as read from their
    Pascal VOC files, strictly (any bad box is an error, not a silent skip)."""
    data = read_detection_data(deepforest_folder(), strict=True, format="voc")
    items = tuple(DetectionItem(it.path, it.width, it.height, it.boxes, np.zeros(len(it.classes), np.int64),
                                it.crowd) for it in data.items if it.path.stem in DEEPFOREST_SCENES)
    if sorted(it.path.stem for it in items) != sorted(DEEPFOREST_SCENES):
        raise DataError(f"{data.root}: expected the scenes {', '.join(DEEPFOREST_SCENES)}")
    return DetectionData(data.root, "voc", (TREE,), items, data.skipped, dict(data.counts))


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    """Full-size tile offsets covering ``length``, consecutive tiles sharing >= ``overlap``."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile * (1.0 - overlap))) + 1
    return sorted({int(round(x)) for x in np.linspace(0, length - tile, n)})


def _partition(length: int, tile: int) -> list[tuple[int, int]]:
    """(start, end) of tiles near ``tile`` long that split ``length`` without overlap."""
    n = max(1, int(round(length / tile)))
    cuts = [int(round(x)) for x in np.linspace(0, length, n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _cut(item: DetectionItem, x0: int, y0: int, x1: int, y1: int, min_visible: float) -> tuple[np.ndarray, int]:
    """Boxes of ``item`` inside the window, clipped, in window pixels; boxes with less than
    ``min_visible`` of their area inside are dropped. Returns (boxes, number clipped)."""
    b = item.boxes.astype(np.float64)
    c = b.copy()
    np.clip(c[:, 0::2], x0, x1, out=c[:, 0::2])
    np.clip(c[:, 1::2], y0, y1, out=c[:, 1::2])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    seen = np.clip(c[:, 2] - c[:, 0], 0, None) * np.clip(c[:, 3] - c[:, 1], 0, None)
    keep = seen >= min_visible * area
    clipped = int((keep & (seen < area)).sum())
    return (c[keep] - [x0, y0, x0, y0]).astype(np.float32), clipped


@dataclass(frozen=True)
class DeepForestSplit:
    """What :func:`write_deepforest_split` wrote: the COCO files and, per split, the number of
    tiles, boxes and boxes clipped at tile edges."""

    train: Path
    test: Path
    test_scene: str
    counts: dict

    def to_dict(self) -> dict:
        return {"train": str(self.train), "test": str(self.test), "test_scene": self.test_scene,
                "counts": self.counts}


def write_deepforest_split(out: str | os.PathLike, *, tile: int = 400, overlap: float = 0.5,
                           test_scene: str = DEEPFOREST_TEST_SCENE, min_visible: float = 0.5) -> DeepForestSplit:
    """Cut the deepforest scenes into tiles and write ``out/train.json`` and ``out/test.json``
    (COCO; tiles as BMP in ``out/images/``), one WHOLE scene held out for testing: tiles of one
    scene share trees, light and season, so a split within a scene would leak.

    Training scenes are cut into ``tile`` x ``tile`` tiles, neighbours overlapping by at least
    ``overlap`` (scenes no larger than a tile stay whole); the test scene is partitioned into
    non-overlapping tiles near ``tile`` (each tree is scored once). A box is clipped to its
    tile and dropped when less than ``min_visible`` of its area is inside. Tiles without trees
    are kept (background). With the defaults (measured): train 134 tiles, 2,318 boxes (132
    overlapping tiles of the 2299x2472 orthophoto, so its 574 crowns appear up to four times,
    427 of them clipped; plus OSBS_029 and SOAP_061 whole); test 9 tiles of about 416x345,
    277 boxes (2019_YELL_2_541000_4977000_image_crop: 279 crowns, 2 dropped on tile edges,
    41 clipped)."""
    if test_scene not in DEEPFOREST_SCENES:
        raise ConfigError(f"test_scene must be one of {', '.join(DEEPFOREST_SCENES)}, got {test_scene!r}")
    if not (isinstance(tile, int) and 32 <= tile <= 4096) or not 0.0 <= overlap < 0.95:
        raise ConfigError(f"tile must be an integer in 32..4096 and overlap in [0, 0.95), got {tile}, {overlap}")
    scenes = deepforest_scenes()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[DetectionItem]] = {"train": [], "test": []}
    clipped = {"train": 0, "test": 0}
    for item in scenes.items:
        split = "test" if item.path.stem == test_scene else "train"
        if split == "test":
            windows = [(x0, y0, x1, y1) for y0, y1 in _partition(item.height, tile)
                       for x0, x1 in _partition(item.width, tile)]
        else:
            windows = [(x, y, min(x + tile, item.width), min(y + tile, item.height))
                       for y in _starts(item.height, tile, overlap) for x in _starts(item.width, tile, overlap)]
        pixels = load_image(item.path)
        for x0, y0, x1, y1 in windows:
            boxes, n_clipped = _cut(item, x0, y0, x1, y1, min_visible)
            # BMP: lossless like PNG, and as small (PNG saves 12% on these noisy aerial photos) at
            # 1 ms a tile instead of 60 ms (measured on OSBS_029, 400x400).
            path = out / "images" / f"{item.path.stem}_{x0}_{y0}.bmp"
            pixels.crop((x0, y0, x1, y1)).save(path)
            splits[split].append(DetectionItem(path, x1 - x0, y1 - y0, boxes, np.zeros(len(boxes), np.int64)))
            clipped[split] += n_clipped
    counts = {}
    paths = {}
    for split, items in splits.items():
        n_boxes = int(sum(len(it.boxes) for it in items))
        counts[split] = {"tiles": len(items), "boxes": n_boxes, "boxes_clipped": clipped[split]}
        info = {"description": f"deepforest 2.1.0's annotated NEON aerial scenes (tree crowns, one class), "
                               f"{split} split: {'held-out scene ' + test_scene if split == 'test' else 'every other scene'}"
                               f", cut into tiles by edgetl.workstation.detection_data.write_deepforest_split",
                "tile": tile, "overlap": overlap if split == "train" else 0.0, "min_visible": min_visible,
                "test_scene": test_scene, "license": "deepforest (MIT); NEON imagery"}
        data = DetectionData(out, "coco", (TREE,), tuple(items))
        paths[split] = write_coco(data, out / f"{split}.json", info=info)
    return DeepForestSplit(paths["train"], paths["test"], test_scene, counts)


# --- composites: several classes of real objects on real photos ---------------------------------

# Crops of scikit-image photos (x0, y0, x1, y1 in the photo's pixels), each the object named.
_PHOTO_CROPS = {
    "cat": ("chelsea", (40, 0, 360, 290)),
    "astronaut": ("astronaut", (150, 10, 300, 180)),  # her face
    "shuttle": ("astronaut", (350, 0, 470, 282)),     # the model shuttle beside her
    "rocket": ("rocket", (290, 120, 350, 420)),
    "coffee": ("coffee", (60, 0, 500, 400)),
}
COMPOSITE_CLASSES = tuple(f"digit_{d}" for d in range(10)) + ("face",) + tuple(_PHOTO_CROPS) + ("horse",)
_BACKGROUNDS = ("camera", "brick", "grass", "gravel", "moon", "stereo_motorcycle", "hubble_deep_field")


def _skimage(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError:  # pragma: no cover - scikit-image is in the test extra
        raise DataError("composite scenes need scikit-image: pip install 'edgetl[test]'") from None
    img = getattr(data, name)()
    return img[0] if isinstance(img, tuple) else img


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (images [1797, 8, 8] in 0..16, targets), read from the file
    ``load_digits`` reads, without importing scikit-learn (seconds on a small machine)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise DataError("composite scenes need scikit-learn's digits: pip install 'edgetl[test]'")
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


class _Sources:
    """The real objects and backgrounds, loaded once; split-disjoint where there are many."""

    def __init__(self, split: str):
        images, targets = _digits()
        part = (np.arange(len(targets)) % 4 == 0) == (split == "test")  # a quarter for testing
        self.digits = {d: images[part & (targets == d)] / 16.0 for d in range(10)}
        faces = _skimage("lfw_subset")[:100]  # the first 100 are faces (the rest are not)
        self.faces = faces[75:] if split == "test" else faces[:75]
        self.photos = {name: np.asarray(Image.fromarray(_skimage(src)).crop(box).convert("RGB"))
                       for name, (src, box) in _PHOTO_CROPS.items()}
        horse = _skimage("horse")  # a binary silhouette: True is background
        self.horse = (~horse).astype(np.float32)
        self.backgrounds = [_skimage(n) for n in _BACKGROUNDS]


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]


def _background(src: _Sources, rng: np.random.Generator, size: int) -> np.ndarray:
    img = _rgb(src.backgrounds[rng.integers(len(src.backgrounds))])
    h, w = img.shape[:2]
    side = int(rng.uniform(0.5, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(np.ascontiguousarray(img[y:y + side, x:x + side])).resize((size, size), Image.BILINEAR)
    tint = rng.uniform(0.75, 1.15, 3)  # grey photos get a colour cast, colour ones a shift
    return np.clip(np.asarray(crop, np.float32) * tint, 0, 255)


def _object(src: _Sources, name: str, rng: np.random.Generator, px: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float32 [h, w, 3], alpha float32 [h, w]) of one instance, longer side ``px``."""
    if name.startswith("digit_") or name == "horse":
        if name == "horse":
            mask = src.horse
        else:
            pool = src.digits[int(name[-1])]
            mask = pool[rng.integers(len(pool))]
        h, w = mask.shape
        size = (px, max(1, round(px * h / w))) if w >= h else (max(1, round(px * w / h)), px)
        alpha = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize(size, Image.BILINEAR), np.float32) / 255
        ink = rng.choice([rng.uniform(0, 50, 3), rng.uniform(205, 255, 3)])  # dark or bright ink
        return np.broadcast_to(ink.astype(np.float32), alpha.shape + (3,)), alpha
    if name == "face":
        img = _rgb((src.faces[rng.integers(len(src.faces))] * 255).astype(np.uint8))
    else:
        img = src.photos[name]
    h, w = img.shape[:2]
    scale = px / max(h, w) * rng.uniform(0.85, 1.0) if name != "face" else px / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    patch = Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.BILINEAR)
    if rng.random() < 0.5:
        patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
    rgb = np.clip(np.asarray(patch, np.float32) * rng.uniform(0.8, 1.2), 0, 255)
    return rgb, np.ones(rgb.shape[:2], np.float32)


def _overlaps(box: np.ndarray, placed: list[np.ndarray], limit: float) -> bool:
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if iw * ih > limit * smaller:
                return True
    return False


def write_composite_scenes(out: str | os.PathLike, classes: Sequence[str] | None = None, per_class: int = 40,
                           seed: int = 0, *, size: int = 320, objects_per_image: tuple[int, int] = (1, 4),
                           object_px: tuple[int, int] = (24, 64), split: str = "train",
                           name: str = "annotations.json", max_overlap: float = 0.1) -> Path:
    """Write composite scenes with exactly ``per_class`` objects of each of ``classes`` (names
    from :data:`COMPOSITE_CLASSES`, default all) as COCO: ``out/<name>`` and PNGs in
    ``out/images/``; returns the JSON's path. Seeded: same arguments, same files.

    COMPOSITES, not photographs of scenes: real objects pasted at known boxes onto real photos.
    Objects: scikit-learn's handwritten digits (``digit_0``..``digit_9``, 1,797 scans, drawn as
    dark or bright ink, alpha = the scan), LFW faces from scikit-image (``face``, 100 real faces),
    crops of scikit-image photos (``cat``, ``astronaut``'s face, ``shuttle``, ``rocket``,
    ``coffee``; one source each, varied by scale, flip and brightness) and its ``horse``
    silhouette (inked); longer side uniform in ``object_px``. Backgrounds: random crops of
    camera, brick, grass, gravel, moon, motorcycle and the Hubble deep field, resized to
    ``size`` and colour-cast. Each image holds ``objects_per_image`` objects (fewer when the
    remaining quota is smaller) covering at most ``max_overlap`` of the smaller of any two.
    ``split="test"`` draws digits and faces from a quarter of the scans disjoint from
    ``"train"``'s (the photo crops are the same in both). Boxes are the objects' tight bounds
    (ink above a quarter of its strength for digits and the horse)."""
    wanted = list(COMPOSITE_CLASSES if classes is None else classes)
    unknown = [c for c in wanted if c not in COMPOSITE_CLASSES]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise ConfigError(f"classes must be distinct names from {', '.join(COMPOSITE_CLASSES)}; got {wanted}")
    if split not in ("train", "test") or per_class < 1 or not (1 <= objects_per_image[0] <= objects_per_image[1]):
        raise ConfigError("split must be train or test, per_class >= 1, objects_per_image (min, max) with 1 <= min <= max")
    if not (8 <= object_px[0] <= object_px[1] <= size // 2):
        raise ConfigError(f"object_px must be (min, max) with 8 <= min <= max <= size / 2, got {object_px}")
    rng = np.random.default_rng(seed)
    src = _Sources(split)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    left = {c: per_class for c in wanted}
    items: list[DetectionItem] = []
    while any(left.values()):
        canvas = _background(src, rng, size)
        k = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
        placed: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(k):
            todo = [c for c in wanted if left[c]]
            if not todo:
                break
            cls = todo[rng.integers(len(todo))]
            rgb, alpha = _object(src, cls, rng, int(rng.integers(object_px[0], object_px[1] + 1)))
            h, w = alpha.shape
            ys, xs = np.nonzero(alpha > 0.25)
            tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            for _attempt in range(30):
                x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
                box = tight + np.array([x, y, x, y], np.float32)
                if not _overlaps(box, placed, max_overlap):
                    region = canvas[y:y + h, x:x + w]
                    region[:] = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
                    placed.append(box)
                    labels.append(wanted.index(cls))
                    left[cls] -= 1
                    break
        if not placed:
            continue
        path = out / "images" / f"{split}_{seed}_{len(items):05d}.png"
        Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8)).save(path, compress_level=1)
        items.append(DetectionItem(path, size, size, np.stack(placed), np.asarray(labels, np.int64)))
    info = {"description": "COMPOSITES: real objects (scikit-learn digits, LFW faces, crops of scikit-image "
                           "photos) pasted at known boxes onto real scikit-image photos by "
                           "edgetl.workstation.detection_data.write_composite_scenes; not photographs of scenes",
            "seed": seed, "split": split, "per_class": per_class, "size": size}
    return write_coco(DetectionData(out, "coco", tuple(wanted), tuple(items)), out / name, info=info)
