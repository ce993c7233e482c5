"""int8 quantization of an exported RUN's backbone, with an accuracy guard.

``quantize(run_dir)`` makes ``RUN/onnx/backbone.int8.onnx`` (ONNX Runtime static QDQ,
per-channel weights) plus ``RUN/onnx/model.int8.onnx`` (= the fp32 head applied to it),
and ``RUN/openvino/backbone.int8.xml/.bin`` (NNCF). Calibration uses real images through
exactly the training preprocessing. Every int8 model is scored on the RUN's held-out
split against its fp32 counterpart (accuracy drop and top-1 agreement); while the budget
does not hold, the nodes that add the most error are kept in fp32, step by step. If it
still cannot hold, nothing int8 is written and :class:`QuantizationError` is raised. The
report goes into ``run.json["quantize"]``; every accuracy names the precision executed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from . import _ui
from .errors import ConfigError, QuantizationError, RunDirError
from .run import deployed_accuracy  # noqa: F401 - part of this stage's API; the bundle reads it torch-free

__all__ = ["Engine", "Method", "Calibration", "ActivationType", "QuantizeConfig", "quantize", "deployed_accuracy"]


class Engine(str, Enum):
    ORT = "ort"  # ONNX Runtime static QDQ -> onnx/backbone.int8.onnx
    NNCF = "nncf"  # NNCF for OpenVINO -> openvino/backbone.int8.xml
    BOTH = "both"


class Method(str, Enum):
    STATIC = "static"  # calibrated activations and weights in int8
    DYNAMIC = "dynamic"  # weights only, activations quantized at run time (ORT only; little help for convs)


class Calibration(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class ActivationType(str, Enum):
    UINT8 = "uint8"  # asymmetric u8 x s8 weights: VNNI's native form (measured 2.5x faster than fp32)
    INT8 = "int8"  # symmetric s8 x s8: slower than fp32 on this x86 CPU (measured 6.2 vs 1.7 ms)


@dataclass(frozen=True)
class QuantizeConfig:
    """Options of :func:`quantize`. ``max_drop`` is a fraction (0.01 = 1 point)."""

    engine: Engine = Engine.BOTH
    method: Method = Method.STATIC
    calibration: Calibration = Calibration.MINMAX  # ONNX Runtime's calibrator; NNCF uses its own min-max
    calib: str | None = None  # image folder; default: a stratified sample of the training split
    calib_size: int = 128
    max_drop: float = 0.01
    min_agreement: float = 0.97  # top-1 agreement with fp32 on the held-out split: at most 3 in 100 changed
    per_channel: bool = True
    activations: ActivationType = ActivationType.UINT8
    max_steps: int = 6  # fallback steps: 1, 2, 4, ... nodes in fp32
    max_fp32_nodes: int = 32
    ranking_images: int = 32  # calibration images used to rank nodes by the error they add
    seed: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("engine", Engine), ("method", Method), ("calibration", Calibration),
                           ("activations", ActivationType)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(k.value for k in kind)
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}") from None
        if self.method is Method.DYNAMIC and self.engine is not Engine.ORT:
            raise ConfigError("dynamic quantization exists for ONNX Runtime only; use --engine ort with --method dynamic")
        if not 0.0 <= self.max_drop < 1.0:
            raise ConfigError(f"max_drop must be a fraction in [0, 1) (0.01 = 1 point), got {self.max_drop}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        for name in ("calib_size", "max_fp32_nodes", "ranking_images"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0 (0: no fallback), got {self.max_steps}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}


# --- data ------------------------------------------------------------------------------------

def _stratified(paths: list[Path], targets: list[int], n: int, seed: int) -> list[Path]:
    """Up to ``n`` paths, round-robin over classes in a seeded order."""
    rng = np.random.default_rng(seed)
    t = np.asarray(targets)
    pools = [list(rng.permutation(np.flatnonzero(t == c))) for c in np.unique(t)]
    picked: list[int] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return [paths[i] for i in picked]


def _calibration_paths(run, cfg: QuantizeConfig) -> tuple[list[Path], str]:
    from .data import scan_folder

    if cfg.calib is not None:
        folder = scan_folder(cfg.calib, min_classes=1)
        return _stratified(folder.paths, folder.targets.tolist(), cfg.calib_size, cfg.seed), str(cfg.calib)
    try:
        paths, targets = run.split_paths("train")
    except RunDirError as exc:
        raise QuantizationError(f"{exc}; or pass calibration images with --calib DATA") from None
    return _stratified(paths, targets, cfg.calib_size, cfg.seed), "train split"


def _load(paths: list[Path], spec, what: str) -> np.ndarray:
    from .preprocess import preprocess

    out = np.empty((len(paths), 3, spec.input_size, spec.input_size), np.float32)
    for i, p in enumerate(_ui.progress(paths, f"loading {what} images")):
        out[i] = preprocess(p, spec)
    return out


# --- the verb ----------------------------------------------------------------------------------

def _check_exported(root: Path, cfg: QuantizeConfig) -> None:
    need = [root / "onnx" / "backbone.onnx", root / "onnx" / "head.onnx"]
    if cfg.engine is not Engine.ORT:
        need += [root / "openvino" / "backbone.xml", root / "openvino" / "backbone.bin"]
    missing = [p for p in need if not p.is_file()]
    if missing:
        raise RunDirError(f"{missing[0]}: missing; run 'edgetl export {root}' first")


def quantize(run_dir: str | os.PathLike, config: QuantizeConfig | None = None) -> dict[str, Any]:
    """Quantize an exported RUN's backbone to int8 (ONNX Runtime and/or OpenVINO) within an
    accuracy budget; write the files and ``run.json["quantize"]``; return that report.
    Raises :class:`QuantizationError` (report still written, no int8 file) if the budget
    cannot be met."""
    from . import _quant_ort as qort
    from ._quant_engines import Context, commit, nncf_engine, ort_engine
    from .preprocess import PreprocessSpec
    from .run import Run, package_versions, read_run_json, update_run_json

    cfg = config or QuantizeConfig()
    root = Path(run_dir)
    info = read_run_json(root)
    _check_exported(root, cfg)
    run = Run(root, info, None)  # split paths only: no torch model needed
    spec = PreprocessSpec.from_dict(info["preprocess"])
    try:
        val_paths, y_val = run.split_paths("val")
    except RunDirError as exc:
        raise QuantizationError(f"{exc}; the accuracy guard needs held-out images (train with --val-split > 0)") from None
    calib_paths, calib_source = _calibration_paths(run, cfg)
    qort.quiet_logs()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    xc = _load(calib_paths, spec, "calibration")
    xv = _load(val_paths, spec, "validation")
    seconds["load_images"] = time.perf_counter() - t0

    engines = {"onnxruntime": ort_engine, "openvino": nncf_engine}
    if cfg.engine is not Engine.BOTH:
        engines = {"onnxruntime": ort_engine} if cfg.engine is Engine.ORT else {"openvino": nncf_engine}
    # Everything is written under RUN/.quantize-*/ and moved into place only once it passed.
    work = Path(tempfile.mkdtemp(dir=root, prefix=".quantize-"))
    try:
        ctx = Context(cfg, root, work, xc, xv, np.asarray(y_val), root / "onnx" / "head.onnx", seconds, {})
        results = {runtime: engine(ctx) for runtime, engine in engines.items()}
        files = commit(root, {runtime: r.files for runtime, r in results.items()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    guards = {runtime: r.guard for runtime, r in results.items()}
    failed = [name for name, g in guards.items() if not g["passed"]]
    report = {
        "config": cfg.to_dict(),
        "report": [row for r in results.values() for row in r.rows],
        "guard": guards,
        "passed": not failed,
        "files": files,
        "calibration": {"source": calib_source, "images": len(xc)},
        "evaluation": {"split": "val", "images": len(xv)},
        **{k: v for r in results.values() for k, v in r.extra.items()},
        "seconds": seconds,
        "versions": package_versions("onnx", "onnxruntime-training-cpu", "openvino", "nncf"),
    }
    update_run_json(root, "quantize", report)
    if failed:
        detail = "; ".join(_failure_line(name, guards[name], cfg) for name in failed)
        error = QuantizationError(f"int8 cannot meet the accuracy budget: {detail}; no int8 file written for it "
                                  f"(allow more with --max-drop, or keep more nodes in fp32 with --max-fp32-nodes)")
        error.report = report  # type: ignore[attr-defined]  # the CLI prints it
        raise error
    return report


def _failure_line(runtime: str, guard: dict[str, Any], cfg: QuantizeConfig) -> str:
    best = max(guard["steps"], key=lambda s: (s["agreement"], -s["drop"]))
    return (f"{runtime} best drop {best['drop'] * 100:.1f} points (budget {cfg.max_drop * 100:.1f}), agreement "
            f"{best['agreement']:.3f} (needs {cfg.min_agreement:.3f}) with {len(best['fp32_nodes'])} node(s) in fp32 "
            f"after {len(guard['steps']) - 1} fallback step(s)")
