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
meets the budget. The cost of the estimate is reported per candidate and stage. With
``sweep_unfreeze`` the recommended backbone is also fine-tuned briefly per depth
(:func:`_unfreeze_sweep`) and the suggested ``--unfreeze`` comes from held-out accuracy.
Images (a class-per-folder tree) and texts (the text modality's candidates) alike.
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

__all__ = ["SelectConfig", "SelectReport", "select", "recommend", "NoCandidateError", "default_work_dir",
           "parse_depths", "suggest_depth", "parse_candidate", "check_candidate_size", "candidate_label"]

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
    max_length: int | None = None  # text: tokens per text; None: each backbone's default (128)
    seed: int = 0
    work_dir: str | os.PathLike | None = None  # caches; None: default_work_dir()
    bench_duration: float = 1.0  # seconds timed per repeat
    bench_repeats: int = 2
    # --sweep-unfreeze: a short fine-tuning of the recommended backbone per depth (None in the
    # tuple: all blocks), on the sample, at a small input size, for a few epochs
    sweep_unfreeze: tuple[int | None, ...] | None = None
    sweep_epochs: int = 3
    sweep_image_size: int | None = 64  # None: the estimate's input size
    sweep_holdout: float = 0.3  # of the sample: held out, never trained on

    def __post_init__(self) -> None:
        if self.backbones is not None:
            names = tuple(b.strip() for b in self.backbones if b and b.strip())
            if not names:
                raise ConfigError("--backbones: give at least one backbone name")
            specs = [parse_candidate(n) for n in names]  # one line for a bad NAME@SIZE
            if len(set(specs)) != len(specs):
                raise ConfigError(f"--backbones: a candidate is given twice ({', '.join(names)})")
            object.__setattr__(self, "backbones", names)
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"budget_ms must be positive, got {self.budget_ms}")
        for name in ("sample", "folds", "knn", "bench_repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (2 if name == "folds" else 1):
                raise ConfigError(f"{name} must be a positive integer{' >= 2' if name == 'folds' else ''}, "
                                  f"got {getattr(self, name)!r}")
        if not self.bench_duration > 0:
            raise ConfigError(f"bench_duration must be positive, got {self.bench_duration}")
        if self.sweep_unfreeze is not None:
            depths = tuple(self.sweep_unfreeze)
            if not depths:
                raise ConfigError("--sweep-unfreeze: give at least one depth (for example 0,1,2,all)")
            if any(d is not None and (not isinstance(d, int) or d < 0) for d in depths):
                raise ConfigError(f"--sweep-unfreeze: depths are block counts >= 0 or 'all', got {depths!r}")
            if len(set(depths)) != len(depths):
                raise ConfigError("--sweep-unfreeze: a depth is given twice")
            object.__setattr__(self, "sweep_unfreeze", depths)
        for name in ("sweep_epochs", "sweep_image_size", "max_length", "image_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 < self.sweep_holdout < 1.0:
            raise ConfigError(f"sweep_holdout must be in (0, 1), got {self.sweep_holdout}")


# NAME@SIZE: the input sizes a candidate may be estimated, exported and timed at. Below 32
# px EfficientNet's five stride-2 stages leave less than one pixel; above 1024 one image
# is 12 MB of float32 input and a sample of 300 embeds for minutes per candidate.
MIN_SIZE, MAX_SIZE = 32, 1024
# For a text backbone SIZE is its token budget (max_length): the text modality's bounds.
MIN_TOKENS, MAX_TOKENS = 8, 512
_EXAMPLE = "example: efficientnet_lite0@160, all_minilm_l6_v2@32"


def parse_candidate(spec: str) -> tuple[str, int | None]:
    """``"efficientnet_lite0@96"`` -> ("efficientnet_lite0", 96); a plain name -> (name, None).
    The size is the candidate's input resolution for an image backbone, its token budget
    (max_length) for a text one: embedded, exported and timed at it (the kind's bounds are
    checked by :func:`check_candidate_size` once the backbone is known). For ``hf:PATH``
    only a tail of digits after the last ``@`` is a size (a path may hold ``@``)."""
    spec = spec.strip()
    if "@" not in spec:
        return spec, None
    name, size = spec.rsplit("@", 1)
    name = name.strip()
    if name.startswith("hf:") and not size.strip().isdigit():
        return spec, None
    if not name:
        raise ConfigError(f"--backbones: {spec!r} has no backbone name before '@' ({_EXAMPLE})")
    if not size.strip().isdigit() or not min(MIN_SIZE, MIN_TOKENS) <= int(size) <= max(MAX_SIZE, MAX_TOKENS):
        raise ConfigError(f"--backbones: {spec!r}: the size after '@' must be a whole number: pixels from {MIN_SIZE} "
                          f"to {MAX_SIZE} for an image backbone, tokens from {MIN_TOKENS} to {MAX_TOKENS} for a "
                          f"text one ({_EXAMPLE})")
    return name, int(size)


def check_candidate_size(name: str, size: int | None, modality: str) -> None:
    """One line when NAME@SIZE is out of the bounds of the backbone's kind."""
    if size is None:
        return
    if modality == "image" and not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"--backbones: {name}@{size}: the input size after '@' must be a whole number of pixels "
                          f"from {MIN_SIZE} to {MAX_SIZE} (example: efficientnet_lite0@160)")
    if modality == "text" and not MIN_TOKENS <= size <= MAX_TOKENS:
        raise ConfigError(f"--backbones: {name}@{size}: for a text backbone the size after '@' is its token budget "
                          f"(max_length), a whole number of tokens from {MIN_TOKENS} to {MAX_TOKENS} "
                          f"(example: all_minilm_l6_v2@32)")


def candidate_label(name: str, size: int | None) -> str:
    return name if size is None else f"{name}@{size}"


def parse_depths(text: str) -> tuple[int | None, ...]:
    """``"0,1,2,all"`` -> (0, 1, 2, None); one clear line for anything else."""
    out: list[int | None] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part == "all":
            out.append(None)
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ConfigError(f"--sweep-unfreeze: {part!r} is not a block count or 'all' (example: 0,1,2,all)")
    return SelectConfig(sweep_unfreeze=tuple(out)).sweep_unfreeze


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


def _embed(backbone, spec, items: list, work: Path) -> tuple[np.ndarray, bool]:
    """The sample's embeddings through the frozen backbone; True when all came from a cache.
    Images: the workstation's embedding path (ONNX Runtime, the shared embedding cache: a
    later ``train`` on the same files reuses them). Texts: PyTorch, cached in the work folder
    by backbone weights, max_length and the texts themselves."""
    import hashlib

    import torch

    from edgetl.workstation.embedding import embed_paths
    from edgetl.workstation.training.data import embed_items

    if _is_image(spec):
        z, report = embed_paths(backbone, items, spec, torch.device("cpu"),
                                description=f"embedding {backbone.name}")
        return z, report["computed"] == 0
    h = hashlib.sha256(f"{backbone.weights_id}|{spec.max_length}".encode())
    for t in items:
        h.update(t.encode("utf-8") + b"\0")
    path = work / "embeddings" / f"{h.hexdigest()[:32]}.npy"
    if path.is_file():
        return np.load(path), True
    with torch.inference_mode():
        z = embed_items(backbone, items, spec, torch.device("cpu"),
                        description=f"embedding {backbone.name}").numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, z)
    os.replace(tmp, path)
    return z, False


def _is_image(spec) -> bool:
    from edgetl.modalities.image import PreprocessSpec

    return isinstance(spec, PreprocessSpec)


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


def _latency_run(name: str, digest: str, modality: str, size: int | None, max_length: int | None, tgt: Target,
                 items: list, y: list[int], labels: list[str], root: Path, work: Path) -> tuple[Path, bool]:
    """A small RUN of ``name`` (head trained on a few sample items), exported and, for an
    int8 target, quantized with the target's engine; cached by the backbone's weights (two
    names of the same weights, such as a built-in and its folder as ``hf:PATH``, deploy
    the same graph), input shape and target."""
    from edgetl.workstation.onnx_export import ExportConfig, export
    from edgetl.workstation.quantization import Engine, QuantizeConfig, quantize
    from edgetl.workstation.training import TrainConfig, train

    shape = (size or "native") if modality == "image" else f"len{max_length or 'default'}"
    key = f"{digest[:16]}-{shape}-{tgt.runtime.value}-{tgt.precision.value}-{len(labels)}c"
    run_dir = work / "latency" / key
    if (run_dir / "select-ready").is_file():
        return run_dir, True
    shutil.rmtree(run_dir, ignore_errors=True)
    tiny = work / "latency" / (key + ".data")
    shutil.rmtree(tiny, ignore_errors=True)
    if modality == "image":  # a few images per class: the head's weights do not change its latency
        for p in items:
            dst = tiny / p.parent.relative_to(root) / p.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
        data, tcfg = tiny, TrainConfig(backbone=name, image_size=size, val_split=0.25)
    else:
        import csv

        tiny.mkdir(parents=True)
        data = tiny / "texts.csv"
        with open(data, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((t, labels[c]) for t, c in zip(items, y))
        tcfg = TrainConfig(backbone=name, max_length=max_length, val_split=0.25, device="cpu")
    train(data, run_dir, tcfg, overwrite=True)
    export(run_dir, ExportConfig(exporter="torchscript", opset=17, samples=8))
    if tgt.precision is Precision.INT8:
        engine = Engine.ORT if tgt.runtime is Runtime.ONNXRUNTIME else Engine.NNCF
        # the guard's accuracy on a handful of items means nothing here: only the latency counts
        quantize(run_dir, QuantizeConfig(engine=engine, max_drop=0.99, min_agreement=0.0, max_steps=0,
                                         calib_size=len(items), ranking_images=min(8, len(items))))
    shutil.rmtree(tiny, ignore_errors=True)
    (run_dir / "select-ready").write_text(f"{name}\n")
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
              target: str = "the target", noun: str = "image") -> tuple[str | None, str]:
    """(name, why): the most accurate candidate whose p90 meets ``budget_ms`` (and peak
    memory ``memory_mb``); ties go to the faster. None and the reason when none does."""
    timed = [c for c in candidates if c.get("p90_ms") is not None]
    if not timed:
        return None, f"no candidate could be timed on {target}: " + "; ".join(
            f"{_label(c)}: {c.get('latency_error')}" for c in candidates)
    fits = [c for c in timed if c["p90_ms"] <= budget_ms and (memory_mb is None or c["peak_rss_mb"] <= memory_mb)]
    if not fits:
        fastest = min(timed, key=lambda c: c["p90_ms"])
        memory = f" and {memory_mb:g} MB" if memory_mb is not None else ""
        return None, (f"no candidate meets the {budget_ms:g} ms p90 budget{memory} on {target}: the fastest, "
                      f"{_label(fastest)}, takes {fastest['p90_ms']:.3g} ms p90 "
                      f"({fastest['peak_rss_mb']:.0f} MB); raise --budget-ms or pick a faster target")
    best = max(fits, key=lambda c: (c["probe_accuracy"], -c["p90_ms"]))
    others = [c for c in timed if c is not best]
    why = (f"{_label(best)}: the most accurate within the {budget_ms:g} ms p90 budget on {target} "
           f"(probe accuracy {best['probe_accuracy']:.3f} on {best['n_sample']} sampled {noun}s, "
           f"p90 {best['p90_ms']:.3g} ms)")
    better = [c for c in others if c["probe_accuracy"] > best["probe_accuracy"]]
    if better:
        b = max(better, key=lambda c: c["probe_accuracy"])
        why += f"; {_label(b)} is more accurate ({b['probe_accuracy']:.3f}) but takes {b['p90_ms']:.3g} ms"
    return _label(best), why


def _label(c: dict[str, Any]) -> str:
    """A candidate's name as given: the backbone, or NAME@SIZE."""
    return c.get("candidate") or c["backbone"]


# ----------------------------------------------------------------------------- the sweep


def _depth_name(d: int | None) -> str:
    return "all" if d is None else str(d)


def _unfreeze_sweep(name: str, items: list, y: np.ndarray, n_classes: int, spec, cfg: SelectConfig) -> dict[str, Any]:
    """The linear probe and a short LP-FT fine-tuning per depth of ``cfg.sweep_unfreeze``,
    each from the same pretrained weights, trained on one stratified part of the sample and
    scored on the rest (``sweep_holdout``), at the last epoch of a fixed schedule. The
    held-out part chooses nothing: the probe's C is cross-validated on the training part
    only, that probe is every fine-tuning's starting head (LP-FT), and no epoch is picked
    on the held-out part (no early stopping)."""
    import copy

    import torch

    from edgetl.core.data import stratified_split
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.model import EdgeModel
    from edgetl.workstation.probe_solver import cross_validate_C, fit_logreg, score_head
    from edgetl.workstation.training import TrainConfig
    from edgetl.workstation.training.data import embed_items
    from edgetl.workstation.training.strategies import STRATEGIES, FitData

    tr, ho = stratified_split(y, cfg.sweep_holdout, cfg.seed)
    pick = lambda idx: [items[i] for i in idx]  # noqa: E731
    base = create_backbone(name)
    image = _is_image(spec)
    cpu = torch.device("cpu")
    t_all = time.perf_counter()
    _ui.info(f"sweep {name}: linear probe on {len(tr)} sampled items, held-out {len(ho)}")
    t0 = time.perf_counter()
    with torch.inference_mode():
        z = embed_items(base, items, spec, cpu, description=f"embedding {name}",
                        options=TrainConfig().embed_options() if image else None).numpy().astype(np.float64)
    C, _ = cross_validate_C(z[tr], y[tr], n_classes, folds=cfg.folds, seed=cfg.seed)
    W, b = fit_logreg(z[tr], y[tr], n_classes, C)
    heldout_loss, heldout_accuracy = score_head(W, b, z[ho], y[ho])
    rows = [{"unfreeze": "probe", "heldout_accuracy": heldout_accuracy, "heldout_loss": heldout_loss,
             "train_accuracy": score_head(W, b, z[tr], y[tr])[1], "epochs": 0,
             "trainable_params": int(W.size + b.size), "seconds": time.perf_counter() - t0, "C": C}]
    for depth in cfg.sweep_unfreeze:
        label = _depth_name(depth)
        _ui.info(f"sweep {name}: LP-FT, --unfreeze {label}, {cfg.sweep_epochs} epochs")
        torch.manual_seed(cfg.seed)
        model = EdgeModel(copy.deepcopy(base.module), base.num_features, n_classes, 0.0)
        with torch.no_grad():  # LP-FT: the head starts from the probe above
            model.head.weight.copy_(torch.from_numpy(W))
            model.head.bias.copy_(torch.from_numpy(b))
        tcfg = TrainConfig(backbone=name, strategy="finetune", unfreeze=depth, epochs=cfg.sweep_epochs,
                           patience=cfg.sweep_epochs + 1, seed=cfg.seed, device="cpu", lp_ft=False,
                           augment=image, warmup_epochs=1 if cfg.sweep_epochs > 2 else 0).resolved()
        t0 = time.perf_counter()
        fitted = STRATEGIES.get(tcfg.strategy.value)(FitData(model, tcfg, pick(tr), y[tr].tolist(), pick(ho),
                                                             y[ho].tolist(), spec, cpu))
        last = fitted.history[-1]
        rows.append({"unfreeze": label, "heldout_accuracy": last["val_acc"], "heldout_loss": last["val_loss"],
                     "train_accuracy": last["train_acc"], "epochs": len(fitted.history),
                     "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                     "seconds": time.perf_counter() - t0})
    suggested, why = suggest_depth(rows, len(ho))
    return {"backbone": name, "rows": rows, "suggested": suggested, "why": why, "n_train": len(tr),
            "n_heldout": len(ho), "epochs": cfg.sweep_epochs,
            "input_size": getattr(spec, "input_size", None), "max_length": getattr(spec, "max_length", None),
            "seconds": time.perf_counter() - t_all}


def suggest_depth(rows: list[dict[str, Any]], n_heldout: int) -> tuple[str, str]:
    """The cheapest row (in the given order: probe, then the depths as swept) whose held-out
    accuracy is within one standard error of the best's (the one-standard-error rule: on a
    held-out part of a few dozen items, smaller differences are noise)."""
    best = max(rows, key=lambda r: r["heldout_accuracy"])
    p = best["heldout_accuracy"]
    se = float(np.sqrt(max(p * (1 - p), 1.0 / n_heldout) / n_heldout))
    pick = next(r for r in rows if r["heldout_accuracy"] >= p - se)
    what = "the linear probe" if pick["unfreeze"] == "probe" else f"--unfreeze {pick['unfreeze']}"
    why = (f"{what}: held-out {pick['heldout_accuracy']:.3f} of {n_heldout}, within one standard error "
           f"({se:.3f}) of the best ({'probe' if best['unfreeze'] == 'probe' else 'unfreeze ' + best['unfreeze']}"
           f", {p:.3f}) at the least cost")
    return pick["unfreeze"], why


def _finetune_advice(c: dict[str, Any], sweep: dict[str, Any] | None = None) -> dict[str, Any]:
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
    out = {"backbone": c["backbone"], "candidate": _label(c), "likely_to_pay": likely, "why": why,
           "suggest": "--strategy finetune --unfreeze 2" if likely else "--strategy linear-probe",
           "unfreeze": 2 if likely else None, "from": "ceilings"}
    if sweep is not None:  # measured beats the rule of thumb
        d = sweep["suggested"]
        measured = ", ".join(f"{'probe' if r['unfreeze'] == 'probe' else 'unfreeze ' + r['unfreeze']} "
                             f"{r['heldout_accuracy']:.3f} ({r['seconds']:.0f} s)" for r in sweep["rows"])
        out.update(likely_to_pay=d != "probe", from_="sweep", suggest="--strategy linear-probe" if d == "probe"
                   else f"--strategy finetune --unfreeze {d}",
                   unfreeze=None if d == "probe" else (d if d == "all" else int(d)),
                   why=f"sweep on {sweep['n_heldout']} held-out sampled items ({sweep['epochs']} epochs"
                       f"{', ' + str(sweep['input_size']) + ' px' if sweep['input_size'] else ''}): {measured}; "
                       f"{sweep['why']}. (Without the sweep, from the ceilings: {why}.)")
        out["from"] = out.pop("from_")
        out["sweep"] = sweep
    return out


# ----------------------------------------------------------------------------- the verb


def _data_modality(data: Path) -> str:
    """``text`` for a CSV/TSV/JSONL file or a folder of class subfolders of .txt files."""
    from edgetl.modalities.text import TEXT_SUFFIXES

    if data.is_file():
        return "text" if data.suffix.lower() in (*TEXT_SUFFIXES, ".txt") else "image"
    if data.is_dir():
        from edgetl.modalities.image import find_images

        if any(data.rglob("*.txt")) and not find_images(data):
            return "text"
    return "image"


def _candidates(names: tuple[str, ...] | None, modality: str, data: Path) -> list[str]:
    from edgetl.errors import DataError
    from edgetl.workstation.backbones import BUILTIN, create_backbone

    if names is None:
        names = tuple(n for n in BUILTIN.names() if create_backbone(n, pretrained=False).modality == modality)
        if not names:
            raise ConfigError(f"no built-in backbone takes {modality} data; name candidates with --backbones")
    specs = [parse_candidate(n) for n in names]
    for n, size in specs:  # the wrong kind for DATA is one line, before anything is computed
        kind = create_backbone(n, pretrained=False).modality
        if kind != modality:
            raise DataError(f"{data}: is {modality} data, but {n} is {'an' if kind == 'image' else 'a'} {kind} backbone; "
                            f"name {modality} backbones with --backbones")
        check_candidate_size(n, size, kind)  # pixels for an image backbone, tokens for a text one
    return specs


def _spec(bb, cfg: SelectConfig, size: int | None = None):
    """The backbone's input spec for the estimate: an image size, or a text length (a
    candidate's NAME@N, else --max-length) bound to the backbone's own tokenizer.json."""
    from dataclasses import replace

    if bb.modality == "image":
        size = size or cfg.image_size
        return bb.preprocess if size is None else bb.preprocess.with_input_size(size)
    from edgetl.modalities.text import TOKENIZER, TextSpec

    length = size or cfg.max_length
    spec = bb.preprocess if length is None else TextSpec(length)
    return replace(spec, tokenizer=str(bb.files[TOKENIZER]))


def select(data: str | os.PathLike, target: str | os.PathLike | Target, config: SelectConfig | None = None, *,
           plot: str | os.PathLike | None = None) -> SelectReport:
    """Estimate each candidate's transfer accuracy on a sample of ``data`` and its deployed
    latency on ``target``; recommend the most accurate one within the budget. Images (a
    class-per-folder tree) or texts (CSV/TSV/JSONL, or class folders of .txt files)."""
    from edgetl.modalities import get_modality
    from edgetl.workstation.backbones import create_backbone

    cfg = config or SelectConfig()
    tgt = load_target(target)
    budget = float(cfg.budget_ms if cfg.budget_ms is not None else tgt.latency_budget_ms)
    work = Path(cfg.work_dir) if cfg.work_dir is not None else default_work_dir()
    data_path = Path(data)
    modality = _data_modality(data_path)
    names = _candidates(cfg.backbones, modality, data_path)
    if modality == "image" and cfg.max_length is not None:
        raise ConfigError("--max-length is for text data; the candidates here take images")
    if modality == "text" and cfg.image_size is not None:
        raise ConfigError("--image-size is for images; the candidates here take text")
    found = get_modality(modality).scan(data_path)
    noun = get_modality(modality).item_noun
    t_start = time.perf_counter()
    idx = _stratified_sample(found.targets, cfg.sample, cfg.seed)
    items = [found.items[i] for i in idx]
    y = found.targets[idx]
    tiny_idx = _stratified_sample(found.targets, 4 * len(found.labels), cfg.seed + 1)
    tiny = [found.items[i] for i in tiny_idx]
    rows: list[dict[str, Any]] = []
    run_dirs: list[Path] = []
    for i, (name, size) in enumerate(names, 1):
        label = candidate_label(name, size)
        _ui.info(f"[{i}/{len(names)}] {label}: embedding {len(items)} {noun}s, probe, LogME, export for {tgt.name}")
        t0 = time.perf_counter()
        bb = create_backbone(name)
        spec = _spec(bb, cfg, size)
        X, cached = _embed(bb, spec, items, work)
        t1 = time.perf_counter()
        est = _accuracy_estimate(X.astype(np.float64), y, len(found.labels), cfg)
        seconds_probe, seconds_logme = est.pop("seconds_probe"), est.pop("seconds_logme")
        t2 = time.perf_counter()
        image = modality == "image"  # NAME@SIZE: pixels for an image backbone, tokens for a text one
        run_dir, run_cached = _latency_run(name, bb.weights_id, modality,
                                           (size or cfg.image_size) if image else None,
                                           None if image else spec.max_length, tgt, tiny,
                                           found.targets[tiny_idx].tolist(), list(found.labels), Path(found.root),
                                           work)
        t3 = time.perf_counter()
        run_dirs.append(run_dir)
        shape = {"input_size": spec.input_size} if modality == "image" else {"input_size": None,
                                                                             "max_length": spec.max_length}
        rows.append({"backbone": name, "candidate": label, **shape, "num_features": bb.num_features,
                     "n_sample": len(items), **est,
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
    choice, reason = recommend(rows, budget, tgt.memory_budget_mb, tgt.name, noun)
    if choice and len(rows) == 1:
        reason += f"; the only candidate for {modality} data (name more with --backbones, e.g. hf:PATH)"
    sweep = None
    sweep_seconds = 0.0
    chosen = next((r for r in rows if r["candidate"] == choice), None)
    if choice and cfg.sweep_unfreeze:
        t_sweep = time.perf_counter()
        bb = create_backbone(chosen["backbone"])
        spec = _spec(bb, cfg, (cfg.sweep_image_size or chosen["input_size"]) if modality == "image"
                     else chosen["max_length"])  # text: the chosen candidate's token budget
        sweep = _unfreeze_sweep(chosen["backbone"], items, y, len(found.labels), spec, cfg)
        sweep["candidate"] = choice
        sweep_seconds = time.perf_counter() - t_sweep
    finetune = _finetune_advice(chosen, sweep) if choice else {}
    cost = {"seconds": time.perf_counter() - t_start, "bench_seconds": bench_seconds, "sweep_seconds": sweep_seconds,
            "per_backbone": {r["candidate"]: r["seconds"] for r in rows},
            "cpu_threads": os.cpu_count(), "note": "embeddings and exported models are cached in the work folder; "
                                                  "a second run re-measures latency only (and re-runs a sweep)"}
    sample = {"n": len(items), "of": len(found.items), "classes": len(found.labels), "seed": cfg.seed,
              "folds": rows[0]["probe_folds"] if rows else None, "work_dir": str(work), "modality": modality,
              "noun": noun, "candidates": len(rows)}
    report = SelectReport(data_path, tgt.name, budget, tgt.memory_budget_mb, choice, reason, finetune, rows,
                          sample, cost)
    if plot is not None:
        from edgetl.workstation.selection_plot import plot_selection

        report = SelectReport(**{**{f: getattr(report, f) for f in report.__dataclass_fields__},
                                 "plot": plot_selection(report, plot)})
    return report
