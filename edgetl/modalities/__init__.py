"""Input kinds: the one place where raw items (image files, texts) become model inputs.

A :class:`Modality` is registered by name in :data:`MODALITIES`; the name is stored in
run.json (``modality``), in every exported ONNX file (``edgetl.modality``) and in the
bundle manifest, so each stage finds the same one. Everything that feeds a backbone —
the training dataset, export's example inputs and dynamic axes, calibration, the
predictor, the replay memory, the bench worker — goes through it::

    modality = get_modality(run_info.get("modality", "image"))
    spec = modality.spec_from_dict(run_info["preprocess"])
    for indices, inputs, errors in batches(modality, items, spec, 32):
        z = session.run(inputs)          # inputs: {"images": float32 [N, 3, S, S]}

Adding a modality is adding a module that registers one (see docs/ARCHITECTURE.md).
Torch-free.
"""

from __future__ import annotations

import os

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from edgetl.core.registry import Registry
from edgetl.errors import ConfigError, DataError, EdgeTLError

__all__ = ["InputSpec", "Modality", "LabelledItems", "MODALITIES", "get_modality", "modality_names", "batches",
           "run_batches", "DEFAULT_MODALITY", "Inputs", "count", "take", "concat", "load_all"]

DEFAULT_MODALITY = "image"  # what RUNs and bundles made before modalities existed hold


@dataclass(frozen=True)
class InputSpec:
    """One named model input: ``dtype`` ("float32" | "int64") and shape, ``None`` where dynamic."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        names = {0: "batch", 1: "sequence"}
        return {i: names.get(i, f"dim{i}") for i, d in enumerate(self.shape) if d is None}


@dataclass(frozen=True)
class LabelledItems:
    """Labelled data of any modality: ``items`` (paths or texts), class names (sorted), the
    class index of each item, and what was skipped ``(where, reason)``."""

    root: Any
    labels: tuple[str, ...]
    items: tuple[Any, ...]
    targets: np.ndarray
    skipped: tuple[tuple[str, str], ...] = ()

    def describe(self, i: int) -> str:
        return str(self.items[i])


class Modality(Protocol):
    """What edgetl needs to know about an input kind."""

    name: str
    item_noun: str  # "image", "text": for messages

    def spec_from_dict(self, d: Any) -> Any:
        """The preprocessing (or tokenisation) spec stored in run.json and the manifest."""

    def inputs(self, spec: Any) -> tuple[InputSpec, ...]:
        """The backbone's inputs, in order."""

    def load(self, item: Any, spec: Any) -> dict[str, np.ndarray]:
        """One raw item -> one row per input (no batch axis). Raises :class:`DataError`."""

    def collate(self, rows: Sequence[Mapping[str, np.ndarray]], spec: Any) -> dict[str, np.ndarray]:
        """Rows of :meth:`load` -> a batch (stacked, or padded to the longest)."""

    def example(self, spec: Any, batch: int) -> dict[str, np.ndarray]:
        """A synthetic batch (export tracing, timing without data)."""

    def scan(self, data: Any, *, strict: bool = False, min_classes: int = 2) -> LabelledItems:
        """Labelled data (a folder, a file) -> items and labels, checked."""

    def check_session(self, session: Any, spec: Any) -> None:
        """Raise :class:`~edgetl.errors.BundleError` if the backbone cannot take ``spec``'s inputs."""

    def bind(self, spec: Any, locate: Any) -> Any:
        """``spec`` with the files it needs from a RUN or bundle (``locate(artifact_name) ->
        Path | None``); a text spec gets its ``tokenizer.json``, an image spec is unchanged."""

    def describe(self, item: Any) -> str | None:
        """How predictions and errors name ``item`` (a path as given; a text shortened)."""

    def encode(self, item: Any, spec: Any) -> bytes:
        """A compact, self-contained form of a raw item, that :meth:`decode` reads back and that
        :meth:`load` then turns into exactly the inputs the item gives (the conformance set
        stores items so). Raises :class:`DataError` for an item that does not load."""

    def decode(self, data: bytes) -> Any:
        """:meth:`encode`'s bytes -> an item :meth:`load` takes."""


MODALITIES: Registry[Modality] = Registry("modality", ConfigError)
# name -> module that registers it, imported on first use (a text modality pulls in tokenizers)
_MODULES = {"image": "edgetl.modalities.image", "text": "edgetl.modalities.text"}


def get_modality(name: str | None) -> Modality:
    """The registered modality ``name`` (default: image)."""
    name = name or DEFAULT_MODALITY
    if name not in MODALITIES and name in _MODULES:
        importlib.import_module(_MODULES[name])
    return MODALITIES.get(name)


def modality_names() -> list[str]:
    for module in _MODULES.values():
        try:
            importlib.import_module(module)
        except ImportError:  # an optional modality whose package is not installed
            continue
    return MODALITIES.names()


def load_workers() -> int:
    """Threads that load (decode, preprocess) items: ``$EDGETL_WORKERS``, else the cores, at
    most 8. Decoding and resizing release the GIL, so they overlap each other and inference."""
    env = os.environ.get("EDGETL_WORKERS", "")
    if env.isdigit() and int(env) >= 1:
        return min(int(env), 64)
    return max(1, min(8, os.cpu_count() or 1))


def _load(modality: Modality, items: Sequence[Any], spec: Any, i: int):
    try:
        return modality.load(items[i], spec), None
    except (EdgeTLError, OSError, ValueError) as exc:
        return None, exc


def _chunk(modality: Modality, items: Sequence[Any], spec: Any, start: int, results, strict: bool,
           describe) -> tuple[list[int], dict[str, np.ndarray] | None, dict[int, str]]:
    """The loaded rows of one chunk (``results``: (row, exception) per item from ``start``) collated."""
    rows, indices, errors = [], [], {}
    for i, (row, exc) in zip(range(start, len(items)), results):
        if exc is not None:
            if strict:
                raise exc if isinstance(exc, DataError) else DataError(f"{describe(items[i])}: {exc}") from None
            errors[i] = str(exc)
            continue
        rows.append(row)
        indices.append(i)
    return indices, (modality.collate(rows, spec) if rows else None), errors


def _ahead(starts: Iterable[int], submit: Callable[[int], Any], ahead: int) -> Iterator[tuple[int, Any]]:
    """``(start, submit(start))`` for each chunk start, in order, with ``ahead`` chunks
    submitted before the consumer asks for them (``submit`` hands a chunk to a pool)."""
    from collections import deque

    pending: deque = deque()
    todo = iter(starts)

    def next_chunk() -> None:
        start = next(todo, None)
        if start is not None:
            pending.append((start, submit(start)))

    for _ in range(ahead):
        next_chunk()
    while pending:
        done = pending.popleft()
        next_chunk()
        yield done


def _check_batch_size(batch_size: Any) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def batches(
    modality: Modality, items: Sequence[Any], spec: Any, batch_size: int, *, strict: bool = False,
    describe=str, workers: int | None = None,
) -> Iterator[tuple[list[int], dict[str, np.ndarray] | None, dict[int, str]]]:
    """Yield ``(indices, inputs, errors)`` per chunk of ``batch_size`` items: ``inputs`` holds
    the loadable items at ``indices`` (None when none was), ``errors`` the others' reasons.
    With ``strict`` the first unloadable item raises :class:`DataError`. Items are loaded by
    ``workers`` threads (:func:`load_workers`), at most two chunks ahead of the consumer, so
    the next chunk decodes while this one runs and memory stays bounded."""
    _check_batch_size(batch_size)
    starts = range(0, len(items), batch_size)
    span = lambda start: range(start, min(start + batch_size, len(items)))  # noqa: E731
    n = load_workers() if workers is None else workers
    if n <= 1 or len(items) <= 1:
        for start in starts:
            yield _chunk(modality, items, spec, start, (_load(modality, items, spec, i) for i in span(start)),
                         strict, describe)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n, thread_name_prefix="edgetl-load") as pool:
        for start, futures in _ahead(starts, lambda s: [pool.submit(_load, modality, items, spec, i) for i in span(s)],
                                     3):
            yield _chunk(modality, items, spec, start, [f.result() for f in futures], strict, describe)


def run_batches(
    modality: Modality, items: Sequence[Any], spec: Any, batch_size: int, run, *, workers: int,
    strict: bool = False, describe=str,
) -> Iterator[tuple[list[int], Any, dict[int, str]]]:
    """As :func:`batches`, but each chunk is loaded and run (``run(inputs)``) by one of
    ``workers`` threads, chunks side by side, at most two per thread ahead of the consumer:
    yields ``(indices, run(inputs) or None, errors)`` in order. For a model whose sessions
    each use one thread, so that the cores run images side by side instead of sharing
    every op of one."""
    _check_batch_size(batch_size)
    from concurrent.futures import ThreadPoolExecutor

    def task(start: int):
        results = [_load(modality, items, spec, i) for i in range(start, min(start + batch_size, len(items)))]
        indices, inputs, errors = _chunk(modality, items, spec, start, results, strict, describe)
        return indices, (run(inputs) if inputs is not None else None), errors

    with ThreadPoolExecutor(workers, thread_name_prefix="edgetl-run") as pool:
        for _, future in _ahead(range(0, len(items), batch_size), lambda s: pool.submit(task, s), 2 * workers):
            yield future.result()


Inputs = Mapping[str, np.ndarray]


def count(x: Inputs) -> int:
    """The batch size of model inputs."""
    return len(next(iter(x.values()))) if x else 0


def take(x: Inputs, rows: slice | Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """The same rows of every input."""
    return {k: v[rows] for k, v in x.items()}


def concat(parts: Sequence[Inputs]) -> dict[str, np.ndarray]:
    """Batches of model inputs joined along the batch axis; inputs of varying length (token
    ids) are right-padded with zeros to the longest."""
    out = {}
    for key in parts[0]:
        arrays = [p[key] for p in parts]
        width = max(a.shape[1] for a in arrays) if arrays[0].ndim == 2 and arrays[0].dtype.kind == "i" else None
        if width is not None:
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
        out[key] = np.concatenate(arrays)
    return out


def load_all(modality: Modality, items: Sequence[Any], spec: Any, *, batch_size: int = 64,
             progress: str | None = None) -> dict[str, np.ndarray]:
    """Model inputs of every item (each must load: raises :class:`DataError` otherwise)."""
    from edgetl.core import ui

    parts = []
    with ui.progress_bar(progress or f"loading {modality.item_noun}s", len(items)) as advance:
        for _, inputs, _ in batches(modality, items, spec, batch_size, strict=True):
            parts.append(inputs)
            advance(count(inputs))
    return concat(parts) if parts else {i.name: np.zeros((0, *[d or 0 for d in i.shape[1:]]), i.dtype)
                                        for i in modality.inputs(spec)}
