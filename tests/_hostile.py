"""Helpers of the hostile-input tests (tests/test_hostile*.py): the CLI run in this process
with its output checked for the one-line contract, a child Python under a memory limit, and
a tiny real text bundle (a WordLevel tokenizer, a mean-of-embeddings backbone, a head;
torch-free, built in a second) for the text readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgetl.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, argv: list[str]) -> tuple[int, str, list[str]]:
    """``edgetl ARGV`` in this process: (exit code, stdout, stderr lines). An exception
    escaping ``main`` fails the test: that is a traceback for the user."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert isinstance(code, int)
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def refused(capsys, argv: list, needle: str) -> str:
    """``edgetl ARGV`` fails with exactly one error line holding ``needle`` (warnings aside)."""
    code, _, lines = run_cli(capsys, argv)
    errors = [line for line in lines if not line.startswith("edgetl: warning")]
    assert code != 0, lines
    assert len(errors) == 1 and needle in errors[0], lines
    return errors[0]


def limited(code: str, *args: str, mem_mb: int = 768, timeout: float = 60, stdin=None,
            fsize: int | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python limited to ``mem_mb`` of address space (and ``fsize`` bytes
    per written file: a full disk, for real), stdin from ``stdin`` (a file object or None)."""
    prelude = ("import resource, signal\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({mem_mb << 20}, {mem_mb << 20}))\n")
    if fsize is not None:  # writes past it fail with EFBIG instead of killing the process
        prelude += (f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))\n"
                    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "EDGETL_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL)


# --- a tiny real text bundle ----------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "good", "great", "fine", "bad", "awful", "poor", "film", "the"]
TEXT_FEATURES = 8
TEXT_LABELS = ("neg", "pos")


def _tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(str(path))
    return path


def _text_backbone(path: Path) -> Path:
    """input_ids, attention_mask [N, L] -> the masked mean of a fixed embedding table [N, F]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.zeros((len(VOCAB), TEXT_FEATURES), np.float32)
    for i, w in enumerate(VOCAB):
        table[i, i % TEXT_FEATURES] = 1.0 if w in ("good", "great", "fine") else 0.5
        table[i, (i + 3) % TEXT_FEATURES] = -1.0 if w in ("bad", "awful", "poor") else 0.25
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["e"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceSum", ["em", "axis1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["n"], keepdims=0),
        helper.make_node("Max", ["n", "one"], ["n1"]),
        helper.make_node("Div", ["s", "n1"], ["embedding"]),
    ]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    graph = helper.make_graph(
        nodes, "text_backbone",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "L"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "L"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", TEXT_FEATURES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    model.metadata_props.add(key="edgetl.modality", value="text")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_text_bundle(out: Path) -> Path:
    """A text bundle as ``edgetl package`` lays one out (tokenizer artifact, hashed files,
    the head's metadata agreeing with the manifest), written by hand in well under a second."""
    from edgetl.core.files import sha256_file
    from edgetl.core.targets import Target
    from edgetl.device.learn import make_head_onnx

    v1 = out / "v1"
    v1.mkdir(parents=True)
    tok = _tokenizer(v1 / "tokenizer.json")
    _text_backbone(v1 / "backbone.onnx")
    W = np.zeros((2, TEXT_FEATURES), np.float32)
    W[1] = 1.0
    W[0] = -1.0
    spec = {"max_length": 32}
    make_head_onnx(W, np.zeros(2, np.float32), TEXT_LABELS, v1 / "head.onnx", metadata={
        "edgetl.preprocess": json.dumps(spec), "edgetl.modality": "text",
        "edgetl.artifacts": json.dumps({"tokenizer": sha256_file(tok)})})
    files = {p.relative_to(out).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(v1.iterdir())}
    target = Target(name="test-text", runtime="onnxruntime", precision="fp32", threads=1, batch_size=8,
                    latency_budget_ms=100.0, memory_budget_mb=1000.0, description="hostile tests").to_dict()
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    manifest = {
        "format_version": 1, "version": 1, "created": now, "labels": list(TEXT_LABELS), "modality": "text",
        "preprocess": spec, "num_features": TEXT_FEATURES, "target": target, "runtime": "onnxruntime",
        "precision": "fp32", "models": {"backbone": "v1/backbone.onnx", "head": "v1/head.onnx"},
        "artifacts": {"tokenizer": "v1/tokenizer.json"}, "training": None, "memory": None, "adapter": None,
        "files": files, "onnx": {"ir_version": 10, "opset": 17}, "versions": {}, "accuracy": {},
        "history": [{"version": 1, "event": "package", "time": now}],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


# --- folder trees deeper than Python's recursion ----------------------------------------------------

def make_deep(base: Path, depth: int, leaf: str, data: bytes) -> None:
    """``base/d/d/.../d/LEAF`` (``depth`` folders), made through directory descriptors: no
    path longer than one name is ever passed to the system."""
    fd = os.open(base, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = below
        out = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def remove_deep(base: Path) -> None:
    """Remove what :func:`make_deep` made under ``base``, bottom up, without recursion:
    ``shutil.rmtree`` recurses per level and fails on such a tree (pytest's clean-up of old
    temporary folders included, in every later session of every user of the machine)."""
    fd = os.open(base, os.O_RDONLY)
    depth = 0
    try:
        while "d" in os.listdir(fd):
            below = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = below
            depth += 1
        for _ in range(depth):
            for name in os.listdir(fd):
                os.unlink(name, dir_fd=fd)
            above = os.open("..", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = above
            os.rmdir("d", dir_fd=fd)
    finally:
        os.close(fd)
