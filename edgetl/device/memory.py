"""The replay memory: a small, bounded set of embeddings per class that a bundle keeps so
that retraining on new data does not forget the classes the data lacks. Torch-free.

Stored as ``memory.npz`` in a version folder: ``embeddings`` float16 or float32 [M, F] (float16:
offsets from ``center`` [F], below), ``labels``
int64 [M] (indices into ``label_names``), ``label_names`` (str [C]) and ``seen`` int64 [C]
(how many samples of each class the memory has been offered so far, so that merging keeps
a uniform sample of everything seen: reservoir sampling per class). Embeddings are the
*raw* backbone output (no adapter applied), as ``edgetl.device.alignment`` expects; retraining
applies the live adapter when it replays them.

Which rows are kept (:class:`Selection`): ``herding`` (default; iCaRL, Rebuffi et al. 2017)
greedily picks the rows whose running mean best approximates the class mean of the
L2-normalised embeddings, so a few exemplars stand for the whole class; ``random`` keeps a
uniform sample of everything seen. The budget is ``per_class`` rows, or a size in MB
(:func:`per_class_for_budget`: 10^6 bytes of embeddings in the memory's precision and int64
labels, split evenly over the classes), or by default :func:`default_per_class`. Selection is deterministic: the same memory, new data and seed always
keep the same rows. Files written before herding existed load unchanged.

**Precision** (``precision``, kept in the file as the embeddings' dtype): ``float16``
(default) or ``float32``. A float16 memory stores each row as its offset from a centre (the
first rows' mean, itself rounded to float16, kept with the file as ``center``), so what float16
rounds is the row's variation, not a large common offset: a row is within 2^-11 of its distance
from the centre. That halves a row (``2F + 8`` bytes), so the same bytes hold twice the
exemplars, which is what class addition needs most. The default budget is the bytes of 20
float32 rows a class (:func:`default_per_class`: 39 float16 rows of 1,280 features). Measured
(tests/test_class_addition.py scenario: 5 known + 5 new classes, 102.6 KB a class, holdout seeds
0/1/2): 20 float32 exemplars kept 94.6/96.8/92.8% of old-class accuracy on the digits and
93.3/92.3/82.7% on photos; 39 float16 ones in the same bytes 95.0/97.7/95.9% and 92.3/98.1/95.2%.
Centring matters on backbones whose features share a large offset (the tests' tiny backbone):
float16 of the raw rows halved device adaptation's refit gain there, float16 of the centred rows
does not. The encoding is idempotent (the centre is float16, so ``center + code`` is exact or
rounds back to the same code), so what is in RAM is what is on disk, through any merge.
Files without a ``center`` (float32, or float16 written before it existed) load unchanged.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgetl.errors import BundleError, ConfigError

__all__ = ["MEMORY_FILE", "PRECISIONS", "DEFAULT_PRECISION", "check_precision", "DEFAULT_PER_CLASS", "MAX_MEMORY_MB",
           "Selection", "ReplayMemory", "memory_from_run", "embed_images", "herding", "per_class_for_budget",
           "default_per_class", "resolve_per_class", "run_split", "split_embeddings"]

MEMORY_FILE = "memory.npz"
PRECISIONS = {"float32": 4, "float16": 2}  # bytes a value
DEFAULT_PRECISION = "float16"
DEFAULT_PER_CLASS = 20  # the default budget: the bytes of this many float32 rows a class (default_per_class)
MAX_MEMORY_MB = 4096.0


class Selection(str, Enum):
    """Which rows a bounded memory keeps of each class."""

    HERDING = "herding"  # rows whose running mean is closest to the class mean (iCaRL)
    RANDOM = "random"  # a uniform sample of every row ever offered (reservoir)


def check_selection(selection: Any) -> Selection:
    try:
        return Selection(selection)
    except ValueError:
        raise ConfigError(f"memory selection must be one of {', '.join(s.value for s in Selection)}, "
                          f"got {selection!r}") from None


def _row_bytes(num_features: int, precision: str = "float32") -> int:
    return PRECISIONS[check_precision(precision)] * num_features + 8  # embedding + int64 label


def check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"memory precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return str(precision)


def default_per_class(num_features: int, precision: str = DEFAULT_PRECISION) -> int:
    """Rows per class of the default budget: the bytes of :data:`DEFAULT_PER_CLASS` float32
    rows (102.6 KB at 1,280 features), in ``precision`` (39 float16 rows of 1,280 features)."""
    width = max(int(num_features), 1)
    return max(1, DEFAULT_PER_CLASS * _row_bytes(width, "float32") // _row_bytes(width, precision))


def resolve_per_class(per_class: int | None, memory_mb: float | None, num_features: int, n_classes: int,
                      precision: str = DEFAULT_PRECISION) -> int:
    """Rows per class a memory keeps: what ``memory_mb`` holds when given, else ``per_class``,
    else the default budget (:func:`default_per_class`)."""
    if memory_mb is not None:
        return per_class_for_budget(memory_mb, num_features, n_classes, precision)
    return check_per_class(per_class) or default_per_class(num_features, precision)


def per_class_for_budget(memory_mb: Any, num_features: int, n_classes: int, precision: str = DEFAULT_PRECISION) -> int:
    """Rows per class that fit in ``memory_mb`` MB (10^6 bytes) of ``precision`` embeddings
    of ``num_features`` and int64 labels, for ``n_classes`` classes (float16: beside the centre)."""
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or not math.isfinite(memory_mb) \
            or not 0 < memory_mb <= MAX_MEMORY_MB:
        raise ConfigError(f"memory_mb must be a number in (0, {MAX_MEMORY_MB:g}], got {memory_mb!r}")
    center = 2 * max(num_features, 1) if precision == "float16" else 0  # a float16 memory keeps its centre
    per_class = (int(memory_mb * 1e6) - center) // (max(n_classes, 1) * _row_bytes(max(num_features, 1), precision))
    if per_class < 1:
        raise ConfigError(f"a replay memory of {memory_mb:g} MB holds less than one {num_features}-feature "
                          f"embedding per class for {n_classes} classes (at least "
                          f"{n_classes * _row_bytes(num_features, precision) / 1e6:.3g} MB)")
    return per_class


def herding(embeddings: np.ndarray, k: int, target: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``k`` rows chosen by herding (iCaRL): with ``u`` the L2-normalised rows
    and ``mu`` their mean (or ``target``, a mean in that normalised space), step ``t``
    picks the unpicked row minimising ``|| mu - (u_1 + ... + u_{t-1} + u) / t ||``; ties go
    to the lower index. In the order picked (a prefix is the best smaller memory)."""
    z = np.asarray(embeddings, np.float64)
    if z.ndim != 2:
        raise ConfigError(f"herding needs embeddings [N, F], got {z.shape}")
    k = min(int(k), len(z))
    if k <= 0:
        return np.zeros(0, np.int64)
    u = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    mu = u.mean(axis=0) if target is None else np.asarray(target, np.float64)
    chosen: list[int] = []
    free = np.ones(len(u), bool)
    total = np.zeros(u.shape[1])
    for t in range(1, k + 1):
        dist = np.linalg.norm(mu - (total + u) / t, axis=1)
        dist[~free] = np.inf
        i = int(np.argmin(dist))
        chosen.append(i)
        free[i] = False
        total += u[i]
    return np.asarray(chosen, np.int64)


def _encode_float16(z: np.ndarray, center: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray]:
    """``(center, rows as float16 stores them)``: the centre (float16 values, the rows' mean
    when none is given yet) and ``center + float16(z - center)`` in float32."""
    if center is None:
        if not z.shape[0]:
            return None, z
        center = np.mean(z, axis=0, dtype=np.float64)
    if not np.isfinite(center).all() or np.abs(center).max(initial=0) > np.finfo(np.float16).max:
        raise BundleError("the replay memory's centre is beyond float16's range; use a float32 replay memory")
    center = np.asarray(center, np.float16).astype(np.float32).reshape(-1)
    if center.shape != z.shape[1:]:
        raise BundleError(f"the replay memory's centre has {center.shape[0]} features, its rows {z.shape[1]}")
    offset = z - center
    if offset.size and np.abs(offset).max() > np.finfo(np.float16).max:
        raise BundleError(f"embeddings lie {np.abs(offset).max():.3g} from the memory's centre, beyond float16's "
                          "range; use a float32 replay memory")
    return center, center + offset.astype(np.float16).astype(np.float32)


def _unit_mean(z: np.ndarray) -> np.ndarray:
    u = np.asarray(z, np.float64)
    return (u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)).mean(axis=0)


def check_per_class(per_class: Any) -> int | None:
    """``per_class`` if it is an integer >= 1; None (the default budget) passes."""
    if per_class is None:
        return None
    if not (isinstance(per_class, int) and not isinstance(per_class, bool) and per_class >= 1):
        raise ConfigError(f"memory_per_class must be an integer >= 1, got {per_class!r}")
    return per_class


@dataclass(frozen=True)
class ReplayMemory:
    """Embeddings [M, F] with class indices [M] into ``label_names``; ``seen[c]`` counts the
    samples of class ``c`` ever offered (>= the number kept)."""

    embeddings: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    seen: np.ndarray
    precision: str = DEFAULT_PRECISION  # what the file stores (float16: half the bytes; see the module docstring)
    center: np.ndarray | None = None  # float16 only: what rows are stored relative to (float16 values)

    def __post_init__(self) -> None:
        z = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        y = np.ascontiguousarray(self.labels, dtype=np.int64).reshape(-1)
        names = tuple(str(n) for n in self.label_names)
        seen = np.ascontiguousarray(self.seen, dtype=np.int64).reshape(-1)
        if z.ndim != 2 or y.shape != (z.shape[0],):
            raise BundleError(f"replay memory needs embeddings [M, F] and labels [M], got {z.shape} and {y.shape}")
        if len(set(names)) != len(names):
            raise BundleError("replay memory has duplicate label names; re-package the bundle")
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise BundleError(f"replay memory labels must be in [0, {len(names)}); re-package the bundle")
        if seen.shape != (len(names),):
            raise BundleError(f"replay memory 'seen' has {seen.shape} entries for {len(names)} classes")
        if not np.isfinite(z).all():
            raise BundleError("replay memory holds NaN or infinite embeddings; re-package the bundle")
        center = None
        if check_precision(self.precision) == "float16":
            center, z = _encode_float16(z, self.center)
        kept = np.bincount(y, minlength=len(names))
        seen = np.maximum(seen, kept)
        for name, value in (("embeddings", z), ("labels", y), ("label_names", names), ("seen", seen),
                            ("center", center)):
            object.__setattr__(self, name, value)

    # -- construction -------------------------------------------------------------

    @classmethod
    def empty(cls, label_names: Sequence[str], num_features: int, precision: str = DEFAULT_PRECISION) -> "ReplayMemory":
        return cls(np.zeros((0, num_features), np.float32), np.zeros(0, np.int64), tuple(label_names),
                   np.zeros(len(label_names), np.int64), precision)

    @classmethod
    def build(
        cls, embeddings: np.ndarray, labels: np.ndarray, label_names: Sequence[str], *,
        per_class: int = DEFAULT_PER_CLASS, seed: int = 0, selection: Selection | str = Selection.HERDING,
        precision: str = DEFAULT_PRECISION,
    ) -> "ReplayMemory":
        """A memory of at most ``per_class`` rows per class, chosen by ``selection``."""
        z = np.asarray(embeddings, np.float32)
        return cls.empty(label_names, z.shape[1] if z.ndim == 2 else 0, precision).merge(
            z, labels, label_names, per_class=per_class, seed=seed, selection=selection)

    # -- properties ---------------------------------------------------------------

    @property
    def num_features(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self) -> dict[str, int]:
        kept = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(kept[i]) for i, name in enumerate(self.label_names)}

    @property
    def classes(self) -> tuple[str, ...]:
        """Names of the classes that have at least one row."""
        return tuple(n for n, k in self.counts().items() if k)

    # -- operations ---------------------------------------------------------------

    def relabel(self, label_names: Sequence[str]) -> "ReplayMemory":
        """The same rows with class indices into ``label_names`` (a superset of the current
        names with at least one row; classes without rows may be dropped)."""
        names = tuple(str(n) for n in label_names)
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.classes if n not in index]
        if missing:
            raise BundleError(f"replay memory holds classes {', '.join(missing)} that the head does not know")
        remap = np.asarray([index.get(n, -1) for n in self.label_names], np.int64)
        seen = np.zeros(len(names), np.int64)
        for i, n in enumerate(self.label_names):
            if n in index:
                seen[index[n]] = self.seen[i]
        return ReplayMemory(self.embeddings, remap[self.labels] if len(self) else self.labels, names, seen,
                            self.precision, self.center)

    def merge(
        self, embeddings: np.ndarray, labels: np.ndarray, label_names: Sequence[str], *,
        per_class: int = DEFAULT_PER_CLASS, seed: int = 0, selection: Selection | str = Selection.HERDING,
    ) -> "ReplayMemory":
        """Offer new rows (``labels`` index ``label_names``); keep at most ``per_class`` per
        class. ``RANDOM``: per class, the kept rows are a uniform sample of every sample ever
        offered (the number taken from the old memory is hypergeometric in (seen so far,
        new, K)). ``HERDING``: herding over the old rows and the new ones, toward the class
        mean of everything seen (the old rows' mean standing for the ``seen`` samples
        before). Label names are the current ones followed by the new names, in order."""
        per_class = check_per_class(per_class)
        selection = check_selection(selection)
        z = np.ascontiguousarray(embeddings, dtype=np.float32)
        y = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
        new_names = [str(n) for n in label_names]
        if z.ndim != 2 or y.shape != (z.shape[0],):
            raise ConfigError(f"merge needs embeddings [N, F] and labels [N], got {z.shape} and {y.shape}")
        if len(self) and z.shape[0] and z.shape[1] != self.num_features:
            raise BundleError(f"new embeddings have {z.shape[1]} features, the replay memory {self.num_features}; "
                              "the backbone changed: re-package the bundle")
        if len(y) and (y.min() < 0 or y.max() >= len(new_names)):
            raise ConfigError(f"labels must index label_names (0..{len(new_names) - 1})")
        names = list(self.label_names) + [n for n in dict.fromkeys(new_names) if n not in self.label_names]
        index = {n: i for i, n in enumerate(names)}
        y_new = np.asarray([index[new_names[i]] for i in y], np.int64)
        old = self.relabel(names)
        rng = np.random.default_rng(seed)
        seen = old.seen.copy()
        keep_z, keep_y = [], []
        for c in range(len(names)):
            old_rows = np.flatnonzero(old.labels == c)
            new_rows = np.flatnonzero(y_new == c)
            n_seen, n_new = int(seen[c]), len(new_rows)
            k = min(per_class, len(old_rows) + n_new)
            if selection is Selection.HERDING:
                pool = np.concatenate([old.embeddings[old_rows], z[new_rows]]).reshape(-1, z.shape[1] if z.shape[0]
                                                                                      else self.num_features)
                n_old_seen = max(n_seen, len(old_rows)) if len(old_rows) else 0
                target = None
                if len(old_rows) and n_new:  # weigh the memory's mean by how many samples it stands for
                    target = (n_old_seen * _unit_mean(old.embeddings[old_rows]) + n_new * _unit_mean(z[new_rows])) \
                        / (n_old_seen + n_new)
                pick = herding(pool, k, target)
                keep_z.append(pool[pick])
                keep_y.append(np.full(len(pick), c, np.int64))
                seen[c] = n_seen + n_new
                continue
            if n_new and len(old_rows):
                # uniform over (everything seen before) + (new): how many of the k are old ones;
                # the old memory is itself a uniform sample of what was seen, so any of its rows will do
                from_old = int(rng.hypergeometric(max(n_seen, len(old_rows)), n_new, k)) if k else 0
                from_old = min(max(from_old, k - n_new), len(old_rows))
            else:
                from_old = min(k, len(old_rows))
            chosen_old = np.sort(rng.choice(old_rows, from_old, replace=False)) if from_old else old_rows[:0]
            chosen_new = np.sort(rng.choice(new_rows, k - from_old, replace=False)) if k - from_old else new_rows[:0]
            keep_z += [old.embeddings[chosen_old], z[chosen_new]]
            keep_y += [np.full(len(chosen_old) + len(chosen_new), c, np.int64)]
            seen[c] = n_seen + n_new
        width = z.shape[1] if z.shape[0] else self.num_features
        emb = np.concatenate([a.reshape(-1, width) for a in keep_z]) if keep_z else np.zeros((0, width), np.float32)
        lab = np.concatenate(keep_y) if keep_y else np.zeros(0, np.int64)
        return ReplayMemory(emb, lab, tuple(names), seen, self.precision, self.center)

    def split(self, fraction: float, seed: int = 0, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(train rows, holdout rows)``: a seeded per-class slice of ``fraction`` of the rows
        of ``classes`` (default all) is held out; classes with fewer than 2 rows stay in train."""
        from edgetl.core.data import stratified_split

        rows = np.arange(len(self))
        if classes is not None:
            wanted = {i for i, n in enumerate(self.label_names) if n in set(classes)}
            mask = np.isin(self.labels, sorted(wanted))
        else:
            mask = np.ones(len(self), bool)
        if fraction <= 0 or not mask.any():
            return rows, rows[:0]
        tr, ho = stratified_split(self.labels[mask], fraction, seed)
        held = rows[mask][ho]
        return np.setdiff1d(rows, held), held

    # -- files --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        extra = {}
        rows = self.embeddings
        if self.center is not None:
            rows, extra = rows - self.center, {"center": self.center.astype(np.float16)}
        np.savez(buffer, embeddings=rows.astype(self.precision), labels=self.labels,
                 label_names=np.asarray(self.label_names, dtype=np.str_), seen=self.seen, **extra)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReplayMemory":
        try:
            with np.load(path, allow_pickle=False) as f:
                z, y = f["embeddings"], f["labels"]
                names = tuple(str(n) for n in f["label_names"])
                seen = f["seen"] if "seen" in f.files else np.bincount(y.astype(np.int64), minlength=len(names))
                if z.dtype != np.float16:
                    return cls(z, y, names, seen, "float32")
                center = f["center"] if "center" in f.files else np.zeros(z.shape[1:], np.float16)
                if center.dtype != np.float16 or center.shape != z.shape[1:]:
                    raise ValueError(f"center must be float16 of {z.shape[1:]}, got {center.dtype} {center.shape}")
                center = center.astype(np.float32)
                return cls(center + z.astype(np.float32), y, names, seen, "float16", center)
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: not a readable replay memory (.npz with embeddings, labels, label_names): "
                              f"{exc}; re-package the bundle") from None


def memory_from_run(
    predictor: Any, info: Mapping[str, Any], *, per_class: int | None = None, seed: int = 0,
    selection: Selection | str = Selection.HERDING, memory_mb: float | None = None,
    precision: str = DEFAULT_PRECISION, train_rows: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
) -> tuple[ReplayMemory, list[str]]:
    """The initial memory of a bundle: up to ``per_class`` items per class (or as many as
    ``memory_mb`` holds; neither: :func:`default_per_class`) from a RUN's training split
    (:func:`run_split`), embedded by ``predictor`` (the deployed backbone; raw, no adapter).
    ``HERDING`` embeds every training item and keeps the exemplars closest to each class
    mean (from ``train_rows``, the split as :func:`split_embeddings` returned it, when given:
    the same items in the same order); ``RANDOM`` embeds only a seeded draw. Returns the memory and a list of problems
    (missing or unreadable images, a missing data root), for the caller to warn about; an
    empty memory when nothing could be read."""
    selection = check_selection(selection)
    labels = [str(x) for x in info["labels"]]
    features = predictor.head.input_shape[-1] if predictor.head.input_shape else 0
    features = features if isinstance(features, int) else 0
    precision = check_precision(precision)
    per_class = resolve_per_class(per_class, memory_mb, features, len(labels), precision)
    if train_rows is not None and selection is Selection.HERDING:
        z, y, problems = train_rows[0], train_rows[1], list(train_rows[2])
    else:
        by_class, item_of, problems = run_split(predictor, info, "train")
        if not by_class:
            return ReplayMemory.empty(labels, features, precision), problems
        z, y = _embed_items(predictor, [(item_of(key), c) for key, c in _rows_to_embed(by_class, per_class,
                                                                                      selection, seed)],
                            problems, "training image(s)")
    memory = ReplayMemory.empty(labels, z.shape[1] if z.size else features, precision)
    if len(y):
        memory = memory.merge(z, y, labels, per_class=per_class, seed=seed, selection=selection)
    return memory, problems


def run_split(predictor: Any, info: Mapping[str, Any],
              which: str = "train") -> tuple[dict[int, list], Callable[[Any], Any], list[str]]:
    """A RUN's split ``which`` (``run.json`` ``split``) by class index: its keys (images: paths
    relative to ``data_root``; a modality whose split holds indices into its data file, such as
    text: those indices, the data read again through the predictor's modality, which must hold
    as many items as at training), how a key becomes what the predictor reads, and problems
    (an empty split when the data are not there)."""
    from edgetl.errors import EdgeTLError

    labels = [str(x) for x in info["labels"]]
    index = {n: i for i, n in enumerate(labels)}
    split = info.get("split") if isinstance(info.get("split"), dict) else {}
    keys = list(split.get(which) or [])
    root = str(info.get("data_root") or "")
    by_class: dict[int, list] = {}
    if (info.get("modality") or "image") == "image":
        if not root or not Path(root).is_dir() or not keys:
            what = {"train": "training", "val": "validation"}.get(which, which)
            return {}, str, [f"the RUN's {what} images are not at {root} (run.json data_root and split.{which})"]
        for rel in map(str, keys):
            c = index.get(PurePosixPath(rel).parent.name)
            if c is not None:
                by_class.setdefault(c, []).append(rel)
        return by_class, lambda rel: Path(root) / rel, []
    cfg = info.get("config") if isinstance(info.get("config"), dict) else {}
    try:
        data = predictor.modality.scan(root, text_column=cfg.get("text_column", "text"),
                                       label_column=cfg.get("label_column", "label"), min_classes=1)
    except (EdgeTLError, OSError) as exc:
        return {}, str, [f"the RUN's training data cannot be read again ({exc})"]
    if len(data.items) != split.get("items"):
        return {}, str, [f"{root} holds {len(data.items)} examples, {split.get('items')} at training time: it changed"]
    for i in map(int, keys):
        c = index.get(data.labels[int(data.targets[i])])
        if c is not None:
            by_class.setdefault(c, []).append(i)
    return by_class, lambda i: data.items[i], []


def _readable(chosen: list[tuple[Any, int]], problems: list[str], what: str) -> list[tuple[Any, int]]:
    """``chosen`` without the image files that are gone (counted in ``problems``)."""
    missing = [p for p, _ in chosen if isinstance(p, Path) and not p.is_file()]
    if missing:
        problems.append(f"{len(missing)} {what} are missing, e.g. {missing[0]}")
    return [(p, c) for p, c in chosen if not (isinstance(p, Path) and not p.is_file())]


def _embed_items(predictor: Any, chosen: list[tuple[Any, int]], problems: list[str],
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, class indices)`` of the ``(item, class)`` pairs that are there and
    readable; what is not is counted in ``problems``."""
    chosen = _readable(chosen, problems, what)
    z, ok = embed_images(predictor, [p for p, _ in chosen])
    if len(ok) < len(chosen):
        problems.append(f"{len(chosen) - len(ok)} {what} could not be read")
    return z, np.asarray([chosen[i][1] for i in ok], np.int64)


def split_embeddings(predictor: Any, info: Mapping[str, Any], which: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every readable item of a RUN's split ``which`` embedded by ``predictor`` (raw), in class
    then key order (what ``HERDING`` in :func:`memory_from_run` embeds), with its class
    indices, and the problems met."""
    by_class, item_of, problems = run_split(predictor, info, which)
    z, y = _embed_items(predictor, [(item_of(k), c) for c in sorted(by_class) for k in sorted(by_class[c])],
                        problems, f"{which} item(s)")
    return z, y, problems


def _rows_to_embed(by_class: dict[int, list], per_class: int, selection: "Selection",
                   seed: int) -> list[tuple[Any, int]]:
    """``(key, class)`` of the training rows to embed, class by class in sorted key order:
    all of them for herding (it needs the class mean), else a seeded draw of ``per_class``."""
    rng = np.random.default_rng(seed)
    out: list[tuple[Any, int]] = []
    for c in sorted(by_class):
        keys = sorted(by_class[c])
        if selection is Selection.HERDING:
            pick = np.arange(len(keys))
        else:
            pick = np.sort(rng.choice(len(keys), min(per_class, len(keys)), replace=False))
        out += [(keys[i], c) for i in pick]
    return out


def embed_images(
    predictor: Any, paths: Sequence[Path], *, strict: bool = False, description: str = "embedding images",
) -> tuple[np.ndarray, list[int]]:
    """Raw backbone embeddings (no adapter) of the readable ``paths`` with the predictor's
    own batching, and the indices of those paths; unreadable ones are left out (with
    ``strict``, the first raises :class:`~edgetl.errors.DataError`)."""
    from edgetl.core.ui import progress_bar

    chunks: list[np.ndarray] = []
    ok: list[int] = []
    with progress_bar(description, len(paths)) as advance:
        for indices, z, errors in predictor.run_chunks(list(paths), strict=strict, logits=False, adapted=False):
            if indices:
                chunks.append(z)
                ok += indices
            advance(len(indices) + len(errors))
    if not chunks:
        features = predictor.head.input_shape[-1] if predictor.head.input_shape else 0
        return np.zeros((0, features if isinstance(features, int) else 0), np.float32), ok
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32), ok
