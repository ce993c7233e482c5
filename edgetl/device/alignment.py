"""Adapt a deployed bundle to a new domain from unlabelled images. Torch-free.

The deployed backbone embeds the new images; a linear feature alignment ``z' = z @ A.T + b``
is fitted so that their embeddings get the mean and covariance of the source (training)
domain's, and stored as ``adapter.npz`` in a new bundle version, which the predictor
applies before the head. Atomic and reversible like ``retrain``: a kill leaves the old or
the new version live; ``rollback`` removes the adapter.

Methods:

- ``coral`` (default): whiten with the target covariance, recolour with the source's
  (CORAL, Sun et al. 2016). A = C_s^(1/2) C_t^(-1/2), b = mu_s - A mu_t. With d = 1280 and
  a few hundred images, sample covariances are singular, so each is shrunk toward its
  diagonal: C = (1 - a) S + a diag(S), with a = d / (n + d) clipped to [0.1, 0.95]
  unless given (measured on digits under low contrast: a of 0.6-0.9 beats the plain
  sample covariance, which amplifies noise directions, by 25 points).
- ``standardize``: per-dimension, A = diag(sigma_s / sigma_t) (shrinkage a = 1).

The source statistics come from, in order: the bundle's ``source_stats.npz`` (``mean``
[F], ``cov`` [F, F], ``count``; written at package time by :func:`write_source_stats`),
its replay memory ``memory.npz`` (raw embeddings under ``embeddings``), or images of the
source domain passed as ``source``. Embeddings are always the *raw* backbone output (a
live adapter is not applied), so adapting twice replaces the adapter, never stacks it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.modalities.image import check_image, find_images
from edgetl.core.registry import Registry
from edgetl.core.report import Report
from edgetl.errors import BundleError, ConfigError, DataError, RetrainError
from edgetl.modalities.image import IMAGE_SUFFIXES

__all__ = [
    "AlignMethod",
    "SourceStats",
    "adapt",
    "AdaptConfig",
    "AdaptReport",
    "coral_map",
    "standardize_map",
    "list_unlabelled",
    "source_stats",
    "write_source_stats",
    "SOURCE_STATS",
    "ADAPTERS",
]

SOURCE_STATS = "source_stats.npz"
ADAPTER = "adapter.npz"
MIN_IMAGES = 2


class AlignMethod(str, Enum):
    """The registered methods (:data:`ADAPTERS`), as an enum for configs."""

    CORAL = "coral"
    STANDARDIZE = "standardize"


def list_unlabelled(folder: str | os.PathLike | None, *, what: str = "UNLABELLED_DIR") -> list[Path]:
    """Images in ``folder``: a flat folder, or subfolders (any depth) whose names are ignored.
    Unreadable files are skipped with a warning. Raises :class:`DataError` when the folder
    is missing or holds no readable image."""
    if folder is None:
        raise DataError(f"{what}: no folder given; pass a folder of unlabelled images of the new domain")
    root = Path(folder)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "no such folder"
        raise DataError(f"{root}: {problem}; {what} must be a folder of unlabelled images of the new domain")
    paths, bad = [], []
    for path in find_images(root):
        reason = check_image(path)
        if reason is None:
            paths.append(path)
        else:
            bad.append((path, reason))
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable file(s) in {root}, e.g. {bad[0][0]}: {bad[0][1]}", stacklevel=2)
    if len(paths) < MIN_IMAGES:
        raise DataError(f"{root}: found {len(paths)} readable image(s); {what} needs at least {MIN_IMAGES} "
                        f"images of the new domain ({', '.join(IMAGE_SUFFIXES)}), flat or in subfolders")
    return paths


# --------------------------------------------------------------------------- statistics and maps


@dataclass(frozen=True)
class SourceStats:
    """Mean [F], covariance [F, F] (divided by n) and sample count of source embeddings."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    @classmethod
    def from_embeddings(cls, z: np.ndarray) -> "SourceStats":
        z = np.asarray(z, np.float64)
        if z.ndim != 2 or len(z) < MIN_IMAGES:
            raise ConfigError(f"source statistics need at least {MIN_IMAGES} embeddings [N, F], got {z.shape}")
        mean = z.mean(0)
        zc = z - mean
        return cls(mean, zc.T @ zc / len(z), len(z))


def write_source_stats(path: str | os.PathLike, embeddings: np.ndarray) -> Path:
    """Write ``source_stats.npz`` (``mean``, ``cov``, ``count``) from raw source embeddings;
    call it at package time with the deployed backbone's embeddings of the training images."""
    stats = SourceStats.from_embeddings(embeddings)
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, mean=stats.mean.astype(np.float32), cov=stats.cov.astype(np.float32),
                 count=np.int64(stats.count))
    return path


def _read_stats(path: Path) -> SourceStats:
    try:
        with np.load(path, allow_pickle=False) as f:
            return SourceStats(f["mean"].astype(np.float64), f["cov"].astype(np.float64), int(f["count"]))
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: not readable source statistics (mean, cov, count): {exc}; re-package") from None


def _read_memory(path: Path) -> SourceStats | None:
    from edgetl.device.memory import ReplayMemory

    memory = ReplayMemory.load(path)  # raw embeddings, as this module expects
    return SourceStats.from_embeddings(memory.embeddings) if len(memory) >= MIN_IMAGES else None


def _shrink(cov: np.ndarray, n: int, shrinkage: float | None) -> np.ndarray:
    d = cov.shape[0]
    a = float(np.clip(d / (n + d), 0.1, 0.95)) if shrinkage is None else shrinkage
    return (1.0 - a) * cov + a * np.diag(np.diag(cov))


def _sqrtm(cov: np.ndarray, power: float) -> np.ndarray:
    w, V = np.linalg.eigh(cov)
    # dead features (zero variance in both domains) must not be blown up by the inverse
    floor = max(1e-6 * float(np.mean(np.abs(w))), 1e-12)
    return (V * np.maximum(w, floor) ** power) @ V.T


def coral_map(source: np.ndarray | SourceStats, target: np.ndarray, *,
              shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` such that ``target @ A.T + b`` has the source's mean and (shrunk) covariance."""
    if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
        raise ConfigError(f"shrinkage must be in [0, 1], got {shrinkage}")
    s = source if isinstance(source, SourceStats) else SourceStats.from_embeddings(source)
    t = SourceStats.from_embeddings(target)
    A = _sqrtm(_shrink(s.cov, s.count, shrinkage), 0.5) @ _sqrtm(_shrink(t.cov, t.count, shrinkage), -0.5)
    return A, s.mean - A @ t.mean


def standardize_map(source: np.ndarray | SourceStats, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` giving each target dimension the source's mean and standard deviation."""
    s = source if isinstance(source, SourceStats) else SourceStats.from_embeddings(source)
    t = SourceStats.from_embeddings(target)
    sd_s, sd_t = np.sqrt(np.diag(s.cov)), np.sqrt(np.diag(t.cov))
    floor = max(1e-6 * float(sd_t.mean()), 1e-12)
    scale = np.where(sd_t > floor, sd_s / np.maximum(sd_t, floor), 1.0)
    return np.diag(scale), s.mean - scale * t.mean


# name -> fit(source stats, target embeddings, *, shrinkage) -> (A, b); the CLI's --method choices
ADAPTERS: Registry[Any] = Registry("adaptation method", ConfigError)
ADAPTERS.register("coral", coral_map)
ADAPTERS.register("standardize", lambda source, target, *, shrinkage=None: standardize_map(source, target))


# --------------------------------------------------------------------------- the bundle


def source_stats(bundle: Any, predictor: Any = None, source: str | os.PathLike | None = None) -> tuple[SourceStats, str]:
    """The bundle's source statistics and where they came from (see the module docstring)."""
    rel = bundle.manifest.get("source_stats")
    if rel:
        return _read_stats(bundle.path(rel)), "source_stats"
    memory = bundle.optional_path("memory")
    stats = _read_memory(memory) if memory is not None else None
    if stats is not None:
        return stats, "memory"
    if source is not None:
        z = predictor.embed(list_unlabelled(source, what="source"), adapted=False)
        return SourceStats.from_embeddings(z), "images"
    raise RetrainError(f"{bundle.root}: the bundle holds no source statistics (no {SOURCE_STATS} or replay memory); "
                       "pass source images of the training domain (--source DIR), or re-package it")


def _accuracy(predictor: Any, z_raw: np.ndarray, y: np.ndarray, adapter: Any) -> float:
    z = adapter.apply(z_raw) if adapter is not None else z_raw
    return float((predictor.logits_from_embeddings(z).argmax(1) == y).mean())


def _eval_set(predictor: Any, folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    from edgetl.modalities.image import scan_folder

    ev = scan_folder(folder, min_classes=1)
    index = {label: i for i, label in enumerate(predictor.labels)}
    unknown = [c for c in ev.labels if c not in index]
    if unknown:
        raise DataError(f"{ev.root}: class folder(s) {', '.join(map(repr, unknown))} are not among the model's "
                        f"labels ({', '.join(predictor.labels)}); evaluate on known classes")
    y = np.asarray([index[c] for c in ev.labels], np.int64)[ev.targets]
    return predictor.embed(ev.paths, adapted=False), y


@dataclass(frozen=True)
class AdaptConfig:
    """Options of :func:`adapt` (the CLI builds the same object)."""

    method: AlignMethod = AlignMethod.CORAL
    shrinkage: float | None = None  # coral: toward the diagonal; None: d / (n + d)
    source: str | os.PathLike | None = None  # source-domain images, when the bundle has no statistics
    eval_dir: str | os.PathLike | None = None  # labelled target images: accuracy before and after
    verify: bool = True
    sign_key: str | os.PathLike | None = None  # a private key file: the new version is signed with it

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", AlignMethod(getattr(self.method, "value", self.method)))
        except ValueError:
            raise ConfigError(f"unknown alignment method {self.method!r}; choose "
                              f"{' or '.join(ADAPTERS.names())}") from None
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise ConfigError(f"shrinkage must be in [0, 1], got {self.shrinkage}")


@dataclass(frozen=True)
class AdaptReport(Report):
    """What :func:`adapt` did; accuracies are on ``eval_dir`` (None without one)."""

    method: str
    n_images: int
    source: str  # where the source statistics came from: source_stats | memory | images
    accuracy_before: float | None
    accuracy_after: float | None
    version: int
    bundle: str


def adapt(bundle_path: str | os.PathLike, unlabelled_dir: str | os.PathLike,
          config: AdaptConfig | None = None) -> AdaptReport:
    """Fit a feature alignment from ``unlabelled_dir`` to the source domain and make it live
    in a new bundle version (see the module docstring)."""
    from edgetl.device.bundle import update_bundle
    from edgetl.device.predictor import Adapter, Predictor

    cfg = config or AdaptConfig()
    method, shrinkage, source, eval_dir, verify = cfg.method, cfg.shrinkage, cfg.source, cfg.eval_dir, cfg.verify
    paths = list_unlabelled(unlabelled_dir)
    predictor = Predictor.from_bundle(bundle_path, verify=verify)
    bundle = predictor.bundle
    stats, origin = source_stats(bundle, predictor, source)
    evaluation = _eval_set(predictor, eval_dir) if eval_dir is not None else None
    z = predictor.embed(paths, adapted=False)
    if stats.mean.shape != (z.shape[1],):
        raise BundleError(f"{bundle.root}: source statistics have {stats.mean.shape[0]} features but the backbone "
                          f"makes {z.shape[1]}; re-package the bundle")
    A, b = ADAPTERS.get(method.value)(stats, z, shrinkage=shrinkage)
    adapter = Adapter(A.astype(np.float32), b.astype(np.float32))  # checks shapes and finiteness
    before = after = None
    if evaluation is not None:
        before = _accuracy(predictor, *evaluation, predictor.adapter)
        after = _accuracy(predictor, *evaluation, adapter)
    models = dict(bundle.manifest["models"])

    def write(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["models"] != models:  # another update changed the backbone meanwhile
            raise RetrainError(f"{bundle.root}: the bundle changed while adapting; run adapt again")
        adapter.save(staging / ADAPTER)
        manifest["adapter"] = f"v{manifest['version']}/{ADAPTER}"
        return manifest

    details = {"method": method.value, "n_images": len(paths), "source": origin,
               "accuracy_before": before, "accuracy_after": after}
    updated = update_bundle(bundle.root, "adapt", write, details=details, sign_key=cfg.sign_key)
    return AdaptReport(**details, version=updated.version, bundle=str(updated.root))
