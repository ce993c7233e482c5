"""ONNX export: parity of all three files on both runtimes, metadata, dynamic batch, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from edgetl.cli import main
from edgetl.errors import ExportMismatchError
from edgetl.workstation.onnx_export import ExportConfig, export
from edgetl.modalities.image import PreprocessSpec, preprocess_batch
from edgetl.workstation.run import load_run


def _val_batch(run_dir, n):
    run = load_run(run_dir)
    paths, _ = run.split_paths("val")
    return run, preprocess_batch(paths[:: max(1, len(paths) // n)][:n], run.preprocess)


def _ort(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _ov(path, x):
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]


def test_export_report_passes_and_is_recorded(exported_run):
    info = json.loads((exported_run / "run.json").read_text())
    v = info["export"]["validation"]
    assert v["passed"] and not v["failures"]
    for check in ("onnxruntime/backbone", "onnxruntime/head", "onnxruntime/model", "openvino-f32/backbone",
                  "openvino-f32/model", "onnxruntime/head(backbone)"):
        # 1e-4 per unit of output scale (logits of a solved probe head reach ~10)
        assert v[check]["max_abs_diff"] <= v[check]["abs_limit"] <= 1e-4 * 100, v[check]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_parity_of_all_three_files(exported_run, runtime):
    run, x = _val_batch(exported_run, 16)
    with torch.no_grad():
        z = run.model.forward_features(torch.from_numpy(x)).numpy()
        logits = run.model.forward_head(torch.from_numpy(z)).numpy()
    go = _ort if runtime == "onnxruntime" else _ov
    d = exported_run / "onnx"
    np.testing.assert_allclose(go(d / "backbone.onnx", x), z, atol=1e-4)
    np.testing.assert_allclose(go(d / "head.onnx", z), logits, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(go(d / "model.onnx", x), logits, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(go(d / "head.onnx", go(d / "backbone.onnx", x)), go(d / "model.onnx", x), atol=1e-5)
    if runtime == "openvino":
        np.testing.assert_allclose(_ov(exported_run / "openvino" / "backbone.xml", x), z, atol=1e-4)


@pytest.mark.parametrize("name", ["backbone", "head", "model"])
def test_metadata_round_trip_and_single_file(exported_run, name):
    run = load_run(exported_run)
    path = exported_run / "onnx" / f"{name}.onnx"
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["edgetl.labels"]) == run.labels
    assert PreprocessSpec.from_dict(json.loads(meta["edgetl.preprocess"])) == run.preprocess
    assert int(meta["edgetl.num_features"]) == run.info["num_features"]
    assert model.ir_version <= 10
    assert not list(path.parent.glob("*.data"))
    assert all(not init.external_data for init in model.graph.initializer)


@pytest.mark.parametrize("name", ["backbone", "model"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_dynamic_batch(exported_run, name, runtime):
    _, x = _val_batch(exported_run, 7)
    go = _ort if runtime == "onnxruntime" else _ov
    path = exported_run / "onnx" / f"{name}.onnx"
    batch = go(path, x)
    singles = np.concatenate([go(path, x[i: i + 1]) for i in range(len(x))])
    assert batch.shape[0] == 7
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_all_failures_reported_together(exported_run, tmp_path):
    run = shutil.copytree(exported_run, tmp_path / "run")
    with pytest.raises(ExportMismatchError) as info:
        export(run, ExportConfig(exporter="torchscript", opset=17, atol=0.0, rounding_factor=0.0, samples=8))
    assert len(info.value.failures) >= 4 and "onnxruntime/backbone" in str(info.value)
    rec = json.loads((run / "run.json").read_text())["export"]["validation"]
    assert rec["passed"] is False


def test_the_limit_follows_float32_rounding_and_a_wrong_constant_still_fails(exported_run, monkeypatch, tmp_path):
    """The allowed |diff| is derived from this model (16x what float32 rounding does to
    PyTorch's own outputs, measured against float64), so kernels that sum in another order pass
    on every CPU class; a wrong normalisation constant in the exported file fails all the same."""
    import copy

    from edgetl.workstation import onnx_export

    rec = json.loads((exported_run / "run.json").read_text())["export"]["validation"]
    noise = rec["float32_rounding"]
    assert 0 < noise["embedding"] < 1e-3 and 0 < noise["logits"] < 1e-2
    model = rec["onnxruntime/model"]
    assert model["abs_limit"] >= 16 * noise["logits"] and model["max_abs_diff"] <= model["abs_limit"]
    real_export = onnx_export.export_module

    def with_wrong_constant(module, *args, **kwargs):
        import torch

        broken = copy.deepcopy(module)
        bn = next(m for m in broken.modules() if isinstance(m, torch.nn.BatchNorm2d))
        with torch.no_grad():  # the first BatchNorm's mean off by 1% of its spread: a normalisation slip
            bn.running_mean += 0.01 * bn.running_var.sqrt()
        return real_export(broken, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_module", with_wrong_constant)
    run = shutil.copytree(exported_run, tmp_path / "run")
    with pytest.raises(ExportMismatchError, match="onnxruntime/backbone: max \\|diff\\|"):
        export(run, ExportConfig(exporter="torchscript", opset=17, samples=16))


def test_no_validate_says_so_and_does_not_crash(exported_run, capsys, tmp_path):
    run = shutil.copytree(exported_run, tmp_path / "run")
    assert main(["export", str(run), "--exporter", "torchscript", "--opset", "17", "--no-validate"]) == 0
    captured = capsys.readouterr()
    assert "not validated" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("backbone, strategy", [
    ("timm:mobilenetv3_small_050", "finetune"),
    ("torchvision:resnet18", "linear-probe"),
])
def test_other_architectures(digits_dir, tmp_path, backbone, strategy):
    from edgetl.workstation.training import TrainConfig, train

    cfg = TrainConfig(backbone=backbone, pretrained=False, strategy=strategy, epochs=1, image_size=64, unfreeze=1)
    result = train(digits_dir, tmp_path / "run", cfg)
    report = export(result.run_dir, ExportConfig(samples=16))
    assert report["validation"]["passed"]
    assert {f["ir_version"] for f in report["files"].values()} <= set(range(3, 11))


@pytest.mark.parametrize("setup, message", [
    ("missing", "no such RUN directory"),
    ("no_run_json", "not a RUN directory"),
    ("no_weights", "model.pt is missing"),
])
def test_bad_run_directory(tmp_path, exported_run, capsys, setup, message):
    import shutil

    target = tmp_path / "run"
    if setup != "missing":
        target.mkdir()
        if setup == "no_weights":
            shutil.copy(exported_run / "run.json", target / "run.json")
    assert main(["export", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_option_is_one_line(capsys, exported_run):
    with pytest.raises(SystemExit) as e:
        main(["export", str(exported_run), "--exporter", "tflite"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice" in err[0]
