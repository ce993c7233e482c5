"""int8 as the device's CPU computes it: the conformance set every bundle carries, checked on
the device (edgetl.device.conformance), and the saturation it exists to catch.

The saturating model is the tests' real conv backbone (tests/_device_models.py) quantized with
full-range int8 weights: ONNX Runtime's u8 x s8 kernels on x86 CPUs without VNNI sum pairs of
products in 16 bits (VPMADDUBSW), which overflow. 7-bit weights (x86-avx2's) cannot. Where this
CPU has VNNI (or is not x86), full-range int8 does not saturate here, so the half of a test that
shows a failure is skipped there, saying why; everything else runs on every CPU class.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from _device_models import add_conformance, fit_head, quantize_qdq, tiny_models, write_bundle, write_head

from edgetl.core.isa import saturates, this_cpu
from edgetl.device import conformance as conf
from edgetl.device.predictor import Predictor
from edgetl.errors import BundleError, NonConformingError
from edgetl.modalities.image import preprocess_batch, scan_folder

SATURATES_HERE = saturates(this_cpu(), reduced_range=False)
NO_SATURATION = "this CPU computes full-range int8 exactly (it has VNNI or is not x86), so nothing saturates here"


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits_dir):
    return tiny_models(tmp_path_factory.mktemp("tiny"), digits_dir)


@pytest.fixture(scope="module")
def sources(digits_dir):
    folder = scan_folder(digits_dir)
    return [str(p) for p in folder.paths[::10]]  # 100 held-out-like digits, every class


@pytest.fixture(scope="module")
def full_range(models, digits_dir, tmp_path_factory):
    """The same backbone with full-range (8-bit) int8 weights, and its head fitted on its
    reference outputs: what an x86-vnni bundle holds."""
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("full")
    folder = scan_folder(digits_dir)
    x = preprocess_batch(folder.paths, models.spec)
    int8 = quantize_qdq(models.backbone, root / "backbone.int8.onnx", x[::20], reduce_range=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    z = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    head = write_head(root / "head.int8.onnx", *fit_head(z, folder.targets, len(models.labels)))
    return dataclasses.replace(models, backbone_int8=int8, head_int8=head)


def _bundle(path, models, sources, isa):
    return add_conformance(write_bundle(path, models, precision="int8"), sources, isa=isa)


def test_safe_int8_computes_the_reference_on_this_cpu(models, full_range, sources):
    """7-bit weights: this CPU's int8 kernels and the reference (no integer kernels) agree on
    every digit; full-range weights do not where the CPU lacks VNNI."""
    from edgetl.modalities.image import preprocess_batch as pre

    x = pre(sources, models.spec)
    for m, safe in ((models, True), (full_range, False)):
        here = Predictor.from_files(m.backbone_int8, m.head_int8, labels=m.labels, spec=m.spec, precision="int8")
        ref = Predictor.from_files(m.backbone_int8, m.head_int8, labels=m.labels, spec=m.spec, precision="int8")
        from edgetl.runtimes import load_session

        ref.backbone = load_session(m.backbone_int8, "onnxruntime", precision="int8", reference=True)
        assert ref.backbone.precision_executed == "int8-reference"
        agreement = float((here.logits(x).argmax(1) == ref.logits(x).argmax(1)).mean())
        if safe or not SATURATES_HERE:
            assert agreement >= 0.98, (safe, agreement)
        else:
            assert agreement < 0.9, agreement  # saturation: a different model


def test_a_safe_bundle_conforms_and_its_verdict_is_remembered(models, sources, tmp_path):
    bundle = _bundle(tmp_path / "b", models, sources, "x86-avx2")
    predictor = Predictor.from_bundle(bundle)  # checks, once
    first = predictor.conformance
    assert first is not None and first.passed and not first.cached and first.n_items == conf.DEFAULT_ITEMS
    assert first.agreement >= 0.98 and first.min_cosine > 0.99
    again = Predictor.from_bundle(bundle).conformance
    assert again.cached and again.agreement == first.agreement  # remembered per bundle, runtime and CPU
    fresh = conf.check(Predictor.from_bundle(bundle, conformance="off"), use_cache=False)
    assert not fresh.cached and fresh.agreement == first.agreement


def test_a_full_range_bundle_is_refused_where_it_saturates(full_range, sources, tmp_path, capsys):
    from edgetl.cli import main

    bundle = _bundle(tmp_path / "b", full_range, sources, "x86-vnni")
    if not SATURATES_HERE:
        assert Predictor.from_bundle(bundle).conformance.passed
        pytest.skip(NO_SATURATION)
    with pytest.raises(NonConformingError, match="x86-vnni") as info:
        Predictor.from_bundle(bundle)
    assert "x86-ort-int8" in str(info.value)  # a target that fits this CPU
    assert main(["predict", str(bundle), sources[0]]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--allow-nonconforming" in err and "Traceback" not in err
    assert main(["predict", str(bundle), sources[0], "--allow-nonconforming", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["label"] is not None and "warning" in out.err
    assert main(["doctor", str(bundle), "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "does not conform" and report["agreement"] < 0.9 and not report["fits_target"]


def test_doctor_bundle_table_and_json(models, sources, tmp_path, capsys):
    from edgetl.cli import main

    bundle = _bundle(tmp_path / "b", models, sources, "x86-avx2")
    assert main(["doctor", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "conforms" and report["runtime"] == "onnxruntime" and report["runtime_version"]
    assert report["cpu"]["arch"] == this_cpu().arch and report["n_items"] == conf.DEFAULT_ITEMS
    assert main(["doctor", str(bundle)]) == 0
    assert "conforms" in capsys.readouterr().out


def test_the_set_is_hashed_and_checked(models, sources, tmp_path):
    bundle = _bundle(tmp_path / "b", models, sources, "x86-avx2")
    cset = conf.ConformanceSet.load(bundle / "v1" / conf.FILE)
    assert len(cset.items) == conf.DEFAULT_ITEMS and cset.rows.dtype == np.float32
    assert (cset.row_item == np.arange(len(cset.items))).all() and (cset.row_index == 0).all()  # one row per image
    # the items are the files themselves (small PNGs): the device decodes them itself
    assert all(item[:4] == b"\x89PNG" for item in cset.items)
    data = bytearray((bundle / "v1" / conf.FILE).read_bytes())
    data[-100] ^= 0xFF
    (bundle / "v1" / conf.FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        Predictor.from_bundle(bundle)
    broken = tmp_path / "broken.npz"
    np.savez(broken, format=np.int64(1), lengths=np.array([5, 5]), data=np.zeros(7, np.uint8),
             rows=np.zeros((2, 4), np.float32), row_item=np.arange(2), row_index=np.zeros(2, np.int64))
    with pytest.raises(BundleError, match="inconsistent"):
        conf.ConformanceSet.load(broken)


def test_selection_leaves_out_the_boundary_and_spans_classes():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((96, 4)) * 3
    chosen = conf.select(logits, 32)
    margins = np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2]
    assert len(chosen) == 32 and margins[chosen].min() >= np.quantile(margins, 1 / 3) - 1e-9
    assert len(set(logits[chosen].argmax(1))) == 4


def test_a_bundle_without_a_set_still_opens_with_a_warning_for_int8(models, tmp_path, capsys):
    bundle = write_bundle(tmp_path / "old", models, precision="int8")
    assert Predictor.from_bundle(bundle).conformance is None
    assert "no conformance set" in capsys.readouterr().err
    fp32 = write_bundle(tmp_path / "old32", models)
    Predictor.from_bundle(fp32)
    assert "conformance" not in capsys.readouterr().err


def test_a_bundle_for_another_architecture_says_so(models, sources, tmp_path, capsys):
    other = "arm64" if this_cpu().arch == "x86_64" else "x86-avx2"
    bundle = _bundle(tmp_path / "b", models, sources, other)
    predictor = Predictor.from_bundle(bundle)
    assert "this bundle was made for" in capsys.readouterr().err
    assert predictor.conformance.passed and not predictor.conformance.fits_target


def test_a_small_set_allows_one_change_and_no_more_than_its_share():
    # one flipped item on a 43-item set (0.977) is a boundary item, not saturation (which flips a fifth)
    assert conf.allowed_changes(43, 0.98) == 1 and conf.conforms(42 / 43, 43, 0.98)
    assert not conf.conforms(41 / 43, 43, 0.98)
    assert conf.allowed_changes(64, 0.98) == 1 and conf.allowed_changes(200, 0.98) == 4
    assert conf.conforms(196 / 200, 200, 0.98) and not conf.conforms(195 / 200, 200, 0.98)
    assert not conf.conforms(0.77, 43, 0.98) and conf.conforms(1.0, 43, 0.98)
