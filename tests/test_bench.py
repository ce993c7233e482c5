"""edgetl bench: complete and sane rows on real runtimes (not timed: latencies are noisy on a
shared machine), files written, budgets checked, absent runtimes and torch skipped with
reasons. Small real models keep it fast: the hand-made ONNX models of _device_models and
a 32-px efficientnet_lite0 RUN (random init, trained one epoch) for the PyTorch row."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _device_models import tiny_models, write_bundle
from edgetl.benchmarking import MB, RESULT_KEYS, BenchConfig, bench
from edgetl.cli import main

REPO = Path(__file__).resolve().parent.parent
FAST = dict(warmup=2, iterations=20, repeats=1, threads=(1,))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from edgetl.modalities.image import write_digits

    return write_digits(tmp_path_factory.mktemp("bench-data") / "data", per_class=4, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits_dir):
    return tiny_models(tmp_path_factory.mktemp("bench-models"), digits_dir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny) -> Path:
    """A RUN directory holding the hand-made models (no model.pt, no OpenVINO int8 IR)."""
    import shutil

    from edgetl.core.run import write_run_json

    run = tmp_path_factory.mktemp("bench-run") / "run"
    (run / "onnx").mkdir(parents=True)
    (run / "openvino").mkdir()
    shutil.copy(tiny.backbone, run / "onnx" / "backbone.onnx")
    shutil.copy(tiny.backbone_int8, run / "onnx" / "backbone.int8.onnx")
    shutil.copy(tiny.head, run / "onnx" / "head.onnx")
    shutil.copy(tiny.backbone_xml, run / "openvino" / "backbone.xml")
    shutil.copy(tiny.backbone_xml.with_suffix(".bin"), run / "openvino" / "backbone.bin")
    write_run_json(run, {"format": 1, "labels": list(tiny.labels), "backbone": "tiny", "preprocess": tiny.spec.to_dict(),
                         "num_features": 64, "strategy": "linear-probe"})
    return run


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, small_data) -> Path:
    """A real RUN, small and quick: efficientnet_lite0 at 32 px, trained one epoch, exported."""
    from edgetl.workstation.onnx_export import ExportConfig, export
    from edgetl.workstation.training import TrainConfig, train

    run = tmp_path_factory.mktemp("bench-torch") / "run"
    train(small_data, run, TrainConfig(pretrained=False, image_size=32, epochs=1, val_split=0.5))
    export(run, ExportConfig(exporter="torchscript", opset=17, samples=8, validate=False))
    return run


def _sane(row: dict) -> None:
    assert set(RESULT_KEYS) <= set(row)
    assert row["status"] == "ok", row["reason"]
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["mean_ms"] > 0 and row["throughput"] > 0 and row["cold_start_ms"] > 0
    assert row["peak_rss_mb"] > 10
    assert row["size_mb"] == pytest.approx(sum(Path(f).stat().st_size for f in row["files"]) / MB)
    assert row["iterations"] == row["repeats"] * 20 and len(row["p50_ms_repeats"]) == row["repeats"]
    assert row["precision_executed"]


def test_run_rows_complete_and_files_written(tiny, tiny_run, small_data, tmp_path):
    report = bench(tiny_run, BenchConfig(**{**FAST, "batches": (4,)}, runtimes=("torch", "onnxruntime", "openvino"),
                                         data=small_data))
    rows = {(r["runtime"], r["precision"], r["batch"]): r for r in report.results}
    assert set(rows) == {(rt, p, b) for rt, p in [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                  ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
                         for b in (4,)}
    for key, row in rows.items():
        if key[0] == "torch":
            assert row["status"] == "skipped" and "model.pt is missing" in row["reason"]
        elif key[:2] == ("openvino", "int8"):  # the RUN was not quantized for OpenVINO
            assert row["status"] == "skipped" and "edgetl quantize" in row["reason"]
        else:
            _sane(row)
            assert 0.0 <= row["accuracy"] <= 1.0 and row["accuracy_n"] == 40
    # the accuracy is the Predictor's own on the same images (evaluate_folder as the oracle)
    from edgetl.device.evaluation import evaluate_folder
    from edgetl.device.predictor import Predictor

    for rt, prec, backbone in (("onnxruntime", "fp32", "onnx/backbone.onnx"), ("onnxruntime", "int8", "onnx/backbone.int8.onnx")):
        predictor = Predictor.from_files(tiny_run / backbone, tiny_run / "onnx/head.onnx", labels=tiny.labels,
                                         spec=tiny.spec, runtime=rt, precision=prec)
        assert rows[(rt, prec, 4)]["accuracy"] == pytest.approx(evaluate_folder(predictor, small_data).accuracy)
    assert rows[("onnxruntime", "fp32", 4)]["precision_executed"] == "fp32"
    assert rows[("onnxruntime", "int8", 4)]["precision_executed"] == "int8"
    assert rows[("openvino", "fp32", 4)]["precision_executed"] == "fp32"  # f32 pinned, never silently bf16
    assert rows[("openvino", "bf16", 4)]["precision_executed"] in ("bf16", "fp32")  # fp32 on CPUs without bf16
    env = report.environment
    assert env["cpu"] and env["cpu_count"] and "avx512_vnni" in env["cpu_flags"] and env["versions"]["numpy"]

    paths = report.write_json(tmp_path / "b.json"), report.write_csv(tmp_path / "b.csv")
    plot = report.write_plot(tmp_path / "b.png")
    data = json.loads(paths[0].read_text())
    assert set(data) >= {"environment", "results"} and len(data["results"]) == len(rows)
    with open(paths[1]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and set(RESULT_KEYS) <= set(table[0])
    assert plot is not None and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundle_edgetl_and_direct_rows(tiny, tmp_path):
    bundle = write_bundle(tmp_path / "bundle", tiny, runtime="onnxruntime", precision="int8", threads=1, batch_size=1)
    ballast = np.ones(512 * 2**20 // 8)  # the parent's memory must not show in the workers' peak
    report = bench(bundle, BenchConfig(**{**FAST, "repeats": 2}))  # two interleaved passes
    del ballast
    rows = {r["mode"]: r for r in report.results}
    assert rows["edgetl"]["repeats"] == 2
    assert rows["eager"]["status"] == "skipped" and "--run" in rows["eager"]["reason"]
    for mode in ("edgetl", "direct"):
        _sane(rows[mode])
        assert rows[mode]["precision_executed"] == "int8" and rows[mode]["path"] == "backbone+head"
        assert rows[mode]["peak_rss_mb"] < 400  # Linux carries ru_maxrss over fork+exec; VmHWM does not
    assert rows["edgetl"]["target"] == "test-onnxruntime-int8" and rows["edgetl"]["p90_pass"] is True
    assert rows["direct"]["target"] is None  # the budget is the deployed path's


def test_torch_row_and_speedup(torch_run):
    report = bench(torch_run, BenchConfig(**FAST, runtimes=("torch", "onnxruntime"), precisions=("fp32",)))
    rows = {r["runtime"]: r for r in report.results}
    for row in rows.values():
        _sane(row)
    assert rows["torch"]["speedup_vs_torch"] == pytest.approx(1.0)
    ort = rows["onnxruntime"]
    assert ort["speedup_vs_torch"] == pytest.approx(rows["torch"]["p50_ms"] / ort["p50_ms"])


def test_head_only_run_torch_row_counts_its_named_backbone(probe_run):
    """A linear probe's model.pt holds the head alone: the torch row's size counts the
    installed backbone weights it loads with."""
    row = bench(probe_run, BenchConfig(**FAST, runtimes=("torch",), precisions=("fp32",))).results[0]
    _sane(row)
    assert len(row["files"]) == 2 and row["files"][0].endswith("model.pt") and row["size_mb"] > 10


def _target(path: Path, **kw) -> Path:
    fields = {**dict(name="t", runtime="onnxruntime", precision="int8", threads=1, latency_budget_ms=1000.0,
                     memory_budget_mb=4000.0), **kw}
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    return path


def test_check_exits_nonzero_on_budget_miss(tiny, tmp_path, capsys):
    bundle = write_bundle(tmp_path / "bundle", tiny, runtime="onnxruntime", precision="int8", threads=1, batch_size=1)
    tight = _target(tmp_path / "tight.toml", latency_budget_ms=0.001)
    common = ["bench", str(bundle), "--iterations", "10", "--repeats", "1", "--no-direct", "--runtimes", "onnxruntime"]
    out = tmp_path / "r.json"
    assert main([*common, "--target", str(tight), "--check", "--json", str(out)]) == 1
    assert "p90" in capsys.readouterr().err
    row = next(r for r in json.loads(out.read_text())["results"] if r.get("target"))
    assert row["p90_pass"] is False and row["memory_pass"] is True and row["budget_p90_ms"] == 0.001
    assert main([*common, "--target", str(tight)]) == 0  # without --check a miss is only reported
    assert main([*common, "--target", str(_target(tmp_path / "loose.toml")), "--check"]) == 0


def test_target_device_absent_is_skipped_with_reason(tiny, tmp_path):
    bundle = write_bundle(tmp_path / "bundle", tiny, runtime="onnxruntime", precision="int8", threads=1, batch_size=1)
    gpu = _target(tmp_path / "gpu.toml", runtime="openvino", device="GPU")
    report = bench(bundle, BenchConfig(**FAST, targets=(gpu,)))
    row = next(r for r in report.results if r.get("target") == "t")
    assert row["status"] == "skipped" and "GPU" in row["reason"]
    assert report.misses and "skipped" in report.misses[0]  # --check fails: the target was not measured


def test_without_torch_and_openvino(torch_run, tmp_path):
    """The device install: torch absent (and here OpenVINO too). Both rows are skipped, with
    the reason, and the onnxruntime rows still run."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\nsys.modules['openvino'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "EDGETL_NO_PROGRESS": "1"}
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgetl.cli", "bench", str(torch_run), "--runtimes", "torch,onnxruntime,openvino",
         "--precisions", "fp32", "--threads", "1", "--iterations", "5", "--repeats", "1", "--json", str(out),
         "--target", "x86-openvino-fp32", "--check"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # the target could not be measured
    rows = json.loads(out.read_text())["results"]
    by = {(r["runtime"], r.get("target")): r for r in rows}
    assert by[("onnxruntime", None)]["status"] == "ok"
    assert by[("openvino", None)]["status"] == "skipped" and "openvino is not installed" in by[("openvino", None)]["reason"]
    assert by[("openvino", "x86-openvino-fp32")]["status"] == "skipped"
    assert "openvino is not installed" in by[("openvino", "x86-openvino-fp32")]["reason"]
    torch_rows = [r for r in rows if r["runtime"] == "torch"]
    assert torch_rows and all(r["status"] == "skipped" and "torch" in r["reason"] for r in torch_rows)
