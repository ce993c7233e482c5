"""Class addition benchmark: half the classes known, half new, on the digits and on photos.

The scenario of tests/test_class_addition.py (issue 13): pretrained efficientnet_lite0 at
128 px; 5 known classes from 100 images each (the workstation's probe, C = 1, on them), then
5 new classes from 130 each on the device, with a replay memory of the known ones; disjoint
test images (digits: up to 45 a class; photos: 25 crops a class from regions no training crop
touches). "kept" is old-class test accuracy after / before; every row is run for holdout
seeds 0, 1, 2 (the holdout picks the epoch and fits the bias correction).

Rows (memory budget: 102.6 KB a class = 20 float32 rows of 1,280 features, or 39 float16 rows):

Memory: herding, ``float16`` (the default: twice the rows in the same bytes) or ``float32``.

- ``adamw``: the device's retrain as it is (edgetl.device.learn.fit_head, numpy steps: the same
  AdamW as the ONNX Runtime artifacts, class-balanced batches, best epoch by holdout loss, bias
  correction fit on the holdout).
- ``exact``: the class-balanced, L2-regularised multinomial logistic regression over memory +
  new data solved to its optimum (scipy L-BFGS on standardised features, C by class-balanced
  holdout loss over 1e-3..10), then the same bias correction. A prototype: not on the device yet.
- ``exact + distillation``: the same plus LwF/iCaRL distillation (temperature 2, weight 1) of
  the old head's old-class probabilities over every training row.
- ``joint LogisticRegression``: scikit-learn on all old + new training images (the ceiling).

    python benchmarks/class_addition_bench.py [--rows adamw,exact] [--json benchmarks/results/class_addition.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

N_OLD = 5
SEEDS = (0, 1, 2)
CS = tuple(np.logspace(-3, 1, 9))


def scenarios(root: Path) -> dict:
    """(old, new, test) embeddings per data set, cached in ``root/embeddings.npz``."""
    cache = root / "embeddings.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return {k: tuple((f[f"{k}_{n}_X"], f[f"{k}_{n}_y"]) for n in ("old", "new", "test"))
                    for k in ("digits", "photos")}
    from edgetl.workstation.datasets import class_addition_scenarios

    out = class_addition_scenarios(root, n_old=N_OLD, image_size=128)
    np.savez(cache, **{f"{k}_{n}_{a}": v for k, parts_ in out.items()
                       for n, xy in zip(("old", "new", "test"), parts_) for a, v in zip("Xy", xy)})
    return out


def _balanced(y: np.ndarray) -> np.ndarray:
    w = 1.0 / np.bincount(y)[y]
    return w / w.sum()


def solve_exact(X, y, K, C, *, distill=0.0, T=2.0, W0=None, b0=None):
    """Class-balanced multinomial logistic regression (+ optional distillation of ``W0, b0``'s
    old-class probabilities) on standardised features, solved by L-BFGS; a raw-space head."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    X = X.astype(np.float64)
    mu, sd = X.mean(0), X.std(0) + 1e-8
    Xs, s, F, rows = (X - mu) / sd, _balanced(y), X.shape[1], np.arange(len(y))
    alpha = 1.0 / (C * len(y))
    if distill:
        L0 = (X @ W0.T.astype(np.float64) + b0) / T
        Q = np.exp(L0 - logsumexp(L0, axis=1, keepdims=True))
        n_old = W0.shape[0]

    def fg(theta):
        Wb = theta.reshape(K, F + 1)
        W, b = Wb[:, :F], Wb[:, F]
        Z = Xs @ W.T + b
        lse = logsumexp(Z, axis=1)
        loss = s @ (lse - Z[rows, y]) + 0.5 * alpha * np.sum(W ** 2)
        G = np.exp(Z - lse[:, None])
        G[rows, y] -= 1
        G *= s[:, None]
        if distill:
            Zo = Z[:, :n_old] / T
            lo = logsumexp(Zo, axis=1)
            loss += distill * T * T * np.mean(-(Q * (Zo - lo[:, None])).sum(1))
            G[:, :n_old] += distill * T * (np.exp(Zo - lo[:, None]) - Q) / len(y)
        g = np.empty_like(Wb)
        g[:, :F], g[:, F] = G.T @ Xs + alpha * W, G.sum(0)
        return loss, g.ravel()

    r = minimize(fg, np.zeros(K * (F + 1)), jac=True, method="L-BFGS-B", options={"maxiter": 3000, "gtol": 1e-7})
    Wb = r.x.reshape(K, F + 1)
    W = Wb[:, :F] / sd
    return W.astype(np.float32), (Wb[:, F] - W @ mu).astype(np.float32)


def run_row(row: str, W0, b0, memory, X_new, y_new, seed: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _class_addition import add_classes
    from edgetl.core.data import stratified_split
    from edgetl.device.learn.bias import balanced_log_loss, choose_correction
    from edgetl.device.retraining import RetrainConfig

    cfg = RetrainConfig(seed=seed)
    if row == "adamw":
        return add_classes(W0, b0, memory, X_new, y_new, cfg)[:2]
    K = int(y_new.max()) + 1
    tr, ho = stratified_split(y_new, cfg.holdout, seed)
    mtr, mho = memory.split(cfg.holdout, seed)
    X = np.concatenate([X_new[tr], memory.embeddings[mtr]])
    y = np.concatenate([y_new[tr], memory.labels[mtr]])
    Xh = np.concatenate([X_new[ho], memory.embeddings[mho]])
    yh = np.concatenate([y_new[ho], memory.labels[mho]])
    kw = dict(distill=1.0, W0=W0, b0=b0) if "distillation" in row else {}
    heads = [solve_exact(X, y, K, C, **kw) for C in CS]
    W, b = min(heads, key=lambda h: balanced_log_loss(h[0], h[1], Xh, yh))
    return choose_correction(W, b, N_OLD, Xh, yh, "fit")[:2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="adamw,exact,exact + distillation")
    p.add_argument("--workdir", help="keep the images and embeddings here (default: a temporary folder)")
    p.add_argument("--json", default=str(Path(__file__).with_name("results") / "class_addition.json"))
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from edgetl.device.memory import ReplayMemory, per_class_for_budget
    from edgetl.workstation.probe_solver import fit_logreg
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    threadpool_limits(1)  # two BLAS pools (numpy's, scipy's) fight over 2 cores otherwise
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        data = scenarios(root)
    results = []
    for name, (old, new, test) in data.items():
        W0, b0 = fit_logreg(old[0], old[1], N_OLD, 1.0)
        o = test[1] < N_OLD
        acc = lambda W, b, m: float(((test[0][m] @ W.T + b).argmax(1) == test[1][m]).mean())  # noqa: E731
        before = acc(W0, b0, o)
        sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
            np.concatenate([old[0], new[0]]), np.concatenate([old[1], new[1]]))
        joint = (float((sk.predict(test[0][o]) == test[1][o]).mean()) / before,
                 float((sk.predict(test[0][~o]) == test[1][~o]).mean()))
        results.append({"data": name, "row": "joint LogisticRegression", "memory": "all data",
                        "kept": [joint[0]], "new": [joint[1]]})
        print(f"{name}: old-class accuracy before {before:.3f}; joint LogisticRegression kept {joint[0]:.3f}, "
              f"new {joint[1]:.3f}", flush=True)
        F = old[0].shape[1]
        budget_mb = N_OLD * 20 * (4 * F + 8) / 1e6  # 20 float32 rows a class
        for precision in ("float32", "float16"):
            per_class, what = per_class_for_budget(budget_mb, F, N_OLD, precision), precision
            memory = ReplayMemory.build(old[0], old[1], [str(i) for i in range(N_OLD)], per_class=per_class,
                                        precision=precision)
            for row in args.rows.split(","):
                t0, kept, new_acc = time.perf_counter(), [], []
                for seed in SEEDS:
                    W, b = run_row(row, W0, b0, memory, new[0], new[1], seed)
                    kept.append(acc(W, b, o) / before)
                    new_acc.append(acc(W, b, ~o))
                results.append({"data": name, "row": row, "memory": f"{per_class} a class ({what})",
                                "kept": kept, "new": new_acc, "seconds": time.perf_counter() - t0})
                print(f"  {row:22s} {per_class:3d} a class: kept {' '.join(f'{k:.3f}' for k in kept)} "
                      f"(mean {np.mean(kept):.3f}); new {' '.join(f'{k:.3f}' for k in new_acc)}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"seeds": SEEDS, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
