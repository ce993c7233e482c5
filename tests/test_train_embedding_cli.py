"""`edgetl train`'s embedding options from the command line: --embed-with, --no-cache,
--cache-dir and --workers reach the embedding path and show in run.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main


@pytest.fixture(scope="module")
def small(digits_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    for c in "012":
        (root / c).mkdir()
        for p in sorted((digits_dir / c).iterdir())[:8]:
            shutil.copy(p, root / c / p.name)
    return root


def _train(capsys, data: Path, out: Path, *options: str) -> dict:
    code = main(["train", str(data), "--out", str(out), "--image-size", "64", *options])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    return json.loads((out / "run.json").read_text())


def _embedding(run: dict) -> dict:
    return run["metrics"]["embedding"]


def test_embedding_options_reach_the_embedding_path(capsys, small, tmp_path):
    cache = tmp_path / "cache"
    torch_run = _embedding(_train(capsys, small, tmp_path / "t", "--embed-with", "torch", "--no-cache", "--workers", "1"))
    assert torch_run["engine"] == "torch" and torch_run["cache"] is None and torch_run["workers"] == 1
    assert torch_run["computed"] == torch_run["images"] == 24 and not cache.exists()

    first = _train(capsys, small, tmp_path / "o1", "--embed-with", "onnxruntime", "--cache-dir", str(cache), "--workers", "2")
    e1 = _embedding(first)
    assert e1["engine"] == "onnxruntime" and e1["workers"] == 2 and e1["computed"] == 24
    assert Path(e1["cache"]["path"]).resolve() == cache.resolve() and e1["cache"]["bytes"] > 0

    second = _train(capsys, small, tmp_path / "o2", "--embed-with", "onnxruntime", "--cache-dir", str(cache))
    e2 = _embedding(second)
    assert e2["cached"] == 24 and e2["computed"] == 0
    # the cached embeddings are the computed ones: the same solve, the same head
    assert second["metrics"]["probe"] == first["metrics"]["probe"]
    import torch

    s1, s2 = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("o1", "o2"))
    heads = [k for k in s1 if k.startswith("head.")]
    assert heads
    for k in heads:
        np.testing.assert_array_equal(s1[k].numpy(), s2[k].numpy())

    # a third run in a fresh process: every row cached, so the backbone is never built (nor timm imported)
    code = ("import sys; from edgetl.cli import main; "
            f"code = main(['train', {str(small)!r}, '--out', {str(tmp_path / 'o3')!r}, '--image-size', '64', "
            f"'--cache-dir', {str(cache)!r}]); print('timm' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "EDGETL_NO_PROGRESS": "1"})
    assert done.returncode == 0 and done.stdout.split()[-1] == "False", done.stderr[-2000:]
    s3 = torch.load(tmp_path / "o3" / "model.pt", weights_only=True)
    assert all(torch.equal(s1[k], s3[k]) for k in heads)


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "0"], "--workers"),
    (["--embed-with", "tpu"], "--embed-with"),
    (["--cache-dir"], "--cache-dir"),
])
def test_bad_embedding_options_are_one_line(capsys, small, tmp_path, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(small), "--out", str(tmp_path / "r"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err.splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "r").exists()
