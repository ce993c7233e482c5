"""The head solved exactly on the device: class-balanced multinomial logistic regression,
numpy only (no scipy, no torch).

A head ``logits = x @ W.T + b`` over fixed rows is convex in ``(W, b)``, so the device needs
no learning rate, epochs or early stopping: :func:`solve_head` finds the optimum of ::

    sum_i s_i * CE(x_i, y_i)  +  alpha / 2 * sum_k ||W_k - A_k||^2        (standardised space)

where ``s_i = 1 / (K_present * n_{y_i})`` (every class present weighs the same, whatever
its row count), ``alpha = 1 / (C * N)`` and ``A`` is an *anchor*: zero for a plain ridge
penalty, or an old head's rows, so that an old class moves away from where it was only as
far as the rows ask. Rows of ``frozen`` classes keep their anchor exactly. Features are
standardised on the rows (scikit-learn's ``StandardScaler``: mean, ddof-0 deviation, a
constant feature scaled by 1) and the scaling is folded back into the returned raw-space
head, so the solution does not depend on the embedding's scale: multiplying every
embedding (or one feature) by a constant gives the same predictions.

Without an anchor or frozen rows it is scikit-learn's
``make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced"))`` for
three or more classes (scikit-learn solves two classes with one weight vector, a different
penalty); ``tests/test_exact_learner.py`` checks both that and a PyTorch L-BFGS oracle of
the anchored and frozen objectives.

With fewer rows than features (the usual case on a device: a replay memory and a few
hundred new rows against 384-1,280 features) the free rows' offsets from the anchor lie in
the span of the standardised rows (the loss's gradient does and the penalty is isotropic
around the anchor), so the problem is solved in an orthonormal basis of that span: ``N``
columns instead of ``F``. The optimiser is L-BFGS (two-loop recursion, Armijo
backtracking), stopped when the largest gradient entry is below ``tol``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetl.errors import ConfigError, RetrainError

__all__ = ["Standardizer", "balanced_weights", "solve_head", "lbfgs"]


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / scale`` as scikit-learn's StandardScaler computes it."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardizer":
        X = np.asarray(X, np.float64)
        mean = X.mean(axis=0)
        var = ((X - mean) ** 2).mean(axis=0)
        # scikit-learn's bound for a constant feature (sklearn.preprocessing._data._is_constant_feature)
        n, eps = len(X), np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        return cls(mean, np.where(constant, 1.0, np.sqrt(var)))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, np.float64) - self.mean) / self.scale

    def to_standard(self, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A raw-space head -> the same logits from standardised rows."""
        W = np.asarray(W, np.float64)
        return W * self.scale, np.asarray(b, np.float64) + W @ self.mean

    def to_raw(self, Ws: np.ndarray, bs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A standardised-space head -> the same logits from raw rows."""
        W = Ws / self.scale
        return W, bs - W @ self.mean


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Row weights summing to 1 with every class present weighing the same."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[y])


def lbfgs(fg, x0: np.ndarray, *, tol: float = 1e-6, max_iter: int = 1000, memory: int = 10) -> tuple[np.ndarray, int]:
    """Minimise a smooth convex ``fg(x) -> (f, grad)`` from ``x0``: L-BFGS with Armijo
    backtracking; stops when ``max |grad| <= tol``, when a step no longer lowers ``f`` by
    more than rounding, or after ``max_iter`` iterations. Returns ``(x, iterations)``."""
    x = np.array(x0, np.float64)
    f, g = fg(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    it = 0
    for it in range(1, max_iter + 1):
        if not np.isfinite(f):
            raise RetrainError("the head's objective is not finite; the embeddings hold extreme values")
        if np.max(np.abs(g), initial=0.0) <= tol:
            break
        # two-loop recursion: d = -H g with the last ``memory`` curvature pairs
        q, coeffs = g.copy(), []
        for s, yv, rho in reversed(pairs):
            a = rho * (s @ q)
            coeffs.append(a)
            q -= a * yv
        if pairs:
            s, yv, _ = pairs[-1]
            q *= (s @ yv) / (yv @ yv)
        else:
            q /= max(1.0, float(np.linalg.norm(g)))
        for (s, yv, rho), a in zip(pairs, reversed(coeffs)):
            q += s * (a - rho * (yv @ q))
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (rounding): restart from the gradient
            pairs.clear()
            d, slope = -g / max(1.0, float(np.linalg.norm(g))), -float(g @ g) / max(1.0, float(np.linalg.norm(g)))
        t = 1.0
        while True:
            x_new = x + t * d
            f_new, g_new = fg(x_new)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-10:
                return x, it  # no step lowers f: as close to the optimum as float64 tells
        s, yv = x_new - x, g_new - g
        sy = float(s @ yv)
        if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(yv)):
            pairs.append((s, yv, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        done = f - f_new <= 1e-15 * max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x, it


class _Problem:
    """One set of rows, standardised and projected once, solved for many Cs."""

    def __init__(self, X, y, n_classes: int, anchor, frozen, sample_weight, anchor_weight=None):
        X = np.asarray(X, np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or y.shape != (X.shape[0],) or len(y) == 0:
            raise RetrainError(f"need rows [N, F] and labels [N] with N > 0, got {X.shape} and {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes:
            raise RetrainError(f"labels must be class indices in [0, {n_classes})")
        if not np.isfinite(X).all():
            raise RetrainError("the rows hold NaN or infinity; check the backbone output")
        N, F = X.shape
        self.K, self.N, self.F = int(n_classes), N, F
        self.y = y.astype(np.int64)
        self.std = Standardizer.fit(X)
        Xs = self.std(X)
        W_a, b_a = anchor if anchor is not None else (np.zeros((self.K, F)), np.zeros(self.K))
        W_a, b_a = np.asarray(W_a, np.float64), np.asarray(b_a, np.float64)
        if W_a.shape != (self.K, F) or b_a.shape != (self.K,):
            raise ConfigError(f"anchor must be W [{self.K}, {F}] and b [{self.K}], got {W_a.shape} and {b_a.shape}")
        self.As, self.bs_anchor = self.std.to_standard(W_a, b_a)
        frozen = np.zeros(self.K, bool) if frozen is None else np.asarray(frozen, bool)
        if frozen.shape != (self.K,) or frozen.all():
            raise ConfigError(f"frozen must mark some (not all) of the {self.K} classes")
        self.free = np.flatnonzero(~frozen)
        self.frozen = frozen
        rho = np.ones(self.K) if anchor_weight is None else np.broadcast_to(np.asarray(anchor_weight, np.float64), (self.K,))
        self.rho = rho[self.free]
        self.L_anchor = Xs @ self.As.T + np.where(frozen, self.bs_anchor, 0.0)  # [N, K]
        if N < F:
            Q, R = np.linalg.qr(Xs.T)  # Xs = R^T Q^T: coordinates of the rows in an orthonormal basis
            self.basis, self.U = Q, np.ascontiguousarray(R.T)
        else:
            self.basis, self.U = None, Xs
        s = balanced_weights(self.y, self.K) if sample_weight is None else np.asarray(sample_weight, np.float64)
        if s.shape != (N,) or (s < 0).any() or s.sum() <= 0:
            raise ConfigError("sample_weight must be N non-negative numbers with a positive sum")
        self.s = s / s.sum()
        self.rows = np.arange(N)

    @property
    def width(self) -> int:
        return self.U.shape[1]

    def fg(self, theta: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
        k, r = len(self.free), self.width
        P = theta.reshape(k, r + 1)
        c, b = P[:, :r], P[:, r]
        Z = self.L_anchor.copy()
        Z[:, self.free] += self.U @ c.T + b
        m = Z.max(axis=1, keepdims=True)
        E = np.exp(Z - m)
        total = E.sum(axis=1, keepdims=True)
        loss = float(self.s @ (m[:, 0] + np.log(total[:, 0]) - Z[self.rows, self.y]))
        E /= total
        E[self.rows, self.y] -= 1.0
        G = (E * self.s[:, None])[:, self.free]  # d loss / d logits of the free classes
        grad = np.empty_like(P)
        grad[:, :r] = G.T @ self.U + alpha * self.rho[:, None] * c
        grad[:, r] = G.sum(axis=0)
        return loss + 0.5 * alpha * float(self.rho @ np.sum(c * c, axis=1)), grad.ravel()

    def solve(self, C: float, theta0: np.ndarray | None, tol: float, max_iter: int) -> np.ndarray:
        if not (np.isfinite(C) and C > 0):
            raise ConfigError(f"C must be a positive finite number, got {C!r}")
        alpha = 1.0 / (C * self.N)
        theta0 = np.zeros(len(self.free) * (self.width + 1)) if theta0 is None else theta0
        theta, _ = lbfgs(lambda t: self.fg(t, alpha), theta0, tol=tol, max_iter=max_iter)
        return theta

    def head(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters -> float64 raw-space ``(W [K, F], b [K])``."""
        r = self.width
        P = theta.reshape(len(self.free), r + 1)
        Ws, bs = self.As.copy(), self.bs_anchor.copy()
        delta = P[:, :r] if self.basis is None else P[:, :r] @ self.basis.T
        Ws[self.free] += delta
        bs[self.free] = P[:, r]
        if not self.frozen.any():  # softmax ignores a common shift of every bias: centre them
            bs -= bs.mean()
        return self.std.to_raw(Ws, bs)


def solve_head(X, y, n_classes: int, C: float, *, anchor: tuple[np.ndarray, np.ndarray] | None = None,
               frozen=None, sample_weight=None, anchor_weight=None, tol: float = 1e-6,
               max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The optimal head (see the module docstring) -> raw-space ``(W [K, F], b [K])`` float64.

    ``anchor``: a raw-space head ``(W, b)`` whose (standardised) rows are the penalty's
    centre (default zero); ``frozen``: a boolean per class, those rows kept at the anchor;
    ``sample_weight``: row weights (default :func:`balanced_weights`)."""
    prob = _Problem(X, y, n_classes, anchor, frozen, sample_weight, anchor_weight)
    return prob.head(prob.solve(C, None, tol, max_iter))
