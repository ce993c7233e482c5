"""The linear probe solved exactly: multinomial logistic regression on frozen embeddings.

A head ``logits = z @ W.T + b`` on a frozen backbone is convex in (W, b), so there is no
need for SGD, epochs or early stopping: full-batch L-BFGS-B with an analytic gradient
finds the optimum of scikit-learn's objective (1.9.1, ``LogisticRegression``, lbfgs)::

    0.5 * ||W||^2  +  C * sum_i s_i * CE_i          (intercept b not penalised)

minimised, as scikit-learn does, in the equivalent mean-scaled form
``sum_i s_i CE_i / S + ||W||^2 / (2 C S)`` with ``S = sum_i s_i``, with scikit-learn's
L-BFGS-B options (``tol`` is ``gtol``; measured in the rows' span when N < F, see
``_Problem``). Like scikit-learn, only the classes
present in ``y`` are fitted and two present classes use the binomial loss with a single
weight vector (returned as the symmetric pair ``[-w/2, w/2]``, which gives identical
probabilities). C is chosen by validation log-loss, or by stratified k-fold when the
validation split is small. numpy and scipy only.

Memory: the rows are read, never copied whole beyond a bound. Embeddings may be float32 and
live in a memory-mapped store (:class:`edgetl.core.rowstore.RowStore`); every pass
(standardisation statistics, loss and gradient, scores) goes over row chunks in float64 with
the standardisation folded into the parameters, so memory is one chunk whatever the number
of rows; a training set that fits ``RESIDENT_CHUNKS`` chunks is read into memory once
instead. Only when there are fewer rows than features is the standardised matrix formed
(then it is smaller than ``F x F``) to solve in its row space.
"""

from __future__ import annotations

import contextlib
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

from edgetl.core.rowstore import row_chunks
from edgetl.errors import ConfigError, DataError

__all__ = ["DEFAULT_CS", "ProbeSolution", "fit_logreg", "select_C", "cross_validate_C", "solve_probe", "score_head"]

# Half-decade steps from 1e-4 to 1e2. Measured on standardised efficientnet_lite0
# embeddings (digits and skimage photos, 100-1,080 rows, 10 and 18 classes): the C chosen
# (here and by scikit-learn's LogisticRegressionCV) ran from 0.01 on digits to 31.6 on
# photos, never at an end of the grid; held-out accuracy moves by <= ~1 point between
# neighbouring Cs near the optimum, so finer steps buy nothing. The small Cs cost ~0.1 s
# each and give the warm-started path its start; the large ones need 5-20 iterations.
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))

# A training set whose float64 rows fit in this many solver chunks (256 MiB: 26,000 rows of
# 1,280) is read into memory once instead of being converted chunk by chunk from its float32
# store on every pass of every C: measured on 4,000 x 1,280 digits embeddings, 7 of 27 ms
# per loss + gradient went to the conversion and the store's page faults; on 5,529 token rows
# of 1,536 (NER, 300 sentences, 68 MiB) training took 60 s instead of 69 s. Memory stays
# bounded, and small next to the backbone in PyTorch: larger sets are read in chunks as before.
RESIDENT_CHUNKS = 16

# A validation split with fewer rows than this per class gives a log-loss too noisy to
# rank Cs by: pool train and validation and cross-validate instead.
MIN_VAL_PER_CLASS = 10


@dataclass(frozen=True)
class ProbeSolution:
    """The solved head (on raw embeddings) and how its C was chosen."""

    W: np.ndarray  # [K, F] float32
    b: np.ndarray  # [K] float32
    C: float
    val_loss: float  # mean log-loss at C on the selection data (holdout or out-of-fold)
    val_accuracy: float
    table: tuple[tuple[float, float, float], ...]  # (C, val_loss, val_accuracy) per C tried
    refit: bool  # True: the head was refitted on train + validation
    n_train: int  # rows the returned head was fitted on
    selection: str = "holdout"  # "holdout" or "<k>-fold"


# ----------------------------------------------------------------------------- one fit


def _one_blas_thread(fn):
    """Run ``fn`` with BLAS limited to one thread, where threadpoolctl (a scikit-learn
    dependency) is installed.

    Why: L-BFGS-B's BLAS (scipy's OpenBLAS) and the gradient's (numpy's OpenBLAS) are
    two thread pools that take turns many times per iteration; their spinning workers
    fight over the cores. Measured on a 2-core EPYC: one C on 800 x 1,280 digits
    embeddings took 26 s with two threads each and 0.6 s with one (limiting only one
    pool: 7-11 s). Matrices this small gain nothing from a second thread anyway."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - present wherever scikit-learn is
            limit = contextlib.nullcontext()
        else:
            limit = threadpool_limits(limits=1, user_api="blas")
        with limit:
            return fn(*args, **kwargs)

    return wrapper


class _Rows:
    """The rows of one or more 2-D arrays (in memory or memory-mapped, any float dtype),
    each optionally subset by an index array, in order: never copied whole, read in
    float64 chunks (:func:`~edgetl.core.rowstore.row_chunks`)."""

    def __init__(self, parts):
        self.parts = [(a, None if idx is None else np.asarray(idx, dtype=np.int64)) for a, idx in parts]
        self.n = sum(len(a) if idx is None else len(idx) for a, idx in self.parts)
        self.F = self.parts[0][0].shape[1]

    @classmethod
    def of(cls, X) -> "_Rows":
        if isinstance(X, _Rows):
            return X
        X = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise DataError(f"need X [N, F], got shape {X.shape}")
        return cls([(X, None)])

    def __len__(self) -> int:
        return self.n

    def chunks(self):
        """``(offset, float64 block)`` over every row, in order (a block may be a view: read it)."""
        offset = 0
        for a, idx in self.parts:
            for s, block in row_chunks(a, idx):
                yield offset + s, block
            offset += len(a) if idx is None else len(idx)

    def take(self, mask: np.ndarray) -> "_Rows":
        """The rows where ``mask`` (length N) is true."""
        parts, start = [], 0
        for a, idx in self.parts:
            m = len(a) if idx is None else len(idx)
            sel = np.flatnonzero(mask[start:start + m])
            parts.append((a, sel if idx is None else idx[sel]))
            start += m
        return _Rows(parts)

    def dense(self) -> np.ndarray:
        """All rows as one float64 array (only for matrices known to be small)."""
        if len(self.parts) == 1 and self.parts[0][1] is None and self.parts[0][0].dtype == np.float64:
            return self.parts[0][0]  # already that: read, never written
        out = np.empty((self.n, self.F))
        for s, block in self.chunks():
            out[s:s + len(block)] = block
        return out

    def resident(self) -> "_Rows":
        """These rows as one float64 array in memory when that takes at most
        ``RESIDENT_CHUNKS`` chunks' bytes, else themselves (read in chunks on every pass)."""
        from edgetl.core import rowstore

        if self.in_memory is not None or self.n * self.F * 8 > RESIDENT_CHUNKS * rowstore.CHUNK_BYTES:
            return self
        return _Rows([(self.dense(), None)])

    @property
    def in_memory(self) -> np.ndarray | None:
        """The rows when they are one float64 array in ordinary memory (one block for a pass)."""
        from edgetl.core import rowstore

        a, idx = self.parts[0]
        if len(self.parts) == 1 and idx is None and a.dtype == np.float64 and rowstore._mapping(a) is None:
            return a
        return None


class _Problem:
    """One training set, standardised once, solved for many Cs with warm starts.

    With at least as many rows as features the rows stay where they are (a memory-mapped
    store, say) and every pass reads them chunk by chunk, the standardisation folded into
    the parameters. With fewer rows than features, parameters live in the row space of the
    standardised rows: the gradient of the loss in W_k is a combination of the rows and the
    penalty is isotropic, so the optimum lies there (representer theorem) and solving in an
    orthonormal basis of it is exact and cheaper (1,280 -> N columns); that matrix, N x N
    with N < F, is held in memory."""

    def __init__(self, X, y, n_classes, standardize, sample_weight=None):
        rows, y = _Rows.of(X), np.asarray(y)
        if len(rows) == len(y):
            rows = rows.resident()  # every pass below reads it: once into memory when small enough
        if y.ndim != 1 or len(rows) != len(y) or len(y) == 0:
            raise DataError(f"need X [N, F] and y [N] with N > 0, got X {(len(rows), rows.F)} and y {y.shape}")
        for _, block in rows.chunks():
            if not np.all(np.isfinite(block)):
                raise DataError("embeddings contain NaN or infinity; check the backbone's output")
        _check_labels(y, n_classes)
        sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if sw.shape != y.shape or np.any(sw < 0) or sw.sum() <= 0:
            raise ConfigError("sample_weight must be N non-negative numbers with a positive sum")
        self.n_classes, self.n, self.F = int(n_classes), len(y), rows.F
        self.mean, self.scale, self.flat = (_standardizer(rows, sw) if standardize else
                                            (np.zeros(self.F), np.ones(self.F), np.zeros(self.F, bool)))
        self.rows, self.X, self.basis = rows, None, None
        if self.n < self.F:  # [n, n] in memory, n < F
            # Xs = R^T Q^T with Q [F, n] orthonormal: Q^T is a basis of the row space and R^T the
            # rows' coordinates in it. QR, not SVD: the same space, ~5x cheaper (measured 0.56 s
            # vs 2.7 s on 1,000 x 1,280); dependent rows leave coordinates that only the
            # penalty acts on, which stay at zero.
            Q, R = np.linalg.qr(((rows.dense() - self.mean) / self.scale).T)
            self.basis, self.X = Q.T, np.ascontiguousarray(R.T)
        self.present = np.unique(y[sw > 0])
        self.yi = np.searchsorted(self.present, y)  # labels renumbered over present classes
        self.S = float(sw.sum())  # sklearn's penalty scale: the sum of weights, not N
        self.sw = sw / self.S

    @property
    def rows_solved(self) -> int:
        """Weight rows solved for: one for the binomial case, else one per present class."""
        return 1 if len(self.present) == 2 else len(self.present)

    @property
    def width(self) -> int:
        return self.F if self.X is None else self.X.shape[1]

    def _blocks(self):
        """``(offset, block)`` of the design: the row-space matrix (one block), or the raw
        rows in chunks, whose standardisation :meth:`_fold` and :meth:`_unfold` carry."""
        if self.X is not None:
            yield 0, self.X
        elif self.rows.in_memory is not None:
            yield 0, self.rows.in_memory
        else:
            yield from self.rows.chunks()

    def _fold(self, W: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardised-space (W, c) -> the same logits from raw blocks:
        ((x - mean) / scale) W^T + c = x (W / scale)^T + (c - (W / scale) mean). Folding saves
        standardising every chunk on every pass (measured: 190 ms of a 290 ms pass over
        4,000 x 1,280; folded: ~95 ms)."""
        if self.X is not None:
            return W, c
        Wr = W / self.scale
        return Wr, c - Wr @ self.mean

    def _unfold(self, GX: np.ndarray, gsum: np.ndarray) -> np.ndarray:
        """sum_i g_i x_i over raw blocks -> sum_i g_i (x_i - mean) / scale. A feature constant
        on these rows is exactly zero once standardised, as scikit-learn's: its gradient is
        zero, not the rounding left by the subtraction."""
        if self.X is not None:
            return GX
        G = (GX - np.outer(gsum, self.mean)) / self.scale
        G[:, self.flat] = 0.0
        return G

    def _multinomial_fg(self, theta, alpha, K):
        """Mean-scaled multinomial objective and its gradient; theta is [K, F+1] row-major.
        Each block's rows are split among the cores (:func:`_row_parts`), whose partial sums
        add up in a fixed order."""
        F = self.width
        Wb = theta.reshape(K, F + 1)
        Wr, cr = self._fold(Wb[:, :F], Wb[:, F])
        loss, GX, gsum = 0.0, np.zeros((K, F)), np.zeros(K)
        for s, X in self._blocks():
            parts = [(X[a:b], self.yi[s + a:s + b], self.sw[s + a:s + b]) for a, b in _row_parts(len(X))]
            for part_loss, part_GX, part_gsum in _map(lambda p: _multinomial_part(Wr, cr, *p), parts):
                loss += part_loss
                GX += part_GX
                gsum += part_gsum
        grad = np.empty_like(Wb)
        grad[:, :F] = self._unfold(GX, gsum) + alpha * Wb[:, :F]
        grad[:, F] = gsum
        return loss + 0.5 * alpha * float(np.sum(Wb[:, :F] ** 2)), grad.ravel()

    def _binomial_fg(self, theta, alpha, _K):
        """Mean-scaled binomial objective (y in {0, 1}) and its gradient; theta is [F+1]."""
        w, c = theta[:-1], theta[-1]
        wr, cr = self._fold(w[None], np.array([c]))
        loss, gX, gsum = 0.0, np.zeros(self.width), 0.0
        for s, X in self._blocks():
            y, sw = self.yi[s:s + len(X)], self.sw[s:s + len(X)]
            z = X @ wr[0] + cr[0]
            loss += float(sw @ (np.logaddexp(0.0, z) - y * z))
            g = sw * (expit(z) - y)
            gX += X.T @ g
            gsum += float(g.sum())
        gw = self._unfold(gX[None], np.array([gsum]))[0]
        return loss + 0.5 * alpha * float(w @ w), np.concatenate([gw + alpha * w, [gsum]])

    def solve(self, C: float, theta0: np.ndarray | None, max_iter: int, tol: float) -> np.ndarray:
        """Optimal parameters (present classes, standardised space) for one C."""
        if not (np.isfinite(C) and C > 0):
            raise ConfigError(f"C must be a positive finite number, got {C!r}")
        if len(self.present) < 2:
            return np.zeros(0)
        theta0 = np.zeros(self.rows_solved * (self.width + 1)) if theta0 is None else theta0
        fg = self._binomial_fg if len(self.present) == 2 else self._multinomial_fg
        res = minimize(fg, theta0, jac=True, method="L-BFGS-B", args=(1.0 / (C * self.S), len(self.present)),
                       # scikit-learn's options (its tol is this gtol on the same mean-scaled objective)
                       options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
        return res.x

    def _standardised(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters -> (W [P, F], b [P]) for the present classes on standardised features."""
        Wb = theta.reshape(self.rows_solved, -1)
        A, c = Wb[:, :-1], Wb[:, -1]
        W = A if self.basis is None else A @ self.basis
        if self.rows_solved == 1:  # binomial: the symmetric pair gives sigmoid(w.x + c) for class 1
            return np.vstack([-W[0], W[0]]) / 2.0, np.array([-c[0], c[0]]) / 2.0
        return W, c - c.mean()

    def head(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters -> float64 (W [K, F], b [K]) on raw embeddings, standardisation folded in."""
        K, P = self.n_classes, self.present
        Ws, bs = np.zeros((K, self.F)), np.zeros(K)
        if len(P) >= 2:
            Ws[P], bs[P] = self._standardised(theta)
        W, b = Ws / self.scale, bs - Ws @ (self.mean / self.scale)
        absent = np.setdiff1d(np.arange(K), P)
        if len(absent):
            # No data for these classes: a constant logit that gives each at most the
            # probability of a pseudo-count, 1 / (n + K), on every training row (the least
            # confident row sets it), so they are never predicted there and a held-out row
            # of such a class costs a large but finite log-loss.
            Wp, cp = self._fold(Ws[P] if self.basis is None else Ws[P] @ self.basis.T, bs[P])
            least = min(float(np.min(logsumexp(X @ Wp.T + cp, axis=1))) for _, X in self._blocks())
            b[absent] = least - np.log(self.n + K)
        return W, b

    def to_theta(self, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """A raw-space head -> this problem's parameters (a warm start across problems)."""
        P = self.present
        if len(P) < 2:
            return np.zeros(0)
        Ws, bs = W * self.scale, b + W @ self.mean
        Ws = Ws if self.basis is None else Ws @ self.basis.T  # nearest point of the row space
        if len(P) == 2:
            return np.concatenate([Ws[P[1]] - Ws[P[0]], [bs[P[1]] - bs[P[0]]]])
        return np.hstack([Ws[P], bs[P, None] - bs[P].mean()]).ravel()


def _multinomial_part(Wr: np.ndarray, cr: np.ndarray, X: np.ndarray, y: np.ndarray, sw: np.ndarray):
    """(weighted cross-entropy, G^T X, G summed over rows) for one range of rows, G the
    softmax minus the one-hot labels, weighted. (W X^T)^T reads X through its transpose,
    faster than X W^T for a few classes; the softmax reuses its exponentials for the
    log-sum-exp (measured on 1,438 x 1,280 digits embeddings, 10 classes: 2.9 vs 3.9 ms a
    pass, the same values to 1e-16)."""
    Z = (Wr @ X.T).T + cr
    m = Z.max(axis=1, keepdims=True)
    G = np.exp(Z - m)
    total = G.sum(axis=1, keepdims=True)
    r = np.arange(len(y))
    loss = float(sw @ (m[:, 0] + np.log(total[:, 0]) - Z[r, y]))
    G /= total
    G[r, y] -= 1.0
    G *= sw[:, None]
    return loss, G.T @ X, G.sum(axis=0)


# A pass over the rows is split among this many threads (BLAS and numpy's loops release the
# GIL; each thread's BLAS stays single-threaded, see _one_blas_thread). Measured on 2 cores,
# 1,438 x 1,280 rows: 1.8 vs 2.9 ms a pass. Parts under MIN_PART_ROWS rows are not worth a thread.
_THREADS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
MIN_PART_ROWS = 256
_POOL: ThreadPoolExecutor | None = None


def _row_parts(n: int) -> list[tuple[int, int]]:
    k = max(1, min(_THREADS, n // MIN_PART_ROWS))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _map(fn, items: list) -> list:
    """``[fn(x) for x in items]``, on the solver's threads when there is more than one item."""
    global _POOL
    if len(items) <= 1:
        return [fn(x) for x in items]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_THREADS - 1, thread_name_prefix="edgetl-solver")
    rest = [_POOL.submit(fn, x) for x in items[1:]]  # the caller's thread takes the first
    return [fn(items[0])] + [f.result() for f in rest]


def _check_labels(y: np.ndarray, n_classes) -> None:
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"labels must be integers in [0, {n_classes}), got {y.dtype} in [{y.min()}, {y.max()}]")


def _standardizer(rows: _Rows, sw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's StandardScaler: (weighted) mean, ddof-0 std; near-constant -> scale 1.
    Two passes over the chunks (mean, then squared deviations), as numpy's two-pass formula;
    also which features are exactly constant (zero once standardised)."""
    total = float(sw.sum())
    mean, lo, hi = np.zeros(rows.F), np.full(rows.F, np.inf), np.full(rows.F, -np.inf)
    for s, X in rows.chunks():
        mean += sw[s:s + len(X)] @ X
        lo, hi = np.minimum(lo, X.min(axis=0)), np.maximum(hi, X.max(axis=0))
    mean /= total
    var = np.zeros(rows.F)
    for s, X in rows.chunks():
        var += sw[s:s + len(X)] @ (X - mean) ** 2
    var /= total
    # the same constant-feature bound as sklearn.preprocessing._data._is_constant_feature
    eps, n = np.finfo(np.float64).eps, total
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    return mean, np.where(constant, 1.0, np.sqrt(var)), lo == hi


@_one_blas_thread
def fit_logreg(X, y, n_classes: int, C: float, *, standardize: bool = True, sample_weight=None,
               max_iter: int = 2000, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with scikit-learn's objective -> (W [K, F], b [K]) float32.

    With ``standardize`` the features are standardised on these rows (as
    ``StandardScaler``) and the scaling is folded into W and b, so the head takes raw
    embeddings; the solution is then that of ``make_pipeline(StandardScaler(),
    LogisticRegression(C=C))``. ``X`` may be float32 and memory-mapped: it is read in
    chunks, never copied whole."""
    prob = _Problem(X, y, n_classes, standardize, sample_weight)
    W, b = prob.head(prob.solve(C, None, max_iter, tol))
    return W.astype(np.float32), b.astype(np.float32)


# ----------------------------------------------------------------------------- choosing C


def _score(W: np.ndarray, b: np.ndarray, X, y: np.ndarray) -> tuple[float, float]:
    """(summed log-loss, number correct) of a float64 head on held-out rows (read in chunks)."""
    loss = correct = 0.0
    for s, block in _Rows.of(X).chunks():
        yc = y[s:s + len(block)]
        Z = block @ W.T + b
        loss += float(np.sum(logsumexp(Z, axis=1) - Z[np.arange(len(yc)), yc]))
        correct += float(np.sum(Z.argmax(axis=1) == yc))
    return loss, correct


def score_head(W, b, X, y) -> tuple[float, float]:
    """(mean log-loss, accuracy) of a head ``logits = X @ W.T + b`` on rows ``X`` (any
    float dtype, memory-mapped or not: read in chunks)."""
    y = np.asarray(y)
    if len(y) == 0:
        return float("nan"), float("nan")
    loss, correct = _score(np.asarray(W, np.float64), np.asarray(b, np.float64), X, y)
    return loss / len(y), correct / len(y)


def _check_Cs(Cs) -> np.ndarray:
    Cs = np.asarray(DEFAULT_CS if Cs is None else Cs, dtype=np.float64).ravel()
    if Cs.size == 0 or not np.all(np.isfinite(Cs) & (Cs > 0)):
        raise ConfigError(f"Cs must be positive finite numbers, got {Cs.tolist()}")
    return np.unique(Cs)  # ascending: the warm-start path runs from strong to weak penalty


def _path(prob: _Problem, Cs: np.ndarray, max_iter: int, tol: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw-space heads for every C, each warm-started from the previous (smaller) Cs: from the
    line through the last two solutions, in log C (the optimum moves smoothly along the path).
    Measured on digits embeddings, 13 Cs: 444 vs 634 loss + gradient evaluations on 4,000 x
    1,280 rows, 566 vs 703 on 800 (the same optimum, probabilities within 3e-5)."""
    theta, prev, heads = None, None, []
    for i, C in enumerate(Cs):
        start = theta
        if prev is not None:
            start = theta + np.log(C / Cs[i - 1]) / np.log(Cs[i - 1] / Cs[i - 2]) * (theta - prev)
        prev, theta = theta, prob.solve(C, start, max_iter, tol)
        heads.append(prob.head(theta))
    return heads


def _pick(table: list[tuple[float, float, float]]) -> int:
    """Lowest log-loss; a tie (within 1e-9 relative) goes to higher accuracy, then smaller C."""
    best = min(loss for _, loss, _ in table)
    tied = [i for i, (_, loss, _) in enumerate(table) if loss <= best + 1e-9 * max(1.0, abs(best))]
    return max(tied, key=lambda i: (table[i][2], -table[i][0]))


@_one_blas_thread
def select_C(X_train, y_train, X_val, y_val, n_classes: int, Cs=None, *, standardize: bool = True,
             max_iter: int = 2000, tol: float = 1e-6) -> tuple[float, list[tuple[float, float, float]]]:
    """Choose C by validation log-loss -> (C, [(C, mean val log-loss, val accuracy), ...])."""
    C, table, _ = _select_holdout(X_train, y_train, X_val, y_val, n_classes, _check_Cs(Cs),
                                  standardize, max_iter, tol)
    return C, table


def _select_holdout(X_train, y_train, X_val, y_val, n_classes, Cs, standardize, max_iter, tol):
    y_val = np.asarray(y_val)
    if len(y_val) == 0:
        raise DataError("the validation split is empty; use cross_validate_C or give validation rows")
    prob = _Problem(X_train, y_train, n_classes, standardize)
    heads = _path(prob, Cs, max_iter, tol)
    table = []
    for C, (W, b) in zip(Cs, heads):
        loss, correct = _score(W, b, X_val, y_val)
        table.append((float(C), loss / len(y_val), correct / len(y_val)))
    i = _pick(table)
    return table[i][0], table, heads[i]


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per row: each class shuffled, then dealt round-robin (counter runs on
    across classes so folds stay balanced in size too)."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)])
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = np.arange(len(y)) % folds
    return fold


@_one_blas_thread
def cross_validate_C(X, y, n_classes: int, Cs=None, folds: int = 5, seed: int = 0, *, standardize: bool = True,
                     max_iter: int = 2000, tol: float = 1e-6) -> tuple[float, list[tuple[float, float, float]]]:
    """Choose C by stratified, seeded k-fold out-of-fold log-loss -> (C, table as ``select_C``).

    A class with fewer rows than ``folds`` is missing from some training folds; those
    folds give it a pseudo-count probability (see ``fit_logreg``), not an error."""
    X, y, Cs = _Rows.of(X), np.asarray(y), _check_Cs(Cs)
    if not isinstance(folds, (int, np.integer)) or not 2 <= folds <= len(y):
        raise ConfigError(f"folds must be an integer from 2 to the number of rows ({len(y)}), got {folds!r}")
    fold = _stratified_folds(y, folds, seed)
    loss, correct = np.zeros(len(Cs)), np.zeros(len(Cs))
    for k in range(folds):
        tr, va = fold != k, fold == k
        prob = _Problem(X.take(tr), y[tr], n_classes, standardize)  # index views, not copies
        for j, (W, b) in enumerate(_path(prob, Cs, max_iter, tol)):
            l, c = _score(W, b, X.take(va), y[va])
            loss[j] += l
            correct[j] += c
    table = [(float(C), float(l) / len(y), float(c) / len(y)) for C, l, c in zip(Cs, loss, correct)]
    return table[_pick(table)][0], table


# ----------------------------------------------------------------------------- the verb


def _auto_folds(y_val: np.ndarray, y_all: np.ndarray, n_classes: int, folds: int | None) -> int | None:
    """None for holdout selection, else the number of folds to use."""
    if folds is not None:
        return folds
    if len(y_val) >= MIN_VAL_PER_CLASS * n_classes:
        return None
    counts = np.bincount(y_all, minlength=n_classes)
    # as many folds (up to 5) as the smallest present class can fill
    return int(min(5, max(2, counts[counts > 0].min()), len(y_all)))


@_one_blas_thread
def solve_probe(X_train, y_train, X_val, y_val, n_classes: int, *, Cs=None, refit: bool = True,
                folds: int | None = None, seed: int = 0, standardize: bool = True,
                max_iter: int = 2000, tol: float = 1e-6) -> ProbeSolution:
    """Solve the linear-probe head: choose C, then fit (on train + val with ``refit``).

    C is chosen by validation log-loss when the validation split has at least
    ``MIN_VAL_PER_CLASS`` rows per class on average; otherwise (or when ``folds`` is
    given) by stratified ``folds``-fold cross-validation on train + validation pooled."""
    Cs = _check_Cs(Cs)
    X_train, y_train = _Rows.of(X_train), np.asarray(y_train)
    if not isinstance(X_val, np.ndarray) or X_val.ndim != 2:  # an empty split may come as []
        X_val = np.asarray(X_val, dtype=np.float64).reshape(-1, X_train.F)
    X_val, y_val = _Rows.of(X_val), np.asarray(y_val, dtype=y_train.dtype)
    if X_val.F != X_train.F:
        raise DataError(f"X_val has {X_val.F} features, X_train {X_train.F}")
    # train + validation: the two arrays read one after the other, never stacked
    X_all, y_all = _Rows(X_train.parts + X_val.parts), np.concatenate([y_train, y_val])
    _check_labels(y_all, n_classes)
    k = _auto_folds(y_val, y_all, n_classes, folds)
    if k is None:
        C, table, head = _select_holdout(X_train, y_train, X_val, y_val, n_classes, Cs, standardize, max_iter, tol)
        selection = "holdout"
    else:
        C, table = cross_validate_C(X_all, y_all, n_classes, Cs, k, seed, standardize=standardize,
                                    max_iter=max_iter, tol=tol)
        head, selection = None, f"{k}-fold"
    _, val_loss, val_acc = next(row for row in table if row[0] == C)
    X_fit, y_fit = (X_all, y_all) if refit and len(y_val) else (X_train, y_train)
    if head is None or X_fit is X_all:
        prob = _Problem(X_fit, y_fit, n_classes, standardize)
        # warm start from the head already found at this C (a close neighbour of the refit)
        theta0 = prob.to_theta(*head) if head is not None else None
        head = prob.head(prob.solve(C, theta0, max_iter, tol))
    W, b = head
    return ProbeSolution(W.astype(np.float32), b.astype(np.float32), float(C), float(val_loss), float(val_acc),
                         tuple(table), bool(refit and len(y_val)), len(y_fit), selection)
