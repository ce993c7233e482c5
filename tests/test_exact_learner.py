"""The device's exact head solver (edgetl.device.learn.solver, numpy only) and its class
addition learner (edgetl.device.learn.addition) against scikit-learn and PyTorch on real
embedding-sized rows (the digits' pixels, 64 features), and the properties retrain relies
on: old rows kept bit for bit, no dependence on the embedding's scale, one C whatever the
seed."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.device.learn.addition import ADDITION_CS, add_classes, out_of_fold
from edgetl.device.learn.solver import balanced_weights, lbfgs, solve_head
from edgetl.errors import ConfigError, RetrainError


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data.astype(np.float64), d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: (15 if c < 5 else 40)] for c in range(10)])
    return X[keep] + rng.normal(0, 0.01, (len(keep), X.shape[1])), y[keep]  # unbalanced: 15 vs 40 a class


def _softmax(Z):
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_plain_solve_equals_scikit_learn_balanced_logistic_regression(digits, C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = digits
    W, b = solve_head(X, y, 10, C, tol=1e-9)
    Xs = StandardScaler().fit_transform(X)
    sk = LogisticRegression(C=C, class_weight="balanced", tol=1e-12, max_iter=20000).fit(Xs, y)
    assert np.abs(_softmax(X @ W.T + b) - sk.predict_proba(Xs)).max() < 1e-4


def _torch_oracle(X, y, K, C, W_a, b_a, frozen):
    """The same objective in PyTorch: class-balanced cross-entropy on standardised rows +
    alpha/2 ||W - A||^2 over the free rows, frozen rows at the anchor; L-BFGS, float64."""
    torch = pytest.importorskip("torch")
    Xt = torch.from_numpy(X)
    mean, std = Xt.mean(0), Xt.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    Xs = (Xt - mean) / std
    As = torch.from_numpy(W_a) * std
    bs = torch.from_numpy(b_a) + torch.from_numpy(W_a) @ mean
    free = torch.from_numpy(~frozen)
    D = torch.zeros(int(free.sum()), X.shape[1], dtype=torch.float64, requires_grad=True)
    c = torch.zeros(int(free.sum()), dtype=torch.float64, requires_grad=True)
    w = torch.from_numpy(balanced_weights(y, K))
    yt = torch.from_numpy(y)
    alpha = 1.0 / (C * len(y))
    opt = torch.optim.LBFGS([D, c], max_iter=5000, tolerance_grad=1e-11, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def logits():
        Ws, b = As.clone(), bs.clone()
        Ws[free] = As[free] + D
        b[free] = c
        return Xs @ Ws.T + b

    def closure():
        opt.zero_grad()
        L = torch.nn.functional.cross_entropy(logits(), yt, reduction="none")
        loss = (w * L).sum() + 0.5 * alpha * (D ** 2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        return logits().numpy()


def test_anchored_and_frozen_solves_equal_a_pytorch_oracle(digits):
    X, y = digits
    from sklearn.linear_model import LogisticRegression

    old = y < 5
    W0 = LogisticRegression(C=0.1, max_iter=5000).fit(X[old], y[old])
    W_old, b_old = W0.coef_, W0.intercept_
    W_a = np.vstack([W_old, np.zeros((5, X.shape[1]))])
    b_a = np.concatenate([b_old, np.zeros(5)])
    for frozen in (np.arange(10) < 5, np.zeros(10, bool)):
        W, b = solve_head(X, y, 10, 0.3, anchor=(W_a, b_a), frozen=frozen, tol=1e-9)
        want = _torch_oracle(X, y, 10, 0.3, W_a, b_a, frozen)
        assert np.abs(_softmax(X @ W.T + b) - _softmax(want)).max() < 1e-4, frozen.any()
        if frozen.any():
            np.testing.assert_allclose(W[:5], W_old, rtol=1e-9, atol=1e-12)


def test_adding_classes_keeps_the_old_rows_and_ignores_the_scale_and_the_seed(digits):
    from sklearn.linear_model import LogisticRegression

    X, y = digits
    old = y < 5
    sk = LogisticRegression(C=1.0, max_iter=5000).fit(X[old], y[old])
    W_old, b_old = sk.coef_.astype(np.float32), sk.intercept_.astype(np.float32)
    added = add_classes(X, y, W_old, b_old, 10)
    assert np.array_equal(added.W[:5], W_old) and np.array_equal(added.b[:5], b_old)
    assert added.table and added.table[-1][0] == added.C  # the path stops at the C it chooses, or passes it by one
    # no decision between two old classes changes
    Z_old, Z_new = X @ W_old.T + b_old, X @ added.W.T + added.b
    assert np.array_equal(Z_old.argmax(1), Z_new[:, :5].argmax(1))
    acc = float((Z_new.argmax(1) == y).mean())
    assert acc > 0.9, acc
    # the embedding's scale does not matter: 1000x the rows (and the old head scaled to match)
    scaled = add_classes(1000 * X, y, W_old / 1000, b_old, 10)
    assert scaled.C == added.C
    np.testing.assert_allclose(1000 * scaled.W[5:], added.W[5:], rtol=1e-3, atol=1e-6)
    # out-of-fold logits: every row predicted once, by a head that did not see it
    oof = out_of_fold(X, y, W_old, b_old, 10, added.C, folds=5, seed=3)
    assert np.isfinite(oof).all() and (oof.argmax(1) == y).mean() > 0.8
    with pytest.raises(RetrainError, match="no rows"):
        add_classes(X[y < 9], y[y < 9], W_old, b_old, 10)
    with pytest.raises(ConfigError, match="exceed"):
        add_classes(X, y, W_old, b_old, 5)


def test_row_weighted_addition_walks_below_c_1_to_the_old_rows_size(digits):
    """Rows weighed alike (detection's locations) take C from 0.001: under an old head solved
    strongly penalised, as the workstation's detection probe is, weight aligning chooses a C
    below 1 whose new rows are nearer the old rows' size than the class-balanced floor's."""
    from sklearn.linear_model import LogisticRegression

    X, y = digits
    old = y < 5
    sk = LogisticRegression(C=0.001, max_iter=5000).fit(X[old], y[old])
    W_old, b_old = sk.coef_.astype(np.float32), sk.intercept_.astype(np.float32)
    added = add_classes(X, y, W_old, b_old, 10, balanced=False)
    gap = {C: abs(np.log(norm / added.old_norm)) for C, norm in added.table}
    assert added.table[0][0] == pytest.approx(1e-3) and added.C < 1, added.table
    assert gap[added.C] == min(gap.values())
    floor = add_classes(X, y, W_old, b_old, 10, balanced=False, Cs=ADDITION_CS)
    assert abs(np.log(floor.new_norm / floor.old_norm)) > gap[added.C]
    assert np.array_equal(added.W[:5], W_old) and np.array_equal(added.b[:5], b_old)
    assert add_classes(X, y, W_old, b_old, 10).table[0][0] == 1.0  # class-balanced: from 1, as before


def test_lbfgs_minimises_a_quadratic():
    A = np.diag([1.0, 10.0, 100.0])
    x, it = lbfgs(lambda v: (0.5 * v @ A @ v - v.sum(), A @ v - 1.0), np.zeros(3), tol=1e-10)
    np.testing.assert_allclose(x, [1.0, 0.1, 0.01], atol=1e-9)
