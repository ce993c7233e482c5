"""On-device retraining (edgetl.device.retraining, .memory, the retrain command) on real
digits: small hand-made bundles for the mechanics (fast), the real pipeline (efficientnet
linear probe, exported, int8, packaged) for the new-class scenario. ONNX Runtime runs
for real; PyTorch is the oracle."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from _device_models import FEATURES, fit_head, tiny_models, write_bundle
from edgetl.core.files import hash_dir
from edgetl.device.bundle import open_bundle, rollback
from edgetl.modalities.image import scan_folder, stratified_split, write_digits
from edgetl.device.learn import (
    epoch_batches,
    make_head_onnx,
    make_training_artifacts,
    read_head,
)
from edgetl.device.memory import ReplayMemory, default_per_class, embed_images
from edgetl.device.evaluation import evaluate_bundle
from edgetl.device.predictor import Predictor
from edgetl.device.retraining import RetrainConfig, retrain
from edgetl.errors import BundleError, ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
DIGITS = [str(d) for d in range(10)]


# --------------------------------------------------------------------------- helpers


def tree_digest(root: Path) -> str:
    """Hash of every path and file's bytes under ``root`` (a refusal must not change it)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def retrainable_bundle(out: Path, tiny, memory_from: Path | None, *, head=None, per_class: int = 20) -> Path:
    """A hand-made bundle (tests/_device_models.py) with what ``package`` adds for a
    retraining target: training artifacts and a replay memory from ``memory_from``. The
    tiny backbone's raw features have large means and tiny spreads, so the bundle carries a
    standardising adapter (which also puts the adapter path under test); ``head`` defaults
    to a ridge fit on the adapted embeddings of the digits."""
    models, adapter, good_head = tiny
    write_bundle(out, models, adapter=adapter)
    v1 = out / "v1"
    manifest = json.loads((out / "manifest.json").read_text())
    W, b, labels = head or good_head
    make_head_onnx(W, b, labels, v1 / "head.onnx", metadata={"edgetl.preprocess": json.dumps(models.spec.to_dict())})
    manifest["labels"] = list(labels)
    make_training_artifacts(v1 / "head.onnx", v1 / "training")
    manifest["training"] = "v1/training"
    if memory_from is not None:
        manifest["files"] = hash_dir(v1, "v1")
        (out / "manifest.json").write_text(json.dumps(manifest))
        predictor = Predictor.from_bundle(out, verify=False)
        folder = scan_folder(memory_from, min_classes=1)
        z, _ = embed_images(predictor, folder.paths)  # raw, as package writes it
        ReplayMemory.build(z, folder.targets, folder.labels, per_class=per_class).relabel(manifest["labels"]).save(
            v1 / "memory.npz")
        manifest["memory"] = "v1/memory.npz"
    manifest["files"] = hash_dir(v1, "v1")
    (out / "manifest.json").write_text(json.dumps(manifest))
    open_bundle(out, verify=True)
    return out


def predictions(bundle: Path, images) -> list[tuple[str, float]]:
    return [(p.label, p.score) for p in Predictor.from_bundle(bundle).predict(images)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits_dir):
    """(models, standardising adapter (A, b), ridge head on adapted digits (W, b, labels))."""
    models = tiny_models(tmp_path_factory.mktemp("tiny_models"), digits_dir)
    folder = scan_folder(digits_dir)
    z = Predictor.from_files(models.backbone, models.head, labels=models.labels, spec=models.spec).embed(folder.paths)
    mu, sd = z.mean(0), z.std(0) + 1e-3
    A, b = np.diag(1 / sd).astype(np.float32), (-mu / sd).astype(np.float32)
    W, c = fit_head(z @ A.T + b, folder.targets, 10)
    return models, (A, b), (W.astype(np.float32), c.astype(np.float32), DIGITS)


@pytest.fixture(scope="module")
def new_data(tmp_path_factory) -> Path:
    """The 'device' data: 30 fresh images of each digit."""
    return write_digits(tmp_path_factory.mktemp("device_data") / "data", per_class=30, seed=3)


@pytest.fixture()
def weak_bundle(tmp_path, tiny, digits_dir) -> Path:
    """A bundle whose head is nearly random (a deliberately weak head), with a memory."""
    rng = np.random.default_rng(0)
    head = ((rng.normal(size=(10, FEATURES)) * 0.01).astype(np.float32), np.zeros(10, np.float32), DIGITS)
    return retrainable_bundle(tmp_path / "bundle", tiny, digits_dir, head=head)


@pytest.fixture()
def good_bundle(tmp_path, tiny, digits_dir) -> Path:
    return retrainable_bundle(tmp_path / "bundle", tiny, digits_dir)


# --------------------------------------------------------------------------- memory


def test_memory_is_bounded_deterministic_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(300, 8)).astype(np.float32), np.repeat(np.arange(3), 100)
    # float32 rows are kept bit for bit (the float16 default: tests/test_class_addition.py)
    m = ReplayMemory.build(z, y, ["a", "b", "c"], per_class=20, seed=1, selection="random", precision="float32")
    assert m.counts() == {"a": 20, "b": 20, "c": 20} and list(m.seen) == [100, 100, 100]
    again = ReplayMemory.build(z, y, ["a", "b", "c"], per_class=20, seed=1, selection="random", precision="float32")
    assert np.array_equal(m.embeddings, again.embeddings) and np.array_equal(m.labels, again.labels)
    # rows kept are real rows of their class
    for row, label in zip(m.embeddings, m.labels):
        assert any(np.array_equal(row, r) for r in z[y == label])

    # new data of one old class and one new class: bounded, names extended in order
    z2, y2 = rng.normal(size=(50, 8)).astype(np.float32), np.repeat([0, 1], 25)
    merged = m.merge(z2, y2, ["d", "b"], per_class=20, seed=2, selection="random")
    assert merged.label_names == ("a", "b", "c", "d")
    assert merged.counts() == {"a": 20, "b": 20, "c": 20, "d": 20}
    assert list(merged.seen) == [100, 125, 100, 25]
    # reservoir: with 100 seen and 25 new, about 1 in 5 of b's rows is new
    new_b = sum(any(np.array_equal(r, q) for q in z2[y2 == 1]) for r in merged.embeddings[merged.labels == 1])
    assert 1 <= new_b <= 10

    merged.save(tmp_path / "memory.npz")
    loaded = ReplayMemory.load(tmp_path / "memory.npz")
    assert loaded.label_names == merged.label_names and np.array_equal(loaded.embeddings, merged.embeddings)
    assert loaded.embeddings.dtype == np.float32 and loaded.labels.dtype == np.int64
    with np.load(tmp_path / "memory.npz") as f:
        assert {"embeddings", "labels", "label_names"} <= set(f.files)

    with pytest.raises(BundleError, match="does not know"):
        merged.relabel(["a", "b"])
    with pytest.raises(ConfigError):
        m.merge(z2, y2, ["d", "b"], per_class=0)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="replay memory"):
        ReplayMemory.load(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- retraining


def test_retrain_improves_a_weak_head_and_writes_a_complete_version(weak_bundle, new_data, digits_dir):
    before_v1 = open_bundle(weak_bundle).manifest
    report = retrain(weak_bundle, new_data, RetrainConfig(epochs=30, seed=0))
    assert report.switched and report.version == 2 and report.previous_version == 1
    assert report.accuracy_before < 0.3 and report.accuracy_after >= 0.8, report
    assert report.n_images == 300 and report.n_holdout == 60 and report.n_train == 240 + 200
    assert report.new_classes == [] and report.groups["old"]["n"] == 60

    b = open_bundle(weak_bundle, verify=True)
    m = b.manifest
    assert m["models"]["head"] == "v2/head.onnx" and m["models"]["backbone"] == before_v1["models"]["backbone"]
    assert m["training"] == "v2/training" and m["memory"] == "v2/memory.npz" and m["labels"] == DIGITS
    assert not (weak_bundle / "v2" / "backbone.onnx").exists()  # referenced, not copied
    event = m["history"][-1]
    assert event["event"] == "retrain" and event["version"] == 2 and event["n_images"] == 300
    assert event["accuracy_after"] == report.accuracy_after and event["new_classes"] == []

    # head.onnx = the trained parameters; the Predictor's output matches numpy on them
    W, b_, labels = read_head(b.model_path("head"))
    predictor = Predictor.from_bundle(weak_bundle)
    images = sorted(scan_folder(digits_dir).paths)[::50]
    z = predictor.embed(images)
    np.testing.assert_allclose(predictor.logits_from_embeddings(z), z @ W.T + b_, atol=1e-4)
    # the new training artifacts start from the new head
    from edgetl.device.learn.ort_shim import training_api

    state = training_api().CheckpointState.load_checkpoint(str(weak_bundle / "v2/training/checkpoint"))
    assert np.array_equal(state.parameters["head.weight"].data, W)
    memory = ReplayMemory.load(weak_bundle / "v2/memory.npz")
    # the default budget: the bytes of 20 float32 rows a class, as float16 rows (38 of 64 features)
    assert memory.precision == "float16" and set(memory.counts().values()) == {default_per_class(64)} == {38}
    assert list(memory.seen) == [130] * 10
    # the retrained bundle is what evaluate sees
    assert evaluate_bundle(weak_bundle, new_data)["accuracy"] >= 0.8


def test_rollback_restores_predictions_exactly(weak_bundle, new_data, digits_dir):
    images = [str(p) for p in sorted(scan_folder(digits_dir).paths)[::25]]
    old = predictions(weak_bundle, images)
    manifest_v1 = (weak_bundle / "manifest.json").read_bytes()
    retrain(weak_bundle, new_data, RetrainConfig(epochs=10))
    new = predictions(weak_bundle, images)
    assert new != old
    restored = rollback(weak_bundle)
    assert restored.version == 1 and predictions(weak_bundle, images) == old
    assert json.loads(manifest_v1)["files"] == open_bundle(weak_bundle).manifest["files"]
    rollback(weak_bundle)  # and forward again
    assert predictions(weak_bundle, images) == new


def test_new_classes_grow_the_head_and_the_memory(tmp_path, tiny, digits_dir):
    # a bundle that knows digits 0-7 (head fitted on them, memory of them), data of 8 and 9 only
    old = write_digits(tmp_path / "old", classes=range(8), per_class=60, seed=5)
    device = write_digits(tmp_path / "device", classes=[8, 9], per_class=40, seed=6)
    probe = retrainable_bundle(tmp_path / "probe", tiny, None)
    folder = scan_folder(old)
    W, b = fit_head(Predictor.from_bundle(probe).embed(folder.paths), folder.targets, 8)
    head = (W.astype(np.float32), b.astype(np.float32), DIGITS[:8])
    bundle = retrainable_bundle(tmp_path / "bundle", tiny, old, head=head)

    exact_bundle = shutil.copytree(bundle, tmp_path / "exact")
    with pytest.raises(ConfigError, match="no learning rate"):
        retrain(exact_bundle, device, RetrainConfig(lr=0.01))
    exact = retrain(exact_bundle, device, RetrainConfig(memory_mb=0.05))
    assert exact.switched and exact.trainer == "exact" and exact.groups["new"]["after"] > 0.6, exact.groups
    W1, b1, _ = read_head(exact_bundle / open_bundle(exact_bundle).manifest["models"]["head"])
    assert np.array_equal(W1[:8], head[0]) and np.array_equal(b1[:8], head[1])
    with pytest.raises(ConfigError, match="adds classes"):  # it knows 8 and 9 now
        retrain(exact_bundle, device, RetrainConfig(learner="exact"))

    report = retrain(bundle, device, RetrainConfig(epochs=40, memory_mb=0.05, learner="adamw"))
    assert report.switched and report.new_classes == ["8", "9"] and report.labels == DIGITS
    assert report.groups["new"]["before"] == 0.0 and report.groups["new"]["after"] > 0.6, report.groups
    # forgetting and the bias correction are reported, and agree with the per-class table
    f, old_cls = report.forgetting, [c for c in report.per_class if c in DIGITS[:8]]
    drops = {c: report.per_class[c]["before"] - report.per_class[c]["after"] for c in old_cls}
    assert f["max_drop"] == max(drops.values()) and f["max_drop_class"] == max(drops, key=drops.get)
    assert f["old_retained"] == pytest.approx(report.groups["old"]["after"] / report.groups["old"]["before"])
    assert f["new_accuracy"] == report.groups["new"]["after"]
    bc = report.bias_correction
    assert bc["method"] == "fit" and set(bc["candidates"]) == {"none", "fit"}
    assert bc["kept"] == (bc["candidates"][bc["method"]] < bc["candidates"]["none"]
                          and bc["balanced_accuracy"][bc["method"]] >= bc["balanced_accuracy"]["none"])
    # 0.05 MB of 64 float16 features + int64 label (136 bytes) over 10 classes, beside the 128-byte
    # centre: 36 a class
    assert report.memory_per_class == (50_000 - 128) // (10 * 136) == 36 and report.memory_selection == "herding"
    assert report.n_holdout_memory == 8 * 4  # 20% of 20 memory rows of each old class
    m = open_bundle(bundle).manifest
    assert m["labels"] == DIGITS and m["history"][-1]["new_classes"] == ["8", "9"]
    W2, _, labels = read_head(bundle / m["models"]["head"])
    assert W2.shape == (10, FEATURES) and labels == DIGITS
    memory = ReplayMemory.load(bundle / m["memory"])
    # the old classes keep the 20 rows they had, the new ones get the budget's 36
    assert memory.label_names == tuple(DIGITS) and memory.counts() == {d: 20 if d in DIGITS[:8] else 36 for d in DIGITS}
    preds = Predictor.from_bundle(bundle).predict(sorted((device / "9").iterdir())[:10])
    assert {p.label for p in preds} <= set(DIGITS)


def test_retrain_level_matches_pytorch_oracle(tmp_path, tiny, new_data):
    """Same head, data, split, batch order and hyperparameters in PyTorch: same first-step
    loss (1e-4) and same holdout accuracy (1 point). No memory, so the training set is
    DATA's split alone and can be rebuilt here."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    W0, b0 = (rng.normal(size=(10, FEATURES)) * 0.05).astype(np.float32), np.zeros(10, np.float32)
    bundle = retrainable_bundle(tmp_path / "bundle", tiny, None, head=(W0, b0, DIGITS))
    config = RetrainConfig(epochs=8, lr=5e-3, batch_size=16, holdout=0.25, patience=0, seed=4, weight_decay=0.02)
    report = retrain(bundle, new_data, config=config)

    folder = scan_folder(new_data)
    X = Predictor.from_bundle(tmp_path / "bundle").embed(folder.paths)  # v2 has the same backbone
    y = folder.targets
    tr, ho = stratified_split(y, config.holdout, config.seed)
    head_cfg = config.head_config()
    linear = torch.nn.Linear(FEATURES, 10)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(W0))
        linear.bias.copy_(torch.from_numpy(b0))
    optim = torch.optim.AdamW(linear.parameters(), lr=config.lr, betas=head_cfg.betas, eps=head_cfg.eps,
                              weight_decay=config.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    order, losses = np.random.default_rng(config.seed), []
    Xh, yh = torch.from_numpy(X[ho]), torch.from_numpy(y[ho])
    with torch.no_grad():
        best = (loss_fn(linear(Xh), yh).item(), float((linear(Xh).argmax(1) == yh).float().mean()))
    for _ in range(config.epochs):
        for idx in epoch_batches(y[tr], config.batch_size, order, head_cfg.sampling):
            optim.zero_grad()
            loss = loss_fn(linear(torch.from_numpy(X[tr][idx])), torch.from_numpy(y[tr][idx]))
            loss.backward()
            optim.step()
            losses.append(loss.item())
        with torch.no_grad():
            val = (loss_fn(linear(Xh), yh).item(), float((linear(Xh).argmax(1) == yh).float().mean()))
        best = min(best, val)
    assert abs(report.first_step_loss - losses[0]) < 1e-4
    assert abs(report.accuracy_after - best[1]) <= 0.01, (report.accuracy_after, best)


def test_worse_head_is_not_shipped_unless_forced(good_bundle, new_data, monkeypatch):
    from edgetl.device import retraining

    real = retraining.fit_head

    def scrambled(*args, export_path=None, **kwargs):  # a trainer that makes things worse
        result = real(*args, export_path=export_path, **kwargs)
        W, b, labels = read_head(export_path)
        make_head_onnx(np.roll(W, 1, axis=0), np.roll(b, 1), labels, export_path)
        return result

    monkeypatch.setattr(retraining, "fit_head", scrambled)
    digest = tree_digest(good_bundle)
    report = retrain(good_bundle, new_data, RetrainConfig(epochs=3))
    assert not report.switched and report.version == 1 and "unchanged" in report.reason
    assert report.accuracy_after < report.accuracy_before
    assert tree_digest(good_bundle) == digest
    forced = retrain(good_bundle, new_data, RetrainConfig(epochs=3, force=True))
    assert forced.switched and forced.forced and open_bundle(good_bundle).history[-1]["forced"] is True


def test_a_head_no_better_than_the_current_one_is_not_shipped(good_bundle, new_data):
    digest = tree_digest(good_bundle)
    report = retrain(good_bundle, new_data, RetrainConfig(epochs=2, lr=5.0))  # every step overshoots
    assert not report.switched and report.best_epoch == 0 and "no epoch improved" in report.reason
    assert report.accuracy_after == report.accuracy_before and tree_digest(good_bundle) == digest


def _corrupt(folder: Path, n: int) -> None:
    for i in range(n):
        (folder / f"corrupt{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


@pytest.mark.parametrize("case", ["missing", "empty", "one_class_no_memory", "class_without_images",
                                  "corrupt_strict", "tampered", "bad_option"])
def test_bad_input_is_refused_and_the_bundle_is_untouched(tmp_path, tiny, new_data, case):
    bundle = retrainable_bundle(tmp_path / "bundle", tiny, None if case == "one_class_no_memory" else new_data)
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
    elif case == "one_class_no_memory":
        shutil.copytree(new_data / "3", data / "3")
    elif case == "class_without_images":
        shutil.copytree(new_data, data)
        (data / "10").mkdir()
        _corrupt(data / "10", 2)
    elif case == "corrupt_strict":
        shutil.copytree(new_data, data)
        _corrupt(data / "4", 1)
    elif case in ("tampered", "bad_option"):
        data = new_data
    if case == "tampered":
        head = bundle / "v1" / "head.onnx"
        head.write_bytes(head.read_bytes()[:-1] + b"\x00")
    digest = tree_digest(bundle)
    expected = {"missing": (DataError, "no such folder"), "empty": (DataError, "class folder"),
                "one_class_no_memory": (DataError, "at least 2 classes"),
                "class_without_images": (DataError, "no readable images"),
                "corrupt_strict": (DataError, "corrupt0.png"), "tampered": (BundleError, "SHA-256"),
                "bad_option": (ConfigError, "holdout")}[case]
    with pytest.raises(expected[0], match=expected[1]):
        retrain(bundle, data, RetrainConfig(epochs=2, strict=case == "corrupt_strict", holdout=1.5 if case == "bad_option" else 0.2))
    assert tree_digest(bundle) == digest


def test_corrupt_files_are_skipped_and_counted(good_bundle, tmp_path, new_data):
    data = tmp_path / "data"
    shutil.copytree(new_data, data)
    _corrupt(data / "2", 2)
    (data / "5" / "notes.txt").write_text("not an image")
    report = retrain(good_bundle, data, RetrainConfig(epochs=3, force=True))  # the switch is not what is tested here
    assert report.switched and report.n_images == 300 and len(report.skipped) == 3
    assert {Path(s["file"]).name for s in report.skipped} == {"corrupt0.png", "corrupt1.png", "notes.txt"}


def test_one_known_class_with_memory_is_fine(good_bundle, tmp_path, new_data):
    shutil.copytree(new_data / "7", tmp_path / "data" / "7")
    report = retrain(good_bundle, tmp_path / "data", RetrainConfig(epochs=5))
    assert report.n_images == 30 and report.n_holdout_memory == 9 * 4 and report.n_holdout == 6 + 36


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_permission_error_keeps_the_old_version(good_bundle, new_data, digits_dir, monkeypatch, error):
    from edgetl.device import retraining

    images = [str(p) for p in sorted(scan_folder(digits_dir).paths)[::100]]
    old = predictions(good_bundle, images)

    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(retraining.shutil, "copytree", fail)  # while writing the new version folder
    with pytest.raises(BundleError, match="still live") as info:
        retrain(good_bundle, new_data, RetrainConfig(epochs=2, force=True))
    assert os.strerror(error) in str(info.value)
    assert open_bundle(good_bundle, verify=True).version == 1 and predictions(good_bundle, images) == old
    assert not any(p.name.startswith(".staging-") or p.name == "v2" for p in good_bundle.iterdir())


def test_predictors_see_one_consistent_version_during_retrains(good_bundle, new_data, digits_dir):
    images = [str(p) for p in sorted(scan_folder(digits_dir).paths)[::40]]
    opened_before = Predictor.from_bundle(good_bundle)
    seen: dict[int, list] = {1: predictions(good_bundle, images)}
    observed: list[tuple[int, list]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader():
        while not stop.is_set():
            try:
                p = Predictor.from_bundle(good_bundle)
                observed.append((p.bundle.version, [(x.label, x.score) for x in p.predict(images)]))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for seed in range(3):
            report = retrain(good_bundle, new_data, RetrainConfig(epochs=3, seed=seed, force=True))
            seen[report.version] = predictions(good_bundle, images)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert observed and all(preds == seen[v] for v, preds in observed)
    assert [(x.label, x.score) for x in opened_before.predict(images)] == seen[1]  # still works on version 1
    assert Predictor.from_bundle(good_bundle).bundle.version == 4


# --------------------------------------------------------------------------- kill -9

_CHILD = r"""
import json, sys
sys.modules["torch"] = None  # torch-free, and 4 s faster to start (onnxruntime imports torch if it can)
from edgetl.device.retraining import RetrainConfig, retrain
from edgetl.device.predictor import Predictor
from edgetl.device.learn.ort_shim import training_api, artifacts_api
training_api(); artifacts_api()
bundle, data, images, seed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
print("READY", flush=True)
sys.stdin.readline()
while True:
    report = retrain(bundle, data, RetrainConfig(epochs=2, patience=0, force=True, seed=seed, verify=False))
    preds = [(p.label, p.score) for p in Predictor.from_bundle(bundle, verify=False).predict(images)]
    print("COMMIT", report.version, json.dumps(preds), flush=True)
    seed += 1
"""


def test_kill_9_at_random_moments_never_breaks_the_bundle(tmp_path, tiny, digits_dir):
    """A child process retrains in a loop; it is SIGKILLed at seeded random moments. After
    every kill the bundle verifies and predicts exactly as one complete version did."""
    data = write_digits(tmp_path / "data", per_class=8, seed=9)
    bundle = retrainable_bundle(tmp_path / "bundle", tiny, data, per_class=4)
    images = [str(p) for p in sorted(scan_folder(digits_dir).paths)[::100]]
    known = {1: [list(x) for x in predictions(bundle, images)]}
    (tmp_path / "tmp").mkdir()  # a killed retrain leaves its work folder behind: keep those here
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]), EDGETL_NO_PROGRESS="1",
               TMPDIR=str(tmp_path / "tmp"))

    def spawn(seed: int) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(bundle), str(data), json.dumps(images), str(seed)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env, cwd=tmp_path)
        return child

    rng = np.random.default_rng(1234)
    trials, kills_in_commit, moved, started = 12, 0, 0, time.monotonic()
    child = spawn(0)
    for trial in range(trials):
        assert child.stdout.readline().strip() == "READY", child.stderr.read()
        live_before = open_bundle(bundle, verify=False).version
        child.stdin.write("GO\n")
        child.stdin.flush()
        following = spawn(100 * (trial + 1)) if trial + 1 < trials else None  # imports while this one runs
        time.sleep(float(rng.uniform(0.0, 1.5)))  # a child's retrain cycle: ~0.2-0.6 s
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        for line in out.splitlines():
            if line.startswith("COMMIT "):
                _, version, preds = line.split(" ", 2)
                known[int(version)] = json.loads(preds)

        b = open_bundle(bundle, verify=True)  # hashes of every file of the live version
        got = [list(x) for x in predictions(bundle, images)]
        assert b.version >= live_before
        moved += b.version > live_before
        if b.version in known:
            assert got == known[b.version], f"trial {trial}: version {b.version} predicts differently"
        else:  # killed after the switch, before the child printed it: a complete new version
            kills_in_commit += 1
            assert b.version == max(known) + 1
            known[b.version] = got
        assert len(got) == len(images) and all(label in DIGITS for label, _ in got)
        child = following
    elapsed = time.monotonic() - started
    # the loop really moved the bundle on, and the next update cleans up after the kills
    assert max(known) >= 3, known.keys()
    report = retrain(bundle, data, RetrainConfig(epochs=2, force=True))
    # no temporary folder outlives the next command: staging, work folders, nothing in TMPDIR
    leftovers = [p.name for p in bundle.iterdir() if p.name.startswith((".staging-", ".work-"))]
    assert report.switched and not leftovers
    assert not list((tmp_path / "tmp").iterdir())
    print(f"kill -9: {trials} trials in {elapsed:.1f} s, {moved} moved the bundle on, {len(known)} versions seen, "
          f"{kills_in_commit} kill(s) between the switch and the child's report")


# --------------------------------------------------------------------------- CLI, torch-free


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_retrain_and_rollback_without_torch(weak_bundle, new_data, tmp_path, blocked_env):
    result = _cli(["retrain", str(weak_bundle), str(new_data), "--epochs", "20", "--json"], blocked_env, tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"accuracy_before", "accuracy_after", "new_classes", "version", "epochs", "n_train", "n_holdout",
            "switched", "groups", "per_class"} <= set(out)
    assert out["version"] == 2 and out["accuracy_after"] > out["accuracy_before"]

    table = _cli(["retrain", str(weak_bundle), str(new_data), "--epochs", "2", "--force"], blocked_env, tmp_path)
    assert table.returncode == 0, table.stderr
    assert "before" in table.stdout and "version 2 -> 3" in table.stdout

    result = _cli(["rollback", str(weak_bundle)], blocked_env, tmp_path)
    assert result.returncode == 0 and open_bundle(weak_bundle).version == 2

    digest = tree_digest(weak_bundle)
    bad = _cli(["retrain", str(weak_bundle), str(tmp_path / "nowhere")], blocked_env, tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "no such folder" in bad.stderr
    assert tree_digest(weak_bundle) == digest
    for flags, message in ((["--memory-mb", "0.0001"], "less than one"), (["--memory-mb", "1e9"], "--memory-mb"),
                           (["--bias-correction", "bic"], "invalid choice")):
        bad = _cli(["retrain", str(weak_bundle), str(new_data), *flags], blocked_env, tmp_path)
        assert bad.returncode != 0 and bad.stdout == "" and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and tree_digest(weak_bundle) == digest


# --------------------------------------------------------------------------- the real pipeline


def _unseen_digits(out: Path, classes, exclude: Path, per_class: int) -> Path:
    """Real digits of ``classes`` that are not in ``exclude`` (same file names as write_digits)."""
    everything = write_digits(out.with_name(out.name + "_all"), classes=classes)
    rng = np.random.default_rng(0)
    for c in classes:
        files = sorted(p for p in (everything / str(c)).iterdir() if not (exclude / str(c) / p.name).exists())
        (out / str(c)).mkdir(parents=True)
        for i in np.sort(rng.choice(len(files), min(per_class, len(files)), replace=False)):
            shutil.copy(files[i], out / str(c) / files[i].name)
    return out


@pytest.fixture(scope="session")
def bundle_0_7(tmp_path_factory, digits_0_7) -> dict:
    """The real pipeline on digits 0-7: linear probe at 128 px, export, int8 (the project's
    quantize if present, else ORT static QDQ here), packaged for an int8 retraining target."""
    from edgetl.workstation.packaging import package
    from edgetl.workstation.onnx_export import export
    from edgetl.core.targets import load_target
    from edgetl.workstation.training import TrainConfig, train

    from conftest import IMAGE_SIZE

    root = tmp_path_factory.mktemp("bundle07")
    run_dir = train(digits_0_7, root / "run", TrainConfig(image_size=IMAGE_SIZE)).run_dir
    export(run_dir)
    try:
        from edgetl.workstation.quantization import QuantizeConfig, quantize
    except ImportError:  # the quantize stage not installed: int8 by ORT static QDQ, as the device tests do
        quantize = None
    if quantize is not None:
        # 64 validation images: one changed prediction is 1.6 points, so the guard gets 5
        quantize(run_dir, QuantizeConfig(engine="ort", max_drop=0.05))
        how = "edgetl.quantize (ORT)"
    else:
        from _device_models import quantize_qdq
        from edgetl.modalities.image import PreprocessSpec, preprocess_batch
        from edgetl.core.run import read_run_json

        info = read_run_json(run_dir)
        calib = [Path(info["data_root"]) / p for p in info["split"]["train"][::4]]
        x = preprocess_batch(calib, PreprocessSpec.from_dict(info["preprocess"]))
        quantize_qdq(run_dir / "onnx" / "backbone.onnx", run_dir / "onnx" / "backbone.int8.onnx", x)
        how = "ORT static QDQ (tests)"
    target = load_target("x86-ort-int8")
    assert target.retraining
    bundle = package(run_dir, target, root / "bundle").bundle
    return {"bundle": bundle, "run": run_dir, "quantized_by": how}


def test_new_classes_on_the_real_pipeline(bundle_0_7, digits_0_7, digits_8_9, tmp_path):
    bundle = shutil.copytree(bundle_0_7["bundle"], tmp_path / "bundle")
    m = open_bundle(bundle).manifest
    assert m["precision"] == "int8" and m["memory"] == "v1/memory.npz" and m["training"] == "v1/training"
    memory = ReplayMemory.load(bundle / m["memory"])
    info = json.loads((bundle_0_7["run"] / "run.json").read_text())
    # the default budget (39 float16 rows of 1,280 features), or every training image a class has
    train_counts = Counter(p.split("/")[0] for p in info["split"]["train"])
    assert memory.precision == "float16" and memory.num_features == m["num_features"] == 1280
    assert memory.counts() == {str(d): min(39, train_counts[str(d)]) for d in range(8)}
    # the packaged memory is what the deployed backbone computes on the device
    first = sorted(p for p in info["split"]["train"] if p.startswith("0/"))
    z = Predictor.from_bundle(bundle).embed([Path(info["data_root"]) / p for p in first])
    # (float16 offsets from the memory's centre: within 2^-11 of each value's distance from it)
    close = [(np.abs(z - row) <= 2.0 ** -11 * np.abs(z - memory.center) + 1e-5).all(axis=1).any()
             for row in memory.embeddings[memory.labels == 0]]
    assert all(close)

    old_test = _unseen_digits(tmp_path / "old_test", range(8), digits_0_7, per_class=40)
    new_test = _unseen_digits(tmp_path / "new_test", [8, 9], digits_8_9, per_class=40)
    old_before = evaluate_bundle(bundle, old_test)["accuracy"]

    started = time.perf_counter()
    report = retrain(bundle, digits_8_9)
    wall = time.perf_counter() - started
    assert report.switched and report.new_classes == ["8", "9"], report.reason
    new_after = evaluate_bundle(bundle, new_test)["accuracy"]
    old_after = evaluate_bundle(bundle, old_test)["accuracy"]
    print(f"real pipeline ({bundle_0_7['quantized_by']}): old classes {old_before:.3f} -> {old_after:.3f}, "
          f"new classes {new_after:.3f}; holdout {report.accuracy_before:.3f} -> {report.accuracy_after:.3f} "
          f"(old {report.groups['old']}, new {report.groups['new']}); retrain {wall:.2f} s, "
          f"embed {report.seconds['embed']:.2f} s, train {report.seconds['train']:.2f} s, epochs {report.epochs}; "
          f"bias correction {report.bias_correction}; forgetting {report.forgetting}")
    # The exact learner (the default for new classes): the old rows are the bundle's own, the
    # new ones solved at the C that sizes them like the old; judged out of fold on every row.
    assert report.trainer == "exact" and report.lr is None and report.learner["method"] == "exact"
    assert report.n_holdout == report.n_train == report.n_images + report.n_holdout_memory
    assert open_bundle(bundle).history[-1]["learner"]["C"] == report.learner["C"]
    W1, b1, _ = read_head(bundle / open_bundle(bundle).manifest["models"]["head"])
    W0, b0, _ = read_head(bundle_0_7["bundle"] / "v1" / "head.onnx")
    assert np.array_equal(W1[:8], W0) and np.array_equal(b1[:8], b0)  # what the bundle knew is kept exactly
    assert new_after >= 0.8, new_after
    assert old_after >= 0.95 * old_before, (old_after, old_before)
    assert open_bundle(bundle).labels == DIGITS


def test_numpy_trainer_where_onnxruntime_has_no_training(bundle_0_7, digits_8_9, tmp_path_factory, tmp_path):
    """Where onnxruntime.training cannot be imported (plain onnxruntime: ARM, Python 3.13),
    `edgetl retrain` trains in numpy; on the real int8 bundle it learns the new classes and
    lands within 1 point of the ORT-artifact trainer on the same data, seed and batches."""
    site = tmp_path_factory.mktemp("no_ort_training")
    (site / "sitecustomize.py").write_text(
        'import sys\nsys.modules["torch"] = None\nsys.modules["onnxruntime.training"] = None  # no training build\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), EDGETL_NO_PROGRESS="1")
    blocked = _cli(["doctor", "--json"], env, tmp_path)
    assert blocked.returncode == 0 and json.loads(blocked.stdout)["retraining"]["trainer"] == "numpy", blocked.stderr
    results = {}
    for name, trainer_env in (("numpy", env), ("ort", None)):
        bundle = shutil.copytree(bundle_0_7["bundle"], tmp_path / f"bundle_{name}")
        # the AdamW learner: the exact one (the default for new classes) takes no steps
        args = ["retrain", str(bundle), str(digits_8_9), "--json", "--learner", "adamw"]
        run = _cli(args, trainer_env or dict(os.environ, PYTHONPATH=str(REPO), EDGETL_NO_PROGRESS="1"), tmp_path)
        assert run.returncode == 0, run.stderr
        results[name] = json.loads(run.stdout)
        history = open_bundle(bundle).history[-1]
        assert history["trainer"] == name and results[name]["trainer"] == name
    numpy_run, ort_run = results["numpy"], results["ort"]
    assert numpy_run["new_classes"] == ["8", "9"] and numpy_run["groups"]["new"]["after"] >= 0.8, numpy_run["groups"]
    assert abs(numpy_run["accuracy_after"] - ort_run["accuracy_after"]) <= 0.01, (numpy_run, ort_run)
    assert numpy_run["epochs"] == ort_run["epochs"] and numpy_run["best_epoch"] == ort_run["best_epoch"]
