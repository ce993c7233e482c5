"""Frozen-backbone embeddings at the runtime's speed: a pipelined input path, ONNX Runtime
instead of PyTorch eager where that is faster, and an on-disk cache keyed by content.

A frozen backbone needs no autograd, so for the linear probe (and the probe stage of LP-FT)
its embeddings come from the backbone exported to ONNX and run on ONNX Runtime, with the
images decoded and preprocessed in worker threads (Pillow and numpy release the GIL) while
the previous batch runs. ``engine="auto"`` picks ONNX Runtime on the CPU and PyTorch on a
GPU; an export that fails, or that does not reproduce PyTorch on the first images, falls
back to PyTorch, and the report says which ran and why. Rows already computed for the same
bytes, weights, preprocessing and engine come from :mod:`edgetl.core.embed_cache`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgetl.core import ui as _ui
from edgetl.core.embed_cache import DEFAULT_MAX_BYTES, EmbeddingCache, cache_size, default_cache_dir, file_digest
from edgetl.core.rowstore import RowStore, release
from edgetl.errors import ConfigError, DataError
from edgetl.modalities import batches, get_modality, load_workers
from edgetl.modalities.image import PreprocessSpec, preprocess
from edgetl.workstation.backbones.base import Backbone, weights_digest

__all__ = ["EMBED_ENGINES", "EmbedOptions", "embed_paths", "cache_key", "weights_digest", "scratch_folder"]

EMBED_ENGINES = ("auto", "onnxruntime", "torch")
_PARITY_ATOL = 1e-3  # relative to the embeddings' scale: an export this far off is not used
_FORMAT = 2  # bump when what a cached row means (or a shard's layout) changes; 2: rows carry integrity digests
_SCRATCH: ContextVar[Path | None] = ContextVar("edgetl_embed_scratch", default=None)


@contextmanager
def scratch_folder(path: str | os.PathLike) -> Iterator[None]:
    """Within this block, embeddings' row stores go in ``path`` (a RUN being written) when it
    exists and ``EmbedOptions.scratch_dir`` is not set: ``train`` sets it around the fit, so
    the strategies need not pass a folder down to every place that embeds."""
    token = _SCRATCH.set(Path(path))
    try:
        yield
    finally:
        _SCRATCH.reset(token)


@dataclass(frozen=True)
class EmbedOptions:
    """How frozen-backbone embeddings are computed (``edgetl train --embed-with``,
    ``--no-cache``, ``--cache-dir``, ``--workers``)."""

    engine: str = "auto"
    cache: bool = True
    cache_dir: str | os.PathLike | None = None  # None: default_cache_dir()
    cache_max_bytes: int = DEFAULT_MAX_BYTES
    workers: int | None = None  # decoding threads; None: the machine's cores
    batch_size: int = 64
    scratch_dir: str | os.PathLike | None = None  # the rows' memory-mapped store; None: beside the cache

    def __post_init__(self) -> None:
        if self.engine not in EMBED_ENGINES:
            raise ConfigError(f"embed engine must be one of {', '.join(EMBED_ENGINES)}, got {self.engine!r}")
        if self.workers is not None and not (isinstance(self.workers, int) and 1 <= self.workers <= 64):
            raise ConfigError(f"workers must be an integer from 1 to 64, got {self.workers!r}")
        if not (isinstance(self.batch_size, int) and 1 <= self.batch_size <= 4096):
            raise ConfigError(f"batch_size must be an integer from 1 to 4096, got {self.batch_size!r}")
        if not (isinstance(self.cache_max_bytes, int) and self.cache_max_bytes > 0):
            raise ConfigError(f"cache_max_bytes must be a positive integer, got {self.cache_max_bytes!r}")


def cache_key(weights: str, spec: PreprocessSpec, engine: str) -> str:
    """The cache folder for rows computed by ``engine`` from these weights and preprocessing."""
    doc = {"format": _FORMAT, "weights": weights, "preprocess": spec.to_dict(), "engine": engine}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- engines

class _OrtBackbone:
    """The backbone exported once (TorchScript exporter, opset 17: seconds) into memory and
    run on ONNX Runtime with every core. The export traces ``example`` (real images): the
    trace is a PyTorch forward pass, so its output is kept as :attr:`reference`, the
    PyTorch embeddings to check the export against, without a second forward pass."""

    def __init__(self, module: Any, spec: PreprocessSpec, example: np.ndarray | None = None):
        import onnxruntime as ort
        import torch

        x = torch.zeros(2, 3, spec.input_size, spec.input_size) if example is None else torch.from_numpy(example)
        seen: list = []
        hook = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
        buf = io.BytesIO()  # no file: nothing to clean up, nothing left by a kill
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17,
                                  input_names=["pixels"], output_names=["features"],
                                  dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
        finally:
            hook.remove()
        self.reference = None
        if example is not None and len(seen) == 1 and isinstance(seen[0], torch.Tensor):
            self.reference = seen[0].detach().float().cpu().numpy().reshape(len(example), -1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.log_severity_level = 3
        # the decoding threads share the cores: ORT's workers sleep between ops instead of
        # spinning (measured on 2 loaded cores, 192 images at 224 px, interleaved: 38 vs 33 images/s)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(x, np.float32)})[0].reshape(len(x), -1)


def _torch_runner(module: Any, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x).to(device)).float().cpu().numpy().reshape(len(x), -1)

    return run


def _choose(module: Any, device: Any, spec: PreprocessSpec, engine: str,
            first: np.ndarray | None) -> tuple[str, str, Callable[[np.ndarray], np.ndarray]]:
    """(engine, why, runner). ``first`` is a batch to check an export against PyTorch on."""
    torch_run = _torch_runner(module, device)
    if engine == "torch":
        return "torch", "asked for", torch_run
    if engine == "auto" and getattr(device, "type", "cpu") != "cpu":
        return "torch", f"PyTorch on {device.type}", torch_run
    try:
        ort_run = _OrtBackbone(module, spec, first if first is not None and len(first) else None)
    except Exception as e:  # any exporter or runtime failure: PyTorch still works
        if engine == "onnxruntime":
            raise ConfigError(f"--embed-with onnxruntime: the backbone does not export ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); use --embed-with torch") from None
        return "torch", f"the backbone did not export to ONNX ({type(e).__name__})", torch_run
    if first is not None and len(first):
        ref = ort_run.reference if ort_run.reference is not None else torch_run(first)
        got = ort_run(first)
        scale = float(np.abs(ref).max()) or 1.0
        err = float(np.abs(ref - got).max()) / scale
        if not err <= _PARITY_ATOL:
            if engine == "onnxruntime":
                raise ConfigError(f"--embed-with onnxruntime: the exported backbone differs from PyTorch by {err:.2g} "
                                  f"(relative); use --embed-with torch")
            return "torch", f"the ONNX export differs from PyTorch by {err:.2g}", torch_run
    return "onnxruntime", ("asked for" if engine == "onnxruntime" else "frozen backbone on the CPU"), ort_run


# ---------------------------------------------------------------------------- the entry point

def _scratch_store(folder: Path | None, n: int, width: int) -> tuple[np.ndarray, str]:
    """An ``[n, width]`` float32 array: memory-mapped (an unnamed file in ``folder``), or in
    memory where there is no folder or it cannot hold one (said in the report)."""
    if folder is None:
        return np.zeros((n, width), np.float32), "memory"
    try:
        return RowStore(folder, n, width).array, "memory-mapped"
    except OSError as e:
        _ui.warn(f"embeddings kept in memory: no scratch file in {folder} ({e.strerror or e})")
        return np.zeros((n, width), np.float32), "memory"


def _probe_batch(paths: Sequence[Path], todo: Sequence[int], spec: PreprocessSpec, skip: bool) -> np.ndarray:
    """Two preprocessed images of ``todo`` (the first that load, repeated if only one does):
    what the export traces and is checked on. With ``skip`` an image that does not load is
    passed over (the batches report it); without, it raises."""
    rows = []
    for i in todo:
        try:
            rows.append(preprocess(paths[i], spec))
        except (DataError, OSError, ValueError):
            if not skip:
                raise
        if len(rows) == 2:
            break
    return np.stack((rows * 2)[:2]) if rows else np.zeros((0, 3, spec.input_size, spec.input_size), np.float32)


def embed_paths(backbone: Backbone | Any, paths: Sequence[Path], spec: PreprocessSpec, device: Any,
                options: EmbedOptions | None = None, description: str = "embedding", *,
                skip_unreadable: bool = False) -> tuple[np.ndarray, dict]:
    """Embeddings (float32, one row per path, in order) of images through a frozen backbone
    (a :class:`Backbone`, or its module) in eval mode, and a report: engine and why, rows
    computed and cached, seconds, images/s, the cache's location and size. A ``Backbone``
    not yet built is built only when some row is not in the cache.

    An image that does not decode (a file the scan passed: its header and checksums are
    sound, its compressed data is not) raises :class:`DataError`; with ``skip_unreadable``
    its row is zeros and the report's ``failed`` lists ``{"index", "file", "error"}``, as the
    folder scan skips and counts unreadable files. A cache shard whose rows fail their
    integrity check is removed, its rows computed again, and the report's
    ``cache.rejected`` says so (:mod:`edgetl.core.embed_cache`).

    The rows go, batch by batch, into a memory-mapped store (an unnamed file in
    ``options.scratch_dir``, the RUN being written (:func:`scratch_folder`) or beside the
    cache: nothing is ever left on disk) and, for the cache,
    straight into a new shard; the array returned is that store, its pages given back as
    it is written, so memory does not grow with the number of images."""
    opts = options or EmbedOptions()
    paths = [Path(p) for p in paths]
    t0 = time.perf_counter()
    workers = opts.workers or load_workers()
    on_gpu = getattr(device, "type", "cpu") != "cpu"
    engine = "torch" if opts.engine == "torch" or (opts.engine == "auto" and on_gpu) else "onnxruntime"
    why = "asked for" if opts.engine != "auto" else ("PyTorch on the GPU" if on_gpu else "frozen backbone on the CPU")
    root = Path(opts.cache_dir) if opts.cache_dir is not None else default_cache_dir()
    # the rows' store: the folder asked for, else the RUN being written, else beside the cache
    # (never created for --no-cache), else memory
    run_dir = _SCRATCH.get()
    scratch = (Path(opts.scratch_dir) if opts.scratch_dir is not None
               else run_dir if run_dir is not None and run_dir.is_dir() else root if opts.cache else None)
    cache, digests, weights = None, [], ""
    out: np.ndarray | None = None
    kept = "memory-mapped"
    found = np.zeros(len(paths), bool)

    def store(width: int) -> np.ndarray:
        nonlocal out, kept
        if out is None or out.shape[1] != width:
            out, kept = _scratch_store(scratch, len(paths), width)
        return out

    rejected: list[dict] = []
    rejected_trust: list[str] = []
    failed: dict[int, str] = {}

    def look_up(engine: str) -> None:
        nonlocal cache, found
        cache = EmbeddingCache(root, cache_key(weights, spec, engine), max_bytes=opts.cache_max_bytes)
        found = np.zeros(len(paths), bool)
        if cache.untrusted is not None:  # a cache others can write is not read, nor written
            if not rejected_trust:
                rejected_trust.append(cache.untrusted)
                _ui.warn(f"embedding cache not used: {cache.untrusted}; its rows could be anyone's "
                         "(see docs/security.md; pass a --cache-dir of your own)")
            cache = None
            return
        try:
            width = cache.width()
            if width is not None:
                _, found = cache.lookup(digests, out=store(width))
        except OSError:  # an unreadable cache costs speed, never the run
            cache, found = None, np.zeros(len(paths), bool)
        if cache is not None and cache.rejected:
            rejected.extend({"shard": str(path), "why": why} for path, why in cache.rejected)
            _ui.warn(f"embedding cache: removed {len(cache.rejected)} shard(s) whose rows failed their integrity "
                     f"check ({cache.rejected[0][0]}: {cache.rejected[0][1]}); their rows are computed again")
            cache.rejected.clear()

    if opts.cache and paths:
        weights = backbone.weights_id if isinstance(backbone, Backbone) else weights_digest(backbone)
        digests = [file_digest(p) for p in paths]
        look_up(engine)
    todo = [i for i in range(len(paths)) if not found[i]]
    if todo:
        # a Backbone is built now, on the device its rows are computed on (a module is the caller's)
        module = (backbone.module.to(device) if isinstance(backbone, Backbone) else backbone).eval()
        # two real images: the export traces them and ONNX Runtime must give the same rows
        probe = _probe_batch(paths, todo, spec, skip_unreadable)
        chosen, reason, run = _choose(module, device, spec, opts.engine, probe if len(probe) else None)
        if chosen != engine:  # the export failed or drifted: PyTorch's rows have another key
            engine, why = chosen, reason
            if opts.cache:
                look_up(engine)
                todo = [i for i in range(len(paths)) if not found[i]]
        writer = None
        with _ui.progress_bar(description, len(todo)) as advance:
            # the modalities' pipelined loader: worker threads, two batches ahead
            image = get_modality("image")
            name = image.inputs(spec)[0].name
            try:
                for idx, batch, errors in batches(image, [paths[i] for i in todo], spec, opts.batch_size,
                                                  strict=not skip_unreadable, workers=workers):
                    for k, reason in errors.items():
                        failed[todo[k]] = reason
                    if errors and writer is not None:  # the shard streams rows in order: written at the end instead
                        writer.close()
                        writer = None
                    if batch is not None:
                        rows = run(batch[name]).astype(np.float32, copy=False)
                        z = store(rows.shape[1])
                        z[[todo[i] for i in idx]] = rows
                        release(z)
                        if cache is not None and writer is None and idx[0] == 0 and not failed:
                            writer = _open_writer(cache, len(todo), rows.shape[1])
                        if writer is not None:
                            try:
                                writer.write(rows)
                            except OSError as e:
                                writer = _drop_writer(writer, e)
                    advance(len(idx) + len(errors))
                if writer is not None:
                    try:
                        writer.commit([digests[i] for i in todo])
                    except OSError as e:
                        writer = _drop_writer(writer, e)
                elif cache is not None and failed and out is not None:
                    ok = [i for i in todo if i not in failed]
                    try:
                        cache.add([digests[i] for i in ok], out[ok])
                    except OSError as e:
                        _ui.warn(f"embedding cache not written ({e.strerror or e}); continuing without it")
            finally:
                if writer is not None:
                    writer.close()
    if out is None:
        out = np.zeros((len(paths), 0), np.float32)
    seconds = time.perf_counter() - t0
    report = {
        "engine": engine, "why": why, "images": len(paths), "computed": len(todo) - len(failed),
        "cached": len(paths) - len(todo),
        "seconds": round(seconds, 3), "images_per_s": round(len(paths) / seconds, 1) if seconds > 0 else None,
        "workers": workers, "rows": kept,
        "cache": ({"path": str(cache.root), "bytes": cache_size(cache.root), "rejected": rejected}
                  if cache is not None else None),
    }
    if skip_unreadable:
        report["failed"] = [{"index": i, "file": str(paths[i]), "error": failed[i]} for i in sorted(failed)]
    return out, report


def _open_writer(cache: EmbeddingCache, n: int, width: int):
    try:
        return cache.writer(n, width)
    except OSError as e:  # a full or read-only disk costs speed, never the run
        _ui.warn(f"embedding cache not written ({e.strerror or e}); continuing without it")
        return None


def _drop_writer(writer, e: OSError) -> None:
    _ui.warn(f"embedding cache not written ({e.strerror or e}); continuing without it")
    writer.close()
    return None
