"""Prediction on the device: Predictor and the predict/evaluate commands, on real models
(both runtimes) and real digits. ``bundles`` can be swapped for real-pipeline bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from _device_models import tiny_models, write_bundle
from edgetl.cli import main
from edgetl.modalities.image import scan_folder
from edgetl.device import Adapter, Prediction, Predictor, evaluate_folder
from edgetl.errors import BundleError, ConfigError, DataError
from edgetl.modalities.image import preprocess_batch

# (runtime, precision) of each bundle under test
VARIANTS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16")]


@pytest.fixture(scope="session")
def models(tmp_path_factory, digits_dir):
    return tiny_models(tmp_path_factory.mktemp("tiny_models"), digits_dir)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("bundles")
    return {(rt, p): write_bundle(root / f"{rt}-{p}", models, runtime=rt, precision=p) for rt, p in VARIANTS}


@pytest.fixture(scope="session")
def bundle(bundles):
    return bundles[("onnxruntime", "fp32")]


@pytest.fixture(scope="session")
def predictor(bundle):
    return Predictor.from_bundle(bundle)


@pytest.fixture(scope="session")
def digit_files(digits_dir):
    folder = scan_folder(digits_dir)
    step = max(1, len(folder.samples) // 40)  # about 40 images, all classes
    return folder.paths[::step], folder.targets[::step]


def _reference_probs(models, files):
    """The same models called directly on ONNX Runtime, softmax in float64."""
    import onnxruntime as ort

    x = preprocess_batch(files, models.spec)
    z = ort.InferenceSession(str(models.backbone), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    logits = ort.InferenceSession(str(models.head), providers=["CPUExecutionProvider"]).run(None, {"embedding": z})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return z, e / e.sum(1, keepdims=True)


def test_predict_matches_direct_runtime_calls(predictor, models, digit_files):
    files, targets = digit_files
    _, probs = _reference_probs(models, files)
    preds = predictor.predict(files, top_k=3)
    assert [p.file for p in preds] == [str(f) for f in files]
    assert all(isinstance(p, Prediction) and p.ok and p.error is None for p in preds)
    np.testing.assert_array_equal([p.index for p in preds], probs.argmax(1))
    assert [p.label for p in preds] == [models.labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([p.score for p in preds], probs.max(1), rtol=1e-5)
    for p, row in zip(preds, probs):
        assert len(p.top_k) == 3 and p.top_k[0] == (p.label, p.score)
        assert [s for _, s in p.top_k] == sorted((s for _, s in p.top_k), reverse=True)
        np.testing.assert_allclose([s for _, s in p.top_k], np.sort(row)[::-1][:3], rtol=1e-5)
    # the head was fitted on these digits: predictions mean something
    assert np.mean([p.index for p in preds] == targets) > 0.35  # random-conv test backbone: 3.5x chance
    # the loading threads share the cores with the backbone: its ONNX Runtime workers sleep between ops
    options = predictor.backbone._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("variant", VARIANTS, ids=[f"{r}-{p}" for r, p in VARIANTS])
def test_every_runtime_and_precision(bundles, variant, digit_files):
    files, targets = digit_files
    pred = Predictor.from_bundle(bundles[variant])
    runtime, precision = variant
    assert pred.runtime == runtime
    assert pred.precision_executed in {"fp32": {"fp32"}, "int8": {"int8"}, "bf16": {"bf16", "fp32"}}[precision]
    assert pred.batch_size == 8
    one = pred.predict(files[:7], batch_size=1)
    seven = pred.predict(files[:7], batch_size=7)
    assert [p.label for p in one] == [p.label for p in seven]
    np.testing.assert_allclose([p.score for p in one], [p.score for p in seven], rtol=1e-4, atol=1e-5)
    accuracy = np.mean([p.index for p in pred.predict(files)] == targets)
    assert accuracy > 0.35, accuracy  # random-conv test backbone: 3.5x chance


def test_runtimes_agree_on_bundles(bundles, digit_files):
    files, _ = digit_files
    ort = Predictor.from_bundle(bundles[("onnxruntime", "fp32")]).embed(files)
    ov = Predictor.from_bundle(bundles[("openvino", "fp32")]).embed(files)
    np.testing.assert_allclose(ov, ort, rtol=1e-4, atol=1e-4)
    # the same ONNX bundle, runtime overridden
    ov_onnx = Predictor.from_bundle(bundles[("onnxruntime", "fp32")], runtime="openvino", threads=1)
    assert ov_onnx.runtime == "openvino" and ov_onnx.precision_executed == "fp32"
    np.testing.assert_allclose(ov_onnx.embed(files), ort, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="only runtime 'openvino'"):
        Predictor.from_bundle(bundles[("openvino", "fp32")], runtime="onnxruntime")


def test_bad_images_are_reported_and_the_rest_predicted(predictor, digit_files, tmp_path):
    files, _ = digit_files
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(files[0].read_bytes()[:60])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"
    good = predictor.predict(files[:9])
    mixed = predictor.predict([files[0], corrupt, *files[1:5], missing, text, *files[5:9]], batch_size=4)
    failed = [mixed[1], mixed[6], mixed[7]]
    assert all(not p.ok and p.label is None and p.score is None and p.top_k == () for p in failed)
    assert "corrupt.png" in failed[0].error and "no such image file" in failed[1].error
    assert "notes.jpg" in failed[2].error
    ok = [p for p in mixed if p.ok]
    assert [p.label for p in ok] == [p.label for p in good]
    np.testing.assert_allclose([p.score for p in ok], [p.score for p in good], rtol=1e-5)
    with pytest.raises(DataError, match="corrupt.png"):
        predictor.embed([files[0], corrupt])


def test_many_items_run_side_by_side_with_the_same_results(bundle, models, digit_files, tmp_path):
    """Over many items the threads each load and run their own chunks on single-threaded
    copies of the sessions: the same predictions, errors in place, in order."""
    files, _ = digit_files
    pred = Predictor.from_bundle(bundle)
    _, probs = _reference_probs(models, files)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(files[0].read_bytes()[:60])
    items = [*files[:20], corrupt, *files[20:]]
    preds = pred.predict(items, batch_size=1)
    assert pred._side is not None and pred._side[0].threads == 1  # the side-by-side path ran
    assert not preds[20].ok and "corrupt.png" in preds[20].error
    ok = [p for p in preds if p.ok]
    assert [p.file for p in ok] == [str(f) for f in files]
    np.testing.assert_array_equal([p.index for p in ok], probs.argmax(1))
    np.testing.assert_allclose([p.score for p in ok], probs.max(1), rtol=1e-5)
    np.testing.assert_allclose(pred.embed(files, batch_size=1), pred.embed(files), rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="corrupt.png"):
        pred.embed(items, batch_size=1)


def test_image_kinds_and_edge_cases(predictor, digit_files):
    files, _ = digit_files
    from_path = predictor.predict(files[:3])
    pil = [Image.open(f) for f in files[:3]]
    arrays = [np.asarray(im) for im in pil]
    rgb_batch = np.stack([np.stack([a] * 3, axis=-1) for a in arrays])  # N x H x W x 3: a batch
    for other in (predictor.predict(pil), predictor.predict(arrays), predictor.predict(rgb_batch)):
        assert [p.label for p in other] == [p.label for p in from_path]
        assert all(p.file is None for p in other)
        np.testing.assert_allclose([p.score for p in other], [p.score for p in from_path], rtol=1e-6)
    single = predictor.predict(str(files[0]))
    assert len(single) == 1 and single[0].label == from_path[0].label
    assert predictor.predict([]) == []
    assert predictor.embed([]).shape == (0, 64)
    assert len(predictor.predict(files[:1], top_k=50)[0].top_k) == 10  # clamped to the classes
    with pytest.raises(ConfigError, match="top_k"):
        predictor.predict(files[:1], top_k=0)
    with pytest.raises(ConfigError, match="batch_size"):
        predictor.predict(files[:1], batch_size=0)
    bad = predictor.predict([np.zeros((4, 4), np.float32)])[0]
    assert not bad.ok and "uint8" in bad.error
    as_dict = from_path[0].to_dict()
    assert set(as_dict) == {"file", "label", "score", "top_k", "error"}
    json.dumps(as_dict)


def test_embed_and_logits_are_consistent(predictor, models, digit_files):
    files, _ = digit_files
    z_ref, probs = _reference_probs(models, files)
    z = predictor.embed(files, batch_size=16)
    assert z.shape == (len(files), 64) and z.dtype == np.float32 and z.flags.c_contiguous
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-6)
    logits = predictor.logits_from_embeddings(z)
    np.testing.assert_allclose(logits, predictor.logits(preprocess_batch(files, models.spec)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits.argmax(1), probs.argmax(1))


def test_adapter_is_applied_before_the_head(models, digit_files, tmp_path):
    files, _ = digit_files
    rng = np.random.default_rng(0)
    A = (np.eye(64) + 0.05 * rng.standard_normal((64, 64))).astype(np.float32)
    b = (0.1 * rng.standard_normal(64)).astype(np.float32)
    plain = Predictor.from_bundle(write_bundle(tmp_path / "plain", models))
    adapted = Predictor.from_bundle(write_bundle(tmp_path / "adapted", models, adapter=(A, b)))
    raw = plain.embed(files)
    np.testing.assert_allclose(adapted.embed(files, adapted=False), raw, rtol=1e-6)
    z = adapted.embed(files)
    np.testing.assert_allclose(z, raw @ A.T + b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(adapted.apply_adapter(raw), z, rtol=1e-5, atol=1e-5)
    logits = plain.logits_from_embeddings(raw @ A.T + b)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose([p.score for p in adapted.predict(files)], probs.max(1), rtol=1e-4)
    with pytest.raises(BundleError, match="adapter needs"):
        Adapter(np.eye(3), np.zeros(4))
    with pytest.raises(BundleError, match="adapter maps 3 features"):
        Predictor.from_bundle(write_bundle(tmp_path / "wrong", models, adapter=(np.eye(3), np.zeros(3))))


def test_tampered_bundle_is_refused_unless_not_verified(models, tmp_path):
    bundle = write_bundle(tmp_path / "b", models)
    head = bundle / "v1" / "head.onnx"
    head.write_bytes(head.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="SHA-256"):
        Predictor.from_bundle(bundle)
    with pytest.raises(BundleError, match="onnxruntime cannot load"):  # not checked, so it gets loaded
        Predictor.from_bundle(bundle, verify=False)


def test_evaluate_folder(predictor, digits_dir, tmp_path):
    result = evaluate_folder(predictor, digits_dir)
    preds = predictor.predict(scan_folder(digits_dir).paths)
    folder = scan_folder(digits_dir)
    expected = np.mean([p.index for p in preds] == folder.targets)
    assert result.n == len(folder.samples) and result.accuracy == pytest.approx(expected)
    assert set(result.per_class) == set(predictor.labels)
    d = result.to_dict()
    assert {"accuracy", "n", "per_class", "confusion"} <= set(d)
    json.dumps(d)
    # a subset of the classes, folder names matched to the model's labels
    subset = tmp_path / "subset"
    for name in ("3", "7"):
        shutil.copytree(digits_dir / name, subset / name)
    (subset / "7" / "broken.png").write_bytes(b"\x89PNG broken")
    part = evaluate_folder(predictor, subset)
    n_3_7 = sum(1 for name in ("3", "7") for _ in (digits_dir / name).iterdir())
    assert set(part.per_class) == {"3", "7"} and part.n == n_3_7 and len(part.errors) == 1
    np.testing.assert_allclose(part.per_class["3"], result.per_class["3"])
    (subset / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(subset / "cat" / "a.png")
    with pytest.raises(DataError, match="'cat' are not among the model's labels"):
        evaluate_folder(predictor, subset)


def test_predictor_logits_equal_calling_the_runtime_directly(predictor, models, digit_files):
    """Predictor.logits is the two sessions called in turn, nothing added (its per-call overhead
    is measured, not asserted: benchmarks/bench_readme.py, "edgetl's own overhead")."""
    import onnxruntime as ort

    x = preprocess_batch(digit_files[0][:4], models.spec)
    backbone = ort.InferenceSession(str(models.backbone), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(models.head), providers=["CPUExecutionProvider"])
    direct = head.run(None, {"embedding": backbone.run(None, {"images": x})[0]})[0]
    np.testing.assert_allclose(predictor.logits(x), direct, rtol=1e-5, atol=1e-5)


# -- the command line ----------------------------------------------------------------------------

def test_cli_predict_json_and_exit_codes(bundle, digit_files, tmp_path, capsys):
    files, _ = digit_files
    assert main(["predict", str(bundle), *map(str, files[:3]), "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in out] == [str(f) for f in files[:3]]
    assert all(len(r["top_k"]) == 2 and r["error"] is None and r["label"] == r["top_k"][0]["label"] for r in out)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    assert main(["predict", str(bundle), str(files[0]), str(bad), "--json", "--no-verify"]) == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out[0]["error"] is None and out[1]["error"] and out[1]["label"] is None
    assert "bad.jpg" in captured.err


def test_cli_predict_folder_and_table(bundle, digits_dir, capsys):
    assert main(["predict", str(bundle), str(digits_dir / "3"), "--json", "--batch-size", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in out] == sorted(str(p) for p in (digits_dir / "3").iterdir())
    assert main(["predict", str(bundle), str(digits_dir / "3" / sorted((digits_dir / "3").iterdir())[0].name),
                 "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "label" in table and "top-k" in table
    (digits_dir.parent / "empty").mkdir(exist_ok=True)
    assert main(["predict", str(bundle), str(digits_dir.parent / "empty"), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["error"].endswith("a folder with no images")


def test_cli_evaluate_bundle(bundle, digits_dir, tmp_path, capsys):
    assert main(["evaluate", str(bundle), str(digits_dir), "--json", "--plot", str(tmp_path / "cm.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == len(list(digits_dir.rglob("*.png"))) and 0.35 < out["accuracy"] <= 1 and set(out["per_class"]) == {str(d) for d in range(10)}
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert main(["evaluate", str(bundle), str(digits_dir)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path), str(digits_dir)]) != 0
    assert "neither a RUN directory" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such bundle" in err
