"""Retrain a bundle's head on the device from a labelled image folder. Torch-free.

    from edgetl.device import retrain
    report = retrain("bundle/", "new_photos/", epochs=30)
    print(report.accuracy_before, report.accuracy_after, report.version)

The flow: DATA is embedded once by the bundle's deployed backbone (its runtime and
precision, raw output; the live adapter, if any, is applied before the head). Classes the
bundle does not know grow the head (:func:`~edgetl.device.learn.grow_head`; new
rows start at the mean of the old ones, so no old prediction changes). The replay memory
(:mod:`edgetl.device.memory`) joins the training side, so classes DATA lacks are not
forgotten. The head is trained with ONNX Runtime training artifacts, the best epoch by
holdout loss is kept, and the new version (head, training artifacts for it, merged
memory, extended labels) is written beside the old one and switched in atomically by
:func:`edgetl.device.bundle.update_bundle`; ``edgetl rollback`` returns to the old one.

**What "accuracy before/after" means.** The holdout is a seeded, stratified ``holdout``
fraction of DATA's images *plus*, for classes that are in the memory but not in DATA, the
same fraction of their memory rows (held out of training). Before = the current head on
that holdout (images of new classes count as wrong: it cannot name them); after = the
new head, run from the exported ``head.onnx``. ``groups`` splits it into ``old`` (classes
the bundle knew) and ``new`` classes. Caveats, stated rather than hidden: the holdout also
picks the best epoch (device data sets are too small for a third split), and memory rows
came from the workstation's *training* split, so ``old``-class accuracy "before" on them
is a training accuracy; it measures forgetting, not generalisation.

**Adding classes without forgetting.** The memory keeps herded exemplars (closest to each
class mean; :mod:`edgetl.device.memory`), within ``memory_per_class`` rows or a
``memory_mb`` budget. When DATA adds classes the default learner (``learner`` auto or
exact) is :func:`edgetl.device.learn.addition.add_classes`: the live head's rows are kept
exactly and the new classes' rows are solved to the optimum of a class-balanced logistic
regression over every row (DATA and memory; nothing held out of training), at the C that
makes them as large as the old rows. No learning rate, no epochs; the head does not depend
on the seed. It is judged on ``folds``-fold out-of-fold predictions: "accuracy before/after"
are then the live head and the out-of-fold predictions on every row (``n_holdout`` counts
them, ``n_holdout_memory`` the memory's); the memory rows' "before" is a training accuracy
of the workstation's head, as above. With ``learner`` adamw (and always when DATA only
refines known classes) AdamW trains as described above, batches are class-balanced over
memory + DATA, and after adding classes the grown head's bias toward its new classes is
corrected (``bias_correction``: weight aligning or a two-number bias-correction layer fit on
the holdout, :mod:`edgetl.device.learn.bias`), kept only if it lowers the class-balanced
holdout loss. The report's ``forgetting`` gives the old classes' retention (after / before)
and largest per-class drop; ``learner`` how the head was learnt.

The AdamW learning rate defaults to ``1 / mean |z|_1`` of the training embeddings (see
``_auto_lr``): backbones differ by orders of magnitude in embedding scale. The new memory
offers all of DATA's embedded images (train and holdout) to the reservoir.

**Never ship a worse head.** If accuracy after is below before on the holdout, the bundle
is left untouched and the report says so (``switched`` False) unless ``force``; likewise
when no epoch beat the starting head's holdout loss (nothing learned). Every
refusal (bad data, tampered bundle, worse head) leaves the bundle byte for byte as it was:
all work happens in a temporary folder, and the bundle is written only by the final update.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core.data import check_number, check_seed
from edgetl.core import ui as _ui
from edgetl.errors import BundleError, ConfigError, DataError
from edgetl.core.report import Report
from edgetl.device.bundle import work_dir
from edgetl.device.learn import (
    HeadTrainConfig,
    HeadTrainResult,
    Trainer,
    artifacts_start_from,
    fit_head,
    grow_head,
    head_metadata,
    make_head_onnx,
    make_training_artifacts,
    read_head,
    resolve_trainer,
)
from edgetl.device.learn.bias import CORRECTIONS, choose_correction
from edgetl.device.learn.head import choice
from edgetl.device.memory import (MEMORY_FILE, ReplayMemory, Selection, check_per_class, check_selection,
                                  embed_images, per_class_for_budget, resolve_per_class)

__all__ = ["BiasCorrection", "Learner", "RetrainConfig", "RetrainReport", "retrain"]


class Learner(str, Enum):
    """What learns the head (see the module docstring)."""

    AUTO = "auto"  # exact when DATA adds classes, else AdamW
    EXACT = "exact"  # adding classes: old rows kept, new rows solved exactly (edgetl.device.learn.addition)
    ADAMW = "adamw"  # AdamW epochs from the current head (ONNX Runtime artifacts or numpy, --trainer)


BiasCorrection = Enum("BiasCorrection", {m.upper().replace("-", "_"): m for m in CORRECTIONS}, type=str)
BiasCorrection.__doc__ = "What corrects the grown head's bias toward new classes (edgetl.device.learn.bias)."

HEAD_FILE = "head.onnx"
TRAINING_DIR = "training"


@dataclass(frozen=True)
class RetrainConfig:
    """Options of :func:`retrain` (the CLI builds the same object)."""

    epochs: int = 50
    lr: float | None = None  # None: 1 / mean L1 norm of the training embeddings (see _auto_lr)
    batch_size: int = 32
    holdout: float = 0.2  # fraction of DATA (and of memory-only classes' memory) held out
    patience: int = 10  # epochs without a lower holdout loss before stopping; 0 = never
    memory_per_class: int | None = None  # None: the default budget in the memory's precision (default_per_class)
    memory_mb: float | None = None  # replay-memory budget in MB (10^6 bytes); overrides memory_per_class
    memory_selection: Selection = Selection.HERDING  # which rows the merged memory keeps
    bias_correction: BiasCorrection = BiasCorrection.FIT  # only when new classes are added (learn/bias.py)
    seed: int = 0  # holdout split, batch order, memory selection
    weight_decay: float = 1e-2
    strict: bool = False  # refuse DATA with unreadable files instead of skipping them
    force: bool = False  # switch even if the holdout accuracy got worse
    verify: bool = True  # check the bundle's file hashes before retraining
    allow_nonconforming: bool = False  # retrain a bundle that fails its conformance check here (with a warning)
    trainer: Trainer = Trainer.AUTO  # AdamW: ort (training artifacts) where installed, else numpy
    sign_key: str | os.PathLike | None = None  # a private key file: the new version is signed with it
    learner: Learner = Learner.AUTO  # exact when adding classes, else AdamW (see Learner)
    folds: int = 5  # exact learner: the out-of-fold estimate the gate judges (stratified, seeded)

    def __post_init__(self) -> None:
        # (0, 1): without a holdout, nothing could show that the new head is not worse
        check_number("holdout", self.holdout, 0.0, 1.0, lo_open=True, hi_open=True)
        check_per_class(self.memory_per_class)
        if self.memory_mb is not None:
            per_class_for_budget(self.memory_mb, 1, 1)  # bounds; the fit is checked once F and C are known
        object.__setattr__(self, "memory_selection", check_selection(self.memory_selection))
        object.__setattr__(self, "bias_correction", choice(BiasCorrection, self.bias_correction, "bias_correction"))
        object.__setattr__(self, "learner", choice(Learner, self.learner, "learner"))
        if not (isinstance(self.folds, int) and not isinstance(self.folds, bool) and 2 <= self.folds <= 20):
            raise ConfigError(f"folds must be an integer from 2 to 20, got {self.folds!r}")
        check_seed(self.seed)
        self.head_config(1e-2 if self.lr is None else self.lr)  # validates epochs, lr, batch_size, ...

    def head_config(self, lr: float | None = None) -> HeadTrainConfig:
        lr = self.lr if lr is None else lr
        if lr is None:
            raise ConfigError("head_config needs a learning rate when RetrainConfig.lr is None (automatic)")
        return HeadTrainConfig(epochs=self.epochs, lr=lr, batch_size=self.batch_size, seed=self.seed,
                               patience=self.patience, weight_decay=self.weight_decay, trainer=self.trainer)


def _auto_lr(X: np.ndarray) -> float:
    """AdamW moves every weight by about ``lr`` per step, so a logit moves by up to
    ``lr * |z|_1``; ``lr = 1 / mean |z|_1`` keeps that near 1 whatever the backbone's
    embedding scale. Measured on the real pipeline (efficientnet_lite0 int8, |z|_1 ~ 316,
    digits 8/9 added to a 0-7 bundle, 3 seeds): lr 1e-3 -> new-class accuracy 0.80-0.88,
    3e-3 -> 0.84-0.89, 1e-2 -> 0.70-0.83 (best epoch 4-6: too noisy), 3e-2 -> 0.00-0.84.

    Unit-norm sentence embeddings (all-MiniLM-L6-v2 in PyTorch, |z|_1 ~ 15.5, so lr ~ 0.064),
    checked at the embedding level (fresh/rotten known from 300 reviews each, plot added from 40,
    20 exemplars a class, 3 holdout seeds): old-class accuracy kept 97.5% and new 0.64 at this
    rate, 88.1% and 0.32 at 3e-3, 92.9% and 0.50 at 1e-2 (under 100 steps in all: the small
    rates do not get there). A centred L1 norm gives 0.071 (the same results) and
    ``0.1 / sqrt(F * centred mean |z|^2)`` 0.0056 (91.2%, 0.39), so the rule stays."""
    scale = float(np.abs(X).sum(axis=1).mean()) if len(X) else 0.0
    return float(np.clip(1.0 / scale, 1e-4, 1e-1)) if scale > 0 else 1e-2


@dataclass(frozen=True)
class RetrainReport(Report):
    """What :func:`retrain` did. ``version`` is the live version afterwards (unchanged
    when ``switched`` is False, with ``reason`` saying why)."""

    bundle: str
    switched: bool
    version: int
    previous_version: int
    accuracy_before: float | None
    accuracy_after: float | None
    groups: dict[str, dict[str, Any]]  # "old"/"new": {"before", "after", "n"}
    per_class: dict[str, dict[str, Any]]  # label: {"before", "after", "n"}
    labels: list[str]
    new_classes: list[str]
    n_images: int  # DATA images embedded
    n_train: int  # training rows: DATA train split + replayed memory
    n_holdout: int
    n_holdout_memory: int  # of n_holdout, rows from the memory
    n_memory: int  # rows in the memory after the update (or now, if not switched)
    skipped: list[dict[str, str]]  # DATA files that could not be read
    epochs: int  # epochs run (early stopping may end before config.epochs)
    lr: float | None  # the learning rate used (config.lr, or the automatic one); None: the exact learner
    best_epoch: int  # 0 = the starting head
    first_step_loss: float | None  # None: the exact learner (no steps)
    reason: str | None = None
    forced: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # embed, train, total
    trainer: str = "ort"  # which trainer ran: ort (training artifacts) or numpy
    # class addition: {"method", "kept", "candidates": {method: balanced holdout loss}, "alpha", "beta"}
    bias_correction: dict[str, Any] = field(default_factory=dict)
    # holdout accuracy of the classes the bundle knew: {"old_retained": after/before, "max_drop",
    # "max_drop_class", "new_accuracy"}
    forgetting: dict[str, Any] = field(default_factory=dict)
    memory_per_class: int = 0  # rows per class the new memory may keep
    memory_selection: str = Selection.HERDING.value
    # the exact learner: {"method": "exact", "C", "old_norm", "new_norm", "evaluation"}; AdamW: {"method": "adamw"}
    learner: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the steps


@dataclass
class _Live:
    """The version retraining starts from: its predictor, head, labels and memory."""

    root: Path
    predictor: Any
    manifest: dict[str, Any]
    W: np.ndarray
    b: np.ndarray
    labels: list[str]
    memory: ReplayMemory
    head_path: Path


@dataclass
class _Sets:
    """DATA embedded and joined with the replay memory: training and holdout rows."""

    z_raw: np.ndarray  # DATA embeddings, raw backbone output (what the memory keeps)
    y_data: np.ndarray
    n_images: int
    skipped: list[tuple[str, str]]
    X_train: np.ndarray
    y_train: np.ndarray
    X_hold: np.ndarray
    y_hold: np.ndarray
    n_holdout_memory: int
    embed_seconds: float


def _check_writable(root: Path) -> None:
    if not root.is_dir():
        raise BundleError(f"{root}: retraining needs a bundle folder (extract an archive first)")
    if not os.access(root, os.W_OK | os.X_OK):
        raise BundleError(f"{root}: the bundle folder is not writable; retraining would fail to save, "
                          "nothing was changed (fix its permissions)")


def _scan(data: str | os.PathLike, modality: Any, strict: bool):
    from edgetl.tasks import DEFAULT_TASK, check_data_for

    check_data_for(DEFAULT_TASK, data, modality.name)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        return modality.scan(data, strict=strict, min_classes=1)


def _open_live(root: Path, verify: bool, allow_nonconforming: bool = False) -> _Live:
    from edgetl.device.predictor import Predictor

    predictor = Predictor.from_bundle(root, verify=verify, conformance="warn" if allow_nonconforming else "refuse")
    bundle = predictor.bundle
    labels = list(bundle.labels)
    head_path = bundle.model_path("head")
    W, b, head_labels = read_head(head_path)
    if head_labels != labels:
        raise BundleError(f"{root}: head.onnx labels {head_labels} differ from the manifest's {labels}; re-package")
    memory_path = bundle.optional_path("memory")
    memory = ReplayMemory.load(memory_path) if memory_path else ReplayMemory.empty(labels, W.shape[1])
    if len(memory) and memory.num_features != W.shape[1]:
        raise BundleError(f"{root}: replay memory has {memory.num_features} features, the head {W.shape[1]}; re-package")
    return _Live(root, predictor, bundle.manifest, W, b, labels, memory, head_path)


def _check_classes(folder: Any, live: _Live, memory: ReplayMemory) -> None:
    if len(set(folder.labels) | set(memory.classes)) < 2:
        have = "the bundle has no replay memory" if not len(memory) else "its replay memory holds no other class"
        raise DataError(f"{folder.root}: holds only class {folder.labels[0]!r} and {have}; retraining needs "
                        "examples of at least 2 classes")
    missing = [c for c in live.labels if c not in folder.labels]
    if not len(memory) and missing:
        _ui.warn(f"the bundle has no replay memory and DATA lacks class(es) {', '.join(missing)}: "
                 "the retrained head may forget them, and the holdout cannot measure it")


def _embed_and_assemble(live: _Live, folder: Any, memory: ReplayMemory, all_labels: list[str],
                        cfg: RetrainConfig, holdout: float) -> _Sets:
    """Embed DATA once (raw; the live adapter is applied to what trains), then split it and
    the memory: the holdout is DATA's stratified slice plus a slice of the memory for
    classes DATA lacks (see the module docstring)."""
    from edgetl.core.data import stratified_split

    predictor = live.predictor
    t0 = time.perf_counter()
    z_raw, ok = embed_images(predictor, list(folder.items), strict=cfg.strict, description="embedding DATA")
    embed_seconds = time.perf_counter() - t0
    skipped = list(folder.skipped)
    skipped += [(folder.describe(i), "could not be read") for i in sorted(set(range(len(folder.items))) - set(ok))]
    if skipped:
        _ui.warn(f"skipped {len(skipped)} unreadable item(s) in {folder.root}, e.g. {skipped[0][0]}: {skipped[0][1]}")
    if not ok:
        raise DataError(f"{folder.root}: none of its items could be read; nothing to retrain on")
    index = {c: i for i, c in enumerate(all_labels)}
    y_data = np.asarray([index[folder.labels[folder.targets[i]]] for i in ok], np.int64)
    z_data = predictor.apply_adapter(z_raw)
    tr, ho = stratified_split(y_data, holdout, cfg.seed) if holdout > 0 else (np.arange(len(y_data)), np.arange(0))
    memory_only = [c for c in memory.classes if c not in folder.labels]
    mem_tr, mem_ho = memory.split(holdout, cfg.seed, classes=memory_only)
    z_mem = predictor.apply_adapter(memory.embeddings) if len(memory) else memory.embeddings
    return _Sets(
        z_raw, y_data, len(ok), skipped,
        np.concatenate([z_data[tr], z_mem[mem_tr]]).astype(np.float32), np.concatenate([y_data[tr], memory.labels[mem_tr]]),
        np.concatenate([z_data[ho], z_mem[mem_ho]]).astype(np.float32), np.concatenate([y_data[ho], memory.labels[mem_ho]]),
        len(mem_ho), embed_seconds,
    )


def _train(live: _Live, sets: _Sets, all_labels: list[str], n_new: int, cfg: RetrainConfig, work: Path,
           trainer: Trainer) -> tuple[HeadTrainResult, float]:
    """The grown head trained on the training rows, best epoch by holdout loss, exported to
    ``work/new/head.onnx``. ONNX Runtime reuses the bundle's artifacts when they start from
    this head, else generates them; numpy needs none."""
    W, b = grow_head(live.W, live.b, n_new) if n_new else (live.W, live.b)
    metadata = {k: v for k, v in head_metadata_of(live.head_path).items()}
    artifacts = None
    if trainer is Trainer.ORT:
        training_rel = live.manifest.get("training")
        if not n_new and training_rel and artifacts_start_from(live.predictor.bundle.path(training_rel), W, b):
            artifacts = live.predictor.bundle.path(training_rel)  # read only: training never writes to it
        else:
            if not n_new and training_rel:
                _ui.warn("the bundle's training artifacts do not match its head; generating new ones")
            start = make_head_onnx(W, b, all_labels, work / "start" / HEAD_FILE, metadata=metadata)
            artifacts = work / "start" / TRAINING_DIR
            make_training_artifacts(start, artifacts)
    lr = cfg.lr if cfg.lr is not None else _auto_lr(sets.X_train)
    has_holdout = len(sets.y_hold) > 0
    result = fit_head(W, b, all_labels, sets.X_train, sets.y_train, sets.X_hold if has_holdout else None,
                      sets.y_hold if has_holdout else None, cfg.head_config(lr), metadata=metadata,
                      artifacts_dir=artifacts, export_path=work / "new" / HEAD_FILE)
    return result, lr


def _correct_bias(live: _Live, sets: _Sets, result: HeadTrainResult, all_labels: list[str], cfg: RetrainConfig,
                  work: Path) -> dict[str, Any]:
    """After class addition: :func:`~edgetl.device.learn.bias.choose_correction` on the
    holdout; a kept correction replaces ``work/new/head.onnx``. Returns what was tried."""
    W, b, info = choose_correction(result.W, result.b, len(live.labels), sets.X_hold, sets.y_hold,
                                   cfg.bias_correction.value)
    if info["kept"]:
        from edgetl.device.learn.trainer import verify_export

        path = make_head_onnx(W, b, all_labels, work / "new" / HEAD_FILE, metadata=head_metadata_of(live.head_path))
        verify_export(path, W, b, sets.X_hold)
    return info


def _forgetting(measures: dict[str, Any], live: _Live) -> dict[str, Any]:
    """Old-class retention on the holdout: after / before, the largest per-class drop."""
    old = measures["groups"]["old"]
    drops = {c: g["before"] - g["after"] for c, g in measures["per_class"].items()
             if c in live.labels and g["after"] is not None}
    worst = max(drops, key=drops.get) if drops else None
    retained = old["after"] / old["before"] if old["n"] and old["after"] is not None and old["before"] else None
    return {"old_retained": retained, "max_drop": drops[worst] if worst else None, "max_drop_class": worst,
            "new_accuracy": measures["groups"]["new"]["after"]}


def head_metadata_of(path: Path) -> dict[str, str]:
    """The head file's ``edgetl.*`` metadata other than labels and width (kept on re-export)."""
    import onnx

    meta = head_metadata(onnx.load(str(path)))
    return {k: v for k, v in meta.items() if k.startswith("edgetl.") and k not in ("edgetl.labels", "edgetl.num_features")}


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float | None:
    return float((pred == y).mean()) if len(y) else None


def _group(pred_b: np.ndarray, pred_a: np.ndarray | None, y: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    if not n:
        return {"before": None, "after": None, "n": 0}
    after = float((pred_a[mask] == y[mask]).mean()) if pred_a is not None else None
    return {"before": float((pred_b[mask] == y[mask]).mean()), "after": after, "n": n}


def _measures(pred_before: np.ndarray, pred_after: np.ndarray, y: np.ndarray, n_old: int,
              all_labels: list[str]) -> dict[str, Any]:
    """Accuracy before and after, overall, per group (old/new classes) and per class."""
    old = y < n_old
    return dict(
        accuracy_before=_accuracy(pred_before, y), accuracy_after=_accuracy(pred_after, y),
        groups={"old": _group(pred_before, pred_after, y, old), "new": _group(pred_before, pred_after, y, ~old)},
        per_class={all_labels[c]: _group(pred_before, pred_after, y, y == c) for c in np.unique(y)},
    )


def _gate(live: _Live, sets: _Sets, result: HeadTrainResult, new_head: Path, all_labels: list[str], lr: float,
          cfg: RetrainConfig) -> tuple[dict[str, Any], str | None]:
    """Accuracy before (the live head) and after (the exported head, on ONNX Runtime) on the
    holdout, per group and class; and the reason to refuse the switch, if any."""
    from edgetl.runtimes import load_session

    y = sets.y_hold
    has_holdout = len(y) > 0
    pred_before = (sets.X_hold.astype(np.float64) @ live.W.T.astype(np.float64) + live.b).argmax(1) if has_holdout else y
    pred_after = load_session(new_head, "onnxruntime").run(sets.X_hold).argmax(1) if has_holdout else y
    measures = _measures(pred_before, pred_after, y, len(live.labels), all_labels)
    before, after = measures["accuracy_before"], measures["accuracy_after"]
    worse = has_holdout and after < before
    stuck = has_holdout and result.best_epoch == 0  # no epoch beat the starting head's holdout loss
    reason = None
    if worse and not cfg.force:
        reason = (f"holdout accuracy would drop from {before:.3f} to {after:.3f}; the bundle is unchanged "
                  "(pass --force / force=True to switch anyway)")
    elif stuck and not cfg.force:
        reason = (f"no epoch improved on the current head (holdout loss; lr {lr:.3g}); the bundle is unchanged "
                  "(try a lower --lr or more images, or pass --force)")
    measures["forced"] = bool((worse or stuck) and cfg.force)
    return measures, reason


def _learn_exact(live: _Live, sets: _Sets, all_labels: list[str], cfg: RetrainConfig,
                 work: Path) -> tuple[Any, dict[str, Any], str | None]:
    """Class addition by :func:`edgetl.device.learn.addition.add_classes` on every row (DATA
    and memory: nothing is held out of training), exported to ``work/new/head.onnx``; judged
    on out-of-fold predictions (``cfg.folds``-fold, seeded): each row is predicted by the
    head learnt without it, against the live head on the same row."""
    from edgetl.device.learn.addition import add_classes, out_of_fold
    from edgetl.device.learn.trainer import verify_export

    X, y = sets.X_train, sets.y_train
    added = add_classes(X, y, live.W, live.b, len(all_labels))
    path = make_head_onnx(added.W, added.b, all_labels, work / "new" / HEAD_FILE,
                          metadata=head_metadata_of(live.head_path))
    verify_export(path, added.W, added.b, X)
    oof = out_of_fold(X, y, live.W, live.b, len(all_labels), added.C, folds=cfg.folds, seed=cfg.seed)
    ok = np.isfinite(oof).all(axis=1)
    pred_before = (X[ok].astype(np.float64) @ live.W.T.astype(np.float64) + live.b).argmax(1)
    measures = _measures(pred_before, oof[ok].argmax(1), y[ok], len(live.labels), all_labels)
    before, after = measures["accuracy_before"], measures["accuracy_after"]
    worse = after is not None and after < before
    reason = None
    if worse and not cfg.force:
        reason = (f"out-of-fold accuracy would drop from {before:.3f} to {after:.3f}; the bundle is unchanged "
                  "(pass --force / force=True to switch anyway)")
    measures["forced"] = bool(worse and cfg.force)
    measures["n_evaluated"] = int(ok.sum())
    return added, measures, reason


_BASE_KEYS = ("files", "models", "labels", "adapter", "artifacts", "memory", "training")


def _commit(live: _Live, work: Path, new_memory: ReplayMemory, all_labels: list[str], trainer: Trainer,
            details: dict[str, Any], sign_key: str | os.PathLike | None = None) -> Any:
    """Write the new version (head, its training artifacts where ONNX Runtime can make them,
    the merged memory, the labels) and switch to it atomically."""
    from edgetl.device.bundle import update_bundle

    new_head = work / "new" / HEAD_FILE
    if trainer is Trainer.ORT:
        make_training_artifacts(new_head, work / "new" / TRAINING_DIR)  # the next retrain starts from this head
    new_memory.save(work / "new" / MEMORY_FILE)
    base = {k: live.manifest.get(k) for k in _BASE_KEYS}

    def write(staging: Path, draft: dict[str, Any]) -> dict[str, Any]:
        # The lock is held now; refuse if any update (retrain, adapt, rollback) replaced the
        # version we trained from: a head must never be combined with another version's parts.
        if {k: draft.get(k) for k in _BASE_KEYS} != base:
            raise BundleError(f"{live.root}: the bundle changed while retraining (now version "
                              f"{draft['version'] - 1}); run retrain again")
        prefix = f"v{draft['version']}"
        shutil.copyfile(new_head, staging / HEAD_FILE)
        shutil.copyfile(work / "new" / MEMORY_FILE, staging / MEMORY_FILE)
        draft["training"] = None
        if trainer is Trainer.ORT:
            shutil.copytree(work / "new" / TRAINING_DIR, staging / TRAINING_DIR)
            draft["training"] = f"{prefix}/{TRAINING_DIR}"
        draft["labels"] = all_labels
        draft["models"] = {**draft["models"], "head": f"{prefix}/{HEAD_FILE}"}
        draft["memory"] = f"{prefix}/{MEMORY_FILE}"
        return draft

    return update_bundle(live.root, "retrain", write, details=details, sign_key=sign_key)


# --------------------------------------------------------------------------- the verb


def retrain(bundle: str | os.PathLike, data: str | os.PathLike, config: RetrainConfig | None = None) -> RetrainReport:
    """Retrain the head of ``bundle`` on labelled ``data`` (of the bundle's modality) and make
    the result the bundle's new version (see the module docstring).

    Raises :class:`DataError` (missing or empty data, a class without readable items,
    unreadable items with ``strict``, fewer than two classes across DATA and the replay
    memory), :class:`BundleError` (missing, tampered or read-only bundle; the bundle
    changed meanwhile) or :class:`RetrainError` (training failed). The bundle is then
    unchanged.
    """
    cfg = config or RetrainConfig()
    if not isinstance(cfg, RetrainConfig):
        raise ConfigError(f"config must be a RetrainConfig, got {type(cfg).__name__}")
    started = time.perf_counter()
    if cfg.sign_key is not None:
        from edgetl.core.signing import load_signing_key

        load_signing_key(cfg.sign_key)  # a bad key fails before any work is done
    root = Path(bundle)
    _check_writable(root)
    from edgetl.device.bundle import open_bundle
    from edgetl.tasks import get_task

    if not get_task(open_bundle(root, verify=False, warn=False).task).pooled:
        # a head over many rows per item (detection's locations): its own learner
        from edgetl.device.row_retraining import retrain_rows

        return retrain_rows(root, data, cfg)  # type: ignore[return-value]
    live = _open_live(root, cfg.verify, cfg.allow_nonconforming)
    folder = _scan(data, live.predictor.modality, cfg.strict)
    new_classes = [c for c in folder.labels if c not in live.labels]
    all_labels = live.labels + new_classes
    memory = live.memory.relabel(all_labels)
    _check_classes(folder, live, memory)
    per_class = resolve_per_class(cfg.memory_per_class, cfg.memory_mb, live.W.shape[1], len(all_labels),
                                  memory.precision)
    exact = cfg.learner is Learner.EXACT or (cfg.learner is Learner.AUTO and bool(new_classes))
    if exact and not new_classes:
        raise ConfigError("the exact learner adds classes, and DATA holds none the bundle lacks; "
                          "use --learner adamw (or auto) to retrain on known classes")
    if exact and cfg.lr is not None:
        raise ConfigError("--lr applies to the AdamW learner; the exact learner (the default when adding classes) "
                          "has no learning rate: drop --lr, or pass --learner adamw")
    # the exact learner trains on every row and judges out of fold: nothing is held out
    sets = _embed_and_assemble(live, folder, memory, all_labels, cfg, 0.0 if exact else cfg.holdout)
    trainer = resolve_trainer(cfg.trainer)
    t1 = time.perf_counter()
    with ExitStack() as stack:
        # inside the bundle (same file system; a killed retrain's folder is collected by the
        # next update), never in /tmp
        work = stack.enter_context(work_dir(root))
        if exact:
            added, measures, reason = _learn_exact(live, sets, all_labels, cfg, work)
            n_evaluated = measures.pop("n_evaluated")
            run = dict(epochs=0, best_epoch=0, first_step_loss=None, lr=None, trainer="exact",
                       n_holdout=n_evaluated, n_holdout_memory=len(sets.y_train) - len(sets.y_data),
                       learner={"method": "exact", "C": added.C, "old_norm": added.old_norm,
                                "new_norm": added.new_norm, "evaluation": f"{cfg.folds}-fold out-of-fold"},
                       bias_correction={"method": "none", "kept": False, "candidates": {},
                                        "reason": "the exact learner keeps the old rows and sizes the new ones"})
        else:
            result, lr = _train(live, sets, all_labels, len(new_classes), cfg, work, trainer)
            correction = (_correct_bias(live, sets, result, all_labels, cfg, work) if new_classes
                          else {"method": "none", "kept": False, "candidates": {}})
            measures, reason = _gate(live, sets, result, work / "new" / HEAD_FILE, all_labels, lr, cfg)
            run = dict(epochs=len(result.history), best_epoch=result.best_epoch,
                       first_step_loss=result.first_step_loss, lr=lr, trainer=result.trainer,
                       n_holdout=len(sets.y_hold), n_holdout_memory=sets.n_holdout_memory,
                       learner={"method": "adamw"}, bias_correction=correction)
        train_seconds = time.perf_counter() - t1
        new_memory = memory.merge(sets.z_raw, sets.y_data, all_labels, per_class=per_class, seed=cfg.seed,
                                  selection=cfg.memory_selection)
        common = dict(
            bundle=str(root), labels=all_labels, new_classes=new_classes, n_images=sets.n_images,
            n_train=len(sets.y_train), skipped=[{"file": f, "error": e} for f, e in sets.skipped],
            forgetting=_forgetting(measures, live), memory_per_class=per_class,
            memory_selection=cfg.memory_selection.value, **run, **measures,
        )
        if reason is not None:
            return RetrainReport(switched=False, version=live.predictor.bundle.version,
                                 previous_version=live.predictor.bundle.version, n_memory=len(memory), reason=reason,
                                 seconds=_seconds(sets.embed_seconds, train_seconds, started), **common)
        details = {k: common[k] for k in ("accuracy_before", "accuracy_after", "n_images", "n_train", "n_holdout",
                                          "new_classes", "epochs", "best_epoch", "lr", "forced", "trainer",
                                          "forgetting")}
        correction = common["bias_correction"]
        details["bias_correction"] = correction["method"] if correction["kept"] else "none"
        if exact:
            details["learner"] = common["learner"]
        updated = _commit(live, work, new_memory, all_labels, trainer, {**details, "data": str(Path(data).resolve())},
                          cfg.sign_key)
    return RetrainReport(switched=True, version=updated.version, previous_version=live.predictor.bundle.version,
                         n_memory=len(new_memory), seconds=_seconds(sets.embed_seconds, train_seconds, started),
                         **common)


def _seconds(embed: float, train: float, started: float) -> dict[str, float]:
    return {"embed": round(embed, 3), "train": round(train, 3), "total": round(time.perf_counter() - started, 3)}
