"""Train the head in pure numpy, step for step as the ONNX Runtime training artifacts do.

For devices where ``onnxruntime-training-cpu`` has no wheel (aarch64, Python 3.13+):
the same model (``logits = X @ W.T + b``), the same loss (softmax cross-entropy, mean
over the batch) and the same optimizer as the artifacts' ``AdamWOptimizer`` node with
``adam_mode=0, correct_bias=1`` (what ``set_adamw`` writes). The update below follows
ORT 1.19.2's CPU kernel operation for operation, in float32, for step ``t = 1, 2, ...``::

    bc1 = 1 - float32(beta1) ** t          # the power in double, then rounded to float32
    bc2 = 1 - float32(beta2) ** t
    p  -= (p * lr) * weight_decay          # decoupled decay, before the moments
    m   = beta1 * m + (1 - beta1) * g
    v   = beta2 * v + (1 - beta2) * g * g
    p  -= (lr * m) / (bc1 * (sqrt(v / bc2) + eps))

for ``p`` in (W, b): the bias is decayed too, as ORT does. Fed ORT's own gradients, this
gives ORT's parameters to within one float32 ulp (99% of updates bit for bit). This is ``torch.optim.AdamW`` up to rounding; the one visible difference is that ORT
raises the float32 betas to the power ``t`` (torch uses the Python floats), which moves
the parameters by about 1e-6 over a few hundred steps (measured on digits).
"""

from __future__ import annotations

import math

import numpy as np

from edgetl.errors import ConfigError, RetrainError

__all__ = ["NumpyHeadStepper"]

_F32 = np.float32


def _check_lr(lr: float) -> float:
    # 0 is allowed: a schedule may end (or warm up) there; ORT accepts it too.
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ConfigError(f"lr must be a finite number >= 0, got {lr!r}")
    return float(lr)


def _check_hyperparameters(betas, eps, weight_decay) -> tuple[float, float, float, float]:
    if not (len(betas) == 2 and all(isinstance(x, (int, float)) and 0 <= x < 1 for x in betas)):
        raise ConfigError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"eps must be a positive number, got {eps!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return float(betas[0]), float(betas[1]), float(eps), float(weight_decay)


class NumpyHeadStepper:
    """AdamW on a Linear head ``W`` [C,F], ``b`` [C] with softmax cross-entropy.

    ``step(X, y)`` does what ``loss = module(X, y); optimizer.step();
    module.lazy_reset_grad()`` does on the ORT artifacts: it returns the mean loss at
    the current parameters, then updates them once.
    """

    def __init__(
        self,
        W: np.ndarray,
        b: np.ndarray,
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
    ) -> None:
        W = np.array(W, dtype=_F32)  # own copies: the caller's arrays are never written
        b = np.array(b, dtype=_F32)
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise RetrainError(f"head shapes disagree: W {W.shape}, b {b.shape} (want [classes, features], [classes])")
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise RetrainError("head parameters hold NaN or infinity; start from a valid head")
        beta1, beta2, eps, weight_decay = _check_hyperparameters(betas, eps, weight_decay)
        self._params = [W, b]
        self._m = [np.zeros_like(W), np.zeros_like(b)]
        self._v = [np.zeros_like(W), np.zeros_like(b)]
        # ORT keeps these as float attributes: round them as it does.
        self._beta1, self._beta2 = _F32(beta1), _F32(beta2)
        self._eps, self._weight_decay = _F32(eps), _F32(weight_decay)
        self._lr = _F32(_check_lr(lr))
        self._t = 0

    @property
    def W(self) -> np.ndarray:
        """The current weights [C,F] (a float32 copy)."""
        return self._params[0].copy()

    @property
    def b(self) -> np.ndarray:
        """The current biases [C] (a float32 copy)."""
        return self._params[1].copy()

    def set_learning_rate(self, lr: float) -> None:
        """Use ``lr`` from the next step on (``Optimizer.set_learning_rate`` in ORT)."""
        self._lr = _F32(_check_lr(lr))

    def step(self, X: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy of the batch at the current parameters; then one AdamW update."""
        X, y = self._check_batch(X, y)
        loss, grads = self._loss_and_grads(X, y)
        self._t += 1
        self._adamw(grads)
        return loss

    def _check_batch(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        n_classes, n_features = self._params[0].shape
        X = np.ascontiguousarray(X, dtype=_F32)
        y = np.ascontiguousarray(y, dtype=np.int64)
        if X.ndim != 2 or X.shape[1] != n_features:
            raise RetrainError(f"embeddings have shape {X.shape}; the head expects [N, {n_features}]")
        if y.shape != (X.shape[0],) or X.shape[0] == 0:
            raise RetrainError(f"a batch needs one label per embedding and at least one sample: {X.shape[0]} embeddings, labels {y.shape}")
        if y.min() < 0 or y.max() >= n_classes:
            raise RetrainError(f"labels must be class indices in [0, {n_classes}); grow the head for new classes first")
        return X, y

    def _loss_and_grads(self, X: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        # In float64, rounded to float32 at the end: ORT's float32 gradients carry their
        # own rounding, and ours then add none. Adam amplifies gradient noise where
        # g is near 0, so this matters: measured over 1,000 digits steps (no decay,
        # betas 0.95/0.98), float64 stays 1.6e-5 from ORT, float32 drifts to 6.3e-5.
        W, b = (p.astype(np.float64) for p in self._params)
        X = X.astype(np.float64)
        logits = X @ W.T + b
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        rows = np.arange(len(y))
        loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, y]))
        dlogits = exp / total  # softmax
        dlogits[rows, y] -= 1
        dlogits /= len(y)
        return loss, [(dlogits.T @ X).astype(_F32), dlogits.sum(axis=0).astype(_F32)]

    def _adamw(self, grads: list[np.ndarray]) -> None:
        one, lr, beta1, beta2 = _F32(1), self._lr, self._beta1, self._beta2
        bc1 = one - _F32(float(beta1) ** self._t)
        bc2 = one - _F32(float(beta2) ** self._t)
        for p, g, m, v in zip(self._params, grads, self._m, self._v):
            p -= (p * lr) * self._weight_decay
            m *= beta1
            m += (one - beta1) * g
            v *= beta2
            v += ((one - beta2) * g) * g
            p -= (lr * m) / (bc1 * (np.sqrt(v / bc2) + self._eps))
