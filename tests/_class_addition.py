"""Class addition at the embedding level, assembled as ``edgetl.device.retraining.retrain``
assembles it (the same pieces: replay memory, holdout split, grown head, trainer, bias
correction), so that real-data scenarios cost embeddings once and seconds to learn."""

from __future__ import annotations

import numpy as np

from edgetl.core.data import stratified_split
from edgetl.device.learn import HeadTrainConfig, fit_head, grow_head
from edgetl.device.learn.bias import choose_correction
from edgetl.device.memory import ReplayMemory
from edgetl.device.retraining import RetrainConfig, _auto_lr


def accuracy(W, b, X, y) -> float:
    return float(((np.asarray(X, np.float64) @ np.asarray(W, np.float64).T + b).argmax(1) == y).mean())


def add_classes_exact(W0, b0, memory: ReplayMemory, X_new, y_new, cfg: RetrainConfig):
    """What retrain's default (exact) learner does: every row of DATA and of the memory,
    nothing held out; ``(W, b, addition, out-of-fold logits)`` (the folds follow ``cfg.seed``)."""
    from edgetl.device.learn.addition import add_classes as exact, out_of_fold

    X = np.concatenate([X_new, memory.embeddings]).astype(np.float32)
    y = np.concatenate([y_new, memory.labels])
    K = int(y_new.max()) + 1
    added = exact(X, y, W0, b0, K)
    return added.W, added.b, added, out_of_fold(X, y, W0, b0, K, added.C, folds=cfg.folds, seed=cfg.seed), y


def add_classes(W0, b0, memory: ReplayMemory, X_new, y_new, cfg: RetrainConfig, trainer: str = "numpy",
                lr: float | None = None):
    """The head after retraining on ``X_new, y_new`` (labels >= len(W0) are new classes),
    with ``memory`` replayed: ``(W, b, correction info)``."""
    n_old, n_new = W0.shape[0], int(y_new.max()) + 1 - W0.shape[0]
    tr, ho = stratified_split(y_new, cfg.holdout, cfg.seed)
    mtr, mho = memory.split(cfg.holdout, cfg.seed)
    X = np.concatenate([X_new[tr], memory.embeddings[mtr]]).astype(np.float32)
    y = np.concatenate([y_new[tr], memory.labels[mtr]])
    Xh = np.concatenate([X_new[ho], memory.embeddings[mho]]).astype(np.float32)
    yh = np.concatenate([y_new[ho], memory.labels[mho]])
    W, b = grow_head(W0, b0, n_new)
    head_cfg = HeadTrainConfig(epochs=cfg.epochs, lr=_auto_lr(X) if lr is None else lr, batch_size=cfg.batch_size, seed=cfg.seed,
                               patience=cfg.patience, weight_decay=cfg.weight_decay, trainer=trainer)
    result = fit_head(W, b, [str(i) for i in range(n_old + n_new)], X, y, Xh, yh, head_cfg)
    W, b, info = choose_correction(result.W, result.b, n_old, Xh, yh, cfg.bias_correction.value)
    return W, b, info
