"""Frozen-backbone embeddings: the on-disk cache (content keys, atomic shards, concurrent
writers, corruption, bounded size) and the ONNX Runtime engine against PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl.core.embed_cache import EmbeddingCache, cache_size, file_digest

REPO = Path(__file__).resolve().parents[1]


def _digests(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = [rng.bytes(32) for _ in range(n)]
    out[0] = out[0][:31] + b"\x00"  # trailing NUL bytes must survive (numpy's S32 would drop them)
    out[1] = out[1][:30] + b"\x00\x00"
    return out


def test_rows_come_back_for_their_keys_only(tmp_path):
    cache = EmbeddingCache(tmp_path, "k1")
    keys = _digests(50)
    rows = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    cache.add(keys[:30], rows[:30])
    got, found = cache.lookup(keys)
    assert found[:30].all() and not found[30:].any()
    np.testing.assert_array_equal(got[:30], rows[:30])
    assert not EmbeddingCache(tmp_path, "k2").lookup(keys)[1].any()  # another model, another key
    assert not cache.lookup(keys, width=9)[1].any()  # rows of another width are not used


def test_same_bytes_same_digest(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"x" * 1000)
    assert file_digest(a) == file_digest(b) and len(file_digest(a)) == 32
    b.write_bytes(b"x" * 999 + b"y")
    assert file_digest(a) != file_digest(b)


def test_corrupt_shard_is_ignored_and_removed(tmp_path):
    cache = EmbeddingCache(tmp_path, "k")
    keys = _digests(10)
    cache.add(keys, np.ones((10, 4), np.float32))
    shard = next(cache.dir.glob("*.emb.npy"))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, as a full disk might leave it
    assert not cache.lookup(keys)[1].any()
    assert not list(cache.dir.glob("*.npy"))
    cache.add(keys, np.ones((10, 4), np.float32))
    assert cache.lookup(keys)[1].all()


def test_a_killed_writers_leftovers_are_collected(tmp_path):
    cache = EmbeddingCache(tmp_path, "k")
    cache.dir.mkdir(parents=True)
    stale = cache.dir / ".tmp-dead.emb.npy"
    stale.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = cache.dir / ".tmp-alive.emb.npy"  # a writer still at work: left alone
    fresh.write_bytes(b"partial")
    cache.add(_digests(3), np.zeros((3, 2), np.float32))
    assert not stale.exists() and fresh.exists()
    assert cache.lookup(_digests(3))[1].all()  # temporary files are never read as shards


def test_size_stays_under_the_bound_least_recently_used_first(tmp_path):
    row_bytes = 256 * 4
    cache = EmbeddingCache(tmp_path, "k", max_bytes=3 * (100 * row_bytes + 100 * 64 + 400))  # keys: digest + row digest
    batches = [_digests(100, seed) for seed in range(5)]
    for i, keys in enumerate(batches):
        cache.add(keys, np.full((100, 256), i, np.float32))
        if i == 1:
            time.sleep(0.05)
            assert cache.lookup(batches[0])[1].all()  # touched: now more recent than batch 1
        time.sleep(0.05)
    assert cache_size(tmp_path) <= cache.max_bytes
    assert cache.lookup(batches[4])[1].all() and cache.lookup(batches[3])[1].all()
    assert not cache.lookup(batches[1])[1].any()


_WRITER = """
import sys, numpy as np
from edgetl.core.embed_cache import EmbeddingCache
rng = np.random.default_rng(int(sys.argv[2]))
keys = [np.random.default_rng(i).bytes(32) for i in range(400)]
cache = EmbeddingCache(sys.argv[1], "k")
for _ in range(20):
    idx = rng.choice(400, 100, replace=False)
    cache.add([keys[i] for i in idx], np.repeat(idx[:, None], 16, 1).astype(np.float32))
    got, found = cache.lookup(keys)
    assert (got[found] == np.arange(400)[found][:, None]).all()
print("ok")
"""


def test_concurrent_writers_and_readers_never_see_a_partial_row(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    children = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(s)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in range(3)]
    for c in children:
        out, err = c.communicate(timeout=120)
        assert c.returncode == 0 and out.strip() == "ok", err
    keys = [np.random.default_rng(i).bytes(32) for i in range(400)]
    got, found = EmbeddingCache(tmp_path, "k").lookup(keys)
    assert found.mean() > 0.9 and (got[found] == np.arange(400)[found][:, None]).all()
    assert not list((tmp_path / "k").glob(".tmp-*"))


# --------------------------------------------------------------------------- the engines


@pytest.fixture(scope="module")
def sample(digits_dir) -> list[Path]:
    return [sorted((digits_dir / str(c)).iterdir())[i] for c in range(10) for i in range(3)]


def test_onnxruntime_embeddings_equal_pytorch(sample, tmp_path):
    import torch

    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.embedding import EmbedOptions, embed_paths

    bb = create_backbone("efficientnet_lite0")
    spec = bb.preprocess.with_input_size(96)
    ref, rep_t = embed_paths(bb.module, sample, spec, torch.device("cpu"), EmbedOptions(engine="torch", cache=False))
    got, rep_o = embed_paths(bb.module, sample, spec, torch.device("cpu"),
                             EmbedOptions(cache_dir=str(tmp_path), batch_size=8))
    assert rep_t["engine"] == "torch" and rep_o["engine"] == "onnxruntime" and rep_o["computed"] == len(sample)
    assert rep_o["rows"] == "memory-mapped"  # streamed into an unnamed scratch file beside the cache
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary shard or scratch file left
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    again, rep = embed_paths(bb.module, sample, spec, torch.device("cpu"), EmbedOptions(cache_dir=str(tmp_path)))
    assert rep["cached"] == len(sample) and rep["computed"] == 0
    np.testing.assert_array_equal(again, got)
    moved = spec.with_input_size(64)  # other preprocessing: nothing reused
    assert embed_paths(bb.module, sample[:4], moved, torch.device("cpu"),
                       EmbedOptions(cache_dir=str(tmp_path)))[1]["cached"] == 0


def test_a_backbone_that_does_not_export_falls_back_to_pytorch_and_says_why(sample):
    import torch

    from edgetl.errors import ConfigError
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.embedding import EmbedOptions, embed_paths

    class Untraceable(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if torch.jit.is_tracing() or torch.compiler.is_compiling():
                raise RuntimeError("data-dependent control flow")
            return self.inner(x)

    bb = create_backbone("efficientnet_lite0")
    spec = bb.preprocess.with_input_size(64)
    z, rep = embed_paths(Untraceable(bb.module), sample[:4], spec, torch.device("cpu"), EmbedOptions(cache=False))
    assert rep["engine"] == "torch" and "did not export" in rep["why"] and z.shape == (4, bb.num_features)
    with pytest.raises(ConfigError, match="does not export"):
        embed_paths(Untraceable(bb.module), sample[:4], spec, torch.device("cpu"),
                    EmbedOptions(engine="onnxruntime", cache=False))
