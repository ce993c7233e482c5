"""Train the classifier head on the device. Torch-free.

One loop (:func:`fit_head`): epochs of seeded batches (:func:`epoch_batches`), AdamW steps,
validation after each epoch, the best epoch kept, early stopping. The steps are taken by
ONNX Runtime training artifacts (:func:`train_head`) where ``onnxruntime-training-cpu`` is
installed, else by :class:`~edgetl.device.learn.numpy_trainer.NumpyHeadStepper`, which
follows the same AdamW operation for operation (measured: within 1.3e-6 over 256 steps).
``HeadTrainConfig.trainer`` chooses; the result says which ran.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgetl.core.data import check_seed
from edgetl.core.formats import META_LABELS
from edgetl.core.ui import progress
from edgetl.device.learn.artifacts import ARTIFACT_FILES, artifact_paths
from edgetl.device.learn.head import BIAS, WEIGHT, choice, head_metadata, make_head_onnx, read_head
from edgetl.device.learn.numpy_trainer import NumpyHeadStepper
from edgetl.device.learn.ort_shim import open_training, set_adamw
from edgetl.errors import ConfigError, RetrainError

__all__ = ["Sampling", "Monitor", "Trainer", "HeadTrainConfig", "HeadTrainResult", "epoch_batches", "train_head",
           "fit_head", "resolve_trainer", "ort_training_available", "verify_export"]


class Trainer(str, Enum):
    """Which implementation takes the steps (both follow the same AdamW, step for step)."""

    AUTO = "auto"  # ONNX Runtime training artifacts where onnxruntime.training loads, else numpy
    ORT = "ort"
    NUMPY = "numpy"


class Sampling(str, Enum):
    """How each epoch's batches are drawn (see :func:`epoch_batches`)."""

    SHUFFLE = "shuffle"  # a permutation of the training set
    BALANCED = "balanced"  # with replacement, every class equally likely


class Monitor(str, Enum):
    """What picks the best epoch and drives early stopping."""

    # Validation sets on a device are small (tens of samples): accuracy moves in steps
    # of one sample and its maximum is often a lucky early epoch; the loss is smooth.
    # Measured on digits with 40 new samples per class (8 splits): picking by loss gave
    # new-class accuracy 0.888 on average (worst 0.839), by accuracy 0.856 (worst 0.699).
    LOSS = "val_loss"  # lowest validation loss
    ACCURACY = "val_acc"  # highest validation accuracy, ties broken by loss


@dataclass(frozen=True)
class HeadTrainConfig:
    """Options of :func:`train_head`. AdamW follows ``torch.optim.AdamW`` exactly
    (decoupled weight decay applied before the step, bias correction on both moments)."""

    epochs: int = 50
    lr: float = 1e-2
    batch_size: int = 32
    seed: int = 0
    patience: int = 10  # epochs without a better validation result before stopping; 0 = never stop early
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    sampling: Sampling = Sampling.BALANCED
    monitor: Monitor = Monitor.LOSS
    trainer: Trainer = Trainer.AUTO

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        check_seed(self.seed)
        if not (isinstance(self.patience, int) and self.patience >= 0):
            raise ConfigError(f"patience must be an integer >= 0 (0 = no early stopping), got {self.patience!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (len(self.betas) == 2 and all(0 <= x < 1 for x in self.betas)):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be positive, got {self.eps!r}")
        object.__setattr__(self, "sampling", choice(Sampling, self.sampling, "sampling"))
        object.__setattr__(self, "monitor", choice(Monitor, self.monitor, "monitor"))
        object.__setattr__(self, "trainer", choice(Trainer, self.trainer, "trainer"))



@dataclass(frozen=True)
class HeadTrainResult:
    """What :func:`train_head` returns. ``W``/``b`` are the best parameters by
    ``config.monitor`` (the starting head counts as epoch 0); ``best_val_acc`` is theirs."""

    W: np.ndarray
    b: np.ndarray
    labels: tuple[str, ...]
    history: list[dict] = field(repr=False)  # per epoch: epoch, loss (mean train batch loss), val_acc, val_loss
    best_epoch: int = 0
    initial_val_acc: float | None = None
    best_val_acc: float | None = None
    first_step_loss: float = float("nan")
    step_losses: list[float] = field(default_factory=list, repr=False)
    head_path: Path | None = None
    seconds: float = 0.0
    trainer: str = "ort"  # which trainer ran: "ort" (training artifacts) or "numpy"



def epoch_batches(
    y: np.ndarray, batch_size: int, rng: np.random.Generator, sampling: Sampling | str = Sampling.SHUFFLE
) -> list[np.ndarray]:
    """One epoch of index batches (the last may be smaller).

    ``SHUFFLE``: a permutation. ``BALANCED``: ``len(y)`` draws with replacement, each
    class equally likely (a replay memory of 20 per class then weighs as much as 200 new
    samples of one class), the cheap fix for class imbalance: no change to the loss graph.
    """
    n = len(y)
    if Sampling(sampling) is Sampling.BALANCED:
        _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        p = 1.0 / (len(counts) * counts[inverse])
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    else:
        order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _check_xy(X, y, n_features: int, n_classes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise RetrainError(f"{what} embeddings have shape {X.shape}; the head expects [N, {n_features}]")
    if y.shape != (X.shape[0],):
        raise RetrainError(f"{what}: {X.shape[0]} embeddings but {y.shape[0] if y.ndim else 0} labels")
    if X.shape[0] and (y.min() < 0 or y.max() >= n_classes):
        raise RetrainError(
            f"{what} labels must be class indices in [0, {n_classes}); grow the head for new classes first"
        )
    if not np.isfinite(X).all():
        raise RetrainError(f"{what} embeddings hold NaN or infinity; check the backbone output")
    return X, y


def _evaluate(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the head ``W, b`` in float64."""
    logits = X.astype(np.float64) @ W.T.astype(np.float64) + b
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float((logits.argmax(axis=1) == y).mean()), float(-log_prob[np.arange(len(y)), y].mean())


def _score(acc: float, loss: float, monitor: Monitor) -> tuple[float, float]:
    """Larger is better."""
    return (-loss, acc) if monitor is Monitor.LOSS else (acc, -loss)


def verify_export(path: Path, W: np.ndarray, b: np.ndarray, X: np.ndarray) -> None:
    """Raise RetrainError unless head.onnx at ``path`` holds ``W, b`` and runs them on ``X``."""
    from edgetl.runtimes import load_session

    W2, b2, _ = read_head(path)
    if not (np.array_equal(W2, W) and np.array_equal(b2, b)):
        raise RetrainError(f"{path}: exported head parameters differ from the trained ones; retrain")
    if len(X):
        got = load_session(path, "onnxruntime").run(X[:64])
        x, w = X[:64].astype(np.float64), W.astype(np.float64)
        want = x @ w.T + b
        # float32 rounding of a dot product grows with the sum of |x_i w_i|: bound by that,
        # not by a fixed tolerance (large heads legitimately differ by 1e-4 in absolute terms)
        bound = 1e-5 * (np.abs(x) @ np.abs(w).T + np.abs(b)) + 1e-6
        if not (np.abs(got - want) <= bound).all():
            raise RetrainError(f"{path}: exported head disagrees with the trained parameters; retrain")


def ort_training_available() -> bool:
    """True if this ONNX Runtime has on-device training (``onnxruntime-training-cpu``)."""
    from edgetl.device.learn.ort_shim import training_api

    try:
        training_api()
        return True
    except RetrainError:
        return False


def resolve_trainer(trainer: Trainer | str) -> Trainer:
    trainer = choice(Trainer, trainer, "trainer")
    if trainer is Trainer.AUTO:
        return Trainer.ORT if ort_training_available() else Trainer.NUMPY
    if trainer is Trainer.ORT and not ort_training_available():
        raise RetrainError("trainer 'ort' needs onnxruntime-training-cpu, which is not installed here "
                           "(use trainer 'numpy' or 'auto')")
    return trainer


class _OrtStepper:
    """The artifacts' training session behind the stepper interface of NumpyHeadStepper."""

    def __init__(self, paths: dict[str, Path], config: HeadTrainConfig, tmp: Path):
        import onnx

        optimizer_model = onnx.load(str(paths["optimizer_model"]))
        optimizer_path = None
        if set_adamw(optimizer_model, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay):
            optimizer_path = tmp / ARTIFACT_FILES["optimizer_model"]  # hyperparameters differ: a patched copy
            onnx.save(optimizer_model, str(optimizer_path))
        try:
            self._state, self._module, self._optimizer = open_training(paths, optimizer_path)
        except Exception as exc:  # noqa: BLE001
            raise RetrainError(f"training artifacts in {paths['checkpoint'].parent} do not load: {exc}; "
                               "regenerate them") from exc
        self._module.train()

    @property
    def W(self) -> np.ndarray:
        return np.array(self._state.parameters[WEIGHT].data, dtype=np.float32)

    @property
    def b(self) -> np.ndarray:
        return np.array(self._state.parameters[BIAS].data, dtype=np.float32)

    def set_learning_rate(self, lr: float) -> None:
        self._optimizer.set_learning_rate(lr)

    def step(self, X: np.ndarray, y: np.ndarray) -> float:
        loss = float(self._module(X, y))
        self._optimizer.step()
        self._module.lazy_reset_grad()
        return loss


def train_head(
    artifacts_dir: str | os.PathLike,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: HeadTrainConfig | None = None,
    *,
    export_path: str | os.PathLike | None = None,
) -> HeadTrainResult:
    """Train the head held in ``artifacts_dir`` (from :func:`make_training_artifacts`) with
    ONNX Runtime (see :func:`fit_head`). The artifacts themselves are never modified."""
    import onnx

    config = config or HeadTrainConfig()
    paths = artifact_paths(artifacts_dir)
    metadata = {k: v for k, v in head_metadata(onnx.load(str(paths["training_model"]))).items()
                if k.startswith("edgetl.")}
    # scratch beside the artifacts (a caller's work folder, collected after a kill -9), never in TMPDIR
    with tempfile.TemporaryDirectory(prefix=".edgetl-optim-", dir=Path(artifacts_dir).parent) as tmp:
        stepper = _OrtStepper(paths, config, Path(tmp))
    try:
        labels = tuple(json.loads(metadata[META_LABELS]))
    except (KeyError, ValueError):
        labels = tuple(str(i) for i in range(stepper.W.shape[0]))
    return _fit(stepper, "ort", labels, metadata, X_train, y_train, X_val, y_val, config, export_path)


def fit_head(
    W: np.ndarray, b: np.ndarray, labels: Sequence[str], X_train: np.ndarray, y_train: np.ndarray,
    X_val: np.ndarray | None = None, y_val: np.ndarray | None = None, config: HeadTrainConfig | None = None, *,
    metadata: Mapping[str, str] | None = None, artifacts_dir: str | os.PathLike | None = None,
    export_path: str | os.PathLike | None = None,
) -> HeadTrainResult:
    """Train the head ``W, b`` with ``config.trainer``: ONNX Runtime on ``artifacts_dir``
    (which must start from ``W, b``) or numpy, with the same batches, AdamW and selection.

    Batches come from ``np.random.default_rng(config.seed)`` via :func:`epoch_batches`. After
    each epoch the parameters are scored on the validation set (numpy, float64); the best by
    ``config.monitor`` (the starting head is epoch 0) are kept and training stops after
    ``patience`` epochs without improvement. With ``export_path``, the best head is written
    there (bit-exact parameters, ``metadata`` kept) and checked on ONNX Runtime."""
    config = config or HeadTrainConfig()
    trainer = resolve_trainer(config.trainer)
    if trainer is Trainer.ORT:
        if artifacts_dir is None:
            raise RetrainError("the ONNX Runtime trainer needs training artifacts (make_training_artifacts)")
        return train_head(artifacts_dir, X_train, y_train, X_val, y_val, config, export_path=export_path)
    stepper = NumpyHeadStepper(W, b, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    return _fit(stepper, "numpy", tuple(str(x) for x in labels), dict(metadata or {}), X_train, y_train,
                X_val, y_val, config, export_path)


def _fit(stepper: Any, trainer: str, labels: tuple[str, ...], metadata: Mapping[str, str], X_train, y_train,
         X_val, y_val, config: HeadTrainConfig, export_path) -> HeadTrainResult:
    """The loop both trainers share: epochs of batches, validation, best epoch, early stop."""
    started = time.perf_counter()
    W, b = stepper.W, stepper.b
    n_classes, n_features = W.shape
    X_train, y_train = _check_xy(X_train, y_train, n_features, n_classes, "training")
    if len(y_train) == 0:
        raise RetrainError("no training samples; add labelled data to retrain on")
    has_val = X_val is not None and y_val is not None and len(y_val) > 0
    if has_val:
        X_val, y_val = _check_xy(X_val, y_val, n_features, n_classes, "validation")
    best, best_epoch, initial_acc, best_acc, best_key = (W, b), 0, None, None, (-math.inf, -math.inf)
    if has_val:
        initial_acc, val_loss = _evaluate(W, b, X_val, y_val)
        best_acc, best_key = initial_acc, _score(initial_acc, val_loss, config.monitor)
    rng = np.random.default_rng(config.seed)
    stepper.set_learning_rate(config.lr)
    history: list[dict] = []
    step_losses: list[float] = []
    stale = 0
    for epoch in progress(range(1, config.epochs + 1), "retraining head"):
        batch_losses = []
        for idx in epoch_batches(y_train, config.batch_size, rng, config.sampling):
            loss = stepper.step(X_train[idx], y_train[idx])
            if not math.isfinite(loss):
                raise RetrainError(f"training diverged (loss {loss}) in epoch {epoch}; lower lr (now {config.lr})")
            batch_losses.append(loss)
        step_losses.extend(batch_losses)
        W, b = stepper.W, stepper.b
        row = {"epoch": epoch, "loss": float(np.mean(batch_losses)), "val_acc": None, "val_loss": None}
        if has_val:
            acc, val_loss = _evaluate(W, b, X_val, y_val)
            row.update(val_acc=acc, val_loss=val_loss)
            if _score(acc, val_loss, config.monitor) > best_key:
                best, best_epoch, best_acc, best_key, stale = (W, b), epoch, acc, _score(acc, val_loss, config.monitor), 0
            else:
                stale += 1
        else:
            best, best_epoch = (W, b), epoch
        history.append(row)
        if has_val and config.patience and stale >= config.patience:
            break
    head_path = None
    if export_path is not None:
        head_path = make_head_onnx(best[0], best[1], labels, export_path, metadata=metadata)
        verify_export(head_path, best[0], best[1], X_val if has_val else X_train)
    return HeadTrainResult(W=best[0], b=best[1], labels=labels, history=history, best_epoch=best_epoch,
                           initial_val_acc=initial_acc, best_val_acc=best_acc, first_step_loss=step_losses[0],
                           step_losses=step_losses, head_path=head_path, seconds=time.perf_counter() - started,
                           trainer=trainer)
