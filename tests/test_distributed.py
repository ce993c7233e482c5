"""torch.distributed: the same `edgetl train` as two processes (gloo on the CPU), launched by
torchrun itself and by `edgetl train --nproc-per-node 2`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory) -> Path:
    from edgetl.modalities.image import write_digits

    return write_digits(tmp_path_factory.mktemp("ddp") / "data", per_class=40, seed=0)


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "EDGETL_NO_PROGRESS": "1", "EDGETL_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}


def _edgetl(argv: list[str], tmp: Path, torchrun: bool = False) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"] if torchrun \
        else [sys.executable, "-m"]
    return subprocess.run([*head, "edgetl.cli", *argv], env=_env(tmp), cwd=tmp, capture_output=True, text=True,
                          timeout=600)


def test_linear_probe_under_torchrun_equals_one_process(small_digits, tmp_path):
    """Embedding is sharded over the two ranks and gathered, the head solved once: the same
    strength, the same held-out accuracy and the same head as one process."""
    common = ["train", str(small_digits), "--image-size", "64", "--no-cache", "--json"]
    one = _edgetl([*common, "--out", "one"], tmp_path)
    two = _edgetl([*common, "--out", "two"], tmp_path, torchrun=True)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # only rank 0 prints
    assert b["distributed"] == {"world_size": 2, "backend": "gloo"} and b["embedding"]["images"] == 400
    assert a["probe"]["C"] == b["probe"]["C"] and a["val_accuracy"] == b["val_accuracy"]
    wa = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["head.weight"]
    wb = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["head.weight"]
    assert np.allclose(wa, wb, atol=1e-3 * float(wa.abs().max()))
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # rank 1 wrote nothing, --no-cache


def test_finetune_with_nproc_per_node(small_digits, tmp_path):
    """DDP fine-tuning of the last block: every validation image counted once over the ranks
    (checked in the loop), the RUN written by rank 0 and usable by export."""
    out = _edgetl(["train", str(small_digits), "--out", "ft", "--strategy", "finetune", "--unfreeze", "1",
                   "--epochs", "2", "--image-size", "64", "--json", "--nproc-per-node", "2",
                   "--batchnorm", "update"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout)
    assert m["distributed"] == {"world_size": 2, "backend": "gloo"} and m["epochs_run"] == 2
    assert m["val_accuracy"] > 0.5, m["val_accuracy"]  # 10 classes: chance is 0.1
    info = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert info["distributed"]["world_size"] == 2 and len(info["split"]["val"]) == m["n_val"]
    assert info["config"]["batchnorm"] == "update"  # the unfrozen block's BatchNorm learnt batch statistics


def test_launch_options_are_checked_before_launching(tmp_path, small_digits):
    bad = _edgetl(["train", str(small_digits), "--out", "x", "--nproc-per-node", "2", "--nnodes", "2"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--rdzv-endpoint" in bad.stderr
    bad = _edgetl(["train", str(small_digits), "--out", "x", "--nproc-per-node", "2", "--epochs", "0"], tmp_path)
    assert bad.returncode == 2 and "positive" in bad.stderr and "Traceback" not in bad.stderr
    bad = _edgetl(["train", str(small_digits), "--out", "x", "--strategy", "finetune", "--batchnorm", "train"], tmp_path)
    assert bad.returncode == 2 and "frozen" in bad.stderr and "update" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
