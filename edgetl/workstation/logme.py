"""LogME: a training-free estimate of how well frozen embeddings transfer to labels.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning" (ICML 2021). For each class c, the one-vs-rest target ``y_c`` is modelled as
Bayesian linear regression on the embeddings F [N, D]: ``w ~ N(0, I/alpha)``,
``y_c | F, w ~ N(F w, I/beta)``. Its evidence (marginal likelihood)

    log p(y | F, alpha, beta) = log N(y; 0, I/beta + F F^T / alpha)

is maximised over (alpha, beta) with MacKay's fixed-point updates (the paper's
Algorithm 1): with ``sigma_i`` the eigenvalues of ``F^T F``,

    gamma = sum_i beta sigma_i / (alpha + beta sigma_i)
    m     = beta (alpha I + beta F^T F)^-1 F^T y
    alpha = gamma / m^T m,      beta = (N - gamma) / ||F m - y||^2

LogME is the maximum evidence divided by N, averaged over the classes. Larger is better;
it is comparable between backbones on the same data, not across data sets.

Here the updates run in the thin SVD of F (``F = U S V^T``, r = min(N, D) singular
values), so every step is O(r) once ``U^T y`` is known; numpy only, float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetl.errors import DataError

__all__ = ["logme", "LogMEResult", "evidence"]


@dataclass(frozen=True)
class LogMEResult:
    score: float  # mean over classes of max evidence / N
    per_class: tuple[float, ...]
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    iterations: tuple[int, ...]


def _parts(s2: np.ndarray, uy: np.ndarray, rest: float, alpha: float, beta: float):
    """(m^T m, ||F m - y||^2, log det(alpha I_r + beta S^2), gamma) in the SVD basis."""
    d = alpha + beta * s2
    mm = float(np.sum((beta * np.sqrt(s2) * uy / d) ** 2))
    res = float(np.sum((alpha * uy / d) ** 2) + rest)
    return mm, res, float(np.sum(np.log(d))), float(np.sum(beta * s2 / d))


def evidence(s2: np.ndarray, uy: np.ndarray, rest: float, n: int, dim: int, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) from the squared singular values ``s2`` of F, ``uy = U^T y``
    and ``rest = ||y - U U^T y||^2`` (the part of y outside F's column space)."""
    mm, res, logdet_r, _ = _parts(s2, uy, rest, alpha, beta)
    logdet = logdet_r + (dim - len(s2)) * np.log(alpha)  # F^T F's zero eigenvalues, when N < D
    return float(dim / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * logdet - beta / 2 * res
                 - alpha / 2 * mm - n / 2 * np.log(2 * np.pi))


def _maximise(s2, uy, rest, n, dim, max_iter: int, tol: float) -> tuple[float, float, float, int]:
    """MacKay's updates from (1, 1) until the evidence per row gains less than ``tol``.

    Why not the reference code's 11 steps: with fewer rows than features (the usual case
    here: a few hundred images, 1,280 features) the maximum is often at beta -> infinity
    (the targets lie in F's column space), approached slowly; measured on a 7 x 10 case,
    one class needed 1,334 steps to reach the optimum within 1e-9. Each step is O(r)."""
    alpha, beta = 1.0, 1.0
    ev = evidence(s2, uy, rest, n, dim, alpha, beta)
    for it in range(1, max_iter + 1):
        mm, res, _, gamma = _parts(s2, uy, rest, alpha, beta)
        alpha = gamma / max(mm, 1e-300)
        beta = min(max(n - gamma, 1e-12) / max(res, 1e-300), 1e300)
        new = evidence(s2, uy, rest, n, dim, alpha, beta)
        if abs(new - ev) < tol * n:
            return new, alpha, beta, it
        ev = new
    return ev, alpha, beta, max_iter


def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 100_000, tol: float = 1e-12) -> LogMEResult:
    """LogME of ``features`` [N, D] for integer ``labels`` [N] (one-vs-rest targets per class).
    The features are used as given (the paper does not standardise them)."""
    F = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if F.ndim != 2 or y.ndim != 1 or len(F) != len(y) or len(F) < 2:
        raise DataError(f"LogME needs features [N, D] and labels [N] with N >= 2, got {F.shape} and {y.shape}")
    if not np.all(np.isfinite(F)):
        raise DataError("embeddings contain NaN or infinity; check the backbone's output")
    n, dim = F.shape
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    keep = s > s[0] * max(F.shape) * np.finfo(float).eps if s.size and s[0] > 0 else np.zeros_like(s, bool)
    U, s2 = U[:, keep], s[keep] ** 2
    scores, alphas, betas, iters = [], [], [], []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        uy = U.T @ t
        rest = float(max(t @ t - uy @ uy, 0.0))
        ev, a, b, it = _maximise(s2, uy, rest, n, dim, max_iter, tol)
        scores.append(ev / n)
        alphas.append(a)
        betas.append(b)
        iters.append(it)
    return LogMEResult(float(np.mean(scores)), tuple(scores), tuple(alphas), tuple(betas), tuple(iters))
