"""LogME against a straightforward reference: the Gaussian marginal likelihood written out
with dense matrices (scipy's multivariate normal), maximised by a general optimiser."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from edgetl.errors import DataError
from edgetl.workstation.logme import logme


def _reference_evidence(F: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """log N(t; 0, I/beta + F F^T / alpha): the evidence of Bayesian linear regression."""
    cov = np.eye(len(F)) / beta + F @ F.T / alpha
    return float(multivariate_normal(mean=np.zeros(len(F)), cov=cov).logpdf(t))


def _reference_max(F: np.ndarray, t: np.ndarray) -> float:
    best = -np.inf
    for start in ((0.0, 0.0), (3.0, -1.0), (-3.0, 2.0)):
        res = minimize(lambda p: -_reference_evidence(F, t, np.exp(p[0]), np.exp(p[1])), start,
                       method="Nelder-Mead", options=dict(xatol=1e-9, fatol=1e-12, maxiter=4000))
        best = max(best, -res.fun)
    return best


@pytest.mark.parametrize("n, d", [(12, 5), (7, 10)])  # more rows than features, and fewer (N < D)
def test_logme_is_the_maximised_marginal_likelihood(n, d):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    F = rng.normal(size=(n, d)) + 1.5 * np.eye(3)[y] @ rng.normal(size=(3, d))
    got = logme(F, y)
    for c, score, alpha, beta in zip(range(3), got.per_class, got.alphas, got.betas):
        t = (y == c).astype(float)
        # the evidence at LogME's (alpha, beta) is the dense Gaussian log-density ...
        assert score * n == pytest.approx(_reference_evidence(F, t, alpha, beta), abs=1e-6)
        # ... and no (alpha, beta) a general optimiser finds does better
        assert score * n >= _reference_max(F, t) - 1e-6
    assert got.score == pytest.approx(np.mean(got.per_class))


def test_informative_features_score_higher_than_noise():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 25)
    signal = np.eye(4)[y] @ rng.normal(size=(4, 16)) * 3 + rng.normal(size=(100, 16))
    noise = rng.normal(size=(100, 16))
    assert logme(signal, y).score > logme(noise, y).score + 0.1


@pytest.mark.parametrize("F, y, message", [
    (np.zeros((3,)), np.zeros(3), "features"),
    (np.ones((3, 2)), np.zeros(4), "labels"),
    (np.full((3, 2), np.nan), np.zeros(3), "NaN"),
])
def test_bad_input_is_a_clear_error(F, y, message):
    with pytest.raises(DataError, match=message):
        logme(F, y)
