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
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core import ui as _ui
from dataclasses import dataclass, field

from edgetl.core.report import Report
from edgetl.errors import QuantizationError, RunDirError
from edgetl.workstation.quantization.config import ActivationType, Calibration, Engine, Method, QuantizeConfig
from edgetl.core.run import deployed_accuracy  # noqa: F401 - part of this stage's API; the bundle reads it torch-free

__all__ = ["Engine", "Method", "Calibration", "ActivationType", "QuantizeConfig", "QuantizeReport", "quantize",
           "deployed_accuracy", "stratum"]


# --- data ------------------------------------------------------------------------------------

def stratum(target: Any) -> int:
    """The class an item is stratified by: its label, or (an image's boxes) its first box's class."""
    if isinstance(target, (int, np.integer)):
        return int(target)
    classes = np.asarray(getattr(target, "classes", ()))
    return int(classes[0]) if classes.size else -1


def _stratified(paths: list[Path], targets: list[Any], n: int, seed: int) -> list[Path]:
    """Up to ``n`` paths, round-robin over classes in a seeded order."""
    rng = np.random.default_rng(seed)
    t = np.asarray([stratum(x) for x in targets])
    pools = [list(rng.permutation(np.flatnonzero(t == c))) for c in np.unique(t)]
    picked: list[int] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return [paths[i] for i in picked]


def _calibration_paths(run, cfg: QuantizeConfig) -> tuple[list[Path], str]:
    from edgetl.modalities import get_modality
    from edgetl.tasks import get_task

    task = get_task(run.task)
    if cfg.calib is not None and not task.pooled:
        # detection, NER: calibration images or texts in the task's own annotated format
        found = task.read(cfg.calib, get_modality(run.modality))
        sources = [task.item_source(it) for it in found.items]
        if not sources:
            raise QuantizationError(f"{cfg.calib}: no items to calibrate on")
        return _stratified(sources, [0] * len(sources), cfg.calib_size, cfg.seed), str(cfg.calib)
    if cfg.calib is not None:
        folder = get_modality(run.modality).scan(cfg.calib, min_classes=1)
        return _stratified(list(folder.items), folder.targets.tolist(), cfg.calib_size, cfg.seed), str(cfg.calib)
    try:
        paths, targets = run.split_items("train")
    except RunDirError as exc:
        raise QuantizationError(f"{exc}; or pass calibration images with --calib DATA") from None
    return _stratified(paths, targets, cfg.calib_size, cfg.seed), "train split"


def _model_inputs(x: dict[str, np.ndarray], modality, spec) -> dict[str, np.ndarray]:
    """The model's own inputs of a loaded batch (a letterboxed image's original size is not one)."""
    names = {i.name for i in modality.inputs(spec)}
    return {k: v for k, v in x.items() if k in names}


def _load(items: list, modality, spec, what: str) -> dict[str, np.ndarray]:
    from edgetl.modalities import load_all

    return load_all(modality, items, spec, progress=f"loading {what} {modality.item_noun}s")


# --- the verb ----------------------------------------------------------------------------------

def _check_exported(root: Path, cfg: QuantizeConfig) -> None:
    need = [root / "onnx" / "backbone.onnx", root / "onnx" / "head.onnx"]
    if cfg.engine not in (Engine.ORT, Engine.ORT_DYNAMIC):
        need += [root / "openvino" / "backbone.xml", root / "openvino" / "backbone.bin"]
    missing = [p for p in need if not p.is_file()]
    if missing:
        raise RunDirError(f"{missing[0]}: missing; run 'edgetl export {root}' first")


@dataclass(frozen=True)
class QuantizeReport(Report):
    """``run.json["quantize"]``: one row per runtime and precision (accuracy, drop, agreement,
    size, precision executed), the guard's steps per runtime, the files written."""

    config: dict[str, Any]
    report: list[dict[str, Any]]
    guard: dict[str, Any]
    passed: bool
    files: dict[str, Any]
    calibration: dict[str, Any]
    int8: dict[str, Any]  # {"isa", "weight_bits", "built_on", "judged_on"}: the CPUs the int8 files are for
    evaluation: dict[str, Any]
    seconds: dict[str, float]
    versions: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific sections (e.g. the fused int8 check)


def quantize(run_dir: str | os.PathLike, config: QuantizeConfig | None = None) -> QuantizeReport:
    """Quantize an exported RUN's backbone to int8 (ONNX Runtime and/or OpenVINO) within an
    accuracy budget; write the files and ``run.json["quantize"]``; return that report.
    Raises :class:`QuantizationError` (report still written, no int8 file) if the budget
    cannot be met."""
    from edgetl.workstation.quantization import ort_qdq as qort
    from edgetl.workstation.quantization import ort_dynamic  # noqa: F401 - registers the engine
    from edgetl.workstation.quantization.engines import ENGINES, Context, commit, engines_for
    from edgetl.modalities import count, get_modality
    from edgetl.core.isa import this_cpu
    from edgetl.core.run import package_versions, read_run_json, update_run_json
    from edgetl.workstation.quantization.guard import Int8Judge
    from edgetl.workstation.run import Run

    cfg = config or QuantizeConfig()
    root = Path(run_dir)
    info = read_run_json(root)
    _check_exported(root, cfg)
    run = Run(root, info, None)  # split paths only: no torch model needed
    from edgetl.tasks import get_task

    cfg = cfg.for_task(get_task(run.task))  # the budget in the task's metric
    modality = get_modality(run.modality)
    spec = run.spec
    try:
        val_paths, y_val = run.split_items("val")
    except RunDirError as exc:
        raise QuantizationError(f"{exc}; the accuracy guard needs held-out images (train with --val-split > 0)") from None
    calib_paths, calib_source = _calibration_paths(run, cfg)
    qort.quiet_logs()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    xc = _model_inputs(_load(calib_paths, modality, spec, "calibration"), modality, spec)
    xv_all = _load(val_paths, modality, spec, "validation")
    xv = _model_inputs(xv_all, modality, spec)
    seconds["load_images"] = time.perf_counter() - t0

    names = engines_for(cfg.engine.value, modality.name)
    engines = {name: ENGINES.get(name) for name in sorted(names, key=lambda n: not n.startswith("ort"))}  # ORT first
    # Everything is written under RUN/.quantize-*/ and moved into place only once it passed.
    work = Path(tempfile.mkdtemp(dir=root, prefix=".quantize-"))
    try:
        judge = Int8Judge(cfg.isa, this_cpu())
        targets = np.asarray(y_val) if run.task == "classification" else list(y_val)
        # what travels with the inputs but is not one (a letterboxed image's size) is the scorer's
        extras = {k: v for k, v in xv_all.items() if k not in xv}
        ctx = Context(cfg, root, work, xc, xv, targets, root / "onnx" / "head.onnx", seconds,
                      {"modality": modality.name, "inputs_extra": extras}, judge, run.task)
        results = {name: engine.run(ctx) for name, engine in engines.items()}
        files = commit(root, {name: r.files for name, r in results.items()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    # run.json keys the guard by runtime (the contract scripts read); results are by engine
    guards = {engines[name].runtime: r.guard for name, r in results.items()}
    failed = [name for name, g in guards.items() if not g["passed"]]
    report = {
        "config": cfg.to_dict(),
        "report": [row for r in results.values() for row in r.rows],
        "guard": guards,
        "passed": not failed,
        "files": files,
        "calibration": {"source": calib_source, "images": count(xc)},
        # the CPUs the int8 files are for, and the one they were judged on
        "int8": {**ctx.int8_facts(), "built_on": this_cpu().to_dict(),
                 "judged_on": "this CPU" if judge.here_computes_as_target else "reference"},
        "evaluation": {"split": "val", "images": count(xv)},
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
    known = {f for f in QuantizeReport.__dataclass_fields__ if f != "extra"}
    return QuantizeReport(**{k: v for k, v in report.items() if k in known},
                          extra={k: v for k, v in report.items() if k not in known})


def _failure_line(runtime: str, guard: dict[str, Any], cfg: QuantizeConfig) -> str:
    best = max(guard["steps"], key=lambda s: (s["agreement"], -s["drop"]))
    return (f"{runtime} best drop {best['drop'] * 100:.1f} points (budget {cfg.max_drop * 100:.1f}), agreement "
            f"{best['agreement']:.3f} (needs {cfg.min_agreement:.3f}) with {len(best['fp32_nodes'])} node(s) in fp32 "
            f"after {len(guard['steps']) - 1} fallback step(s)")
