"""The pure parts of `make test-arm` (scripts/test_arm.sh needs root and QEMU; docs/arm.md): the
/proc/cpuinfo rendered for the emulated CPU, the x86 reference's requirements, and the report's
verdicts (the text agreement bar, the doctor BUNDLE skip, the rollback check, the OpenVINO gap)."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _module("arm_cpu_probe")
helper = _module("arm_helper")

A72 = {"features": ["fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"], "implementer": "0x41",
       "variant": "0x0", "part": "0xd08", "revision": 3}
A76 = dict(A72, features=A72["features"] + ["atomics", "fphp", "asimdhp", "asimddp"], part="0xd0b")


def test_cpuinfo_reads_like_an_arm64_kernel():
    text = probe.cpuinfo(A72, cores=4)
    assert text.count("processor\t:") == 4
    assert "Features\t: fp asimd aes pmull sha1 sha2 crc32 cpuid\n" in text
    assert "CPU part\t: 0xd08\n" in text and "CPU implementer\t: 0x41\n" in text


def test_hwcap_bits_decode_to_kernel_names():
    # Cortex-A72 and Cortex-A76 as QEMU 7.2 reports them (AT_HWCAP)
    assert probe._bits(0x8FB, probe.HWCAP) == A72["features"]
    assert {"asimddp", "asimdhp", "fphp"} <= set(probe._bits(0x119FFB, probe.HWCAP))


def test_x86_requirements_pin_the_pis_versions(tmp_path):
    wheel = tmp_path / "edgetl-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("edgetl-0.1.0.dist-info/METADATA", "\n".join([
            "Name: edgetl", "Requires-Dist: numpy>=1.24",
            "Requires-Dist: onnxruntime-training-cpu==1.19.2; platform_machine == 'x86_64'",
            "Requires-Dist: onnxruntime>=1.20; platform_machine != 'x86_64'",
            "Requires-Dist: rich>=13", "Requires-Dist: torch==2.14.1; extra == 'train'"]))
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("numpy==2.4.6\nonnxruntime==1.32.0\nedgetl @ file:///tmp/x.whl\n")
    assert helper.x86_requirements(wheel, freeze) == ["numpy==2.4.6", "rich>=13", "onnxruntime==1.32.0"]


def _steps(tmp_path: Path, rows: list[tuple]) -> Path:
    """steps.jsonl as scripts/test_arm.sh writes it; each row: (cpu, step, rc, stdout JSON, status)."""
    lines = []
    for cpu, step, rc, out, status in rows:
        folder = tmp_path / "out" / cpu
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{step}.json").write_text(json.dumps(out))
        (folder / f"{step}.err").write_text("edgetl: boom\n" if rc else "")
        lines.append(json.dumps({"cpu": cpu, "step": step, "rc": rc, "seconds": 1.0, "argv": [],
                                 "stdout": str(folder / f"{step}.json"), "stderr": str(folder / f"{step}.err"),
                                 "status": status, "note": None}))
    for cpu, features in (("cortex-a72", A72), ("cortex-a76", A76)):
        (tmp_path / "out" / cpu).mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / cpu / "cpu.json").write_text(json.dumps(features))
    path = tmp_path / "steps.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _reviews(labels: str) -> list[dict]:
    return [{"file": f"test.csv:{i + 2}", "label": "fresh" if c == "f" else "rotten", "error": None}
            for i, c in enumerate(labels)]


@pytest.mark.parametrize("changed, ok", [(2, True), (3, False)])
def test_text_agreement_bar_is_98_percent(tmp_path, changed, ok):
    x86 = "f" * 100
    arm = "r" * changed + "f" * (100 - changed)
    steps = _steps(tmp_path, [("x86-64", "text-predict", 0, _reviews(x86), None),
                              ("cortex-a72", "text-predict", 0, _reviews(arm), None)])
    assert helper.report(steps, tmp_path / "summary.json", None, None, tmp_path / "out", None) == (0 if ok else 1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"][1]["x86"]["agreement"] == pytest.approx(1 - changed / 100)


def test_skipped_doctor_bundle_and_known_openvino_gap_pass_but_a_regression_fails(tmp_path):
    gap = {"openvino": "x", "capabilities": [], "u8_input": "ok", "i8_input": "failed: object is not initialized"}
    steps = _steps(tmp_path, [
        ("cortex-a72", "doctor-bundle", 2, None, "SKIPPED"),
        ("cortex-a72", "openvino-int8", 0, gap, None),  # no fp16 on a Pi 4: the known gap
        ("cortex-a76", "openvino-int8", 0, gap, None),  # fp16 there: a regression
    ])
    assert helper.report(steps, tmp_path / "summary.json", None, None, tmp_path / "out", None) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["SKIPPED", "known gap", "FAILED"]
    assert summary["failures"] == ["cortex-a76 openvino-int8: i8-input conv failed on a CPU with fp16: "
                                   "failed: object is not initialized"]


def test_rollback_must_restore_the_predictions(tmp_path):
    before = [{"file": f"/w/test-old/3/{i}.png", "label": "3", "error": None} for i in range(3)]
    after = [dict(r, label="5") if i == 0 else r for i, r in enumerate(before)]
    steps = _steps(tmp_path, [("cortex-a72", "predict", 0, before, None),
                              ("cortex-a72", "predict-rolled-back", 0, after, None),
                              ("cortex-a72", "rollback", 2, None, None)])
    assert helper.report(steps, tmp_path / "summary.json", None, None, tmp_path / "out", None) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["failures"] == [
        "cortex-a72 predict-rolled-back: labels differ from the bundle's before retrain",
        "cortex-a72 rollback: exit 2: edgetl: boom"]
