"""The command line on the workstation side: help, JSON shapes, and every user mistake
ends in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgetl.cli import COMMANDS, build_parser, main


def _one_line_error(capsys, code, argv, needle):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("edgetl: warning")]
    assert len(lines) == 1 and needle in lines[0], err
    return lines[0]


def test_every_command_is_registered_and_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "usage:" in text and len(p.description or "") > 20, name


def test_help_runs_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "edgetl.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "retrain" in out.stdout
    assert out.stderr == ""


@pytest.fixture
def tiny(tmp_path, digits_dir):
    root = tmp_path / "data"
    for cls in ("0", "1", "2"):
        (root / cls).mkdir(parents=True)
        for p in sorted((digits_dir / cls).iterdir())[:6]:
            shutil.copy(p, root / cls / p.name)
    return root


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: shutil.rmtree(d), "no such folder"),
    (lambda d: [shutil.rmtree(d / c) for c in ("1", "2")], "need at least 2"),
    (lambda d: (d / "3").mkdir(), "no readable images"),
])
def test_train_bad_data(capsys, tmp_path, tiny, mutate, needle):
    mutate(tiny)
    _one_line_error(capsys, 2, ["train", str(tiny), "--out", str(tmp_path / "run")], needle)
    assert not (tmp_path / "run").exists()


def test_train_strict_rejects_corrupt_image(capsys, tmp_path, tiny):
    (tiny / "1" / "bad.png").write_bytes(b"not a png at all")
    _one_line_error(capsys, 2, ["train", str(tiny), "--out", str(tmp_path / "run"), "--strict"], "bad.png")


@pytest.mark.parametrize("argv, needle", [
    (["--strategy", "magic"], "invalid choice"),
    (["--epochs", "0"], "epochs from 1 to"),
    (["--unfreeze", "some"], "'all'"),
    (["--val-split", "2"], "fraction"),
])
def test_train_bad_options(capsys, tmp_path, tiny, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(tiny), "--out", str(tmp_path / "run"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_train_refuses_to_overwrite(capsys, tmp_path, tiny):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line_error(capsys, 2, ["train", str(tiny), "--out", str(out)], "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_train_cli_json_and_corrupt_file_warning(capsys, tmp_path, tiny):
    (tiny / "1" / "bad.png").write_bytes(b"not a png at all")
    code = main(["train", str(tiny), "--out", str(tmp_path / "run"), "--image-size", "32", "--epochs", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    metrics = json.loads(captured.out)
    assert metrics["skipped_files"] == 1 and 0 <= metrics["val_accuracy"] <= 1
    assert "skipped 1 unreadable" in captured.err and "Traceback" not in captured.err


def test_evaluate_run_json_and_plot(capsys, probe_run, digits_dir, tmp_path):
    plot = tmp_path / "confusion.png"
    assert main(["evaluate", str(probe_run), str(digits_dir), "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 1000 and set(report["per_class"]) == {str(d) for d in range(10)}
    assert report["accuracy"] > 0.9
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_unknown_class(capsys, probe_run, tmp_path, tiny):
    (tiny / "cat").mkdir()
    shutil.copy(next((tiny / "0").iterdir()), tiny / "cat" / "x.png")
    _one_line_error(capsys, 2, ["evaluate", str(probe_run), str(tiny)], "cat")
