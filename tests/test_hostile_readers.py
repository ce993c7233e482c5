"""Every reader of untrusted input tried with what a hostile path or stream can be: a device
node (``/dev/zero`` never ends and reports size 0, ``/dev/null`` is empty), a FIFO (opening
it blocks until a writer comes), an endless stream, a deep nesting and invalid encodings.

Readers: images (files and folders), texts (CSV, TSV, JSONL, ``.txt``, class folders,
standard input), keys, the embedding cache, archives, manifests and their signature files,
run.json and target files. Each case ends in one line naming the input, a non-zero exit or a
skip that is counted, without a traceback, a hang (every case runs under a deadline), or
memory beyond its bound (the endless streams run in a child under ``RLIMIT_AS``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from _device_models import tiny_models, write_bundle
from _hostile import limited, make_deep, refused, remove_deep, run_cli, write_text_bundle
from edgetl.errors import BundleError, ConfigError, DataError, RunDirError, TargetError

DEEP = 3000  # folders, brackets: past Python's recursion limit (1,000)
CLI_MB = 1536  # address space of a child running the CLI: the runtimes reserve ~1 GB of it at start


class StillReading(AssertionError):
    """Not an OSError (TimeoutError is one): a reader's ``except OSError`` must not swallow it."""


@contextlib.contextmanager
def deadline(seconds: int = 20):
    """Fail instead of hanging: a reader that opens a FIFO blocks in open(2); SIGALRM ends it."""
    def expire(signum, frame):
        raise StillReading(f"still reading after {seconds} s (blocked on a FIFO or an endless stream?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def specials(tmp_path: Path, fifo: Path, name: str) -> dict[str, Path]:
    """``name`` (with its suffix: readers look at it) as a link to each special file, and
    the FIFO itself under that name."""
    out = {}
    for kind, target in (("zero", "/dev/zero"), ("urandom", "/dev/urandom"), ("null", "/dev/null")):
        link = tmp_path / kind / name
        link.parent.mkdir()
        link.symlink_to(target)
        out[kind] = link
    named = tmp_path / "fifo" / name
    named.parent.mkdir()
    os.mkfifo(named)
    out["fifo"] = named
    folder = tmp_path / "folder" / name
    folder.mkdir(parents=True)
    out["folder"] = folder
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory, digits_dir):
    return tiny_models(tmp_path_factory.mktemp("tiny_models"), digits_dir)


@pytest.fixture
def bundle(tmp_path, models) -> Path:
    return write_bundle(tmp_path / "bundle", models)


@pytest.fixture
def text_bundle(tmp_path) -> Path:
    return write_text_bundle(tmp_path / "text_bundle")


@pytest.fixture(scope="session")
def image(digits_dir) -> str:
    return str(sorted((digits_dir / "0").iterdir())[0])


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory) -> tuple[Path, Path]:
    from edgetl.core.signing import generate_key

    private, public, _ = generate_key(tmp_path_factory.mktemp("keys") / "vendor.key")
    return private, public


# --- keys (issue 29, #4) --------------------------------------------------------------------------

def test_key_files_are_bounded_regular_files(capsys, tmp_path, fifo, bundle, image, key_pair):
    from edgetl.core.signing import load_signing_key, verify
    from edgetl.device.bundle import sign_bundle

    sign_bundle(bundle, key_pair[0])
    paths = specials(tmp_path, fifo, "k.pub")
    big = tmp_path / "big.pub"
    big.write_bytes(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * (1 << 20))
    nested = tmp_path / "nested.pub"  # DER nested 3,000 SEQUENCEs deep, PEM-armoured
    der = b"\x30\x80" * DEEP + b"\x00\x00" * DEEP
    import base64
    nested.write_text("-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der).decode() + "-----END PUBLIC KEY-----\n")
    utf16 = tmp_path / "utf16.pub"
    utf16.write_bytes(key_pair[1].read_text().encode("utf-16"))
    cases = {**paths, "big": big, "nested": nested, "utf16": utf16}
    needles = {"zero": "character device", "urandom": "character device", "null": "character device",
               "fifo": "FIFO", "folder": "folder", "big": "larger than", "nested": "PEM", "utf16": "PEM"}
    with deadline():
        for kind, path in cases.items():
            with pytest.raises(ConfigError, match=needles[kind]):
                verify({}, [], [path], "b")
            with pytest.raises(ConfigError, match=needles[kind]):
                load_signing_key(path)
            refused(capsys, ["predict", bundle, image, "--trust", path], needles[kind])
            refused(capsys, ["retrain", bundle, "D", "--sign", path], needles[kind])
            refused(capsys, ["package", "RUN", "--target", "x86-ort-int8", "--out", tmp_path / "o", "--sign", path],
                    needles[kind])  # did not end in 60 s with /dev/zero


def test_trust_dev_zero_stays_within_memory(bundle, image, key_pair):
    """It grew to 20 GB before: now the first stat refuses it, under 768 MB of address space."""
    from edgetl.device.bundle import sign_bundle

    sign_bundle(bundle, key_pair[0])
    code = ("import sys\nfrom edgetl.cli import main\n"
            "sys.exit(main(['predict', sys.argv[1], sys.argv[2], '--trust', '/dev/zero']))\n")
    out = limited(code, str(bundle), image, timeout=60, mem_mb=CLI_MB)
    assert out.returncode == 2 and "/dev/zero: is a character device" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "out of memory" not in out.stderr


# --- texts: files, folders, stdin (#5, #7, #8, #12) -----------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
def test_text_files_that_are_devices_or_fifos(capsys, tmp_path, fifo, text_bundle, suffix):
    from edgetl.modalities.text import read_lines_for_predict, read_text_data

    with deadline():
        for kind, path in specials(tmp_path, fifo, f"data{suffix}").items():
            with pytest.raises(DataError, match="character device|FIFO|folder|no class subfolders"):
                read_lines_for_predict(path) if kind != "folder" else read_text_data(path)
            if kind != "folder":
                with pytest.raises(DataError, match="character device|FIFO|unknown text data format"):
                    read_text_data(path)
                refused(capsys, ["predict", text_bundle, path], str(path))


def test_deeply_nested_jsonl_is_a_skipped_row_not_a_recursion_error(capsys, tmp_path, text_bundle):
    """#7: 200k brackets raised RecursionError in predict, train and retrain."""
    from edgetl.modalities.text import read_lines_for_predict, read_text_data

    data = tmp_path / "d.jsonl"
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}] * 3
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + "[" * 200_000 + "\n"
                    + '{"text": ' + "[" * DEEP + "]" * DEEP + ', "label": "neg"}\n')
    d = read_text_data(data)
    assert len(d.texts) == 6 and len(d.skipped) == 2
    assert "nested too deeply" in d.skipped[0][1]
    with pytest.raises(DataError, match="d.jsonl:7: JSON nested too deeply"):
        read_lines_for_predict(data)
    refused(capsys, ["predict", text_bundle, data], "nested too deeply")
    refused(capsys, ["retrain", text_bundle, data, "--strict"], "nested too deeply")


@pytest.mark.parametrize("suffix, payload, needle", [
    (".csv", "text,label\ngood,pos\n".encode("utf-16"), "not UTF-8"),
    (".csv", b"text,label\n\xff\xfe\x00bad,neg\n", "not valid UTF-8"),
    (".csv", b"\x00" * 4096, "not UTF-8"),
    (".csv", os.urandom(4096), ""),
    (".csv", b'text,label\n"' + b"never closed\n" * 20_000, "malformed near line"),  # a quote that never ends
    (".jsonl", '{"text": "good", "label": "pos"}\n'.encode("utf-16"), "not"),
    (".jsonl", b'{"text": "\xff\xfe", "label": "pos"}\n', "not valid UTF-8"),
    (".txt", "good\n".encode("utf-16"), "not valid UTF-8"),
])
def test_text_files_in_other_encodings_are_one_line(capsys, tmp_path, text_bundle, suffix, payload, needle):
    """#15: the UTF-16 header came back raw, NULs and all."""
    path = tmp_path / f"d{suffix}"
    path.write_bytes(payload)
    line = refused(capsys, ["predict", text_bundle, path], needle)
    assert "\x00" not in line and not any("\udc80" <= c <= "\udcff" for c in line)
    assert line.isprintable()


def test_the_predict_hint_names_only_the_text_column(tmp_path):
    """#15: "rename the columns to 'text' and 'text'"."""
    from edgetl.modalities.text import read_lines_for_predict

    path = tmp_path / "d.csv"
    path.write_text("sentence\x1b[31m,x\na,b\n")
    with pytest.raises(DataError) as info:
        read_lines_for_predict(path)
    msg = str(info.value)
    assert "'text' and 'text'" not in msg and "--text-column" in msg and "\x1b" not in msg and "\\x1b" in msg


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_stdin_is_utf8_and_bounded_like_a_file(capsys, monkeypatch, text_bundle):
    """#8: random bytes on stdin reached the tokenizer (TypeError); #5: no bound at all."""
    import edgetl.modalities.text as text

    _stdin(monkeypatch, b"good film\nawful\n\n")
    code, out, lines = run_cli(capsys, ["predict", text_bundle, "-", "--json"])
    assert code == 0 and [r["label"] for r in json.loads(out)] == ["pos", "neg"], lines
    assert [r["file"] for r in json.loads(out)] == ["<stdin>:1", "<stdin>:2"]
    _stdin(monkeypatch, b"good\n" + os.urandom(2000) + b"\n")
    refused(capsys, ["predict", text_bundle, "-"], "not valid UTF-8")
    _stdin(monkeypatch, "good\n".encode("utf-16"))
    refused(capsys, ["predict", text_bundle, "-"], "<stdin>:1: not valid UTF-8")
    monkeypatch.setattr(text, "MAX_LINE_BYTES", 100)
    _stdin(monkeypatch, b"good " * 100 + b"\n")
    refused(capsys, ["predict", text_bundle, "-"], "<stdin>:1: a line longer than 100 bytes")
    monkeypatch.setattr(text, "MAX_FILE_BYTES", 1000)
    _stdin(monkeypatch, b"good film\n" * 200)
    refused(capsys, ["predict", text_bundle, "-"], "<stdin>: more than 1,000 bytes")
    monkeypatch.setattr(text, "MAX_TEXTS", 50)
    _stdin(monkeypatch, b"ok\n" * 60)
    refused(capsys, ["predict", text_bundle, "-"], "more than 50 texts")


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom", "yes"])
def test_endless_stdin_stops_at_its_bound(text_bundle, source):
    """An endless stream on stdin: one line, within 768 MB of address space (700 MB of lines
    once took 6.6 GB)."""
    code = "import sys\nfrom edgetl.cli import main\nsys.exit(main(['predict', sys.argv[1], '-']))\n"
    if source == "yes":
        producer = subprocess.Popen([sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('good film\\n' * 1000)"],
                                    stdout=subprocess.PIPE)
        try:
            out = limited(code, str(text_bundle), stdin=producer.stdout, timeout=120, mem_mb=CLI_MB)
        finally:
            producer.kill()
            producer.wait()
            producer.stdout.close()
        needle = "more than 1,000,000 texts"
    else:
        with open(source, "rb") as f:
            out = limited(code, str(text_bundle), stdin=f, timeout=120, mem_mb=CLI_MB)
        needle = "a line longer than" if source == "/dev/zero" else "<stdin>:"
    err = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(err) == 1 and needle in err[0], out.stderr[-2000:]


def test_one_unreadable_text_file_is_skipped_and_counted(tmp_path):
    """#12: one unreadable .txt aborted train and retrain with `Input/output error`, naming no
    file. What cannot be read as a text file (a FIFO, a link to /dev/zero, a dangling link)
    is skipped, named and counted, never opened; with strict it is the one error."""
    from edgetl.modalities.text import read_text_data

    root = tmp_path / "texts"
    for label, words in (("pos", "good great fine"), ("neg", "bad awful poor")):
        (root / label).mkdir(parents=True)
        for i, w in enumerate(words.split()):
            (root / label / f"{i}.txt").write_text(f"{w} film")
    os.mkfifo(root / "pos" / "fifo.txt")
    (root / "neg" / "zero.txt").symlink_to("/dev/zero")
    (root / "neg" / "gone.txt").symlink_to(root / "neg" / "nowhere.txt")
    (root / "neg" / "out.txt").symlink_to(tmp_path / "elsewhere.txt")
    with deadline():
        d = read_text_data(root)
        assert len(d.texts) == 6 and d.labels == ("neg", "pos")
        assert dict(d.skipped) == {"pos/fifo.txt": "is a FIFO (named pipe), not a text file (a regular file)",
                                   "neg/zero.txt": "a link to a file outside the data folder",
                                   "neg/out.txt": "a link to a file outside the data folder",
                                   "neg/gone.txt": "No such file or directory"}
        with pytest.raises(DataError, match="4 unusable example.*neg/gone.txt"):
            read_text_data(root, strict=True)


def test_an_io_error_on_a_text_file_is_a_counted_skip(tmp_path, monkeypatch):
    """The failing read itself (EIO from a bad disk), through the shared reader's os.read."""
    import errno

    import edgetl.core.reading as reading
    from edgetl.modalities.text import read_text_data

    root = tmp_path / "texts"
    for label in ("pos", "neg"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            (root / label / f"{i}.txt").write_text(f"{label} text {i}")
    real_read = os.read
    bad = os.open(root / "neg" / "1.txt", os.O_RDONLY)
    bad_ino = os.fstat(bad).st_ino
    os.close(bad)

    def flaky(fd, n):
        if os.fstat(fd).st_ino == bad_ino:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(fd, n)

    monkeypatch.setattr(reading.os, "read", flaky)
    d = read_text_data(root)
    assert len(d.texts) == 3 and d.skipped == [("neg/1.txt", "cannot read the text file (Input/output error)")]
    with pytest.raises(DataError, match="neg/1.txt: cannot read the text file .Input/output error"):
        read_text_data(root, strict=True)


def test_deep_text_folders_and_links_out_of_the_data_folder(tmp_path):
    """#13: `neg -> /usr` pulled 1,167 files from /usr into a class. A class folder linking
    out is refused in one line; a file linking out is skipped and named; a tree 3,000
    folders deep is read without a RecursionError."""
    from edgetl.modalities.text import read_text_data

    root = tmp_path / "texts"
    (root / "pos").mkdir(parents=True)
    (root / "pos" / "a.txt").write_text("good film")
    deep = root / "neg"
    deep.mkdir()
    (deep / "b.txt").write_text("bad film")
    make_deep(deep, DEEP // 2, "c.txt", b"awful film")  # as deep as PATH_MAX lets a path be
    try:
        outside = tmp_path / "secret.txt"
        outside.write_text("not yours")
        (root / "pos" / "leak.txt").symlink_to(outside)
        d = read_text_data(root)
        assert sorted(d.texts) == ["awful film", "bad film", "good film"]
        assert ("pos/leak.txt", "a link to a file outside the data folder") in d.skipped
        (root / "usr").symlink_to("/usr")
        with pytest.raises(DataError, match="usr: a link to /usr, outside"):
            read_text_data(root)
    finally:
        remove_deep(deep)


# --- images (#13, #16) ----------------------------------------------------------------------------

def test_image_inputs_that_are_devices_fifos_or_deep(capsys, tmp_path, fifo, bundle, image):
    with deadline():
        for kind, path in specials(tmp_path, fifo, "x.png").items():
            code, out, lines = run_cli(capsys, ["predict", bundle, path, image, "--json"])
            rows = json.loads(out)
            assert code == 1 and len(lines) == 1 and str(path) in lines[0], (kind, lines)
            assert rows[-1]["error"] is None  # the good image is still predicted
    deep = tmp_path / "deep"
    deep.mkdir()
    make_deep(deep, DEEP // 2, "x.png", Path(image).read_bytes())
    try:
        code, out, lines = run_cli(capsys, ["predict", bundle, deep, "--json"])
        assert code == 0 and len(json.loads(out)) == 1, lines
    finally:
        remove_deep(deep)


def test_class_folder_links_out_of_the_data_folder(tmp_path, digits_dir):
    from edgetl.modalities.image import scan_folder

    root = tmp_path / "data"
    for c in "01":
        shutil.copytree(digits_dir / c, root / c)
    (root / "0" / "leak.png").symlink_to(sorted((digits_dir / "2").iterdir())[0])
    with pytest.warns(UserWarning, match="outside the data folder"):
        folder = scan_folder(root)
    assert (root / "0" / "leak.png", "a link to a file outside the data folder") in folder.skipped
    (root / "2").symlink_to(digits_dir / "2")
    with pytest.raises(DataError, match="outside"):
        scan_folder(root)


def test_float_tiff_with_nan_is_refused(capsys, tmp_path, bundle, image, recwarn):
    """#16: `invalid value encountered in cast` leaked, and the image was predicted anyway."""
    from PIL import Image

    for value in (np.nan, np.inf):
        a = np.ones((40, 40), np.float32)
        a[5, 5] = value
        Image.fromarray(a, "F").save(tmp_path / f"f{value}.tif")
        code, out, lines = run_cli(capsys, ["predict", bundle, tmp_path / f"f{value}.tif", image, "--json"])
        assert code == 1 and len(lines) == 1 and "not numbers (NaN or infinity)" in lines[0], lines
        assert json.loads(out)[1]["error"] is None
    assert not [w for w in recwarn if "invalid value" in str(w.message)]


# --- manifests, signature files, archives, run.json, targets --------------------------------------

@pytest.mark.parametrize("name", ["manifest.json", "manifest.sig", "previous.json"])
def test_bundle_json_files_that_are_devices_or_fifos(capsys, tmp_path, fifo, bundle, image, key_pair, name):
    from edgetl.device.bundle import sign_bundle, update_bundle

    if name == "previous.json":
        update_bundle(bundle, "retrain", lambda staging, m: m)
    sign_bundle(bundle, key_pair[0])
    argv = (["rollback", bundle] if name == "previous.json"
            else ["predict", bundle, image, "--trust", key_pair[1]])
    with deadline():
        for target in ("/dev/zero", "/dev/urandom", str(fifo)):
            (bundle / name).unlink()
            (bundle / name).symlink_to(target)
            refused(capsys, argv, "FIFO" if target == str(fifo) else "character device")
        (bundle / name).unlink()
        (bundle / name).write_bytes(b"[" * 200_000)
        refused(capsys, argv, "nested too deeply")
        (bundle / name).write_bytes("{}".encode("utf-16"))
        refused(capsys, argv, "not UTF-8")


def test_bundle_paths_that_are_devices_or_fifos(capsys, fifo, image):
    from edgetl.device.bundle import open_bundle

    with deadline():
        for path in ("/dev/zero", "/dev/null", str(fifo)):
            with pytest.raises(BundleError, match="no such bundle"):
                open_bundle(path)
            refused(capsys, ["predict", path, image], "no such bundle")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_archives_with_special_deep_or_badly_named_members(capsys, tmp_path, image):
    def member(name: str, kind=tarfile.REGTYPE, data: bytes | None = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
        return info, data if kind == tarfile.REGTYPE else None

    cases = {
        "fifo": [member("b/manifest.json", tarfile.FIFOTYPE)],
        "chr": [member("b/dev", tarfile.CHRTYPE)],
        "deep": [member("b/" + "d/" * 1500 + "x.bin")],
        "deeper": [member("b/" + "d/" * 5000 + "x.bin")],
        "name": [member("b/\udcff\x1b[2J.bin".encode("utf-8", "surrogateescape").decode("latin-1"))],
    }
    (tmp_path / "store").mkdir()
    with deadline(60):
        for kind, members in cases.items():
            tar = _tar(tmp_path / "store" / f"{kind}.tar.gz", members)
            line = refused(capsys, ["predict", tar, image], str(tar))
            assert "\x1b" not in line
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(f"{k}.tar.gz" for k in cases)


def test_run_json_and_target_files_that_are_devices_fifos_deep_or_not_utf8(tmp_path, fifo):
    from edgetl.core.run import read_run_json
    from edgetl.core.targets import load_target

    run = tmp_path / "run"
    run.mkdir()
    with deadline():
        for target in ("/dev/zero", "/dev/urandom", str(fifo)):
            with contextlib.suppress(FileNotFoundError):
                (run / "run.json").unlink()
            (run / "run.json").symlink_to(target)
            with pytest.raises(RunDirError, match="character device|FIFO"):
                read_run_json(run)
            link = tmp_path / f"t{abs(hash(target))}.toml"
            link.symlink_to(target)
            with pytest.raises(TargetError, match="character device|FIFO"):
                load_target(link)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    bad = tmp_path / "bad.toml"
    bad.write_bytes('runtime = "onnxruntime"\n'.encode("utf-16"))
    with pytest.raises(TargetError, match="nested too deeply|not valid TOML"):
        load_target(deep)
    with pytest.raises(TargetError, match="not UTF-8"):
        load_target(bad)


# --- the embedding cache --------------------------------------------------------------------------

def test_cache_shards_that_are_devices_fifos_deep_or_not_npy(tmp_path, fifo):
    from edgetl.core.embed_cache import EmbeddingCache

    digests = [bytes([i]) * 32 for i in range(4)]
    rows = np.arange(16, dtype=np.float32).reshape(4, 4)
    header = "{'descr': " + "[" * DEEP + "]" * DEEP + ", 'fortran_order': False, 'shape': (4, 64), }"
    replacements = {
        "fifo": lambda p: os.mkfifo(p),
        "zero": lambda p: p.symlink_to("/dev/zero"),
        "deep": lambda p: p.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()),
        "utf16": lambda p: p.write_bytes("\x93NUMPY".encode("utf-16") * 100),
        "random": lambda p: p.write_bytes(os.urandom(5000)),
    }
    with deadline():
        for kind, replace in replacements.items():
            for which in ("keys", "emb"):
                cache = EmbeddingCache(tmp_path / f"{kind}-{which}", "k")
                cache.add(digests, rows)
                shard = next(cache.dir.glob(f"*.{which}.npy"))
                shard.unlink()
                replace(shard)
                assert cache.width() in (None, 4)
                got, found = cache.lookup(digests)
                assert not found.any(), (kind, which)
                cache.add(digests, rows)  # the next run computes and caches them again
                got, found = cache.lookup(digests)
                assert found.all() and (got == rows).all(), (kind, which)


def test_a_cache_folder_others_may_write_is_not_used(tmp_path):
    """A cache is trusted input: one that another user may write is neither read nor written."""
    from edgetl.core.embed_cache import EmbeddingCache

    digests = [bytes([i]) * 32 for i in range(3)]
    rows = np.ones((3, 2), np.float32)
    cache = EmbeddingCache(tmp_path / "c", "k")
    cache.add(digests, rows)
    assert cache.untrusted is None and cache.lookup(digests)[1].all()
    assert (cache.dir.stat().st_mode & 0o777) == 0o700  # made private
    cache.dir.chmod(0o777)
    shared = EmbeddingCache(tmp_path / "c", "k")
    assert "other users may write" in shared.untrusted
    assert not shared.lookup(digests)[1].any() and shared.writer(3, 2) is None
    cache.dir.chmod(0o700)
    (tmp_path / "c").chmod(0o1777)  # sticky, as /tmp: others may add names, not replace ours
    assert EmbeddingCache(tmp_path / "c", "k").lookup(digests)[1].all()
