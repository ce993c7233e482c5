"""Planning for :mod:`edgetl.benchmarking`: which configurations a RUN, a bundle or a model file
gives, and which files each one times (their sizes are ``size_mb``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.core import ui as _ui
from edgetl.benchmarking.config import PRECISIONS, RUNTIMES, VALID, BenchConfig, Job
from edgetl.errors import ConfigError
from edgetl.core.targets import Target

def sources_of(run_dir: Path, runtime: str, precision: str) -> tuple[tuple[Path, ...], str | None]:
    onnx, ov = run_dir / "onnx", run_dir / "openvino"
    if runtime == "torch":
        files = (run_dir / "model.pt",)
    elif runtime == "onnxruntime":
        files = (onnx / ("backbone.int8.onnx" if precision == "int8" else "backbone.onnx"), onnx / "head.onnx")
    else:
        xml = ov / ("backbone.int8.xml" if precision == "int8" else "backbone.xml")
        files = (xml, xml.with_suffix(".bin"), onnx / "head.onnx")
    missing = [f for f in files if not f.is_file()]
    if not missing:
        return files, None
    stage = "quantize" if ".int8." in missing[0].name else ("train" if runtime == "torch" else "export")
    return files, f"{missing[0].relative_to(run_dir).as_posix()} is missing; run 'edgetl {stage} {run_dir}' first"


def run_jobs(run_dir: Path, cfg: BenchConfig, info: dict[str, Any]) -> list[Job]:
    spec = info["preprocess"]
    common = {"labels": list(info["labels"]), "preprocess": spec, "input_size": spec.get("input_size"),
              "modality": info.get("modality") or "image", "run": str(run_dir), "task": info.get("task")}
    # explicit --runtimes/--precisions (or no target) give the matrix; targets add their own rows
    matrix = cfg.runtimes is not None or cfg.precisions is not None or not cfg.targets
    combos = [(r, p) for r in (cfg.runtimes or RUNTIMES) for p in (cfg.precisions or PRECISIONS) if (r, p) in VALID]
    if "torch" in (cfg.runtimes or RUNTIMES) and ("torch", "fp32") not in combos:
        combos.insert(0, ("torch", "fp32"))  # the reference row, whatever precisions were asked for
    rows: list[tuple[str, str, int, int, Target | None]] = []
    if matrix:
        rows += [(r, p, b, t, None) for r, p in combos for b in cfg.batches or (1,) for t in cfg.threads or (2,)]
    for target in cfg.targets:
        rt, prec = target.runtime.value, target.precision.value
        rows.append((rt, prec, target.batch_size, target.threads, target))
        if "torch" in (cfg.runtimes or RUNTIMES):
            rows.append(("torch", "fp32", target.batch_size, target.threads, None))
    jobs, seen = [], set()
    for rt, prec, batch, threads, target in rows:
        key = (rt, prec, batch, threads, target.name if target else None)
        if key in seen:
            continue
        seen.add(key)
        files, missing = sources_of(run_dir, rt, prec)
        kind = "torch" if rt == "torch" else "edgetl"
        job_spec = {**common, "backbone": str(files[0]), "head": str(files[-1])}
        if target is not None:
            job_spec.update(target=target.to_dict(), device=_device(target))
        jobs.append(Job(kind, rt, prec, batch, threads, files, job_spec, target, missing))
    return jobs


def _device(target: Target) -> str:
    default = {"onnxruntime": "CPUExecutionProvider", "openvino": "CPU"}[target.runtime.value]
    return "" if target.device in ("", default) else target.device


def bundle_jobs(root: Path, cfg: BenchConfig) -> list[Job]:
    from edgetl.device.bundle import open_bundle

    bundle = open_bundle(root, verify=False)  # the edgetl worker verifies, as `edgetl predict` does
    m = bundle.manifest
    precision = bundle.precision.value
    files = [bundle.model_path("backbone")]
    if files[0].suffix.lower() == ".xml":
        files.append(files[0].with_suffix(".bin"))
    files.append(bundle.model_path("head"))
    adapter = bundle.path(m["adapter"]) if m.get("adapter") else None
    if adapter:
        files.append(adapter)
    common = {"labels": bundle.labels, "preprocess": bundle.manifest["preprocess"], "modality": bundle.modality,
              "task": bundle.task,
              "input_size": bundle.manifest["preprocess"].get("input_size"), "bundle": str(root),
              "backbone": str(files[0]), "head": str(bundle.model_path("head")),
              "adapter": str(adapter) if adapter else None}
    if cfg.precisions is not None:
        _ui.warn(f"--precisions is ignored for a bundle: its backbone is {precision} ({files[0].name})")
    targets = cfg.targets or (bundle.target,)
    runtimes = [r for r in (cfg.runtimes or ()) if r != "torch"]
    want_torch = cfg.runtimes is None or "torch" in cfg.runtimes
    jobs: list[Job] = []
    for target in targets:
        for runtime in runtimes or [target.runtime.value]:
            prec = "fp32" if runtime == "onnxruntime" and precision == "bf16" else precision
            skipped = None
            if runtime == "onnxruntime" and files[0].suffix.lower() == ".xml":
                skipped = f"the bundle's backbone is OpenVINO IR ({files[0].name}); onnxruntime cannot read it"
            own = runtime == target.runtime.value
            spec = {**common, "runtime": runtime, "precision": prec, "target": target.to_dict(),
                    "device": _device(target) if own else ""}
            for batch in cfg.batches or (target.batch_size,):
                for threads in cfg.threads or (target.threads,):
                    jobs.append(Job("edgetl", runtime, prec, batch, threads, tuple(files), spec,
                                    target if own and (batch, threads) == (target.batch_size, target.threads) else None,
                                    skipped))
                    if cfg.direct:
                        jobs.append(Job("direct", runtime, prec, batch, threads, tuple(files), spec, None, skipped))
    torch_jobs = []
    if want_torch:
        for batch in sorted({j.batch for j in jobs}):
            for threads in sorted({j.threads for j in jobs}):
                if cfg.run is None:
                    torch_jobs.append(Job("torch", "torch", "fp32", batch, threads, (), {}, None,
                                          "a bundle holds no PyTorch model; pass --run RUN to measure the PyTorch reference"))
                else:
                    files_t, missing = sources_of(cfg.run, "torch", "fp32")
                    torch_jobs.append(Job("torch", "torch", "fp32", batch, threads, files_t,
                                          {**common, "run": str(cfg.run)}, None, missing))
    return torch_jobs + jobs


def model_jobs(path: Path, cfg: BenchConfig) -> list[Job]:
    from edgetl.runtimes import RUNTIMES as REGISTRY

    files = (path, path.with_suffix(".bin")) if path.suffix.lower() == ".xml" else (path,)
    runtimes = [r for r in (cfg.runtimes or RUNTIMES) if r != "torch" and path.suffix.lower() in REGISTRY.get(r).suffixes]
    if not runtimes:
        raise ConfigError(f"{path}: none of the runtimes asked for reads {path.suffix} files")
    jobs = []
    for runtime in runtimes:
        for prec in cfg.precisions or (("fp32", "bf16") if runtime == "openvino" else ("fp32",)):
            if (runtime, prec) not in VALID:
                continue
            for batch in cfg.batches or (1,):
                for threads in cfg.threads or (2,):
                    spec = {"model": str(path), "runtime": runtime, "precision": prec}
                    jobs.append(Job("model", runtime, prec, batch, threads, files, spec))
    return jobs
