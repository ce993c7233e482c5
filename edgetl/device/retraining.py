"""Retrain a bundle's head on the device from a labelled image folder. Torch-free.

    from edgetl.device import retrain
    report = retrain("bundle/", "new_photos/", epochs=30)
    print(report.accuracy_before, report.accuracy_after, report.version)

The flow: DATA is embedded once by the bundle's deployed backbone (its runtime and
precision, raw output; the live adapter, if any, is applied before the head). Classes the
bundle does not know grow the head (:func:`~edgetl.device.head_training.grow_head`; new
rows start at the mean of the old ones, so no old prediction changes). The replay memory
(:mod:`edgetl.device.memory`) joins the training side, so classes DATA lacks are not
forgotten. The head is trained with ONNX Runtime training artifacts, the best epoch by
holdout loss is kept, and the new version (head, training artifacts for it, merged
memory, extended labels) is written beside the old one and switched in atomically by
:func:`edgetl.bundle.update_bundle`; ``edgetl rollback`` returns to the old one.

**What "accuracy before/after" means.** The holdout is a seeded, stratified ``holdout``
fraction of DATA's images *plus*, for classes that are in the memory but not in DATA, the
same fraction of their memory rows (held out of training). Before = the current head on
that holdout (images of new classes count as wrong: it cannot name them); after = the
new head, run from the exported ``head.onnx``. ``groups`` splits it into ``old`` (classes
the bundle knew) and ``new`` classes. Caveats, stated rather than hidden: the holdout also
picks the best epoch (device data sets are too small for a third split), and memory rows
came from the workstation's *training* split, so ``old``-class accuracy "before" on them
is a training accuracy; it measures forgetting, not generalisation.

The learning rate defaults to ``1 / mean |z|_1`` of the training embeddings (see
``_auto_lr``): backbones differ by orders of magnitude in embedding scale. The new memory
offers all of DATA's embedded images (train and holdout) to the reservoir.

**Never ship a worse head.** If accuracy after is below before on the holdout, the bundle
is left untouched and the report says so (``switched`` False) unless ``force``; likewise
when no epoch beat the starting head's holdout loss (nothing learned). Every
refusal (bad data, tampered bundle, worse head) leaves the bundle byte for byte as it was:
all work happens in a temporary folder, and the bundle is written only by the final update.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import _ui
from ..errors import BundleError, ConfigError, DataError
from .head_training import (
    ARTIFACT_FILES,
    BIAS,
    WEIGHT,
    HeadTrainConfig,
    grow_head,
    make_head_onnx,
    make_training_artifacts,
    read_head,
    train_head,
)
from .memory import DEFAULT_PER_CLASS, MEMORY_FILE, ReplayMemory, embed_images

__all__ = ["RetrainConfig", "RetrainReport", "retrain"]

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
    memory_per_class: int = DEFAULT_PER_CLASS
    seed: int = 0  # holdout split, batch order, memory selection
    weight_decay: float = 1e-2
    strict: bool = False  # refuse DATA with unreadable files instead of skipping them
    force: bool = False  # switch even if the holdout accuracy got worse
    verify: bool = True  # check the bundle's file hashes before retraining

    def __post_init__(self) -> None:
        if not (isinstance(self.holdout, (int, float)) and 0.0 <= self.holdout < 1.0):
            raise ConfigError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        if not (isinstance(self.memory_per_class, int) and self.memory_per_class >= 1):
            raise ConfigError(f"memory_per_class must be an integer >= 1, got {self.memory_per_class!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        self.head_config(1e-2 if self.lr is None else self.lr)  # validates epochs, lr, batch_size, ...

    def head_config(self, lr: float | None = None) -> HeadTrainConfig:
        lr = self.lr if lr is None else lr
        if lr is None:
            raise ConfigError("head_config needs a learning rate when RetrainConfig.lr is None (automatic)")
        return HeadTrainConfig(epochs=self.epochs, lr=lr, batch_size=self.batch_size, seed=self.seed,
                               patience=self.patience, weight_decay=self.weight_decay)


def _auto_lr(X: np.ndarray) -> float:
    """AdamW moves every weight by about ``lr`` per step, so a logit moves by up to
    ``lr * |z|_1``; ``lr = 1 / mean |z|_1`` keeps that near 1 whatever the backbone's
    embedding scale. Measured on the real pipeline (efficientnet_lite0 int8, |z|_1 ~ 316,
    digits 8/9 added to a 0-7 bundle, 3 seeds): lr 1e-3 -> new-class accuracy 0.80-0.88,
    3e-3 -> 0.84-0.89, 1e-2 -> 0.70-0.83 (best epoch 4-6: too noisy), 3e-2 -> 0.00-0.84."""
    scale = float(np.abs(X).sum(axis=1).mean()) if len(X) else 0.0
    return float(np.clip(1.0 / scale, 1e-4, 1e-1)) if scale > 0 else 1e-2


@dataclass(frozen=True)
class RetrainReport:
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
    lr: float  # the learning rate used (config.lr, or the automatic one)
    best_epoch: int  # 0 = the starting head
    first_step_loss: float
    reason: str | None = None
    forced: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # embed, train, total

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- helpers


def _config(config: RetrainConfig | None, options: dict[str, Any]) -> RetrainConfig:
    if config is not None and options:
        raise ConfigError(f"pass either config or options ({', '.join(options)}), not both")
    if config is not None:
        return config
    try:
        return RetrainConfig(**options)
    except TypeError:
        known = ", ".join(f.name for f in dataclasses.fields(RetrainConfig))
        raise ConfigError(f"unknown retrain option(s) {', '.join(options)}; known: {known}") from None


def _scan(data: str | os.PathLike, strict: bool):
    from ..data import scan_folder

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        folder = scan_folder(data, min_classes=1, strict=strict)
    return folder


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float | None:
    return float((pred == y).mean()) if len(y) else None


def _group(pred_b: np.ndarray, pred_a: np.ndarray | None, y: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    if not n:
        return {"before": None, "after": None, "n": 0}
    after = float((pred_a[mask] == y[mask]).mean()) if pred_a is not None else None
    return {"before": float((pred_b[mask] == y[mask]).mean()), "after": after, "n": n}


def _head_logits(path: Path, X: np.ndarray) -> np.ndarray:
    """Logits of an exported head file, run by ONNX Runtime (what the device will run)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: X})[0]


def _artifacts_match(training_dir: Path, W: np.ndarray, b: np.ndarray) -> bool:
    """True if the bundle's training artifacts are complete and start from exactly ``W, b``."""
    from ._ort_training import training_api

    if not all((training_dir / name).exists() for name in ARTIFACT_FILES.values()):
        return False
    try:
        state = training_api().CheckpointState.load_checkpoint(str(training_dir / ARTIFACT_FILES["checkpoint"]))
        return bool(np.array_equal(state.parameters[WEIGHT].data, W) and np.array_equal(state.parameters[BIAS].data, b))
    except Exception:  # noqa: BLE001 - unreadable artifacts are regenerated
        return False


def _head_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path))
    return {p.key: p.value for p in model.metadata_props
            if p.key.startswith("edgetl.") and p.key not in ("edgetl.labels", "edgetl.num_features")}


def _check_writable(root: Path) -> None:
    if not root.is_dir():
        raise BundleError(f"{root}: retraining needs a bundle folder (extract an archive first)")
    if not os.access(root, os.W_OK | os.X_OK):
        raise BundleError(f"{root}: the bundle folder is not writable; retraining would fail to save, "
                          "nothing was changed (fix its permissions)")


# --------------------------------------------------------------------------- the verb


def retrain(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    *,
    config: RetrainConfig | None = None,
    **options: Any,
) -> RetrainReport:
    """Retrain the head of ``bundle`` on the labelled image folder ``data`` and make the
    result the bundle's new version (see the module docstring). Options are the fields of
    :class:`RetrainConfig`, passed as ``config=`` or as keywords.

    Raises :class:`DataError` (missing or empty folder, a class without readable images,
    unreadable files with ``strict``, fewer than two classes across DATA and the replay
    memory), :class:`BundleError` (missing, tampered or read-only bundle; the bundle
    changed meanwhile) or :class:`RetrainError` (training failed). The bundle is then
    unchanged.
    """
    from ..bundle import update_bundle
    from ..data import stratified_split
    from .predictor import Predictor

    cfg = _config(config, options)
    started = time.perf_counter()
    root = Path(bundle)
    _check_writable(root)
    folder = _scan(data, cfg.strict)
    predictor = Predictor.from_bundle(root, verify=cfg.verify)
    live = predictor.bundle
    manifest = live.manifest
    labels = list(live.labels)
    head_path = live.model_path("head")
    W0, b0, head_labels = read_head(head_path)
    if head_labels != labels:
        raise BundleError(f"{root}: head.onnx labels {head_labels} differ from the manifest's {labels}; re-package")

    memory_path = live.optional_path("memory")
    memory = ReplayMemory.load(memory_path) if memory_path else ReplayMemory.empty(labels, W0.shape[1])
    if len(memory) and memory.num_features != W0.shape[1]:
        raise BundleError(f"{root}: replay memory has {memory.num_features} features, the head {W0.shape[1]}; re-package")

    new_classes = [c for c in folder.labels if c not in labels]
    all_labels = labels + new_classes
    memory = memory.relabel(all_labels)
    trained_classes = set(folder.labels) | set(memory.classes)
    if len(trained_classes) < 2:
        have = "the bundle has no replay memory" if not len(memory) else "its replay memory holds no other class"
        raise DataError(f"{folder.root}: holds only class {folder.labels[0]!r} and {have}; retraining needs images "
                        "of at least 2 classes (add a folder per class)")
    if not len(memory):
        missing = [c for c in labels if c not in folder.labels]
        if missing:
            _ui.warn(f"the bundle has no replay memory and DATA lacks class(es) {', '.join(missing)}: "
                     "the retrained head may forget them, and the holdout cannot measure it")

    # Embed DATA once (raw backbone output; the adapter is applied below, the memory stores raw).
    t0 = time.perf_counter()
    z_raw, ok = embed_images(predictor, folder.paths, strict=cfg.strict, description="embedding DATA")
    embed_seconds = time.perf_counter() - t0
    skipped = [(str(p), r) for p, r in folder.skipped]
    unread = sorted(set(range(len(folder.samples))) - set(ok))
    skipped += [(str(folder.samples[i][0]), "could not be read or preprocessed") for i in unread]
    if skipped:
        _ui.warn(f"skipped {len(skipped)} unreadable file(s) in {folder.root}, e.g. {skipped[0][0]}: {skipped[0][1]}")
    if not ok:
        raise DataError(f"{folder.root}: none of its images could be read; nothing to retrain on")
    index = {c: i for i, c in enumerate(all_labels)}
    y_data = np.asarray([index[folder.labels[folder.samples[i][1]]] for i in ok], np.int64)
    z_data = predictor.apply_adapter(z_raw)

    # Holdout: DATA's stratified slice, plus a slice of the memory for classes DATA lacks.
    tr, ho = stratified_split(y_data, cfg.holdout, cfg.seed)
    memory_only = [c for c in memory.classes if c not in folder.labels]
    mem_tr, mem_ho = memory.split(cfg.holdout, cfg.seed, classes=memory_only)
    z_mem = predictor.apply_adapter(memory.embeddings) if len(memory) else memory.embeddings
    X_train = np.concatenate([z_data[tr], z_mem[mem_tr]]).astype(np.float32)
    y_train = np.concatenate([y_data[tr], memory.labels[mem_tr]])
    X_hold = np.concatenate([z_data[ho], z_mem[mem_ho]]).astype(np.float32)
    y_hold = np.concatenate([y_data[ho], memory.labels[mem_ho]])
    has_holdout = len(y_hold) > 0

    pred_before = (X_hold.astype(np.float64) @ W0.T.astype(np.float64) + b0).argmax(1) if has_holdout else y_hold
    acc_before = _accuracy(pred_before, y_hold)

    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-retrain-") as tmp:
        work = Path(tmp)
        W, b = grow_head(W0, b0, len(new_classes)) if new_classes else (W0, b0)
        training_rel = manifest.get("training")
        if not new_classes and training_rel and _artifacts_match(live.path(training_rel), W0, b0):
            artifacts = live.path(training_rel)  # read only: train_head never writes to it
        else:
            if not new_classes and training_rel:
                _ui.warn("the bundle's training artifacts do not match its head; generating new ones")
            start = make_head_onnx(W, b, all_labels, work / "start" / HEAD_FILE, metadata=_head_metadata(head_path))
            artifacts = work / "start" / TRAINING_DIR
            make_training_artifacts(start, artifacts)
        lr = cfg.lr if cfg.lr is not None else _auto_lr(X_train)
        result = train_head(artifacts, X_train, y_train, X_hold if has_holdout else None,
                            y_hold if has_holdout else None, cfg.head_config(lr), export_path=work / "new" / HEAD_FILE)
        new_head = work / "new" / HEAD_FILE
        pred_after = _head_logits(new_head, X_hold).argmax(1) if has_holdout else y_hold
        acc_after = _accuracy(pred_after, y_hold)
        train_seconds = time.perf_counter() - t1

        old_mask = y_hold < len(labels)
        groups = {"old": _group(pred_before, pred_after, y_hold, old_mask),
                  "new": _group(pred_before, pred_after, y_hold, ~old_mask)}
        per_class = {all_labels[c]: _group(pred_before, pred_after, y_hold, y_hold == c) for c in np.unique(y_hold)}
        worse = has_holdout and acc_after < acc_before
        stuck = has_holdout and result.best_epoch == 0  # no epoch beat the starting head's holdout loss
        reason = None
        if worse and not cfg.force:
            reason = (f"holdout accuracy would drop from {acc_before:.3f} to {acc_after:.3f}; the bundle is unchanged "
                      "(pass --force / force=True to switch anyway)")
        elif stuck and not cfg.force:
            reason = (f"no epoch improved on the current head (holdout loss; lr {lr:.3g}); the bundle is unchanged "
                      "(try a lower --lr or more images, or pass --force)")
        new_memory = memory.merge(z_raw, y_data, all_labels, per_class=cfg.memory_per_class, seed=cfg.seed)

        common = dict(
            bundle=str(root), accuracy_before=acc_before, accuracy_after=acc_after, groups=groups,
            per_class=per_class, labels=all_labels, new_classes=new_classes, n_images=len(ok),
            n_train=len(y_train), n_holdout=len(y_hold), n_holdout_memory=len(mem_ho),
            skipped=[{"file": f, "error": e} for f, e in skipped], epochs=len(result.history),
            best_epoch=result.best_epoch, first_step_loss=result.first_step_loss, forced=bool((worse or stuck) and cfg.force), lr=lr,
        )
        if reason is not None:
            return RetrainReport(switched=False, version=live.version, previous_version=live.version,
                                 n_memory=len(memory), reason=reason,
                                 seconds=_seconds(embed_seconds, train_seconds, started), **common)

        make_training_artifacts(new_head, work / "new" / TRAINING_DIR)  # the next retrain starts from this head
        new_memory.save(work / "new" / MEMORY_FILE)
        head_entry = manifest["files"][manifest["models"]["head"]]

        def write(staging: Path, draft: dict[str, Any]) -> dict[str, Any]:
            # The lock is held now; refuse if another update replaced the head we trained from.
            head_rel = draft["models"]["head"]
            if draft["files"].get(head_rel) != head_entry or list(draft["labels"]) != labels:
                raise BundleError(f"{root}: the bundle changed while retraining (now version "
                                  f"{draft['version'] - 1}); run retrain again")
            prefix = f"v{draft['version']}"
            shutil.copyfile(new_head, staging / HEAD_FILE)
            shutil.copytree(work / "new" / TRAINING_DIR, staging / TRAINING_DIR)
            shutil.copyfile(work / "new" / MEMORY_FILE, staging / MEMORY_FILE)
            draft["labels"] = all_labels
            draft["models"] = {**draft["models"], "head": f"{prefix}/{HEAD_FILE}"}
            draft["training"] = f"{prefix}/{TRAINING_DIR}"
            draft["memory"] = f"{prefix}/{MEMORY_FILE}"
            return draft

        details = {
            "accuracy_before": acc_before, "accuracy_after": acc_after, "n_images": len(ok),
            "n_train": len(y_train), "n_holdout": len(y_hold), "new_classes": new_classes,
            "epochs": len(result.history), "best_epoch": result.best_epoch, "lr": lr, "forced": common["forced"],
            "data": str(Path(data).resolve()),
        }
        updated = update_bundle(root, "retrain", write, details=details)
    return RetrainReport(switched=True, version=updated.version, previous_version=live.version,
                         n_memory=len(new_memory), seconds=_seconds(embed_seconds, train_seconds, started), **common)


def _seconds(embed: float, train: float, started: float) -> dict[str, float]:
    return {"embed": round(embed, 3), "train": round(train, 3), "total": round(time.perf_counter() - started, 3)}
