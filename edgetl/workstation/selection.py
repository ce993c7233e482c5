"""``select``: which backbone to build for a target, from a cheap, honest estimate.

For each candidate backbone of the data's modality:

- **accuracy**, estimated on a stratified sample of DATA: the frozen backbone embeds the
  sample once (cached in the work folder), then the exact linear probe
  (:mod:`edgetl.workstation.probe_solver`) is cross-validated (k folds, C chosen by
  out-of-fold log-loss); a k-NN's out-of-fold accuracy and the probe's own training
  accuracy are the ceilings it is compared with; LogME (:mod:`edgetl.workstation.logme`)
  is the training-free score beside it;
- **deployed latency and memory** on the target's runtime and precision: the backbone is
  exported and, for an int8 target, quantized with the target's engine (a small RUN in the
  work folder, cached per backbone, input size and target), then timed by the bench worker
  in a fresh process with torch blocked, as ``edgetl bench`` does.

The recommendation is the most accurate candidate whose p90 latency (and peak memory)
meets the budget. The cost of the estimate is reported per candidate and stage.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core import ui as _ui
from edgetl.core.report import Report
from edgetl.core.targets import Precision, Runtime, Target, load_target
from edgetl.errors import ConfigError, EdgeTLError

__all__ = ["SelectConfig", "SelectReport", "select", "recommend", "NoCandidateError", "default_work_dir"]

# The probe is "far below" a ceiling at this gap (accuracy, a fraction). k-NN beating the
# linear probe says the classes are in the embedding but not linearly: a fine-tuned
# backbone can straighten them. A probe that cannot fit its own training sample says the
# frozen features miss the distinction altogether.
CEILING_GAP = 0.03
MIN_TRAIN_ACCURACY = 0.95


class NoCandidateError(EdgeTLError):
    """No candidate backbone meets the latency (or memory) budget."""

    exit_code = 1


def default_work_dir() -> Path:
    base = os.environ.get("EDGETL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                          os.path.expanduser("~/.cache"), "edgetl")
    return Path(base) / "select"


@dataclass(frozen=True)
class SelectConfig:
    """Options of :func:`select`. ``backbones`` None: every built-in of the data's modality."""

    backbones: tuple[str, ...] | None = None
    budget_ms: float | None = None  # p90 budget; None: the target's latency_budget_ms
    sample: int = 300  # images in the stratified sample (at most)
    folds: int = 5
    knn: int = 5
    image_size: int | None = None  # None: each backbone's native input size
    seed: int = 0
    work_dir: str | os.PathLike | None = None  # caches; None: default_work_dir()
    bench_duration: float = 1.0  # seconds timed per repeat
    bench_repeats: int = 2

    def __post_init__(self) -> None:
        if self.backbones is not None:
            names = tuple(b.strip() for b in self.backbones if b and b.strip())
            if not names:
                raise ConfigError("--backbones: give at least one backbone name")
            if len(set(names)) != len(names):
                raise ConfigError(f"--backbones: a name is given twice ({', '.join(names)})")
            object.__setattr__(self, "backbones", names)
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"budget_ms must be positive, got {self.budget_ms}")
        for name in ("sample", "folds", "knn", "bench_repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (2 if name == "folds" else 1):
                raise ConfigError(f"{name} must be a positive integer{' >= 2' if name == 'folds' else ''}, "
                                  f"got {getattr(self, name)!r}")
        if not self.bench_duration > 0:
            raise ConfigError(f"bench_duration must be positive, got {self.bench_duration}")


@dataclass(frozen=True)
class SelectReport(Report):
    data: Path
    target: str
    budget_ms: float
    budget_memory_mb: float
    recommended: str | None
    reason: str
    finetune: dict[str, Any]
    candidates: list[dict[str, Any]]
    sample: dict[str, Any]
    cost: dict[str, Any]
    plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the sample


def _stratified_sample(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` indices, classes in proportion (each at least min(2, its count))."""
    if n >= len(targets):
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(targets, return_counts=True)
    want = np.maximum(np.minimum(counts, 2), np.floor(counts * n / len(targets)).astype(int))
    out = [rng.permutation(np.flatnonzero(targets == c))[:k] for c, k in zip(classes, want)]
    return np.sort(np.concatenate(out))


def _embed(backbone, spec, paths: list[Path]) -> tuple[np.ndarray, bool]:
    """The sample's embeddings through the workstation's frozen-backbone path (ONNX Runtime,
    the shared embedding cache: a later ``train`` on the same files reuses them); True when
    all of them came from the cache."""
    import torch

    from edgetl.workstation.embedding import embed_paths

    z, report = embed_paths(backbone.module, paths, spec, torch.device("cpu"),
                            description=f"embedding {backbone.name}")
    return z, report["computed"] == 0


def _knn_accuracy(X: np.ndarray, y: np.ndarray, k: int, fold: np.ndarray) -> float:
    """Out-of-fold accuracy of a cosine k-NN, majority vote with ties to the lowest label
    (scikit-learn's ``KNeighborsClassifier(metric="cosine")`` rule)."""
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    n_labels = int(y.max()) + 1
    correct = 0
    for f in np.unique(fold):
        tr, va = fold != f, fold == f
        sims = Z[va] @ Z[tr].T
        nn = np.argsort(-sims, axis=1, kind="stable")[:, :min(k, int(tr.sum()))]
        votes = np.stack([np.bincount(row, minlength=n_labels) for row in y[tr][nn]])
        correct += int(np.sum(votes.argmax(1) == y[va]))
    return correct / len(y)


def _accuracy_estimate(X: np.ndarray, y: np.ndarray, n_classes: int, cfg: SelectConfig) -> dict[str, Any]:
    from edgetl.workstation.logme import logme
    from edgetl.workstation.probe_solver import _stratified_folds, cross_validate_C, fit_logreg

    t0 = time.perf_counter()
    folds = int(min(cfg.folds, np.bincount(y).max()))
    C, table = cross_validate_C(X, y, n_classes, folds=folds, seed=cfg.seed)
    _, probe_loss, probe_acc = next(row for row in table if row[0] == C)
    W, b = fit_logreg(X, y, n_classes, C)
    train_acc = float(np.mean((X @ W.T + b).argmax(1) == y))
    knn = _knn_accuracy(X, y, cfg.knn, _stratified_folds(y, folds, cfg.seed))
    t1 = time.perf_counter()
    score = logme(X, y).score
    t2 = time.perf_counter()
    return {"probe_accuracy": probe_acc, "probe_log_loss": probe_loss, "probe_C": C, "probe_folds": folds, "probe_train_accuracy": train_acc,
            "knn_accuracy": knn, "logme": score, "seconds_probe": t1 - t0, "seconds_logme": t2 - t1}


def _latency_run(name: str, size: int | None, tgt: Target, items: list[Path], labels: list[str], folder_root: Path,
                 work: Path) -> tuple[Path, bool]:
    """A small RUN of ``name`` (head trained on a few sample images), exported and, for an
    int8 target, quantized with the target's engine; cached by backbone, size and target."""
    from edgetl.workstation.onnx_export import ExportConfig, export
    from edgetl.workstation.quantization import Engine, QuantizeConfig, quantize
    from edgetl.workstation.training import TrainConfig, train

    key = f"{name.replace(':', '_').replace('/', '_')}-{size or 'native'}-{tgt.runtime.value}-{tgt.precision.value}" \
          f"-{len(labels)}c"
    run_dir = work / "latency" / key
    if (run_dir / "select-ready").is_file():
        return run_dir, True
    shutil.rmtree(run_dir, ignore_errors=True)
    tiny = work / "latency" / (key + ".data")
    shutil.rmtree(tiny, ignore_errors=True)
    for p in items:  # a few images per class: the head's weights do not change its latency
        dst = tiny / p.parent.relative_to(folder_root) / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    train(tiny, run_dir, TrainConfig(backbone=name, image_size=size, val_split=0.25), overwrite=True)
    export(run_dir, ExportConfig(exporter="torchscript", opset=17, samples=8))
    if tgt.precision is Precision.INT8:
        engine = Engine.ORT if tgt.runtime is Runtime.ONNXRUNTIME else Engine.NNCF
        # the guard's accuracy on a handful of images means nothing here: only the latency counts
        quantize(run_dir, QuantizeConfig(engine=engine, max_drop=0.99, min_agreement=0.0, max_steps=0,
                                         calib_size=len(items), ranking_images=min(8, len(items))))
    shutil.rmtree(tiny, ignore_errors=True)
    (run_dir / "select-ready").write_text("ok\n")
    return run_dir, False


def _measure(run_dirs: list[Path], tgt: Target, cfg: SelectConfig) -> list[dict[str, Any]]:
    """The target's row for each RUN, measured in fresh processes, interleaved."""
    from edgetl.benchmarking import BenchConfig, execute, plan

    bcfg = BenchConfig(targets=(tgt,), warmup=5, duration=cfg.bench_duration, repeats=cfg.bench_repeats,
                       runtimes=None, precisions=None)
    jobs = [j for d in run_dirs for j in plan(d, bcfg) if j.target is not None]
    return execute(jobs, bcfg).results


# ----------------------------------------------------------------------------- choosing


def recommend(candidates: list[dict[str, Any]], budget_ms: float, memory_mb: float | None = None,
              target: str = "the target") -> tuple[str | None, str]:
    """(name, why): the most accurate candidate whose p90 meets ``budget_ms`` (and peak
    memory ``memory_mb``); ties go to the faster. None and the reason when none does."""
    timed = [c for c in candidates if c.get("p90_ms") is not None]
    if not timed:
        return None, f"no candidate could be timed on {target}: " + "; ".join(
            f"{c['backbone']}: {c.get('latency_error')}" for c in candidates)
    fits = [c for c in timed if c["p90_ms"] <= budget_ms and (memory_mb is None or c["peak_rss_mb"] <= memory_mb)]
    if not fits:
        fastest = min(timed, key=lambda c: c["p90_ms"])
        memory = f" and {memory_mb:g} MB" if memory_mb is not None else ""
        return None, (f"no candidate meets the {budget_ms:g} ms p90 budget{memory} on {target}: the fastest, "
                      f"{fastest['backbone']}, takes {fastest['p90_ms']:.3g} ms p90 "
                      f"({fastest['peak_rss_mb']:.0f} MB); raise --budget-ms or pick a faster target")
    best = max(fits, key=lambda c: (c["probe_accuracy"], -c["p90_ms"]))
    others = [c for c in timed if c is not best]
    why = (f"{best['backbone']}: the most accurate within the {budget_ms:g} ms p90 budget on {target} "
           f"(probe accuracy {best['probe_accuracy']:.3f} on {best['n_sample']} sampled images, "
           f"p90 {best['p90_ms']:.3g} ms)")
    better = [c for c in others if c["probe_accuracy"] > best["probe_accuracy"]]
    if better:
        b = max(better, key=lambda c: c["probe_accuracy"])
        why += f"; {b['backbone']} is more accurate ({b['probe_accuracy']:.3f}) but takes {b['p90_ms']:.3g} ms"
    return best["backbone"], why


def _finetune_advice(c: dict[str, Any]) -> dict[str, Any]:
    gap = c["knn_accuracy"] - c["probe_accuracy"]
    reasons = []
    if gap >= CEILING_GAP:
        reasons.append(f"k-NN on the same embeddings reaches {c['knn_accuracy']:.3f}, {gap * 100:.1f} points above "
                       "the linear probe: the classes are there, not linearly separable")
    if c["probe_train_accuracy"] < MIN_TRAIN_ACCURACY:
        reasons.append(f"the probe fits only {c['probe_train_accuracy']:.3f} of its own training sample: "
                       "the frozen features miss part of the distinction")
    likely = bool(reasons)
    why = "; ".join(reasons) if likely else (
        f"the linear probe ({c['probe_accuracy']:.3f}) is within {CEILING_GAP * 100:.0f} points of k-NN "
        f"({c['knn_accuracy']:.3f}) and fits its training sample ({c['probe_train_accuracy']:.3f}): "
        "the linear probe is likely enough")
    return {"backbone": c["backbone"], "likely_to_pay": likely, "why": why,
            "suggest": "--strategy finetune --unfreeze 2" if likely else "--strategy linear-probe"}


# ----------------------------------------------------------------------------- the verb


def _candidates(names: tuple[str, ...] | None, modality: str) -> list[str]:
    from edgetl.workstation.backbones import BUILTIN, create_backbone

    if names is not None:
        return list(names)
    out = [n for n in BUILTIN.names() if create_backbone(n, pretrained=False).modality == modality]
    if not out:
        raise ConfigError(f"no built-in backbone takes {modality} data; name candidates with --backbones")
    return out


def select(data: str | os.PathLike, target: str | os.PathLike | Target, config: SelectConfig | None = None, *,
           plot: str | os.PathLike | None = None) -> SelectReport:
    """Estimate each candidate's transfer accuracy on a sample of ``data`` and its deployed
    latency on ``target``; recommend the most accurate one within the budget."""
    from edgetl.modalities.image import scan_folder
    from edgetl.workstation.backbones import create_backbone

    cfg = config or SelectConfig()
    tgt = load_target(target)
    budget = float(cfg.budget_ms if cfg.budget_ms is not None else tgt.latency_budget_ms)
    work = Path(cfg.work_dir) if cfg.work_dir is not None else default_work_dir()
    folder = scan_folder(data)
    t_start = time.perf_counter()
    idx = _stratified_sample(folder.targets, cfg.sample, cfg.seed)
    paths = [folder.paths[i] for i in idx]
    y = folder.targets[idx]
    tiny_idx = _stratified_sample(folder.targets, 4 * len(folder.labels), cfg.seed + 1)
    tiny = [folder.paths[i] for i in tiny_idx]
    names = _candidates(cfg.backbones, "image")
    rows: list[dict[str, Any]] = []
    run_dirs: list[Path] = []
    for i, name in enumerate(names, 1):
        _ui.info(f"[{i}/{len(names)}] {name}: embedding {len(paths)} images, probe, LogME, export for {tgt.name}")
        t0 = time.perf_counter()
        bb = create_backbone(name)
        spec = bb.preprocess if cfg.image_size is None else bb.preprocess.with_input_size(cfg.image_size)
        X, cached = _embed(bb, spec, paths)
        t1 = time.perf_counter()
        est = _accuracy_estimate(X.astype(np.float64), y, len(folder.labels), cfg)
        seconds_probe, seconds_logme = est.pop("seconds_probe"), est.pop("seconds_logme")
        t2 = time.perf_counter()
        run_dir, run_cached = _latency_run(name, cfg.image_size, tgt, tiny, list(folder.labels), folder.root, work)
        t3 = time.perf_counter()
        run_dirs.append(run_dir)
        rows.append({"backbone": name, "input_size": spec.input_size, "num_features": bb.num_features,
                     "n_sample": len(paths), **est,
                     "seconds": {"embed": t1 - t0, "embed_cached": cached, "probe": seconds_probe,
                                 "logme": seconds_logme, "export_quantize": t3 - t2, "export_cached": run_cached}})
    t_bench = time.perf_counter()
    _ui.info(f"timing {len(names)} backbone(s) on {tgt.name} ({tgt.runtime.value} {tgt.precision.value}), "
             "each in a fresh process")
    for row, res in zip(rows, _measure(run_dirs, tgt, cfg)):
        ok = res.get("status") == "ok"
        row.update(p50_ms=res.get("p50_ms") if ok else None, p90_ms=res.get("p90_ms") if ok else None,
                   peak_rss_mb=res.get("peak_rss_mb") if ok else None, size_mb=res.get("size_mb"),
                   precision_executed=res.get("precision_executed"),
                   latency_error=None if ok else f"{res.get('status')}: {res.get('reason')}")
        row["meets_budget"] = ok and row["p90_ms"] <= budget and row["peak_rss_mb"] <= tgt.memory_budget_mb
    bench_seconds = time.perf_counter() - t_bench
    choice, reason = recommend(rows, budget, tgt.memory_budget_mb, tgt.name)
    finetune = _finetune_advice(next(r for r in rows if r["backbone"] == choice)) if choice else {}
    cost = {"seconds": time.perf_counter() - t_start, "bench_seconds": bench_seconds,
            "per_backbone": {r["backbone"]: r["seconds"] for r in rows},
            "cpu_threads": os.cpu_count(), "note": "embeddings and exported models are cached in the work folder; "
                                                  "a second run re-measures latency only"}
    sample = {"n": len(paths), "of": len(folder.samples), "classes": len(folder.labels), "seed": cfg.seed,
              "folds": rows[0]["probe_folds"] if rows else None, "work_dir": str(work)}
    report = SelectReport(Path(data), tgt.name, budget, tgt.memory_budget_mb, choice, reason, finetune, rows,
                          sample, cost)
    if plot is not None:
        from edgetl.workstation.selection_plot import plot_selection

        report = SelectReport(**{**{f: getattr(report, f) for f in report.__dataclass_fields__},
                                 "plot": plot_selection(report, plot)})
    return report
