"""Labelled data, whatever its modality: deterministic stratified splits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetl.errors import ConfigError

__all__ = ["stratified_split", "MAX_SEED", "check_seed", "check_number"]

MAX_SEED = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes no more; torch takes more


def check_seed(seed: Any) -> int:
    """``seed`` if it is an integer in [0, 2**32 - 1]; a :class:`ConfigError` in one line else
    (numpy raises a bare ValueError deep inside a run)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED:,}, got {seed!r}")
    return seed


def check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` if it is a finite number in the interval; a :class:`ConfigError` naming
    ``name`` and the interval else (NaN passes every comparison test written as ``not x > 0``
    the wrong way round; this one refuses it)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi))
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def stratified_split(
    targets: np.ndarray, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split -> (train indices, validation indices), both sorted.
    Every class with at least two samples gets at least one of each."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(targets):
        idx = np.flatnonzero(targets == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))
