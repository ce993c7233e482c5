"""int8 quantization with the accuracy guard, on real digits and the pretrained
efficientnet_lite0 (the session's exported RUN), on real ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import ConfigError, DataError, QuantizationError, RunDirError
from edgetl.workstation.quantization import QuantizeConfig, deployed_accuracy, quantize
from edgetl.core.run import read_run_json


def _rows(run: Path) -> dict[tuple[str, str], dict]:
    return {(r["runtime"], r["precision"]): r for r in read_run_json(run)["quantize"]["report"]}


def _copy_run(src: Path, dst: Path) -> Path:
    """The RUN's fp32 ONNX files and run.json only: tests that rewrite a RUN get their own."""
    (dst / "onnx").mkdir(parents=True)
    for name in ("backbone.onnx", "head.onnx"):
        shutil.copy(src / "onnx" / name, dst / "onnx" / name)
    info = read_run_json(src)
    info.pop("quantize", None)
    (dst / "run.json").write_text(json.dumps(info))
    return dst


def test_int8_within_budget_on_both_runtimes(quantized_run):
    rows = _rows(quantized_run)
    for runtime in ("onnxruntime", "openvino"):
        int8, fp32 = rows[(runtime, "int8")], rows[(runtime, "fp32")]
        assert fp32["accuracy"] > 0.85, fp32  # the probe itself is good
        assert fp32["precision_executed"] == "fp32"
        assert int8["fp32_accuracy"] == fp32["accuracy"]
        assert int8["drop"] <= 0.01 + 1e-9, int8  # within 1 point of fp32
        assert int8["agreement"] >= 0.97, int8
        assert int8["precision_executed"] == "int8", int8  # OpenVINO's float remainder pinned to f32
    assert rows[("openvino", "int8")]["inference_precision_hint"] == "f32"
    assert read_run_json(quantized_run)["quantize"]["passed"] is True


def test_openvino_names_the_precision_it_ran(quantized_run):
    import openvino as ov

    rows = _rows(quantized_run)
    auto = [r for (rt, p), r in rows.items() if rt == "openvino" and p not in ("fp32", "int8")]
    assert len(auto) == 1  # the fp32 IR as OpenVINO runs it by default, measured
    hint = ov.Core().compile_model(str(quantized_run / "openvino" / "backbone.xml"), "CPU").get_property(
        "INFERENCE_PRECISION_HINT")
    expected = "bf16" if hint.get_type_name() == "bf16" else "fp32"
    assert auto[0]["precision_executed"] == expected
    assert auto[0]["drop"] <= 0.03


def test_int8_files_are_small(quantized_run):
    rows = _rows(quantized_run)
    for runtime, rel in (("onnxruntime", "onnx/backbone.int8.onnx"), ("openvino", "openvino/backbone.int8.xml")):
        row = rows[(runtime, "int8")]
        assert row["file"] == rel and (quantized_run / rel).is_file()
        if runtime == "onnxruntime":  # on digits, ORT int8 holds the budget with nothing left in fp32
            assert not row["fp32_nodes"], row
        # Fully int8 is <= 0.3x; every node the guard keeps in fp32 keeps its fp32 weights.
        assert row["size_ratio"] <= (0.3 if not row["fp32_nodes"] else 0.75), row
    assert (quantized_run / "openvino" / "backbone.int8.bin").is_file()
    assert not list(quantized_run.glob(".quantize-*"))  # no temporary folder left


def test_fused_int8_model_is_head_of_int8_backbone(quantized_run):
    import onnx
    import onnxruntime as ort

    from edgetl.modalities.image import PreprocessSpec, preprocess_batch
    from edgetl.workstation.run import Run

    onnx_dir = quantized_run / "onnx"
    for name in ("backbone.int8.onnx", "model.int8.onnx"):
        model = onnx.load(str(onnx_dir / name))
        assert model.ir_version <= 10
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["edgetl.labels"]) == read_run_json(quantized_run)["labels"]
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    info = read_run_json(quantized_run)
    paths, _ = Run(quantized_run, info, None).split_paths("val")
    x = preprocess_batch(paths[:16], PreprocessSpec.from_dict(info["preprocess"]))

    def run(name, data, inp):
        return ort.InferenceSession(str(onnx_dir / name), providers=["CPUExecutionProvider"]).run(None, {inp: data})[0]

    fused = run("model.int8.onnx", x, "images")
    staged = run("head.onnx", run("backbone.int8.onnx", x, "images"), "embedding")
    np.testing.assert_allclose(fused, staged, atol=1e-5)
    assert info["quantize"]["fused_check"]["top1_agreement"] == 1.0


def test_deployed_accuracy_lookup(quantized_run):
    info = read_run_json(quantized_run)
    got = deployed_accuracy(info, "onnxruntime", "int8")
    row = _rows(quantized_run)[("onnxruntime", "int8")]
    assert got == {"fp32": row["fp32_accuracy"], "deployed": row["accuracy"], "precision_executed": "int8",
                   "agreement": row["agreement"]}
    assert deployed_accuracy(info, "onnxruntime", "bf16") is None
    assert deployed_accuracy({}, "openvino", "int8") is None


def blank_images(folder: Path, n: int = 16) -> Path:
    """Calibration images that are all white: activation ranges collapse, so int8 saturates
    on real inputs (a solved probe head on the digits is otherwise robust enough that int8
    agrees with fp32 on every held-out image)."""
    from PIL import Image

    (folder / "blank").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / "blank" / f"{i}.png")
    return folder


def test_impossible_budget_keeps_nodes_in_fp32_then_fails_cleanly(exported_run, tmp_path):
    run = _copy_run(exported_run, tmp_path / "run")
    stale = run / "onnx" / "backbone.int8.onnx"
    stale.write_bytes(b"from an earlier quantize")
    cfg = QuantizeConfig(engine="ort", max_drop=0.0, min_agreement=1.0, max_steps=2, calib_size=32,
                         calib=str(blank_images(tmp_path / "calib")))
    with pytest.raises(QuantizationError, match="cannot meet the accuracy budget.*onnxruntime"):
        quantize(run, cfg)
    report = read_run_json(run)["quantize"]  # the report is written even so
    guard = report["guard"]["onnxruntime"]
    assert report["passed"] is False and guard["passed"] is False
    assert [len(s["fp32_nodes"]) for s in guard["steps"]] == [0, 1, 2]  # step by step
    assert guard["steps"][2]["fp32_nodes"] == guard["ranking"][:2]  # the most sensitive first
    assert all(not s["passed"] for s in guard["steps"])
    assert [(r["runtime"], r["precision"]) for r in report["report"]] == [("onnxruntime", "fp32")]
    assert not stale.exists() and not (run / "onnx" / "model.int8.onnx").exists()  # no int8 file on disk
    assert not list(run.glob(".quantize-*"))


def test_cli_dynamic_json(exported_run, tmp_path, capsys):
    from edgetl.cli import main

    run = _copy_run(exported_run, tmp_path / "run")
    code = main(["quantize", str(run), "--engine", "ort", "--method", "dynamic", "--max-steps", "0",
                 "--max-drop", "0.5", "--min-agreement", "0", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON only
    int8 = [r for r in report["report"] if r["precision"] == "int8"][0]
    assert int8["precision_executed"] == "int8-dynamic" and int8["method"] == "dynamic"
    assert (run / "onnx" / "backbone.int8.onnx").is_file()


def test_missing_calibration_data(exported_run, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        quantize(exported_run, QuantizeConfig(engine="ort", calib=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder"):
        quantize(exported_run, QuantizeConfig(engine="ort", calib=str(tmp_path / "empty")))


def test_not_exported_run(probe_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(probe_run / "run.json", run / "run.json")
    with pytest.raises(RunDirError, match="edgetl export"):
        quantize(run)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_drop": -0.1}, "max_drop"),
    ({"max_drop": 1.5}, "max_drop"),
    ({"engine": "tflite"}, "engine must be one of ort, nncf, ort-dynamic, both"),
    ({"method": "dynamic"}, "--engine ort"),
    ({"calib_size": 0}, "calib_size"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantizeConfig(**kwargs)
