"""Runtimes behind the Session protocol: real ONNX Runtime and OpenVINO on real models."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from _device_models import tiny_models
from edgetl.runtimes import RUNTIMES, Session, available_runtimes, load_session, runtime_version
from edgetl.errors import BundleError, ConfigError, RuntimeUnavailableError


@pytest.fixture(scope="session")
def models(tmp_path_factory, digits_dir):
    return tiny_models(tmp_path_factory.mktemp("tiny_models"), digits_dir)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# (runtime, which model file, precision asked, precision expected)
CASES = [
    ("onnxruntime", "backbone", "fp32", "fp32"),
    ("onnxruntime", "backbone_int8", "int8", "int8"),
    ("openvino", "backbone", "fp32", "fp32"),
    ("openvino", "backbone_xml", "fp32", "fp32"),
    ("openvino", "backbone_xml", "bf16", "bf16"),
    ("openvino", "backbone_int8", "int8", "int8"),
    ("openvino", "backbone_int8", "bf16", "int8+bf16"),
]


def test_registry_lists_both_runtimes():
    assert RUNTIMES.names() == ["onnxruntime", "openvino"]
    assert available_runtimes() == ["onnxruntime", "openvino"]
    assert runtime_version("onnxruntime") == "1.19.2"
    with pytest.raises(ConfigError, match="did you mean 'openvino'"):
        RUNTIMES.get("openvin")


@pytest.mark.parametrize("runtime,which,asked,expected", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_session_dynamic_batch_and_precision(models, batch, runtime, which, asked, expected):
    session = load_session(getattr(models, which), runtime, threads=2, precision=asked)
    assert isinstance(session, Session)
    assert session.runtime == runtime
    assert session.input_name == "images" and session.output_name == "embedding"
    assert session.input_shape[1:] == (3, 32, 32) and not isinstance(session.input_shape[0], int)
    if expected.endswith("bf16") and not _cpu_has_bf16():
        expected = expected.replace("+bf16", "").replace("bf16", "fp32")
    assert session.precision_executed == expected
    whole = session.run(batch)
    assert whole.shape == (7, 64) and whole.dtype == np.float32
    one_by_one = np.concatenate([session.run(batch[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-5)
    # a non-contiguous float64 view is accepted (converted once, not rejected)
    np.testing.assert_allclose(session.run(batch.astype(np.float64)[::-1][::-1]), whole, rtol=1e-5, atol=1e-5)


def test_runtimes_agree(models, batch):
    ort_fp32 = load_session(models.backbone, "onnxruntime").run(batch)
    # workers that sleep between ops (for a session beside decoding threads) compute the same
    sleeping = load_session(models.backbone, "onnxruntime", spinning=False)
    assert sleeping._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_array_equal(sleeping.run(batch), ort_fp32)
    assert load_session(models.backbone_xml, "openvino", spinning=False).run(batch).shape == ort_fp32.shape
    ov_fp32 = load_session(models.backbone_xml, "openvino").run(batch)
    np.testing.assert_allclose(ov_fp32, ort_fp32, rtol=1e-4, atol=1e-4)
    ov_onnx = load_session(models.backbone, "openvino").run(batch)
    np.testing.assert_allclose(ov_onnx, ort_fp32, rtol=1e-4, atol=1e-4)
    ov_bf16 = load_session(models.backbone_xml, "openvino", precision="bf16").run(batch)
    scale = np.abs(ort_fp32).max()
    assert np.abs(ov_bf16 - ort_fp32).max() < 0.03 * scale  # bf16 keeps ~3 significant digits
    ort_int8 = load_session(models.backbone_int8, "onnxruntime").run(batch)
    ov_int8 = load_session(models.backbone_int8, "openvino", precision="int8").run(batch)
    assert np.abs(ov_int8 - ort_int8).max() < 0.02 * scale


def test_openvino_threads_and_hint_are_applied(models):
    session = load_session(models.backbone_xml, "openvino", threads=1, precision="fp32")
    compiled = session._compiled
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


def test_timm_model_on_both_runtimes(tmp_path):
    """A real architecture (depthwise convs, batch norm, hard-swish, SE) exported by torch."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0).eval()
    path = tmp_path / "mnv3.onnx"
    torch.onnx.export(model, torch.randn(2, 3, 64, 64), str(path), input_names=["images"],
                      output_names=["embedding"], dynamic_axes={"images": {0: "N"}, "embedding": {0: "N"}},
                      opset_version=17, dynamo=False)
    x = np.random.default_rng(1).standard_normal((5, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    for runtime in ("onnxruntime", "openvino"):
        session = load_session(path, runtime, threads=2)
        assert session.precision_executed == "fp32"
        np.testing.assert_allclose(session.run(x), reference, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(session.run(x[2:3]), reference[2:3], rtol=1e-4, atol=1e-4)


def test_bad_requests_fail_with_clear_errors(models, tmp_path):
    with pytest.raises(ConfigError, match="bf16"):
        load_session(models.backbone, "onnxruntime", precision="bf16")
    with pytest.raises(ConfigError, match="cannot read .xml"):
        load_session(models.backbone_xml, "onnxruntime")
    with pytest.raises(ConfigError, match="unknown precision"):
        load_session(models.backbone, "onnxruntime", precision="int4")
    with pytest.raises(ConfigError, match="threads"):
        load_session(models.backbone, "onnxruntime", threads=0)
    with pytest.raises(ConfigError, match="no such model file"):
        load_session(tmp_path / "missing.onnx", "onnxruntime")
    with pytest.raises(ConfigError, match="not available"):
        load_session(models.backbone, "openvino", device="NPU9")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(models.backbone.read_bytes()[:500])
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(BundleError, match="cannot"):
            load_session(broken, runtime)


@pytest.mark.parametrize("runtime,package", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_missing_runtime_says_what_to_install(models, monkeypatch, runtime, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(RuntimeUnavailableError, match="pip install"):
        load_session(models.backbone, runtime)


def test_onnxruntime_loads_without_torch_where_torch_is_installed():
    """onnxruntime-training's start-up check imports torch (seconds per device command on a
    workstation install); edgetl's import skips it, and torch and the training API still load."""
    import subprocess

    pytest.importorskip("torch")
    code = ("import sys\n"
            "from edgetl.runtimes.ort import import_onnxruntime\n"
            "ort = import_onnxruntime()\n"
            "assert 'torch' not in sys.modules and ort.InferenceSession, sorted(sys.modules)\n"
            "from edgetl.device.learn.ort_shim import training_api\n"
            "assert training_api().CheckpointState and 'torch' not in sys.modules\n"
            "import torch\n"
            "assert float(torch.ones(2).sum()) == 2.0\n"
            "from onnxruntime.quantization import QuantType\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
