"""`edgetl build` end to end within the demo in its reduced mode, and how a build names the stage it stopped at."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgetl.cli import main


def test_build_names_the_failing_stage(digits_dir, tmp_path, capsys):
    # Calibration data with no readable image stops the build at the quantize stage, before
    # packaging (a budget no int8 model meets stops it there too: test_quantize's impossible budget).
    calib = tmp_path / "calib" / "3"
    calib.mkdir(parents=True)
    (calib / "broken.png").write_bytes(b"not a png")
    code = main(["build", str(digits_dir), "--target", "x86-ort-int8", "--out", str(tmp_path / "b"),
                 "--image-size", "64", "--no-bench", "--exporter", "torchscript", "--calib", str(calib.parent)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "build stopped at stage 3/4 (quantize)" in last and "no readable images" in last, last
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (out / "bundle" / "manifest.json").is_file() and (out / "summary.json").is_file()
    # `edgetl build` end to end (the demo's step 2): every stage, every file, the figures it reports
    build = summary["build"]
    assert [s["stage"] for s in build["stages"]] == ["train", "export", "quantize", "package", "bench"]
    for rel in ("model.pt", "run.json", "history.csv", "curves.png", "onnx/backbone.onnx", "onnx/head.onnx",
                "onnx/model.onnx", "onnx/backbone.int8.onnx", "openvino/backbone.xml"):
        assert (out / "run" / rel).is_file(), rel
    info = json.loads((out / "run" / "run.json").read_text())
    assert info["export"]["validation"]["passed"] and info["quantize"]["passed"]
    built = build["summary"]
    assert built["precision_executed"] == "int8" and built["accuracy_deployed"] >= built["accuracy_fp32"] - 0.02
    assert built["p50_ms"] > 0 and built["torch_p50_ms"] > built["p50_ms"] and built["speedup_vs_torch"] > 1
    assert built["p90_pass"] in (True, False)
    assert (out / "retrain.png").is_file() and (out / "bench.json").is_file()
    before, after = summary["test_accuracy"]["before_retrain"], summary["test_accuracy"]["after_retrain"]
    assert before["new"] == 0.0 and after["new"] >= 0.6  # learned on the device from 30 images each
    assert after["old"] >= 0.9 * before["old"]
    assert summary["retrain"]["switched"] and summary["retrain"]["new_classes"] == ["8", "9"]
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["labels"][-2:] == ["8", "9"] and manifest["version"] == 2
    # the text part: real reviews -> int8 text bundle; the device learns plot summaries
    text = summary["text"]
    t_before, t_after = text["test_accuracy"]["before_retrain"], text["test_accuracy"]["after_retrain"]
    assert t_before["new"] == 0.0 and t_after["new"] >= 0.6 and t_before["old"] > 0.6, text["test_accuracy"]
    assert t_after["old"] >= t_before["old"] - 0.05 and text["retrain"]["new_classes"] == ["plot"]
    m = json.loads((out / "text_bundle" / "manifest.json").read_text())
    assert m["modality"] == "text" and m["labels"] == ["fresh", "rotten", "plot"]
    # the text bundle is benchmarked like the image bundle: a latency row next to PyTorch eager
    assert (out / "text_bench.json").is_file()
    t_summary = text["build"]["summary"]
    assert t_summary["p50_ms"] > 0 and t_summary["torch_p50_ms"] > 0, t_summary
    bench_rows = json.loads((out / "text_bench.json").read_text())["results"]
    assert {r["runtime"] for r in bench_rows if r["status"] == "ok"} >= {"torch", "onnxruntime"}
    # the closing note says what each picture shows, with the figures drawn in it
    notes = summary["pictures"]
    assert {"bench.png", "retrain.png", "text_bench.png"} <= set(notes), notes
    assert "linear axis from zero" in notes["bench.png"] and f"{after['new']:.2f}" in notes["retrain.png"]


def test_demo_closing_note_describes_the_pictures():
    """Fast: the note is built from the summary alone; a missing bench gives no figures, not a crash."""
    from edgetl.workstation.demo import pictures

    summary = {"plots": ["o/run/curves.png", "o/retrain.png", "o/bench.png"],
               "build": {"summary": {"p50_ms": 20.0, "torch_p50_ms": 200.0}},
               "test_accuracy": {"before_retrain": {"new": 0.0, "old": 0.96}, "after_retrain": {"new": 0.925, "old": 0.94}}}
    notes = pictures(summary)
    assert set(notes) == {"run/curves.png", "retrain.png", "bench.png"}
    assert "10.0x shorter because it is 10.0x faster" in notes["bench.png"]
    assert "0.00 -> 0.93" in notes["retrain.png"] and "0.96 -> 0.94" in notes["retrain.png"]
    summary["build"] = {"summary": {"p50_ms": None, "torch_p50_ms": None}}
    assert "ms" not in pictures(summary)["bench.png"].split("of ")[0]


def test_demo_steps_numbered_in_order():
    """The demo prints its steps as "== N." and its --help lists them as "  N ": both 1, 2, 3, ...
    (they once went 1, 2, 3, 4, 6)."""
    import edgetl.commands.demo as command
    import edgetl.workstation.demo as demo

    # the text step is printed from its own function, above run_demo: compare as sets of numbers
    import edgetl.workstation.demo_tasks as tasks  # steps 6 and 7

    source = Path(demo.__file__).read_text() + Path(tasks.__file__).read_text()
    printed = sorted(int(n) for n in re.findall(r'"== (\d+)\.', source))
    listed = [int(n) for n in re.findall(r"^  (\d+) ", command.DESCRIPTION, re.M)]
    assert printed == list(range(1, len(printed) + 1)) and len(printed) >= 5, printed
    assert listed == printed, (listed, printed)
