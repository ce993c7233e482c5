"""The real pipeline to every shipped target: package the quantized digits RUN, predict
with the bundle on its runtime, and find the accuracy the quantization report promised."""

from __future__ import annotations

import json
import shutil

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


@pytest.mark.parametrize("target", [t.name for t in list_targets()])
def test_every_shipped_target_round_trip(quantized_run, val_folder, tmp_path, target):
    t = next(t for t in list_targets() if t.name == target)
    ok, why = t.runtime_available()
    if not ok:
        pytest.skip(f"{target}: {why}")
    bundle = package(quantized_run, target, tmp_path / "bundle").bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    predictor = Predictor.from_bundle(bundle)
    assert predictor.runtime == t.runtime.value
    preds = predictor.predict(sorted((val_folder / "4").iterdir()))
    assert all(p.ok for p in preds) and sum(p.label == "4" for p in preds) >= 0.8 * len(preds)

    report = evaluate_bundle(bundle, val_folder)
    promised = manifest["accuracy"]["deployed"]
    if promised is not None:  # what `edgetl quantize` measured for this runtime and precision
        assert report["accuracy"] == pytest.approx(promised, abs=1e-9), (report["accuracy"], manifest["accuracy"])
    assert report["accuracy"] >= manifest["accuracy"]["fp32"] - 0.02
