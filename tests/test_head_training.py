"""On-device head training (edgetl.device.learn) on real data: scikit-learn's
handwritten digits, standardised, stand in for backbone embeddings (64 features, 10
classes). ONNX Runtime training runs for real; PyTorch is the oracle."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgetl.device.learn import (
    LABELS_INPUT,
    HeadTrainConfig,
    epoch_batches,
    grow_head,
    make_head_onnx,
    make_training_artifacts,
    read_head,
    train_head,
)
from edgetl.errors import ConfigError, RetrainError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
LABELS = [str(i) for i in range(10)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    """Shuffled, standardised digits: train 1,000 / val 300 / holdout 497."""
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order].astype(np.float32), y[order].astype(np.int64)
    mean, std = X[:1000].mean(0), X[:1000].std(0)
    std[std < 1e-3] = 1.0  # border pixels that are always 0 in the training part
    X = ((X - mean) / std).astype(np.float32)
    return {"train": (X[:1000], y[:1000]), "val": (X[1000:1300], y[1000:1300]), "test": (X[1300:], y[1300:])}


def accuracy(W, b, X, y) -> float:
    return float(((X @ W.T + b).argmax(1) == y).mean())


def random_head(n_classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_classes, 64)) * 0.01).astype(np.float32), np.zeros(n_classes, np.float32)


def artifacts_for(tmp_path: Path, W, b, labels, name: str = "training") -> Path:
    make_head_onnx(W, b, labels, tmp_path / f"{name}.head.onnx", metadata={"edgetl.preprocess": "{}"})
    make_training_artifacts(tmp_path / f"{name}.head.onnx", tmp_path / name)
    return tmp_path / name


def test_artifacts_load_and_have_ir_10(tmp_path):
    W, b = random_head()
    make_head_onnx(W, b, LABELS, tmp_path / "head.onnx")
    paths = make_training_artifacts(tmp_path / "head.onnx", tmp_path / "training")
    assert {p.name for p in paths.values()} == {"training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint"}
    for key in ("training_model", "eval_model", "optimizer_model"):
        assert onnx.load(str(paths[key])).ir_version <= 10, key
    training = onnx.load(str(paths["training_model"]))
    assert [i.name for i in training.graph.input][:2] == ["embedding", LABELS_INPUT]
    (adamw,) = onnx.load(str(paths["optimizer_model"])).graph.node
    assert onnx.helper.get_attribute_value(next(a for a in adamw.attribute if a.name == "adam_mode")) == 0

    from edgetl.device.learn.ort_shim import training_api

    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(paths["checkpoint"]))
    module = api.Module(str(paths["training_model"]), state, str(paths["eval_model"]))
    api.Optimizer(str(paths["optimizer_model"]), module)
    np.testing.assert_array_equal(state.parameters["head.weight"].data, W)

    with pytest.raises(RetrainError, match="already holds"):
        make_training_artifacts(tmp_path / "head.onnx", tmp_path / "training")


def test_head_file_round_trip_and_torch_exported_head(tmp_path):
    torch = pytest.importorskip("torch")
    W, b = random_head(seed=3)
    make_head_onnx(W, b, LABELS, tmp_path / "head.onnx")
    W2, b2, labels = read_head(tmp_path / "head.onnx")
    assert np.array_equal(W, W2) and np.array_equal(b, b2) and labels == LABELS
    model = onnx.load(str(tmp_path / "head.onnx"))
    assert model.ir_version == 10 and {p.key for p in model.metadata_props} >= {"edgetl.labels", "edgetl.num_features"}

    linear = torch.nn.Linear(64, 10)  # a head as the workstation exporter writes it
    torch.onnx.export(linear, (torch.zeros(2, 64),), str(tmp_path / "torch.onnx"), input_names=["embedding"],
                      output_names=["logits"], dynamic_axes={"embedding": {0: "N"}}, dynamo=False)
    exported = onnx.load(str(tmp_path / "torch.onnx"))
    exported.metadata_props.add(key="edgetl.labels", value=json.dumps(LABELS))
    onnx.save(exported, str(tmp_path / "torch.onnx"))
    W3, b3, _ = read_head(tmp_path / "torch.onnx")
    np.testing.assert_array_equal(W3, linear.weight.detach().numpy())
    np.testing.assert_array_equal(b3, linear.bias.detach().numpy())


def test_matches_pytorch_oracle(tmp_path, digits):
    torch = pytest.importorskip("torch")
    (Xtr, ytr), (Xte, yte) = digits["train"], digits["test"]
    W0, b0 = random_head()
    config = HeadTrainConfig(epochs=3, lr=1e-2, batch_size=32, seed=7, patience=0, weight_decay=0.05, sampling="balanced")
    result = train_head(artifacts_for(tmp_path, W0, b0, LABELS), Xtr, ytr, config=config)

    # Same start, data, batch order and AdamW (ORT runs it in torch mode: decoupled decay first).
    linear = torch.nn.Linear(64, 10)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(W0))
        linear.bias.copy_(torch.from_numpy(b0))
    optim = torch.optim.AdamW(linear.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
                              weight_decay=config.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng, losses = np.random.default_rng(config.seed), []
    for _ in range(config.epochs):
        for idx in epoch_batches(ytr, config.batch_size, rng, config.sampling):
            optim.zero_grad()
            loss = loss_fn(linear(torch.from_numpy(Xtr[idx])), torch.from_numpy(ytr[idx]))
            loss.backward()
            optim.step()
            losses.append(loss.item())

    assert len(result.step_losses) == len(losses)
    assert abs(result.first_step_loss - losses[0]) < 1e-4
    np.testing.assert_allclose(result.step_losses, losses, atol=1e-3)
    W_t, b_t = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    np.testing.assert_allclose(result.W, W_t, atol=1e-4)
    assert abs(accuracy(result.W, result.b, Xte, yte) - accuracy(W_t, b_t, Xte, yte)) <= 0.01


def test_training_improves_weak_head_and_exports_it(tmp_path, digits):
    (Xtr, ytr), (Xva, yva), (Xte, yte) = digits["train"], digits["val"], digits["test"]
    W0, b0 = random_head(seed=1)
    before = accuracy(W0, b0, Xte, yte)
    result = train_head(artifacts_for(tmp_path, W0, b0, LABELS), Xtr, ytr, Xva, yva,
                        HeadTrainConfig(epochs=15, patience=4), export_path=tmp_path / "head.onnx")
    after = accuracy(result.W, result.b, Xte, yte)
    assert before < 0.3 and after >= 0.93, (before, after)
    assert result.history[0]["epoch"] == 1 and {"loss", "val_acc"} <= set(result.history[0])
    best = result.history[result.best_epoch - 1]
    assert result.best_epoch >= 1 and best["val_loss"] == min(h["val_loss"] for h in result.history)
    assert result.best_val_acc == best["val_acc"]

    W, b, labels = read_head(result.head_path)  # the exported head: bit-exact, metadata kept
    assert np.array_equal(W, result.W) and np.array_equal(b, result.b) and labels == LABELS
    meta = {p.key: p.value for p in onnx.load(str(result.head_path)).metadata_props}
    assert meta["edgetl.preprocess"] == "{}" and meta["edgetl.num_features"] == "64"
    logits = ort.InferenceSession(str(result.head_path), providers=["CPUExecutionProvider"]).run(None, {"embedding": Xte})[0]
    assert float((logits.argmax(1) == yte).mean()) == after


def test_grow_head_learns_new_classes_with_replay_memory(tmp_path, digits):
    (Xtr, ytr), (Xte, yte) = digits["train"], digits["test"]
    old_tr, old_te, new_te = ytr < 8, yte < 8, yte >= 8
    # "workstation": a head for digits 0-7
    W0, b0 = np.zeros((8, 64), np.float32), np.zeros(8, np.float32)
    base = train_head(artifacts_for(tmp_path, W0, b0, LABELS[:8], "base"), Xtr[old_tr], ytr[old_tr],
                      config=HeadTrainConfig(epochs=20, patience=0))
    base_old = accuracy(base.W, base.b, Xte[old_te], yte[old_te])

    # "device": 40 samples of each new digit plus a replay memory of 20 per old class
    rng = np.random.default_rng(1)
    memory = [rng.choice(np.flatnonzero(ytr == c), 20, replace=False) for c in range(8)]
    new = [rng.choice(np.flatnonzero(ytr == c), 40, replace=False) for c in (8, 9)]
    idx = rng.permutation(np.concatenate(memory + new))
    val, train = idx[: len(idx) // 5], idx[len(idx) // 5 :]

    W, b = grow_head(base.W, base.b, 2)
    assert W.shape == (10, 64) and np.array_equal(W[:8], base.W) and np.array_equal(b[:8], base.b)
    assert accuracy(W, b, Xte[old_te], yte[old_te]) == base_old  # growing alone changes no old prediction
    result = train_head(artifacts_for(tmp_path, W, b, LABELS, "grown"), Xtr[train], ytr[train], Xtr[val], ytr[val])
    new_acc = accuracy(result.W, result.b, Xte[new_te], yte[new_te])
    old_acc = accuracy(result.W, result.b, Xte[old_te], yte[old_te])
    assert new_acc >= 0.85, new_acc
    assert old_acc >= 0.9 * base_old, (old_acc, base_old)


def test_bad_inputs_are_refused(tmp_path, digits):
    W0, b0 = random_head()
    training = artifacts_for(tmp_path, W0, b0, LABELS)
    X, y = digits["train"]
    with pytest.raises(RetrainError, match="grow the head"):
        train_head(training, X, y + 1, config=HeadTrainConfig(epochs=1))
    with pytest.raises(RetrainError, match="expects"):
        train_head(training, X[:, :10], y, config=HeadTrainConfig(epochs=1))
    with pytest.raises(RetrainError, match="incomplete"):
        train_head(tmp_path, X, y)
    with pytest.raises(ConfigError):
        HeadTrainConfig(lr=-1.0)
    with pytest.raises(ConfigError):
        HeadTrainConfig(sampling="weighted")
    with pytest.raises(ConfigError):
        grow_head(W0, b0, 1, init="random")


_TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
from pathlib import Path
import numpy as np
from edgetl.device.learn import HeadTrainConfig, make_head_onnx, make_training_artifacts, read_head, train_head
out = Path(sys.argv[1])
data = np.load(out / "data.npz")
make_head_onnx(data["W"], data["b"], [str(i) for i in range(10)], out / "head.onnx")
make_training_artifacts(out / "head.onnx", out / "training")
r = train_head(out / "training", data["X"], data["y"], data["X"], data["y"],
               HeadTrainConfig(epochs=3, patience=0), export_path=out / "new_head.onnx")
W, b, _ = read_head(out / "new_head.onnx")
assert np.array_equal(W, r.W)
assert sys.modules["torch"] is None and not any(m.startswith("torch.") for m in sys.modules)
print("TORCH-FREE-OK", r.best_val_acc)
"""


def test_artifacts_training_and_export_run_without_torch(tmp_path, digits):
    X, y = digits["train"]
    W0, b0 = random_head()
    np.savez(tmp_path / "data.npz", X=X[:300], y=y[:300], W=W0, b=b0)
    proc = subprocess.run([sys.executable, "-c", _TORCH_FREE, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={"PYTHONPATH": str(REPO), "EDGETL_NO_PROGRESS": "1", "PATH": ""})
    assert "TORCH-FREE-OK" in proc.stdout, proc.stderr[-3000:]
    assert float(proc.stdout.split()[-1]) > 0.8


def test_shim_reuses_a_normally_imported_onnxruntime_training():
    pytest.importorskip("torch")
    code = textwrap.dedent("""
        import onnxruntime.training as real  # the full package (imports torch)
        from edgetl.device.learn.ort_shim import artifacts_api, training_api
        assert training_api() is real.api and artifacts_api() is real.artifacts and hasattr(real, "optim")
        print("REUSE-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "REUSE-OK" in proc.stdout, proc.stderr[-3000:]


def test_missing_onnxruntime_training_is_a_clear_retrain_error():
    code = textwrap.dedent("""
        import sys
        sys.modules["onnxruntime"] = None  # as on a device without ONNX Runtime
        from edgetl.device.learn.ort_shim import training_api
        from edgetl.errors import RetrainError
        try:
            training_api()
        except RetrainError as exc:
            print("REFUSED", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "REFUSED" in proc.stdout and "onnxruntime-training-cpu" in proc.stdout, proc.stderr[-3000:]
