"""What the repository may hold: no large binary files (a 90 MB ONNX dump was once committed
and removed; it stays in every clone's history), and only the few data files that belong.

Checked over what git would commit: the index (tracked and staged files, at the size staged)
and untracked files that .gitignore does not exclude (what `git add -A` would pick up). Skipped
where this is not a git checkout (an sdist, an installed copy)."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MAX_FILE_BYTES = 512 * 1024  # the largest file today is ~57 KB (a JSON of results)
# Model weights and tensors never belong in the repository, however small they start: tests and
# the demo make them at run time from weights that ship in packages.
MODEL_SUFFIXES = (".onnx", ".onnx.data", ".data", ".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".npz", ".npy",
                  ".tflite", ".pb", ".h5", ".pkl", ".pickle")
MAX_MODEL_BYTES = 64 * 1024
# The legitimate larger files: data that ships inside the package (the NER task's silver
# review sentences, ~0.56 MB gzip), each pattern with its own limit.
ALLOWED = {
    "edgetl/tasks/*/data/*.jsonl.gz": 1024 * 1024,
    "edgetl/tasks/*/data/*.json": 64 * 1024,
}
MAX_TOTAL_BYTES = 16 * 1024 * 1024  # everything together (today ~2.3 MB)


def _git(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], input=stdin, capture_output=True, text=True, check=True,
                          timeout=60).stdout


def _files() -> dict[str, int]:
    """path -> bytes, for everything git would commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        top = _git("rev-parse", "--show-toplevel").strip()
    except (subprocess.CalledProcessError, OSError):
        pytest.skip("not a git checkout")
    if Path(top).resolve() != REPO:
        pytest.skip(f"the tests are not at the top of their git checkout ({top})")
    sizes: dict[str, int] = {}
    staged = _git("ls-files", "--stage", "-z")  # "mode hash stage\tpath" NUL-separated
    entries = [e.split("\t", 1) for e in staged.split("\0") if e]
    if entries:
        blobs = "\n".join(meta.split()[1] for meta, _ in entries) + "\n"
        out = _git("cat-file", "--batch-check=%(objectsize)", stdin=blobs).split()
        for (meta, path), size in zip(entries, out):
            if meta.split()[0] != "160000":  # a submodule's commit, not a file
                sizes[path] = int(size)
    for path in filter(None, _git("ls-files", "--others", "--exclude-standard", "-z").split("\0")):
        p = REPO / path
        if p.is_file() and not p.is_symlink():
            sizes[path] = p.stat().st_size
    return sizes


def _limit(path: str) -> tuple[int, str]:
    for pattern, limit in ALLOWED.items():
        if fnmatch.fnmatch(path, pattern):
            return limit, f"allowed as {pattern}"
    if path.lower().endswith(MODEL_SUFFIXES):
        return MAX_MODEL_BYTES, "model weights and tensors are made at run time, never committed"
    return MAX_FILE_BYTES, "large files make every clone heavier forever"


def test_no_large_files():
    files = _files()
    too_big = [f"{path}: {size / 1024:.0f} KiB > {limit / 1024:.0f} KiB ({why})"
               for path, size in sorted(files.items()) for limit, why in [_limit(path)] if size > limit]
    assert not too_big, ("files too large to commit (remove them, or add them to .gitignore; data that must ship "
                         "goes in ALLOWED with a reason):\n  " + "\n  ".join(too_big))
    total = sum(files.values())
    assert total <= MAX_TOTAL_BYTES, f"the repository's files add up to {total / 2**20:.1f} MiB"


def test_limits_catch_what_they_are_for():
    """The rules themselves: the ONNX dump that was once committed fails, the NER data passes."""
    assert _limit("sym_shape_infer_temp.onnx")[0] < 90 * 2**20
    assert _limit("tests/tiny.onnx")[0] == MAX_MODEL_BYTES
    assert _limit("edgetl/tasks/token_classification/data/reviews_ner.jsonl.gz")[0] >= 600 * 1024
    assert _limit("benchmarks/results/readme.json")[0] == MAX_FILE_BYTES
    assert _limit("edgetl/tasks/token_classification/model.bin")[0] == MAX_MODEL_BYTES
