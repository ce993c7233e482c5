"""One call from an image folder to a deployed, benchmarked bundle:
train -> export (validated) -> quantize (guarded) -> package -> bench."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from edgetl.core import ui as _ui
from edgetl.errors import EdgeTLError, StageError
from edgetl.core.targets import Precision, Runtime, Target, load_target

__all__ = ["BuildConfig", "BuildReport", "BuildResult", "build", "summary_rows", "AUTO"]

AUTO = "auto"  # --backbone auto: the backbone edgetl select recommends for the target


@dataclass(frozen=True)
class BuildConfig:
    """Options of :func:`build`: each stage's own config (None: its defaults) and the run."""

    train: Any = None  # TrainConfig
    export: Any = None  # ExportConfig
    quantize: Any = None  # QuantizeConfig (the engine follows the target's runtime)
    package: Any = None  # PackageConfig (its archive/overwrite come from this config's)
    bench: Any = None  # BenchConfig
    select: Any = None  # SelectConfig, used when the train config's backbone is "auto"
    # with "auto" and the select config's sweep_unfreeze: train with the sweep's suggested
    # depth (the probe, or finetune at that --unfreeze) instead of the train config's
    # strategy and unfreeze; False where the user gave those explicitly
    follow_sweep: bool = True
    run_dir: str | os.PathLike | None = None  # default: <out>.run beside the bundle
    run_bench: bool = True  # benchmark the bundle against PyTorch at the end
    archive: bool = False
    overwrite: bool = False


@dataclass
class BuildReport:
    """What :func:`build` made: the RUN, the bundle, the time per stage and a summary."""

    run_dir: Path
    bundle: Path
    target: Target
    stages: list[dict[str, Any]] = field(default_factory=list)  # name, seconds
    summary: dict[str, Any] = field(default_factory=dict)
    bench: Any = None  # edgetl.benchmarking.BenchReport, when the bench stage ran
    selection: Any = None  # edgetl.workstation.selection.SelectReport, with --backbone auto

    def to_dict(self) -> dict[str, Any]:
        out = {"run": str(self.run_dir), "bundle": str(self.bundle), "target": self.target.name,
               "stages": self.stages, "summary": self.summary}
        if self.selection is not None:
            out["selection"] = self.selection.to_dict()
        return out


BuildResult = BuildReport  # the earlier name


def _quantize_config(target: Target, config):
    """int8 targets need the quantized backbone of their own runtime only, built for their CPUs."""
    from edgetl.core.isa import Isa
    from edgetl.workstation.quantization import Engine, QuantizeConfig

    engine = Engine.ORT if target.runtime is Runtime.ONNXRUNTIME else Engine.NNCF
    return replace(config or QuantizeConfig(), engine=engine, isa=target.isa or Isa.X86_AVX2)


def build(
    data: str | os.PathLike,
    target: str | os.PathLike | Target,
    out: str | os.PathLike,
    config: BuildConfig | None = None,
) -> BuildReport:
    """Train on ``data``, export, quantize (int8 targets), package for ``target`` into
    ``out``, then benchmark the bundle against PyTorch. The RUN directory defaults to
    ``<out>.run`` beside the bundle. Stops at the first failing stage with a
    :class:`StageError` naming it."""
    from edgetl.benchmarking import BenchConfig, bench as run_bench
    from edgetl.workstation.packaging import PackageConfig, package
    from edgetl.workstation.onnx_export import export
    from edgetl.workstation.quantization import quantize
    from edgetl.core.run import read_run_json
    from edgetl.workstation.training import train

    cfg = config or BuildConfig()
    train_config, export_config, quantize_config, bench_config = cfg.train, cfg.export, cfg.quantize, cfg.bench
    archive, overwrite = cfg.archive, cfg.overwrite
    tgt = load_target(target)
    out = Path(out)
    run_dir = Path(cfg.run_dir) if cfg.run_dir is not None else out.with_name(out.name + ".run")
    result = BuildReport(run_dir, out, tgt)
    int8 = tgt.precision is Precision.INT8

    auto = train_config is not None and train_config.backbone == AUTO
    chosen: dict[str, Any] = {}

    def choose():
        from edgetl.workstation.selection import NoCandidateError, SelectConfig, select

        sel = cfg.select or SelectConfig(image_size=train_config.image_size)
        report = select(data, tgt, sel)
        if report.recommended is None:
            raise NoCandidateError(report.reason)
        chosen["config"], chosen["depth"] = _auto_train_config(train_config, report, cfg.follow_sweep)
        return report

    stages: list[tuple[str, Callable[[], Any]]] = [("select", choose)] if auto else []
    stages += [
        ("train", lambda: train(data, run_dir, chosen.get("config", train_config), overwrite=overwrite)),
        ("export", lambda: export(run_dir, export_config)),
    ]
    if int8:
        stages.append(("quantize", lambda: quantize(run_dir, _quantize_config(tgt, quantize_config))))
    package_config = replace(cfg.package or PackageConfig(), archive=archive, overwrite=overwrite)
    stages.append(("package", lambda: package(run_dir, tgt, out, package_config)))
    if cfg.run_bench:
        base = bench_config or BenchConfig(duration=2.0, repeats=2)
        bcfg = replace(base, run=base.run or run_dir, targets=base.targets or (tgt,))
        stages.append(("bench", lambda: run_bench(out, bcfg)))

    outputs: dict[str, Any] = {}
    for index, (name, step) in enumerate(stages, 1):
        _ui.info(f"[{index}/{len(stages)}] {name}")
        t0 = time.perf_counter()
        try:
            outputs[name] = step()
        except StageError:
            raise
        except EdgeTLError as exc:
            raise StageError(name, index, len(stages), exc) from exc
        result.stages.append({"stage": name, "seconds": round(time.perf_counter() - t0, 3)})

    result.bench = outputs.get("bench")
    result.selection = outputs.get("select")
    result.summary = _summary(read_run_json(run_dir), tgt, out, result.bench)
    if result.selection is not None:
        result.summary["backbone_choice"] = result.selection.reason
        result.summary["depth_choice"] = chosen["depth"]
    return result


def _auto_train_config(train_config, report, follow_sweep: bool) -> tuple[Any, str]:
    """The train config of ``--backbone auto`` from select's report (the recommended
    backbone, at its input size, or for text its max_length, where the candidate named
    one), and why its depth.
    With a sweep (and ``follow_sweep``), the suggested depth: the linear probe, or
    finetune with that ``--unfreeze``; otherwise the train config's own strategy."""
    from edgetl.workstation.selection import parse_candidate

    ft = report.finetune or {}
    name, size = parse_candidate(report.recommended)  # NAME@SIZE: train at that input size (text: tokens)
    if (getattr(report, "sample", None) or {}).get("modality") == "text":
        config = replace(train_config, backbone=name, max_length=size or train_config.max_length)
    else:
        config = replace(train_config, backbone=name, image_size=size or train_config.image_size)

    def current(c) -> str:
        return (c.strategy.value if c.strategy.value != "finetune"
                else f"finetune --unfreeze {'all' if c.unfreeze is None else c.unfreeze}")

    if ft.get("from") != "sweep":
        return config, (f"{current(config)}, as given (no --sweep-unfreeze; select's advice from the ceilings: "
                        f"{ft.get('suggest')}: {ft.get('why')})")
    suggested = ft["sweep"]["suggested"]
    if not follow_sweep:
        return config, (f"{current(config)}, given explicitly (the sweep suggested "
                        f"{'the linear probe' if suggested == 'probe' else '--unfreeze ' + suggested}: {ft['why']})")
    if suggested == "probe":
        config = replace(config, strategy="linear-probe")
    else:
        config = replace(config, strategy="finetune", unfreeze=None if suggested == "all" else int(suggested))
    return config, f"{current(config)}, from the unfreeze sweep: {ft['why']}"


def _summary(info: dict[str, Any], target: Target, bundle: Path, report) -> dict[str, Any]:
    from edgetl.device.bundle import open_bundle
    from edgetl.tasks import get_task

    manifest = open_bundle(bundle).manifest
    accuracy = manifest.get("accuracy") or {}
    summary = {
        "target": target.name,
        "backbone": info.get("backbone"),
        "input_size": (info.get("preprocess") or {}).get("input_size"),  # images: px; texts: None
        "runtime": target.runtime.value,
        "precision": target.precision.value,
        # what accuracy_* measure: top-1 for classification, the task's metric otherwise
        "metric": get_task(manifest.get("task")).metric_label,
        "accuracy_fp32": accuracy.get("fp32", info["metrics"].get("val_accuracy")),
        "accuracy_deployed": accuracy.get("deployed"),
        "precision_executed": accuracy.get("precision_executed"),
        "bundle_mb": sum(f["bytes"] for f in manifest["files"].values()) / 2**20,
        # What inference loads (the OpenVINO backbone is its .xml and .bin); the rest of the
        # bundle is for the device's learning: training artifacts, replay memory, statistics.
        "model_mb": sum(f["bytes"] for rel, f in manifest["files"].items()
                        if Path(rel).with_suffix("") in {Path(m).with_suffix("") for m in manifest["models"].values()})
        / 2**20,
        "p50_ms": None, "p90_ms": None, "torch_p50_ms": None, "speedup_vs_torch": None,
        "peak_rss_mb": None, "p90_pass": None, "memory_pass": None,
    }
    if report is not None:
        rows = [r for r in report.results if r.get("status") == "ok"]
        deployed = next((r for r in rows if r.get("mode") == "edgetl" and r.get("batch") == target.batch_size), None)
        torch_row = next((r for r in rows if r.get("runtime") == "torch" and r.get("batch") == target.batch_size), None)
        if deployed:
            summary.update(p50_ms=deployed["p50_ms"], p90_ms=deployed["p90_ms"], peak_rss_mb=deployed["peak_rss_mb"],
                           speedup_vs_torch=deployed.get("speedup_vs_torch"), p90_pass=deployed.get("p90_pass"),
                           memory_pass=deployed.get("memory_pass"),
                           precision_executed=deployed.get("precision_executed") or summary["precision_executed"])
        if torch_row:
            summary["torch_p50_ms"] = torch_row["p50_ms"]
    return summary


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The final table of ``edgetl build`` as (what, value) rows."""
    def pf(v):
        return None if v is None else ("pass" if v else "FAIL")

    rows = [
        ("target", f"{summary['target']} ({summary['runtime']}, {summary['precision']})"),
        ("backbone", summary.get("backbone") + (f" at {summary['input_size']} px" if summary.get("input_size") else "")
         if summary.get("backbone") else None),
        ("precision executed", summary.get("precision_executed")),
        (f"{summary.get('metric') or 'accuracy'} fp32 (PyTorch, held-out)", summary.get("accuracy_fp32")),
        (f"{summary.get('metric') or 'accuracy'} deployed (held-out)", summary.get("accuracy_deployed")),
        ("model size (MB)", summary.get("model_mb")),
        ("bundle size with training data (MB)", summary.get("bundle_mb")),
        ("p50 latency (ms)", summary.get("p50_ms")),
        ("PyTorch eager p50 (ms)", summary.get("torch_p50_ms")),
        ("speed-up vs PyTorch", summary.get("speedup_vs_torch")),
        ("peak memory (MB)", summary.get("peak_rss_mb")),
        ("p90 budget", pf(summary.get("p90_pass"))),
        ("memory budget", pf(summary.get("memory_pass"))),
    ]
    if summary.get("backbone_choice"):
        rows.insert(2, ("why this backbone (edgetl select)", summary["backbone_choice"]))
        rows.insert(3, ("why this depth", summary.get("depth_choice")))
    return rows
