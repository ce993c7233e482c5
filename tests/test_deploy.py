"""The real pipeline to every shipped target: package the quantized digits RUN, predict
with the bundle on its runtime, and find the accuracy the quantization report promised."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgetl.workstation.packaging import package
from edgetl.device import Predictor, evaluate_bundle
from edgetl.core.targets import list_targets


@pytest.fixture(scope="module")
def val_folder(quantized_run, tmp_path_factory):
    """The RUN's held-out split as an image folder (the images quantize scored)."""
    info = json.loads((quantized_run / "run.json").read_text())
    root = tmp_path_factory.mktemp("val") / "val"
    for rel in info["split"]["val"]:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{info['data_root']}/{rel}", dest)
    return root


@pytest.fixture(scope="module")
def full_range_run(quantized_run, tmp_path_factory):
    """The RUN quantized for CPUs with VNNI (full-range int8 weights), ONNX Runtime only."""
    from edgetl.workstation.quantization import QuantizeConfig, quantize

    run = shutil.copytree(quantized_run, tmp_path_factory.mktemp("vnni") / "run")
    quantize(run, QuantizeConfig(engine="ort", isa="x86-vnni"))
    return run


@pytest.mark.parametrize("target", [t.name for t in list_targets()])
def test_every_shipped_target_round_trip(quantized_run, val_folder, tmp_path, target, request):
    from edgetl.core.isa import this_cpu
    from edgetl.errors import NonConformingError

    t = next(t for t in list_targets() if t.name == target)
    ok, why = t.runtime_available()
    if not ok:
        pytest.skip(f"{target}: {why}")
    run = request.getfixturevalue("full_range_run") if target == "x86-vnni-ort-int8" else quantized_run
    bundle = package(run, target, tmp_path / "bundle").bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    fits = t.fits(this_cpu())
    # every bundle carries its conformance set; packaging ran it where this CPU is one of the target's
    assert manifest["conformance"]["items"] > 0 and manifest["artifacts"]["conformance"]
    assert ("passed" in manifest["validated"]) == fits and manifest["validated"].get("passed", True)
    try:
        predictor = Predictor.from_bundle(bundle)
    except NonConformingError as exc:
        # full-range int8 on a CPU without VNNI: refused, naming a target that fits this CPU
        assert target == "x86-vnni-ort-int8" and not this_cpu().vnni and "x86-ort-int8" in str(exc)
        return
    assert predictor.conformance.passed
    assert predictor.runtime == t.runtime.value
    preds = predictor.predict(sorted((val_folder / "4").iterdir()))
    assert all(p.ok for p in preds) and sum(p.label == "4" for p in preds) >= 0.8 * len(preds)

    report = evaluate_bundle(bundle, val_folder)
    promised = manifest["accuracy"]["deployed"]
    if promised is not None:  # what `edgetl quantize` measured for this runtime and precision
        assert report["accuracy"] == pytest.approx(promised, abs=1e-9), (report["accuracy"], manifest["accuracy"])
    assert report["accuracy"] >= manifest["accuracy"]["fp32"] - 0.02


def test_int8_bundle_head_is_solved_on_the_deployed_features(quantized_run, tmp_path):
    """For an int8 target the linear probe is solved again on what the int8 backbone computes
    (scikit-learn's LogisticRegression on the same embeddings is the oracle); without it the
    bundle keeps the RUN's head bit for bit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from edgetl.core.run import read_run_json
    from edgetl.device.learn.head import read_head
    from edgetl.device.memory import split_embeddings
    from edgetl.workstation.packaging import PackageConfig
    from edgetl.workstation.probe_solver import score_head

    bundle = package(quantized_run, "x86-ort-int8", tmp_path / "b").bundle
    head = json.loads((bundle / "manifest.json").read_text())["accuracy"]["head"]
    assert head["solved_on"] == "deployed backbone" and head["n_val"] > 0
    info = read_run_json(quantized_run)
    predictor = Predictor.from_bundle(bundle)
    X_tr, y_tr, _ = split_embeddings(predictor, info, "train")
    X_va, y_va, _ = split_embeddings(predictor, info, "val")
    W_run, b_run, _ = read_head(quantized_run / "onnx" / "head.onnx")
    assert score_head(W_run, b_run, X_va, y_va)[1] == pytest.approx(head["val_before"]["accuracy"])
    W, b, _ = read_head(bundle / "v1" / "head.onnx")
    # refit on train + validation at the C chosen on the deployed features, as the RUN did
    assert head["refit"] and head["val_before"]["in_sample"] and head["n_val"] == len(y_va)
    X, y = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va])
    scaler = StandardScaler().fit(X)
    sk = LogisticRegression(C=head["C"], max_iter=5000).fit(scaler.transform(X), y)
    assert ((X_va @ W.T + b).argmax(1) == sk.predict(scaler.transform(X_va))).mean() >= 0.99
    assert score_head(W, b, X_va, y_va)[1] == pytest.approx(head["deployed_accuracy"])
    # from the command line: --no-deployed-head (PackageConfig(deployed_head=False))
    from edgetl.cli import main

    kept = tmp_path / "k"
    assert main(["package", str(quantized_run), "--target", "x86-ort-int8", "--out", str(kept),
                 "--no-deployed-head", "--json"]) == 0
    assert PackageConfig().deployed_head and not PackageConfig(deployed_head=False).deployed_head
    assert (kept / "v1" / "head.onnx").read_bytes() == (quantized_run / "onnx" / "head.onnx").read_bytes()
    assert "head" not in json.loads((kept / "manifest.json").read_text())["accuracy"]
    print(f"head on int8 features: {head}")
