"""The numpy head trainer (edgetl.device.learn.numpy_trainer) against two oracles on real
data: the ONNX Runtime training artifacts edgetl generates (the device's reference) and
PyTorch's AdamW + cross_entropy. scikit-learn's handwritten digits, standardised, stand
in for backbone embeddings (64 features, 10 classes); batches come from the real
``epoch_batches``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl.device.learn import (
    ARTIFACT_FILES,
    BIAS,
    WEIGHT,
    HeadTrainConfig,
    epoch_batches,
    make_head_onnx,
    make_training_artifacts,
    train_head,
)
from edgetl.device.learn.numpy_trainer import NumpyHeadStepper
from edgetl.errors import ConfigError, RetrainError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
TOL = 1e-5
STEPS = 256  # 8 epochs of 1,000 samples in batches of 32 (the last batch of each is 8)
CONFIGS = {
    "defaults": HeadTrainConfig(),
    "other-hyperparameters": HeadTrainConfig(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "no-decay": HeadTrainConfig(weight_decay=0.0, betas=(0.95, 0.98)),
}


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))[:1000]
    X, y = X[order].astype(np.float32), y[order].astype(np.int64)
    std = X.std(0)
    std[std < 1e-3] = 1.0  # border pixels that are always 0
    return ((X - X.mean(0)) / std).astype(np.float32), y


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A small random head, its ONNX file and its training artifacts (built once)."""
    rng = np.random.default_rng(0)
    W, b = (rng.normal(size=(10, 64)) * 0.01).astype(np.float32), (rng.normal(size=10) * 0.01).astype(np.float32)
    root = tmp_path_factory.mktemp("numpy_trainer")
    make_head_onnx(W, b, [str(i) for i in range(10)], root / "head.onnx")
    make_training_artifacts(root / "head.onnx", root / "training")
    return W, b, root / "training"


def batches_for(y, config: HeadTrainConfig, steps: int = STEPS) -> list[np.ndarray]:
    rng = np.random.default_rng(config.seed)
    out: list[np.ndarray] = []
    while len(out) < steps:
        out += epoch_batches(y, config.batch_size, rng, config.sampling)
    return out[:steps]


def lr_at(config: HeadTrainConfig, step: int, schedule: bool) -> float:
    # A step decay exercises set_learning_rate on both sides.
    return config.lr * (0.3 if schedule and step >= STEPS // 2 else 1.0)


def ort_trajectory(artifacts: Path, config, X, y, batches, schedule=False):
    """Per step: (loss, W, b) from ORT, driven exactly as train_head drives it."""
    from edgetl.device.learn.ort_shim import open_training, set_adamw

    paths = {k: artifacts / v for k, v in ARTIFACT_FILES.items()}
    optimizer_model = onnx.load(str(paths["optimizer_model"]))
    set_adamw(optimizer_model, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    patched = artifacts.parent / f"optimizer-{id(config)}.onnx"
    onnx.save(optimizer_model, str(patched))
    state, module, optimizer = open_training(paths, patched)
    module.train()
    out = []
    for step, idx in enumerate(batches):
        optimizer.set_learning_rate(lr_at(config, step, schedule))
        loss = float(module(X[idx], y[idx]))
        optimizer.step()
        module.lazy_reset_grad()
        out.append((loss, np.array(state.parameters[WEIGHT].data), np.array(state.parameters[BIAS].data)))
    return out


def numpy_trajectory(W, b, config, X, y, batches, schedule=False):
    stepper = NumpyHeadStepper(W, b, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    out = []
    for step, idx in enumerate(batches):
        stepper.set_learning_rate(lr_at(config, step, schedule))
        out.append((stepper.step(X[idx], y[idx]), stepper.W, stepper.b))
    return out


def torch_trajectory(W, b, config, X, y, batches, schedule=False):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    Wt = torch.tensor(W, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    opt = torch.optim.AdamW([Wt, bt], lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: worker threads only spin, and slow to a crawl on a busy machine
    try:
        for step, idx in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(config, step, schedule)
            index = torch.from_numpy(idx)
            loss = F.cross_entropy(Xt[index] @ Wt.T + bt, yt[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append((loss.item(), Wt.detach().numpy().copy(), bt.detach().numpy().copy()))
    finally:
        torch.set_num_threads(threads)
    return out


def max_differences(a, b) -> dict[str, float]:
    assert len(a) == len(b)
    return {
        "loss": max(abs(x[0] - y[0]) for x, y in zip(a, b)),
        "W": max(float(np.abs(x[1] - y[1]).max()) for x, y in zip(a, b)),
        "b": max(float(np.abs(x[2] - y[2]).max()) for x, y in zip(a, b)),
    }


def assert_close(diff: dict[str, float], what: str) -> None:
    assert diff["W"] <= TOL and diff["b"] <= TOL and diff["loss"] <= TOL, f"{what}: {diff}"


@pytest.mark.parametrize("schedule", [False, True], ids=["constant-lr", "step-decay"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_ort_artifacts_every_step(digits, head, name, schedule):
    X, y = digits
    W, b, artifacts = head
    config = CONFIGS[name]
    batches = batches_for(y, config)
    ort = ort_trajectory(artifacts, config, X, y, batches, schedule)
    ours = numpy_trajectory(W, b, config, X, y, batches, schedule)
    moved = float(np.abs(ort[-1][1] - W).max())
    assert moved > 100 * TOL  # the head really trained, so the match means something
    assert_close(max_differences(ours, ort), f"numpy vs ORT ({name})")


@pytest.mark.parametrize("schedule", [False, True], ids=["constant-lr", "step-decay"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch_adamw_every_step(digits, head, name, schedule):
    X, y = digits
    W, b, _ = head
    config = CONFIGS[name]
    batches = batches_for(y, config)
    ours = numpy_trajectory(W, b, config, X, y, batches, schedule)
    reference = torch_trajectory(W, b, config, X, y, batches, schedule)
    assert_close(max_differences(ours, reference), f"numpy vs torch ({name})")


def test_matches_train_head(digits, head):
    """The production ORT loop (train_head, no validation: the last parameters are kept)."""
    X, y = digits
    W, b, artifacts = head
    config = HeadTrainConfig(epochs=8, weight_decay=0.05)
    result = train_head(artifacts, X, y, config=config)
    rng = np.random.default_rng(config.seed)
    stepper = NumpyHeadStepper(W, b, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    losses = [stepper.step(X[i], y[i]) for _ in range(config.epochs) for i in epoch_batches(y, config.batch_size, rng, config.sampling)]
    assert len(losses) == len(result.step_losses) >= 200
    assert max(abs(a - c) for a, c in zip(losses, result.step_losses)) <= TOL
    assert np.abs(stepper.W - result.W).max() <= TOL and np.abs(stepper.b - result.b).max() <= TOL


def test_state_is_private_and_float32(digits):
    X, y = digits
    W = np.zeros((10, 64))  # float64 in: the stepper works in float32 like ORT
    b = np.zeros(10)
    stepper = NumpyHeadStepper(W, b, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    loss = stepper.step(X[:32], y[:32])
    assert loss == pytest.approx(np.log(10), abs=1e-6)  # zero head: uniform softmax
    assert stepper.W.dtype == np.float32 and stepper.b.dtype == np.float32
    assert not W.any() and not b.any()  # the caller's arrays are untouched
    stepper.W[:] = 1.0  # a copy: writing it changes nothing
    assert np.abs(stepper.W).max() < 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-1.0), dict(lr=float("nan")), dict(betas=(0.9, 1.0)), dict(betas=(0.9,)), dict(eps=0.0), dict(weight_decay=-0.1)],
)
def test_bad_hyperparameters_are_config_errors(kwargs):
    options = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2) | kwargs
    with pytest.raises(ConfigError):
        NumpyHeadStepper(np.zeros((2, 3)), np.zeros(2), **options)


def test_bad_inputs_are_retrain_errors():
    stepper = NumpyHeadStepper(np.zeros((2, 3)), np.zeros(2), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    with pytest.raises(RetrainError, match="expects"):
        stepper.step(np.zeros((4, 5)), np.zeros(4))
    with pytest.raises(RetrainError, match="class indices"):
        stepper.step(np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    with pytest.raises(RetrainError, match="one label per embedding"):
        stepper.step(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(RetrainError, match="shapes disagree"):
        NumpyHeadStepper(np.zeros((2, 3)), np.zeros(3), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    with pytest.raises(ConfigError):
        stepper.set_learning_rate(float("inf"))
