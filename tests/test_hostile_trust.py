"""What a hostile input could make edgetl trust, write over or show: a tampered signed bundle
under ``--trust`` whatever else is asked (issue 29, #1), a poisoned embedding cache (#2),
``keygen --force`` over what is not a key file (#3), a manifest's ``num_features`` that the
head does not have (#14), raw bytes and escape sequences echoed to the terminal (#15), and an
image whose compressed data is broken among the training images (#17)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from _device_models import tiny_models, write_bundle
from _hostile import limited, refused, run_cli
from edgetl.cli import build_parser
from edgetl.errors import BundleError


@pytest.fixture(scope="session")
def models(tmp_path_factory, digits_dir):
    return tiny_models(tmp_path_factory.mktemp("tiny_models"), digits_dir)


@pytest.fixture(scope="session")
def image(digits_dir) -> str:
    return str(sorted((digits_dir / "0").iterdir())[0])


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    from edgetl.core.signing import generate_key

    private, public, _ = generate_key(tmp_path_factory.mktemp("keys") / "vendor.key")
    return private, public


@pytest.fixture(scope="session")
def data(tmp_path_factory, digits_dir) -> Path:
    """Three classes, six real digits each."""
    root = tmp_path_factory.mktemp("trust") / "data"
    for c in "012":
        (root / c).mkdir(parents=True)
        for p in sorted((digits_dir / c).iterdir())[:6]:
            shutil.copy(p, root / c / p.name)
    return root


# --- #1: --trust verifies every file, whatever else is asked --------------------------------------

def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a weight's low bit: the model still loads, same size
    path.write_bytes(bytes(raw))


def _other_options(command: str) -> list[list[str]]:
    """Each optional argument of ``command`` given alone (flags; a choice; a bound number),
    from the parser: a new option is tried by being added."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    out = []
    for action in sub._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction) or "--trust" in action.option_strings:
            continue
        opt = action.option_strings[0]
        if action.nargs == 0:
            out.append([opt])
        elif action.choices:
            out += [[opt, str(c)] for c in action.choices]
        elif hasattr(action.type, "lo"):
            out.append([opt, str(action.type.lo if not action.type.lo_open else action.type.hi)])
    return out


def _trust_commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return sorted(name for name, p in sub.items() if any("--trust" in a.option_strings for a in p._actions))


def test_a_flipped_byte_under_trust_is_refused_whatever_else_is_given(capsys, tmp_path, models, data, image, keys):
    """``predict B img --trust k.pub --no-verify`` predicted with a tampered int8 backbone."""
    from edgetl.device.bundle import open_bundle, sign_bundle

    bundle = write_bundle(tmp_path / "b", models, precision="int8")
    sign_bundle(bundle, keys[0])
    assert run_cli(capsys, ["predict", bundle, image, "--trust", keys[1]])[0] == 0  # the control
    _flip(bundle / "v1" / "backbone.int8.onnx")
    with pytest.raises(BundleError, match="backbone.int8.onnx does not match its SHA-256"):
        open_bundle(bundle, verify=False, trust=[keys[1]])  # the API: trust hashes every file
    commands = _trust_commands()
    assert {"predict", "evaluate", "retrain", "adapt"} <= set(commands)
    positional = {"predict": [image], "evaluate": [data], "retrain": [data], "adapt": [data]}
    before = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*"))
    for command in commands:
        for extra in [[], *_other_options(command)]:
            argv = [command, bundle, *positional.get(command, []), "--trust", keys[1], *extra]
            code, _, lines = run_cli(capsys, argv)
            errors = [line for line in lines if not line.startswith("edgetl: warning")]
            assert code != 0 and len(errors) == 1, (argv, lines)
            assert "--no-verify" in errors[0] or "does not match its SHA-256" in errors[0] or \
                "argument" in errors[0], (argv, errors)
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")) == before  # nothing made


# --- #2: a poisoned cache entry is detected, reported, recomputed ----------------------------------

def _shard(cache) -> tuple[Path, Path]:
    keys = next(cache.dir.glob("*.keys.npy"))
    return keys, keys.with_name(keys.name.replace(".keys.npy", ".emb.npy"))


def _poison(kind: str, keys_path: Path, emb_path: Path) -> None:
    keys = np.load(keys_path)
    emb = np.load(emb_path)
    if kind == "shuffle":  # whole key rows (file digest and row digest) moved to other rows
        keys = keys[np.roll(np.arange(len(keys)), 1)]
    elif kind == "sign":  # sign bits of a third of the rows
        emb[: len(emb) // 3] *= -1
    elif kind == "scale":
        emb *= 1e30
    elif kind == "nan":
        emb[1, 0] = np.nan
    elif kind == "one-bit":
        emb.view(np.uint32)[2, 3] ^= 1
    elif kind == "truncate-keys":
        keys = keys[:, :32]
    np.save(keys_path, keys)
    np.save(emb_path, emb)


POISONS = ["shuffle", "sign", "scale", "nan", "one-bit", "truncate-keys"]


@pytest.mark.parametrize("kind", POISONS)
def test_a_poisoned_shard_is_rejected_removed_and_its_rows_wanted_again(tmp_path, kind):
    from edgetl.core.embed_cache import EmbeddingCache

    digests = [np.random.default_rng(i).bytes(32) for i in range(12)]
    rows = np.random.default_rng(0).normal(size=(12, 16)).astype(np.float32)
    cache = EmbeddingCache(tmp_path, "k")
    cache.add(digests, rows)
    _poison(kind, *_shard(cache))
    got, found = cache.lookup(digests)
    assert not found.any() and len(cache.rejected) == 1, (kind, found)
    assert not list(cache.dir.glob("*.npy"))  # removed: the next run cannot trip on it again
    cache.add(digests, rows)
    got, found = EmbeddingCache(tmp_path, "k").lookup(digests)
    assert found.all() and np.array_equal(got, rows)


def test_rows_moved_to_another_key_or_another_file_fail(tmp_path):
    """The digest covers the key (the computation) and the file's digest (the input)."""
    from edgetl.core.embed_cache import EmbeddingCache

    digests = [bytes([i]) * 32 for i in range(4)]
    rows = np.arange(16, dtype=np.float32).reshape(4, 4)
    EmbeddingCache(tmp_path, "model-a").add(digests, rows)
    shutil.copytree(tmp_path / "model-a", tmp_path / "model-b")
    b = EmbeddingCache(tmp_path, "model-b")
    assert not b.lookup(digests)[1].any() and b.rejected
    a = EmbeddingCache(tmp_path, "model-a")
    keys_path, _ = _shard(a)
    keys = np.load(keys_path)
    keys[0, :32] = np.frombuffer(bytes([9]) * 32, np.uint8)  # row 0 claimed for another file
    np.save(keys_path, keys)
    assert not a.lookup([bytes([9]) * 32])[1].any() and a.rejected


def test_non_finite_rows_are_never_cached(tmp_path):
    from edgetl.core.embed_cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "k")
    rows = np.ones((3, 4), np.float32)
    rows[1, 2] = np.inf
    cache.add([bytes([i]) * 32 for i in range(3)], rows)
    assert not list(cache.dir.glob("*.npy")) and not list(cache.dir.glob(".tmp-*"))


def _head(run: Path) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(run / "model.pt", weights_only=True)
    return {k: v.numpy() for k, v in state.items() if k.startswith("head.")}


def _train(capsys, data: Path, out: Path, *options) -> tuple[dict, list[str]]:
    code, _, lines = run_cli(capsys, ["train", data, "--out", out, "--image-size", "64", "--force", *options])
    assert code == 0, lines
    return json.loads((out / "run.json").read_text())["metrics"], lines


@pytest.mark.slow
def test_a_head_trained_through_a_poisoned_cache_equals_the_no_cache_head(capsys, tmp_path, data):
    """Shuffled keys took validation accuracy from 0.95 to 0.28, exit 0; NaN rows blamed the
    backbone and stayed, so every later train failed too."""
    cache = tmp_path / "cache"
    reference, _ = _train(capsys, data, tmp_path / "plain", "--no-cache")
    want = _head(tmp_path / "plain")
    first, _ = _train(capsys, data, tmp_path / "r0", "--cache-dir", cache)
    assert first["embedding"]["computed"] == 18 and all(np.array_equal(want[k], v) for k, v in _head(tmp_path / "r0").items())
    from edgetl.core.embed_cache import EmbeddingCache

    key_dir = next(p for p in cache.iterdir() if p.is_dir())
    for i, kind in enumerate(["shuffle", "nan"], 1):
        _poison(kind, *_shard(EmbeddingCache(cache, key_dir.name)))
        metrics, lines = _train(capsys, data, tmp_path / f"r{i}", "--cache-dir", cache)
        emb = metrics["embedding"]
        assert emb["computed"] == 18 and emb["cached"] == 0 and len(emb["cache"]["rejected"]) == 1, (kind, emb)
        assert any("failed their integrity check" in line for line in lines), lines
        got = _head(tmp_path / f"r{i}")
        assert all(np.array_equal(want[k], got[k]) for k in want), kind
        assert metrics["val_accuracy"] == reference["val_accuracy"]
    again, lines = _train(capsys, data, tmp_path / "r3", "--cache-dir", cache)  # recomputed rows were cached
    assert again["embedding"]["cached"] == 18 and not again["embedding"]["cache"]["rejected"]
    assert not any("integrity" in line for line in lines)


# --- #3: keygen --force replaces a regular file only ------------------------------------------------

def _specials(folder: Path) -> dict[str, Path]:
    out = {"fifo": folder / "fifo", "folder": folder / "dir", "symlink": folder / "link", "socket": folder / "sock"}
    os.mkfifo(out["fifo"])
    out["folder"].mkdir()
    (folder / "target").write_text("someone's file")
    out["symlink"].symlink_to(folder / "target")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(out["socket"]))
    s.close()
    try:  # a device node, as /dev/null is (root only; nothing opens it)
        os.mknod(folder / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        out["device"] = folder / "null"
    except (PermissionError, OSError):
        pass
    return out


def _kind(path: Path) -> int:
    return stat.S_IFMT(path.lstat().st_mode)


def test_keygen_force_replaces_only_a_regular_file(capsys, tmp_path):
    """Run as root, ``keygen --out /dev/null --force`` replaced the system's /dev/null."""
    folder = tmp_path / "keys"
    folder.mkdir()
    specials = _specials(folder)
    assert "device" in specials or os.geteuid() != 0
    for name, path in specials.items():
        kind = _kind(path)
        for argv in (["keygen", "--out", path, "--force"], ["keygen", "--out", path]):
            refused(capsys, argv, str(path))
        assert _kind(path) == kind, name
        if name == "symlink":
            assert (folder / "target").read_text() == "someone's file"
    # the public key's path is checked before anything is written
    pub_fifo = folder / "k.key.pub"
    os.mkfifo(pub_fifo)
    refused(capsys, ["keygen", "--out", folder / "k.key", "--force"], "FIFO")
    assert not (folder / "k.key").exists()
    leftovers = [p.name for p in folder.iterdir() if ".tmp-" in p.name]
    assert not leftovers
    regular = folder / "r.key"
    regular.write_text("old")
    assert run_cli(capsys, ["keygen", "--out", regular, "--force"])[0] == 0
    assert regular.read_text().startswith("-----BEGIN PRIVATE KEY-----") and (regular.stat().st_mode & 0o777) == 0o600


def test_keygen_on_a_full_disk_leaves_nothing(tmp_path):
    """A full disk left `.k.tmp-<pid>` behind. The disk is full for real here: RLIMIT_FSIZE
    (writes past 16 bytes fail with EFBIG)."""
    code = "import sys\nfrom edgetl.cli import main\nsys.exit(main(['keygen', '--out', sys.argv[1], '--force']))\n"
    out = limited(code, str(tmp_path / "k"), fsize=16, mem_mb=1024)
    err = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(err) == 1 and "cannot write the key (File too large)" in err[0], out.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "k").write_text("the old key")
    out = limited(code, str(tmp_path / "k"), fsize=16, mem_mb=1024)
    assert out.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["k"]
    assert (tmp_path / "k").read_text() == "the old key"


# --- #14: num_features agrees with the head ----------------------------------------------------------

def test_edited_num_features_is_refused(capsys, tmp_path, models, image):
    bundle = write_bundle(tmp_path / "b", models)
    m = json.loads((bundle / "manifest.json").read_text())
    m["num_features"] = 1280
    (bundle / "manifest.json").write_text(json.dumps(m))
    for extra in ([], ["--no-verify"]):
        refused(capsys, ["predict", bundle, image, *extra], "manifest field 'num_features' (1280) differs")


# --- #15: untrusted text is escaped in human output ------------------------------------------------

def test_file_names_with_escapes_do_not_reach_the_terminal(capsys, monkeypatch, tmp_path, models, image):
    """An ANSI escape in a file name recoloured the terminal, a newline split a row, raw
    bytes came back in errors. JSON keeps them exact (it escapes them itself)."""
    bundle = write_bundle(tmp_path / "b", models)
    monkeypatch.chdir(tmp_path)
    evil = "\x1b[2J\x1b[31mred\nrow[bold]x.png"
    shutil.copy(image, evil)
    broken = "\x1b]0;title\x07bad\u202e.png"
    Path(broken).write_bytes(b"not an image")
    latin = os.fsdecode(b"caf\xe9\xff.png")  # a name that is not UTF-8
    Path(latin).write_bytes(b"not an image either")
    code, out, lines = run_cli(capsys, ["predict", bundle, evil, broken, latin])
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[2J\\x1b[31mred\\x0arow[bold]x.png" in out  # escaped, and "[bold]" shown, not styling
    assert len([line for line in out.splitlines() if "red" in line]) == 1  # the newline did not split the row
    assert len(lines) == 2 and all(line.isprintable() for line in lines)
    assert "\\x1b]0;title\\x07bad\\u202e.png" in lines[0] and "caf\\xe9\\xff.png" in lines[1]
    code, out, _ = run_cli(capsys, ["predict", bundle, evil, "--json"])
    assert json.loads(out)[0]["file"] == evil


# --- #17: an image that does not decode is skipped and counted, in train too -------------------------

def _broken_png(src: Path, dst: Path) -> Path:
    """A copy of PNG ``src`` whose IDAT holds a broken zlib stream, every chunk CRC valid (so
    the scan's ``verify()`` passes it; only decoding finds it)."""
    raw, out, pos = src.read_bytes(), [], 8
    out.append(raw[:8])
    while pos < len(raw):
        n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + n]
        if kind == b"IDAT":
            body = body[:2] + bytes(b ^ 0x5A for b in body[2:])
        out.append(struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body)))
        pos += 12 + n
    dst.write_bytes(b"".join(out))
    return dst


def test_an_undecodable_png_among_training_images_is_skipped_and_counted(capsys, tmp_path, data):
    from edgetl.modalities.image import check_image

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    bad = _broken_png(sorted((copy / "1").iterdir())[0], copy / "1" / "zz_broken.png")
    assert check_image(bad) is None  # what the scan sees: a sound PNG
    for run in ("a", "b"):  # the second run: every other row from the cache, the broken one again skipped
        metrics, lines = _train(capsys, copy, tmp_path / run, "--cache-dir", tmp_path / "cache")
        assert any("skipped 1 image(s) that do not decode" in line and "zz_broken.png" in line for line in lines)
        assert metrics["skipped_files"] == 1 and metrics["embedding"]["failed"] == [str(bad)]
        assert metrics["n_train"] + metrics["n_val"] == 19
