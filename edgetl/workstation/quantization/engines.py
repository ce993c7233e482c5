"""The two engines behind :func:`edgetl.workstation.quantization.quantize`: each builds int8 models with
a growing list of nodes kept in fp32, scores them on the held-out images against its own
fp32 reference, and returns report rows, the guard's record and the files to commit."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.modalities import count, take

from edgetl.core import ui as _ui
from edgetl.core.formats import META_INT8
from edgetl.core.registry import Registry
from edgetl.errors import ConfigError, QuantizationError
from edgetl.workstation.quantization.config import ActivationType, Method, QuantizeConfig
from edgetl.workstation.quantization.guard import Int8Judge


@contextlib.contextmanager
def _silenced():
    # ORT's calibrators print to stdout and NNCF draws its own bars there; stdout belongs
    # to --json. Our own progress bar covers calibration.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _mb(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def scorer(ctx: "Context", z_fp32: np.ndarray) -> Any:
    """The guard's score of backbone outputs against the fp32 backbone's ``z_fp32`` on the
    held-out items: called on outputs -> ``{"accuracy", "drop", "agreement"}``, with
    ``fp32_accuracy``. The task decides what they are (classification: top-1 accuracy and label
    agreement; detection: mAP@.5 and matched boxes)."""
    from edgetl.workstation.task_hooks import hooks

    task_hooks = hooks(ctx.task)
    if task_hooks is not None:
        return task_hooks.guard_scorer(ctx, z_fp32)
    return _LabelScorer(ctx.head, ctx.y_val, z_fp32)


class _LabelScorer:
    """Classification's: top-1 labels of the head on the outputs (guard.Scorer)."""

    def __init__(self, head: Path, y_true: np.ndarray, z_fp32: np.ndarray):
        from edgetl.workstation.quantization.guard import Scorer

        self.head = head
        self._score = Scorer(np.asarray(y_true), _head_predict(head, z_fp32))
        self.fp32_accuracy = self._score.fp32_accuracy

    def __call__(self, z: np.ndarray) -> dict[str, float]:
        return self._score(_head_predict(self.head, z))


def _head_predict(head: Path, z: np.ndarray) -> np.ndarray:
    from edgetl.workstation.quantization import ort_qdq as qort

    return qort.run_batched(head, z).argmax(1)


@dataclass(frozen=True)
class EngineResult:
    rows: list[dict[str, Any]]  # report rows: the fp32 reference(s), then int8 if it passed
    guard: dict[str, Any]
    files: dict[str, Path] | None  # final relative path -> temporary file; None if the budget failed
    extra: dict[str, Any]


@dataclass(frozen=True)
class Context:
    cfg: QuantizeConfig
    root: Path
    work: Path
    xc: dict[str, np.ndarray]  # calibration inputs
    xv: dict[str, np.ndarray]  # held-out inputs
    y_val: np.ndarray
    head: Path
    seconds: dict[str, float]
    cache: dict[str, Any]  # the ORT preparation, shared by both engines
    judge: Int8Judge  # the target CPUs' int8 (weights range) and which score decides
    task: str = "classification"  # what the held-out targets are and how outputs are scored (scorer)

    def int8_facts(self) -> dict[str, str]:
        """What the int8 files record of the CPUs they were built for (META_INT8, run.json)."""
        return {"isa": self.judge.isa.value, "weight_bits": 7 if self.judge.reduce_range else 8}


def _ort_prepared(ctx: Context) -> tuple[Path, Any, int]:
    """Pre-processed fp32 model (dead channels zeroed), calibration ranges and the count of
    zeroed channels; computed once, as the NNCF guard ranks nodes with them too."""
    from edgetl.workstation.quantization import ort_qdq as qort

    if "fixed" in ctx.cache:
        return ctx.cache["fixed"], ctx.cache["ranges"], ctx.cache["zeroed"]
    t0 = time.perf_counter()
    pre, fixed = ctx.work / "pre.onnx", ctx.work / "fixed.onnx"
    qort.pre_process(ctx.root / "onnx" / "backbone.onnx", pre)
    ranges, zeroed = None, 0
    if ctx.cfg.method is Method.DYNAMIC:
        shutil.copy(pre, fixed)
    else:
        desc = f"calibrating (onnxruntime, {ctx.cfg.calibration.value})"
        with _ui.progress_bar(desc, count(ctx.xc)) as advance, _silenced():
            ranges = qort.calibrate(pre, ctx.xc, ctx.cfg.calibration.value,
                                    ctx.cfg.activations is ActivationType.INT8, ctx.work, advance)
        zeroed = qort.zero_overflowing_channels(pre, fixed, ranges, reduce_range=ctx.judge.reduce_range)
        if ctx.cfg.bias_correction:  # applied per build (not to nodes kept in fp32); ``fixed`` stays fp32
            ctx.cache["biases"] = qort.bias_corrections(fixed, ctx.xc, reduce_range=ctx.judge.reduce_range)
    ctx.seconds["onnxruntime_calibration"] = time.perf_counter() - t0
    ctx.cache.update(fixed=fixed, ranges=ranges, zeroed=zeroed)
    return fixed, ranges, zeroed


def _ort_build(ctx: Context, nodes: list[str], step: int) -> Path:
    from edgetl.workstation.quantization import ort_qdq as qort

    fixed, ranges, _ = _ort_prepared(ctx)
    if ctx.cache.get("biases"):
        corrected = ctx.work / f"corrected-{step}.onnx"
        qort.apply_biases(fixed, corrected, ctx.cache["biases"], nodes)
        fixed = corrected
    out = ctx.work / f"ort-{step}.onnx"
    with _silenced():
        if ctx.cfg.method is Method.DYNAMIC:
            # uint8 weights (ConvInteger): u8 x u8 kernels widen to 16 bits before adding and
            # cannot saturate, so 7-bit weights would only cost precision
            qort.quantize_dynamic(fixed, out, nodes, per_channel=ctx.cfg.per_channel)
        else:
            qort.quantize_static(fixed, out, ranges, nodes, per_channel=ctx.cfg.per_channel,
                                 activation_type=ctx.cfg.activations.value, reduce_range=ctx.judge.reduce_range)
    return out


def _ort_ranking(ctx: Context) -> list[str]:
    """Nodes of the ONNX graph by the error they add in the ORT int8 model, largest first."""
    from edgetl.workstation.quantization import ort_qdq as qort

    if "ranking" not in ctx.cache:
        fixed, _, _ = _ort_prepared(ctx)
        first = ctx.work / "ort-0.onnx"
        if not first.is_file():
            _ort_build(ctx, [], 0)
        # ranked as the target computes it: this CPU's kernels where they compute the same
        x = take(ctx.xc, slice(ctx.cfg.ranking_images))
        errors = qort.layer_errors(fixed, first, x, reference=not ctx.judge.here_computes_as_target)
        ctx.cache["ranking"] = [name for name, _ in errors]
    return ctx.cache["ranking"]


def _row(runtime: str, precision: str, executed: str, metrics: dict[str, Any], fp32_accuracy: float,
         file: str, size_mb: float, fp32_mb: float, **extra: Any) -> dict[str, Any]:
    judged = {k: metrics[k] for k in ("judged_on", "reference", "this_cpu", "note") if k in metrics}
    return {"runtime": runtime, "precision": precision, "precision_executed": executed,
            "accuracy": metrics["accuracy"], "fp32_accuracy": fp32_accuracy, "drop": metrics["drop"],
            "agreement": metrics["agreement"], "size_mb": size_mb, "size_ratio": size_mb / fp32_mb, "file": file,
            **judged, **extra}


def ort_measure(ctx: Context, score: Any) -> Callable[[Path], dict[str, Any]]:
    """The guard's measure for an ONNX Runtime int8 model: scored as the reference computes it
    and as this CPU's kernels do; the judge says which decides (see :class:`Int8Judge`)."""
    from edgetl.workstation.quantization import ort_qdq as qort

    def measure(path: Path) -> dict[str, Any]:
        here = score(qort.run_batched(path, ctx.xv))
        reference = score(qort.run_batched(path, ctx.xv, reference=True))
        return ctx.judge(reference, here)

    return measure


def ort_engine(ctx: Context) -> EngineResult:
    from edgetl.workstation.quantization import ort_qdq as qort
    from edgetl.workstation.quantization.guard import Budget, run_guard

    cfg, onnx_dir = ctx.cfg, ctx.root / "onnx"
    fp32_path = onnx_dir / "backbone.onnx"
    score = scorer(ctx, qort.run_batched(fp32_path, ctx.xv))
    t0 = time.perf_counter()
    best, guard = run_guard(
        lambda nodes, step: _ort_build(ctx, nodes, step),
        ort_measure(ctx, score),
        lambda path: _ort_ranking(ctx),
        Budget(cfg.max_drop, cfg.min_agreement), max_steps=cfg.max_steps, max_nodes=cfg.max_fp32_nodes,
    )
    ctx.seconds["onnxruntime_quantize"] = time.perf_counter() - t0 - ctx.seconds.get("onnxruntime_calibration", 0.0)
    fp32_mb = _mb(fp32_path)
    base = {"accuracy": score.fp32_accuracy, "drop": 0.0, "agreement": 1.0}
    rows = [_row("onnxruntime", "fp32", "fp32", base, score.fp32_accuracy, "onnx/backbone.onnx", fp32_mb, fp32_mb,
                 latency_ms=qort.latency_ms(fp32_path, ctx.xv))]
    extra: dict[str, Any] = {"dead_channels_zeroed": ctx.cache.get("zeroed", 0),
                             "biases_corrected": len(ctx.cache.get("biases") or {})}
    if best is None:
        return EngineResult(rows, guard, None, extra)
    meta, ir_version = _onnx_meta(fp32_path)
    qort.finish(best, meta + [(META_INT8, json.dumps(ctx.int8_facts()))], ir_version)
    files = {"onnx/backbone.int8.onnx": best}
    if _pooled(ctx):  # head(backbone) as one file where the backbone's output is the head's input
        fused = ctx.work / "model.int8.onnx"
        qort.fuse_head(best, ctx.head, fused)
        extra["fused_check"] = _check_fused(fused, best, ctx)
        files["onnx/model.int8.onnx"] = fused
    last = guard["steps"][-1]
    precision_executed = "int8" if cfg.method is Method.STATIC else "int8-dynamic"
    rows.append(_row("onnxruntime", "int8", precision_executed, last, score.fp32_accuracy,
                     "onnx/backbone.int8.onnx", _mb(best), fp32_mb, fp32_nodes=last["fp32_nodes"],
                     method=cfg.method.value, calibration=cfg.calibration.value if cfg.method is Method.STATIC else None,
                     **ctx.int8_facts(), latency_ms=qort.latency_ms(best, ctx.xv)))
    return EngineResult(rows, guard, files, extra)


def _pooled(ctx: Context) -> bool:
    from edgetl.tasks import get_task

    return get_task(ctx.task).pooled


def _onnx_meta(path: Path) -> tuple[list[tuple[str, str]], int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [(p.key, p.value) for p in model.metadata_props], model.ir_version


def _check_fused(fused: Path, backbone: Path, ctx: Context) -> dict[str, Any]:
    """model.int8.onnx must be head(backbone.int8.onnx): same logits on the held-out images."""
    from edgetl.workstation.quantization import ort_qdq as qort

    x = take(ctx.xv, slice(64))
    got = qort.run_batched(fused, x)
    ref = qort.run_batched(ctx.head, qort.run_batched(backbone, x))
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    if diff > 1e-4 or agree < 1.0:
        raise QuantizationError(f"model.int8.onnx differs from head(backbone.int8.onnx) by {diff:.2e} "
                                f"(agreement {agree:.3f}); this is a bug in edgetl, please report it")
    return {"max_abs_diff": diff, "top1_agreement": agree, "images": count(x)}


def nncf_engine(ctx: Context) -> EngineResult:
    from edgetl.workstation.quantization import ort_qdq as qort
    from edgetl.workstation.quantization import nncf_ir as qov
    from edgetl.workstation.quantization.guard import Budget, run_guard

    cfg = ctx.cfg
    fp32_xml = ctx.root / "openvino" / "backbone.xml"
    qov.quiet_logs()
    f32 = qov.compile_model(fp32_xml, "f32")  # pinned: the reference must really be f32
    score = scorer(ctx, qov.predict(f32, ctx.xv))
    fp32_mb = _mb(fp32_xml, fp32_xml.with_suffix(".bin"))
    base = {"accuracy": score.fp32_accuracy, "drop": 0.0, "agreement": 1.0}
    rows = [_row("openvino", "fp32", qov.executed(f32)["precision_executed"], base, score.fp32_accuracy,
                 "openvino/backbone.xml", fp32_mb, fp32_mb, **qov.executed(f32))]
    # OpenVINO's own choice for the fp32 IR: bf16 on CPUs with AMX. Measured, and named.
    default = qov.compile_model(fp32_xml, "default")
    auto = qov.executed(default)
    rows.append(_row("openvino", "bf16" if auto["precision_executed"] == "bf16" else "default",
                     auto["precision_executed"], score(qov.predict(default, ctx.xv)),
                     score.fp32_accuracy, "openvino/backbone.xml", fp32_mb, fp32_mb, **auto))
    names = {op.get_friendly_name() for op in qov.read(fp32_xml).get_ordered_ops()}
    t0 = time.perf_counter()
    executed: dict[str, Any] = {}

    def build(nodes: list[str], step: int) -> Path:
        out = ctx.work / f"ov-{step}.xml"
        with _ui.progress_bar("calibrating (nncf)", count(ctx.xc)) as advance, _silenced():
            qov.quantize(fp32_xml, out, ctx.xc, nodes, preset="mixed", advance=advance,
                         transformer=ctx.cache.get("modality") == "text", reduce_range=ctx.judge.reduce_range,
                         facts=ctx.int8_facts())
        return out

    def measure(path: Path) -> dict[str, float]:
        compiled = qov.compile_model(path, "f32")  # the float remainder in f32, as the device runs it
        executed[str(path)] = qov.executed(compiled)
        # OpenVINO has no mode without int8 kernels: this CPU's score is the only one (the judge
        # notes when this CPU does not compute int8 as the target's CPUs do)
        return ctx.judge(None, score(qov.predict(compiled, ctx.xv)))

    def rank(path: Path) -> list[str]:
        # OpenVINO's CPU plugin returns wrong values for extra outputs placed inside an int8
        # graph (measured: corr 0.3 vs 0.99 for the same tensor alone), so per-layer errors
        # come from the ORT QDQ model of the same graph; an ONNX node N is OpenVINO's
        # 'N/WithoutBiases' (the convolution) or 'N'.
        ranked = [f"{n}/WithoutBiases" if f"{n}/WithoutBiases" in names else n for n in _ort_ranking(ctx)]
        return [n for n in ranked if n in names]

    best, guard = run_guard(build, measure, rank, Budget(cfg.max_drop, cfg.min_agreement),
                            max_steps=cfg.max_steps, max_nodes=cfg.max_fp32_nodes)
    ctx.seconds["openvino_quantize"] = time.perf_counter() - t0
    if best is None:
        return EngineResult(rows, guard, None, {})
    last = guard["steps"][-1]
    rows.append(_row("openvino", "int8", executed[str(best)]["precision_executed"], last, score.fp32_accuracy,
                     "openvino/backbone.int8.xml", _mb(best, best.with_suffix(".bin")), fp32_mb,
                     fp32_nodes=last["fp32_nodes"], method="static", calibration="nncf-minmax",
                     **ctx.int8_facts(), **executed[str(best)]))
    files = {"openvino/backbone.int8.xml": best, "openvino/backbone.int8.bin": best.with_suffix(".bin")}
    return EngineResult(rows, guard, files, {})


def int8_facts(path: Path) -> dict[str, Any] | None:
    """``{"isa", "weight_bits"}`` as an int8 backbone file records them (ONNX metadata
    :data:`META_INT8`, an IR's rt_info); None for one made before edgetl recorded them."""
    if path.suffix == ".xml":
        from edgetl.workstation.quantization.nncf_ir import int8_facts as ir_facts

        return ir_facts(path)
    meta = dict(_onnx_meta(path)[0])
    try:
        facts = json.loads(meta[META_INT8]) if META_INT8 in meta else None
    except ValueError:
        return None
    return facts if isinstance(facts, dict) else None


def commit(root: Path, outputs: dict[str, dict[str, Path] | None]) -> dict[str, dict[str, Any]]:
    """Move each passing engine's files into place (os.replace, same filesystem); remove a
    failing engine's int8 files from an earlier run, which would no longer match the report."""
    files: dict[str, dict[str, Any]] = {}
    for engine, out in outputs.items():
        if out is None:
            for rel in ENGINES.get(engine).files:
                (root / rel).unlink(missing_ok=True)
            continue
        for rel, src in out.items():
            os.replace(src, root / rel)
            files[rel] = {"bytes": (root / rel).stat().st_size}
    return files


@dataclass(frozen=True)
class EngineInfo:
    """A quantization engine: the runtime whose int8 files it writes, the files it owns."""

    name: str
    runtime: str
    run: Callable[[Context], EngineResult]
    files: tuple[str, ...]  # RUN-relative int8 files (removed when the engine fails the budget)


ENGINES: Registry[EngineInfo] = Registry("quantization engine", ConfigError)
ENGINES.register("ort", EngineInfo("ort", "onnxruntime", ort_engine, ("onnx/backbone.int8.onnx", "onnx/model.int8.onnx")))
ENGINES.register("nncf", EngineInfo("nncf", "openvino", nncf_engine,
                                    ("openvino/backbone.int8.xml", "openvino/backbone.int8.bin")))

# ort-dynamic (text's ONNX Runtime engine) registers itself in quantization/ort_dynamic.py.


def engines_for(engine: str, modality: str) -> list[str]:
    """The engines a choice runs: ``both`` is one engine per runtime (ONNX Runtime's dynamic
    int8 for text, static QDQ for images; NNCF for OpenVINO); ``ort`` on a text model means
    the dynamic engine, the one that suits transformers."""
    ort = "ort-dynamic" if modality == "text" else "ort"
    if engine == "both":
        return [ort, "nncf"]
    if engine == "ort":
        return [ort]
    return [engine]
