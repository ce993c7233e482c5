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
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgetl.core import ui as _ui
from edgetl.core.embed_cache import DEFAULT_MAX_BYTES, EmbeddingCache, cache_size, default_cache_dir, file_digest
from edgetl.errors import ConfigError
from edgetl.modalities import batches, get_modality, load_workers
from edgetl.modalities.image import PreprocessSpec, preprocess

__all__ = ["EMBED_ENGINES", "EmbedOptions", "embed_paths", "cache_key", "weights_digest"]

EMBED_ENGINES = ("auto", "onnxruntime", "torch")
_PARITY_ATOL = 1e-3  # relative to the embeddings' scale: an export this far off is not used
_FORMAT = 1  # bump when what a cached row means changes


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

    def __post_init__(self) -> None:
        if self.engine not in EMBED_ENGINES:
            raise ConfigError(f"embed engine must be one of {', '.join(EMBED_ENGINES)}, got {self.engine!r}")
        if self.workers is not None and not (isinstance(self.workers, int) and 1 <= self.workers <= 64):
            raise ConfigError(f"workers must be an integer from 1 to 64, got {self.workers!r}")
        if not (isinstance(self.batch_size, int) and 1 <= self.batch_size <= 4096):
            raise ConfigError(f"batch_size must be an integer from 1 to 4096, got {self.batch_size!r}")
        if not (isinstance(self.cache_max_bytes, int) and self.cache_max_bytes > 0):
            raise ConfigError(f"cache_max_bytes must be a positive integer, got {self.cache_max_bytes!r}")


def weights_digest(module: Any) -> str:
    """SHA-256 over a module's state (names, dtypes, shapes and bytes, in order)."""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(weights: str, spec: PreprocessSpec, engine: str) -> str:
    """The cache folder for rows computed by ``engine`` from these weights and preprocessing."""
    doc = {"format": _FORMAT, "weights": weights, "preprocess": spec.to_dict(), "engine": engine}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- engines

class _OrtBackbone:
    """The backbone exported once (TorchScript exporter, opset 17: seconds) and run on ONNX
    Runtime with every core."""

    def __init__(self, module: Any, spec: PreprocessSpec, workdir: Path):
        import onnxruntime as ort
        import torch

        path = workdir / "backbone.onnx"
        example = torch.zeros(2, 3, spec.input_size, spec.input_size)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["pixels"], output_names=["features"],
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(x, np.float32)})[0].reshape(len(x), -1)


def _torch_runner(module: Any, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x).to(device)).float().cpu().numpy().reshape(len(x), -1)

    return run


def _choose(module: Any, device: Any, spec: PreprocessSpec, engine: str, first: np.ndarray | None,
            workdir: Path) -> tuple[str, str, Callable[[np.ndarray], np.ndarray]]:
    """(engine, why, runner). ``first`` is a batch to check an export against PyTorch on."""
    torch_run = _torch_runner(module, device)
    if engine == "torch":
        return "torch", "asked for", torch_run
    if engine == "auto" and getattr(device, "type", "cpu") != "cpu":
        return "torch", f"PyTorch on {device.type}", torch_run
    try:
        ort_run = _OrtBackbone(module, spec, workdir)
    except Exception as e:  # any exporter or runtime failure: PyTorch still works
        if engine == "onnxruntime":
            raise ConfigError(f"--embed-with onnxruntime: the backbone does not export ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); use --embed-with torch") from None
        return "torch", f"the backbone did not export to ONNX ({type(e).__name__})", torch_run
    if first is not None and len(first):
        probe = first[: min(4, len(first))]
        ref, got = torch_run(probe), ort_run(probe)
        scale = float(np.abs(ref).max()) or 1.0
        err = float(np.abs(ref - got).max()) / scale
        if not err <= _PARITY_ATOL:
            if engine == "onnxruntime":
                raise ConfigError(f"--embed-with onnxruntime: the exported backbone differs from PyTorch by {err:.2g} "
                                  f"(relative); use --embed-with torch")
            return "torch", f"the ONNX export differs from PyTorch by {err:.2g}", torch_run
    return "onnxruntime", ("asked for" if engine == "onnxruntime" else "frozen backbone on the CPU"), ort_run


# ---------------------------------------------------------------------------- the entry point

def embed_paths(module: Any, paths: Sequence[Path], spec: PreprocessSpec, device: Any,
                options: EmbedOptions | None = None, description: str = "embedding") -> tuple[np.ndarray, dict]:
    """Embeddings (float32, one row per path, in order) of images through a frozen
    ``module`` in eval mode, and a report: engine and why, rows computed and cached,
    seconds, images/s, the cache's location and size."""
    opts = options or EmbedOptions()
    module.eval()
    paths = [Path(p) for p in paths]
    t0 = time.perf_counter()
    workers = opts.workers or load_workers()
    on_gpu = getattr(device, "type", "cpu") != "cpu"
    engine = "torch" if opts.engine == "torch" or (opts.engine == "auto" and on_gpu) else "onnxruntime"
    why = "asked for" if opts.engine != "auto" else ("PyTorch on the GPU" if on_gpu else "frozen backbone on the CPU")
    cache, digests, weights = None, [], ""
    out = np.zeros((len(paths), 0), np.float32)
    found = np.zeros(len(paths), bool)

    def look_up(engine: str) -> None:
        nonlocal cache, out, found
        root = Path(opts.cache_dir) if opts.cache_dir is not None else default_cache_dir()
        cache = EmbeddingCache(root, cache_key(weights, spec, engine), max_bytes=opts.cache_max_bytes)
        try:
            out, found = cache.lookup(digests)
        except OSError:  # an unreadable cache costs speed, never the run
            cache, found = None, np.zeros(len(paths), bool)

    if opts.cache and paths:
        weights = weights_digest(module)
        digests = [file_digest(p) for p in paths]
        look_up(engine)
    todo = [i for i in range(len(paths)) if not found[i]]
    computed = None
    if todo:
        with tempfile.TemporaryDirectory(prefix="edgetl-embed-") as tmp:
            probe = np.stack([preprocess(paths[i], spec) for i in todo[:4]])
            chosen, reason, run = _choose(module, device, spec, opts.engine, probe, Path(tmp))
            if chosen != engine:  # the export failed or drifted: PyTorch's rows have another key
                engine, why = chosen, reason
                if opts.cache:
                    look_up(engine)
                    todo = [i for i in range(len(paths)) if not found[i]]
            rows: list[np.ndarray] = []
            with _ui.progress_bar(description, len(todo)) as advance:
                # the modalities' pipelined loader: worker threads, two batches ahead
                image = get_modality("image")
                name = image.inputs(spec)[0].name
                for _, batch, _ in batches(image, [paths[i] for i in todo], spec, opts.batch_size, strict=True,
                                           workers=workers):
                    rows.append(run(batch[name]).astype(np.float32, copy=False))
                    advance(len(batch[name]))
            computed = np.concatenate(rows) if rows else None
    if computed is not None:
        if out.shape[1] != computed.shape[1]:
            out = np.zeros((len(paths), computed.shape[1]), np.float32)
        out[todo] = computed
        if cache is not None:
            try:
                cache.add([digests[i] for i in todo], computed)
            except OSError as e:  # a full or read-only disk costs speed, never the run
                _ui.warn(f"embedding cache not written ({e.strerror or e}); continuing without it")
    seconds = time.perf_counter() - t0
    report = {
        "engine": engine, "why": why, "images": len(paths), "computed": len(todo), "cached": len(paths) - len(todo),
        "seconds": round(seconds, 3), "images_per_s": round(len(paths) / seconds, 1) if seconds > 0 else None,
        "workers": workers,
        "cache": ({"path": str(cache.root), "bytes": cache_size(cache.root)} if cache is not None else None),
    }
    return np.ascontiguousarray(out), report
