"""Correcting a grown head's bias toward its new classes. Torch-free (numpy only).

After class addition the new classes were trained on all their data and the old ones on a
few replayed exemplars, so the new rows' logits run high (Wu et al. 2019, "Large Scale
Incremental Learning"; Zhao et al. 2020, "Maintaining Discrimination and Fairness in Class
Incremental Learning"). Two post-hoc corrections, both folded into ``W, b`` (the head file
stays one Gemm):

- :func:`weight_align` (Zhao et al.): scale the new rows by mean old norm / mean new norm.
- :func:`fit_bias_correction` (Wu et al.'s bias-correction layer): new-class logits become
  ``alpha * logit + beta``, two numbers fit on held-out rows by class-balanced
  cross-entropy (Newton's method; the problem is convex in ``alpha, beta``).

:func:`balanced_log_loss` scores a head with every class weighing the same, which is
what decides whether a correction is kept (``edgetl.device.retraining``).
"""

from __future__ import annotations

import numpy as np

from edgetl.errors import ConfigError

__all__ = ["CORRECTIONS", "weight_align", "fit_bias_correction", "apply_bias_correction", "balanced_log_loss",
           "choose_correction"]

# auto: try weight-aligning and fit, keep the one with the lowest class-balanced holdout loss
# if it beats the uncorrected head; none; or one of the two, kept on the same condition
CORRECTIONS = ("auto", "none", "weight-aligning", "fit")


def _check(W: np.ndarray, b: np.ndarray, n_old: int) -> tuple[np.ndarray, np.ndarray]:
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if W.ndim != 2 or b.shape != (W.shape[0],):
        raise ConfigError(f"head shapes disagree: W {W.shape}, b {b.shape}")
    if not (isinstance(n_old, int) and 1 <= n_old < W.shape[0]):
        raise ConfigError(f"n_old must be an integer in [1, {W.shape[0]}), got {n_old!r}")
    return W, b


def weight_align(W: np.ndarray, b: np.ndarray, n_old: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(W', b', gamma)``: rows ``n_old:`` of ``W`` scaled by ``gamma = mean ||W_old|| /
    mean ||W_new||`` (their biases too, so a new class's logit is scaled as a whole)."""
    W, b = _check(W, b, n_old)
    new_norm = float(np.linalg.norm(W[n_old:], axis=1).mean())
    gamma = float(np.linalg.norm(W[:n_old], axis=1).mean()) / new_norm if new_norm > 0 else 1.0
    return (*apply_bias_correction(W, b, n_old, gamma, 0.0), gamma)


def apply_bias_correction(W: np.ndarray, b: np.ndarray, n_old: int, alpha: float,
                          beta: float) -> tuple[np.ndarray, np.ndarray]:
    """The head whose new-class logits are ``alpha * logit + beta`` (float32)."""
    W, b = _check(W, b, n_old)
    W, b = W.copy(), b.copy()
    W[n_old:] *= alpha
    b[n_old:] = alpha * b[n_old:] + beta
    return W.astype(np.float32), b.astype(np.float32)


def _class_weights(y: np.ndarray) -> np.ndarray:
    counts = np.bincount(y)
    w = 1.0 / counts[y]
    return w / w.sum()


def balanced_log_loss(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy with each class present in ``y`` weighing the same (float64)."""
    y = np.asarray(y, dtype=np.int64)
    logits = np.asarray(X, np.float64) @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-(_class_weights(y) * log_p[np.arange(len(y)), y]).sum())


def fit_bias_correction(W: np.ndarray, b: np.ndarray, n_old: int, X: np.ndarray, y: np.ndarray, *,
                        max_iter: int = 50, tol: float = 1e-10) -> tuple[float, float]:
    """``(alpha, beta)`` minimising the class-balanced cross-entropy on ``X, y`` of the head
    whose new-class logits are ``alpha * logit + beta``. Damped Newton from ``(1, 0)``: the
    loss is convex in the two numbers (a logistic loss of an affine map of them)."""
    W, b = _check(W, b, n_old)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0, 0.0
    L = np.asarray(X, np.float64) @ W.T + b  # [N, C]
    w = _class_weights(y)
    new = np.zeros(L.shape[1], bool)
    new[n_old:] = True
    rows = np.arange(len(y))

    def loss_grad_hess(theta):
        a, c = theta
        M = L.copy()
        M[:, new] = a * M[:, new] + c
        M -= M.max(axis=1, keepdims=True)
        P = np.exp(M)
        P /= P.sum(axis=1, keepdims=True)
        loss = float(-(w * (np.log(P[rows, y]))).sum())
        # d M_j / d alpha = L_j (new j), d M_j / d beta = 1 (new j); d loss / d M = w (P - onehot)
        D = np.stack([np.where(new, L, 0.0), np.broadcast_to(new.astype(float), L.shape)], axis=2)  # [N, C, 2]
        onehot = np.zeros_like(P)
        onehot[rows, y] = 1.0
        g = np.einsum("n,nc,nck->k", w, P - onehot, D)
        # Hessian of softmax CE in an affine parameterisation: E_P[D D^T] - E_P[D] E_P[D]^T
        mean_D = np.einsum("nc,nck->nk", P, D)
        H = np.einsum("n,nc,nck,ncl->kl", w, P, D, D) - np.einsum("n,nk,nl->kl", w, mean_D, mean_D)
        return loss, g, H

    theta = np.array([1.0, 0.0])
    loss, g, H = loss_grad_hess(theta)
    for _ in range(max_iter):
        try:
            step = np.linalg.solve(H + 1e-12 * np.eye(2), g)
        except np.linalg.LinAlgError:
            step = g
        t = 1.0
        while t > 1e-8:
            cand = theta - t * step
            new_loss, g2, H2 = loss_grad_hess(cand)
            if new_loss <= loss:
                break
            t /= 2
        else:
            break
        done = loss - new_loss < tol
        theta, loss, g, H = cand, new_loss, g2, H2
        if done:
            break
    return float(theta[0]), float(theta[1])


def choose_correction(W: np.ndarray, b: np.ndarray, n_old: int, X: np.ndarray, y: np.ndarray,
                      method: str = "auto") -> tuple[np.ndarray, np.ndarray, dict]:
    """``(W', b', info)``: the correction ``method`` (see :data:`CORRECTIONS`) scored by
    :func:`balanced_log_loss` on ``X, y``; kept only if that loss is lower than the
    uncorrected head's, else ``W, b`` come back unchanged. ``info``: ``method``, ``kept``,
    ``alpha``, ``beta`` (new-class logits ``alpha * l + beta``) and ``candidates``
    (``{method: loss}``, ``none`` included)."""
    if method not in CORRECTIONS:
        raise ConfigError(f"bias correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
    W = np.asarray(W, np.float32)
    b = np.asarray(b, np.float32)
    y = np.asarray(y, np.int64)
    info: dict = {"method": "none", "kept": False, "alpha": 1.0, "beta": 0.0, "candidates": {}}
    if method == "none" or len(y) == 0 or len(np.unique(y)) < 2 or not 1 <= n_old < W.shape[0]:
        return W, b, info
    base = balanced_log_loss(W, b, X, y)
    tried = {}
    for m in (("weight-aligning", "fit") if method == "auto" else (method,)):
        if m == "weight-aligning":
            W2, b2, alpha = weight_align(W, b, n_old)
            beta = 0.0
        else:
            alpha, beta = fit_bias_correction(W, b, n_old, X, y)
            W2, b2 = apply_bias_correction(W, b, n_old, alpha, beta)
        tried[m] = (balanced_log_loss(W2, b2, X, y), W2, b2, alpha, beta)
    best = min(tried, key=lambda m: tried[m][0])
    loss, W2, b2, alpha, beta = tried[best]
    info.update(method=best, kept=bool(loss < base), alpha=float(alpha), beta=float(beta),
                candidates={"none": base, **{m: t[0] for m, t in tried.items()}})
    return (W2, b2, info) if info["kept"] else (W, b, info)
