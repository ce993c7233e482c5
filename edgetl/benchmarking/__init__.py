"""Benchmark a RUN, a bundle or a model file on every runtime and precision, side by side.

Each configuration is measured in a fresh process (:mod:`edgetl.benchmarking.worker`), so its
peak resident memory and cold start are its own. Configurations are run ``repeats`` times
in round-robin order (reversed on every other pass), so slow drift of a shared machine
spreads over all rows instead of favouring one; a row reports the **median over repeats**
of each statistic (p50, p90, p99, mean, throughput, cold start) and the **maximum** peak
memory. Because p50 <= p90 <= p99 holds in every repeat, it holds for the medians too.

Sources:

- a RUN directory: PyTorch eager fp32 (the reference for ``speedup_vs_torch``), ONNX
  Runtime fp32/int8 and OpenVINO fp32/bf16/int8 from its exported and quantized files;
- a bundle: its deployed runtime and precision through :class:`~edgetl.device.Predictor`
  (``mode="edgetl"``) and the runtime called directly on the same files (``mode="direct"``),
  which shows edgetl's own overhead; PyTorch only when ``run=`` names the RUN;
- a model file (.onnx, .xml): that file alone on each runtime that reads it.

Edgetl and direct rows time image tensor -> logits (backbone, adapter if any, head);
preprocessing is excluded. Device-side; torch is imported only in the PyTorch worker.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from edgetl.benchmarking.config import (  # noqa: F401 - re-exported
    MB, MEASURES, PRECISIONS, RESULT_KEYS, RUNTIMES, VALID, BenchConfig, Job,
)
from edgetl.core import ui as _ui
from edgetl.errors import ConfigError, DataError
from edgetl.core.targets import Target

__all__ = ["BenchConfig", "BenchReport", "Job", "bench", "plan", "execute", "RESULT_KEYS"]

# --- planning (the per-source rules live in _bench_plan) ------------------------------------

def plan(source: str | os.PathLike, config: BenchConfig | None = None) -> list[Job]:
    """The configurations ``bench`` would measure for ``source``, in order."""
    from edgetl.benchmarking.planning import bundle_jobs, model_jobs, run_jobs
    from edgetl.core.run import read_run_json

    cfg = config or BenchConfig()
    path = Path(source)
    if (path / "run.json").is_file():
        jobs = run_jobs(path, cfg, read_run_json(path))
    elif (path / "manifest.json").is_file():
        jobs = bundle_jobs(path, cfg)
    elif path.is_file() and path.suffix.lower() in (".onnx", ".xml"):
        jobs = model_jobs(path, cfg)
    else:
        raise ConfigError(f"{path}: not a RUN directory (run.json), a bundle (manifest.json) or a model file (.onnx, .xml)")
    out = []
    for job in jobs:
        spec = {**job.spec, "kind": job.kind, "runtime": job.runtime, "precision": job.precision,
                "batch": job.batch, "threads": job.threads}
        out.append(replace(job, spec=spec))
    return out


# --- running ----------------------------------------------------------------------------------

def _data_items(data: Path, labels: Sequence[str]) -> list[tuple[str, int]]:
    from edgetl.modalities.image import scan_folder

    folder = scan_folder(data, min_classes=1)
    index = {name: i for i, name in enumerate(labels)}
    unknown = [name for name in folder.labels if name not in index]
    if unknown:
        raise DataError(f"{data}: class folder(s) {', '.join(unknown)} are not among the model's labels "
                        f"({', '.join(labels)})")
    return [(str(p), index[folder.labels[t]]) for p, t in folder.samples]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # works from a source checkout too
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env["EDGETL_NO_PROGRESS"] = "1"
    return env


def _run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    from edgetl.benchmarking.worker import MARK

    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="edgetl-bench-", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([sys.executable, "-m", "edgetl.benchmarking.worker", f.name], capture_output=True,
                              text=True, timeout=timeout, env=_worker_env())
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout:.0f} s"}
    finally:
        Path(f.name).unlink(missing_ok=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "reason": f"worker exited with {proc.returncode}: {tail}"}


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def _combine(job: Job, reps: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "runtime": job.runtime, "precision": job.precision, "precision_executed": None,
        "batch": job.batch, "threads": job.threads, "mode": job.mode,
        "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "throughput": None,
        "peak_rss_mb": None,
        "size_mb": sum(f.stat().st_size for f in job.files if f.is_file()) / MB if job.files else None,
        "cold_start_ms": None, "speedup_vs_torch": None, "accuracy": None, "conformance": None,
        "status": "ok", "reason": None, "path": "pytorch eager" if job.kind == "torch" else
        ("model file" if job.kind == "model" else "backbone+head"),
        "files": [str(f) for f in job.files], "device": job.spec.get("device") or None,
        # where the row comes from: a bundle's target, else the RUN or model file
        "source": (job.spec.get("target") or {}).get("name") if job.spec.get("bundle") else
        (job.spec.get("run") or job.spec.get("model")),
    }
    if job.skipped:
        return {**row, "status": "skipped", "reason": job.skipped}
    ok = [r for r in reps if r["status"] == "ok"]
    if not ok:
        first = reps[0] if reps else {"status": "error", "reason": "not run"}
        return {**row, "status": first["status"], "reason": first.get("reason")}
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "cold_start_ms", "import_ms", "min_ms"):
        row[key] = _median(r[key] for r in ok)
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    row["precision_executed"] = ok[0]["precision_executed"]
    row["conformance"] = ok[0].get("conformance")  # the bundle's check on this CPU, where the row runs one
    acc = [r for r in ok if r.get("accuracy") is not None]
    if acc:
        row["accuracy"], row["accuracy_n"] = acc[0]["accuracy"], acc[0]["accuracy_n"]
    if ok[0].get("files"):  # the files the worker loaded (a head-only RUN's model.pt and its named backbone)
        files = [Path(f) for f in ok[0]["files"]]
        row["files"] = [str(f) for f in files]
        row["size_mb"] = sum(f.stat().st_size for f in files if f.is_file()) / MB
    row["iterations"] = sum(r["iterations"] for r in ok)
    row["repeats"] = len(ok)
    row["p50_ms_repeats"] = [r["p50_ms"] for r in ok]
    if len(ok) < len(reps):
        row["reason"] = f"{len(reps) - len(ok)} of {len(reps)} repeats failed: {next(r for r in reps if r['status'] != 'ok').get('reason')}"
    return row


def _budgets(row: dict[str, Any], target: Target | None) -> None:
    row["target"] = target.name if target else None
    row["budget_p90_ms"] = target.latency_budget_ms if target else None
    row["budget_memory_mb"] = target.memory_budget_mb if target else None
    ok = row["status"] == "ok"
    row["p90_pass"] = (row["p90_ms"] <= target.latency_budget_ms) if target and ok else None
    row["memory_pass"] = (row["peak_rss_mb"] <= target.memory_budget_mb) if target and ok else None


def _speedups(rows: list[dict[str, Any]]) -> None:
    ref = {(r["batch"], r["threads"]): r["p50_ms"] for r in rows if r["runtime"] == "torch" and r["status"] == "ok"}
    for r in rows:
        base = ref.get((r["batch"], r["threads"]))
        r["speedup_vs_torch"] = base / r["p50_ms"] if base and r["status"] == "ok" else None


@dataclass
class BenchReport:
    """``environment`` (see :mod:`edgetl.benchmarking.environment`) and one ``results`` row per configuration."""

    environment: dict[str, Any]
    results: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "settings": self.settings, "results": self.results}

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    def write_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys: list[str] = list(RESULT_KEYS)
        for row in self.results:
            keys += [k for k in row if k not in keys and not isinstance(row[k], (list, dict))]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.results)
        return path

    def write_plot(self, path: str | os.PathLike, title: str | None = None) -> Path | None:
        from edgetl.benchmarking.plot import plot

        return plot(self, path, title)

    @property
    def misses(self) -> list[str]:
        """Why ``--check`` fails: each budget missed, and each target row that did not run."""
        out = []
        for r in self.results:
            if not r.get("target"):
                continue
            name = f"{r['target']} ({r['runtime']} {r['precision']}, batch {r['batch']})"
            if r["status"] != "ok":
                out.append(f"{name}: {r['status']} ({r['reason']})")
                continue
            if r["p90_pass"] is False:
                out.append(f"{name}: p90 {r['p90_ms']:.3g} ms > budget {r['budget_p90_ms']:g} ms")
            if r["memory_pass"] is False:
                out.append(f"{name}: peak memory {r['peak_rss_mb']:.0f} MB > budget {r['budget_memory_mb']:g} MB")
        return out


def execute(jobs: Sequence[Job], config: BenchConfig | None = None, *, argv: Sequence[str] | None = None) -> BenchReport:
    """Measure ``jobs`` (from :func:`plan`, possibly several sources) in fresh processes,
    interleaved over ``config.repeats`` passes."""
    from edgetl.benchmarking.environment import environment

    cfg = config or BenchConfig()
    env = environment(argv)
    images: list[tuple[str, int]] | None = None
    runnable = [j for j in jobs if not j.skipped]
    if cfg.data is not None and runnable:
        labels = next((j.spec["labels"] for j in runnable if j.spec.get("labels")), None)
        if labels is None:
            raise ConfigError("--data needs a RUN or a bundle (a bare model file has no labels)")
        images = _data_items(cfg.data, labels)
    timing = {"warmup": cfg.warmup, "iterations": cfg.iterations, "duration": None if cfg.iterations else cfg.duration}
    reps: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(jobs))}
    order = [i for i, j in enumerate(jobs) if not j.skipped]
    total = len(order) * cfg.repeats
    with _progress(total) as step:
        for rep in range(cfg.repeats):
            for i in (order if rep % 2 == 0 else order[::-1]):
                job = jobs[i]
                step(f"pass {rep + 1}/{cfg.repeats}: {job.label}")
                spec = {**job.spec, **timing}
                if images is not None and job.spec.get("labels"):
                    # real inputs for timing; accuracy once (it does not change between repeats)
                    spec.update(images=images, accuracy=rep == 0)
                reps[i].append(_run_worker(spec, cfg.timeout))
    rows = []
    for i, job in enumerate(jobs):
        row = _combine(job, reps[i])
        _budgets(row, job.target)
        row["measures"] = MEASURES if job.kind in ("edgetl", "direct") else (
            "image tensor -> logits, PyTorch eager" if job.kind == "torch" else "the model file's input -> output")
        rows.append(row)
    _speedups(rows)
    settings = {"warmup": cfg.warmup, "duration_s": timing["duration"], "iterations": cfg.iterations,
                "repeats": cfg.repeats, "data": str(cfg.data) if cfg.data else None,
                "statistics": "each configuration runs in a fresh process, repeats interleaved (round-robin, "
                              "alternating direction); latency, throughput and cold start are medians over "
                              "repeats, peak_rss_mb the maximum",
                "cold_start_ms": "loading the model (for a bundle: opening it and checking its file hashes, as "
                                 "'edgetl predict' does) plus the first inference, in a fresh process, after the "
                                 "runtime's import (import_ms)",
                "units": {"size_mb": "MiB on disk", "peak_rss_mb": "MiB, peak resident set of the process",
                          "throughput": "items/s, one batch at a time"},
                "device_workers": "torch blocked (sys.modules['torch'] = None), as on a device install"}
    return BenchReport(env, rows, settings)


class _progress:
    """A live line on a terminal (``pass 2/3: openvino int8 edgetl b1 t2``); plain lines otherwise."""

    def __init__(self, total: int):
        self.total, self.done, self._bar = total, 0, None

    def __enter__(self):
        if _ui._enabled():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = _ui._stderr_console()
            if console.is_terminal:
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=console, transient=True)
                self._bar.start()
                self._task = self._bar.add_task("benchmark", total=self.total)
        return self.step

    def step(self, description: str) -> None:
        if self._bar is not None:
            if self.done:
                self._bar.advance(self._task)
            self._bar.update(self._task, description=description)
        else:
            _ui.info(f"[{self.done + 1}/{self.total}] {description}")
        self.done += 1

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)
            self._bar.stop()


def bench(source: str | os.PathLike | Sequence[str | os.PathLike], config: BenchConfig | None = None, *,
          argv: Sequence[str] | None = None) -> BenchReport:
    """Benchmark a RUN directory, a bundle or a model file (see the module docstring); several
    sources (bundles for different targets, say) are measured in one run, side by side, their
    shared PyTorch reference rows once."""
    cfg = config or BenchConfig()
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise ConfigError("give at least one RUN, bundle or model file to benchmark")
    jobs: list[Job] = []
    seen_torch: set[tuple] = set()
    for one in sources:
        for job in plan(one, cfg):
            if job.kind == "torch":
                key = (job.batch, job.threads, job.spec.get("run"))
                if key in seen_torch:
                    continue
                seen_torch.add(key)
            jobs.append(job)
    return execute(jobs, cfg, argv=argv)
