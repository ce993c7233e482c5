"""Hostile and unlucky input, end to end: every case is a defect once seen, reproduced.

Each ends in one line on stderr, a non-zero exit, no traceback, and nothing left behind.
Cases that once exhausted memory run in a child process under ``RLIMIT_AS`` and a
timeout, so a regression fails the test instead of the machine. Bundles are the small
real ones of ``_device_models`` (a conv backbone and a fitted head, no torch).
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _device_models import tiny_models, write_bundle
from edgetl.cli import main
from edgetl.device.bundle import open_bundle, rollback, sign_bundle, update_bundle, work_dir
from edgetl.errors import BundleError, DataError

REPO = Path(__file__).resolve().parent.parent
LONG = "x" * 300  # longer than NAME_MAX (255)


# --- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def models(tmp_path_factory, digits_dir):
    return tiny_models(tmp_path_factory.mktemp("tiny_models"), digits_dir)


@pytest.fixture
def bundle(tmp_path, models) -> Path:
    return write_bundle(tmp_path / "bundle", models)


@pytest.fixture(scope="session")
def data(tmp_path_factory, digits_dir) -> Path:
    """Three classes, four real digits each."""
    root = tmp_path_factory.mktemp("hostile") / "data"
    for cls in ("0", "1", "2"):
        (root / cls).mkdir(parents=True)
        for p in sorted((digits_dir / cls).iterdir())[:4]:
            shutil.copy(p, root / cls / p.name)
    return root


@pytest.fixture(scope="session")
def image(data) -> str:
    return str(sorted((data / "0").iterdir())[0])


def run_cli(capsys, argv: list[str]) -> tuple[int, str, list[str]]:
    """``edgetl ARGV`` in this process: (exit code, stdout, stderr lines). An exception
    escaping ``main`` fails the test: that is a traceback for the user."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert isinstance(code, int)
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def refused(capsys, argv: list[str], needle: str) -> str:
    code, _, lines = run_cli(capsys, argv)
    errors = [line for line in lines if not line.startswith("edgetl: warning")]
    assert code != 0, lines
    assert len(errors) == 1 and needle in errors[0], lines
    return errors[0]


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def limited(code: str, *args: str, mem_mb: int = 768, timeout: float = 60) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python limited to ``mem_mb`` of address space."""
    prelude = ("import resource\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({mem_mb << 20}, {mem_mb << 20}))\n")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def manifest(root: Path, name: str = "manifest.json") -> dict:
    return json.loads((root / name).read_text())


def write_manifest(root: Path, m: dict, name: str = "manifest.json") -> None:
    (root / name).write_text(json.dumps(m))


def add_memory(staging: Path, m: dict) -> dict:
    (staging / "memory.npz").write_bytes(b"m" * 100)
    m["memory"] = f"v{m['version']}/memory.npz"
    return m


# --- 1. options that size work are bounded -------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["predict", "B", "x.png", "--threads", "100000"], "from 1 to"),
    (["predict", "B", "x.png", "--threads", "0"], "from 1 to"),
    (["predict", "B", "x.png", "--batch-size", "10000000"], "from 1 to 4096"),
    (["evaluate", "B", "D", "--batch-size", "5000"], "from 1 to 4096"),
    (["retrain", "B", "D", "--batch-size", "99999999"], "from 1 to 4096"),
    (["bench", "B", "--threads", "1,100000"], "from 1 to"),
    (["bench", "B", "--batch", "1,10000000"], "from 1 to 4096"),
])
def test_unbounded_options_are_refused(capsys, argv, needle):
    assert refused(capsys, argv, needle).startswith(f"edgetl {argv[0]}: error:")


# --- 2. aspect-ratio decompression bombs ---------------------------------------------------------

def _strip(path: Path, width: int, height: int) -> Path:
    Image.new("L", (width, height), 255).save(path, optimize=True)
    return path


def test_aspect_bomb_is_refused_before_resizing(tmp_path):
    """A 1x20000 PNG (~100 bytes) passes the pixel guard; resizing its shorter side to 256
    would make 256x5,120,000 pixels (3.9 GB as RGB). Under 768 MB of address space."""
    for w, h in ((1, 20_000), (1, 60_000), (60_000, 1)):
        _strip(tmp_path / f"{w}x{h}.png", w, h)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edgetl.errors import DataError\n"
        "from edgetl.modalities.image import PreprocessSpec, check_image, preprocess, scan_folder\n"
        "for p in sorted(Path(sys.argv[1]).glob('*.png')):\n"
        "    try:\n"
        "        preprocess(p, PreprocessSpec())\n"
        "        print('ACCEPTED', p.name)\n"
        "    except DataError as exc:\n"
        "        print('REFUSED:', exc)\n"
        "    print('check', check_image(p))\n"
    )
    out = limited(code, str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ACCEPTED" not in out.stdout and out.stdout.count("REFUSED:") == 3, out.stdout
    assert "1x20000.png: image is 1x20000 pixels, more than 50:1" in out.stdout
    assert out.stdout.count("check ") == 3 and "check None" not in out.stdout


def test_aspect_bomb_via_cli_is_one_error_and_the_rest_predicted(capsys, bundle, image, tmp_path):
    bomb = _strip(tmp_path / "strip.png", 1, 20_000)
    code, out, lines = run_cli(capsys, ["predict", str(bundle), image, str(bomb), "--json"])
    assert code == 1 and len(lines) == 1 and "strip.png" in lines[0] and "50:1" in lines[0]
    rows = json.loads(out)
    assert rows[0]["error"] is None and rows[1]["error"]


def test_resized_size_is_bounded_for_in_memory_images():
    from edgetl.modalities.image import PreprocessSpec, resize_and_crop

    spec = PreprocessSpec(input_size=4096, crop_pct=0.1)  # resize to 40,960 on the shorter side
    with pytest.raises(DataError, match="exceeds"):
        resize_and_crop(Image.new("RGB", (100, 200)), spec, name="big")


# --- 3. archive bombs ----------------------------------------------------------------------------

def _header(name: bytes, kind: bytes, size: int) -> bytes:
    """One raw ustar header block (what a hostile archive writer makes by hand)."""
    block = bytearray(512)
    block[: len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % 0
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@pytest.fixture(scope="session")
def gib_of_zeros() -> bytes:
    """A gzip member holding 1 GiB of zeros (4.6 MB at the fastest level): gzip members concatenate."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join([*(c.compress(chunk) for _ in range(1024)), c.flush()])


def _bomb(path: Path, header: bytes, body: bytes) -> Path:
    path.write_bytes(gzip.compress(header) + body + gzip.compress(bytes(1024)))
    return path


@pytest.mark.parametrize("kind, needle", [
    (tarfile.GNUTYPE_LONGNAME, "long-name or PAX header"),
    (tarfile.XHDTYPE, "long-name or PAX header"),
    (tarfile.REGTYPE, "unpacks to more than"),
])
def test_archive_bombs_are_refused_from_the_headers(tmp_path, gib_of_zeros, kind, needle):
    """A GNU long name or PAX header of 1 GiB (tarfile would read it into memory) and a
    member of 1 GiB of zeros (230 times its packed size), each under 5 MB packed."""
    name = b"././@LongLink" if kind != tarfile.REGTYPE else b"bundle/big.bin"
    tar = _bomb(tmp_path / "bomb.tar.gz", _header(name, kind, 1 << 30), gib_of_zeros)
    assert tar.stat().st_size < 5 << 20
    code = (
        "import sys\n"
        "from edgetl.device.bundle import open_bundle\n"
        "from edgetl.errors import BundleError\n"
        "try:\n"
        "    open_bundle(sys.argv[1])\n"
        "    print('ACCEPTED')\n"
        "except BundleError as exc:\n"
        "    print(exc)\n"
    )
    out = limited(code, str(tar), timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    assert needle in out.stdout and "ACCEPTED" not in out.stdout
    assert tree(tmp_path) == {"bomb.tar.gz"}


def test_archive_bomb_via_cli_leaves_nothing(capsys, tmp_path, gib_of_zeros, image):
    tar = _bomb(tmp_path / "bomb.tar.gz", _header(b"bundle/big.bin", tarfile.REGTYPE, 1 << 30), gib_of_zeros)
    refused(capsys, ["predict", str(tar), image], "refusing to extract it")
    assert tree(tmp_path) == {"bomb.tar.gz"}


def test_extraction_that_is_no_bundle_is_removed(tmp_path):
    tar = tmp_path / "empty.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        info = tarfile.TarInfo("bundle/readme.txt")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(BundleError, match="holds no bundle"):
        open_bundle(tar)
    assert tree(tmp_path) == {"empty.tar.gz"}


def test_refused_extracted_bundle_is_removed(tmp_path, models):
    import edgetl.device.archive as archive

    b = write_bundle(tmp_path / "b", models)
    m = manifest(b)
    m["labels"][0], m["labels"][1] = m["labels"][1], m["labels"][0]
    write_manifest(b, m)
    (tmp_path / "store").mkdir()
    tar = tmp_path / "store" / "b.tar.gz"
    archive.write_tar(b, ["manifest.json", *sorted(m["files"])], tar)  # write_archive would refuse it
    with pytest.raises(BundleError, match="'labels' differs"):
        open_bundle(tar)
    assert tree(tmp_path / "store") == {"b.tar.gz"}


@pytest.mark.parametrize("payload", [b"not an archive at all", gzip.compress(b"gzip, but no tar inside" * 40)])
def test_garbage_archive_is_one_line(capsys, tmp_path, image, payload):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(payload)
    line = refused(capsys, ["predict", str(junk), image], "not a readable bundle archive")
    assert "method" not in line
    assert tree(tmp_path) == {"junk.tar.gz"}


def test_stale_extraction_folders_are_cleaned(tmp_path, models):
    """kill -9 during an extraction leaves its folder; the next extraction removes it, and
    never one a live process holds."""
    from edgetl.core.files import OwnedDir
    from edgetl.device.archive import EXTRACT_PREFIX
    from edgetl.device.bundle import write_archive

    b = write_bundle(tmp_path / "src" / "b", models)
    (tmp_path / "store").mkdir()
    tar = write_archive(b, tmp_path / "store" / "b.tar.gz")
    code = ("import sys, time\nfrom pathlib import Path\nfrom edgetl.core.files import OwnedDir\n"
            f"d = OwnedDir(Path(sys.argv[1]), {EXTRACT_PREFIX!r})\n(d.path / 'half').write_bytes(b'x' * 1000)\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "store")], stdout=subprocess.PIPE,
                             text=True, env=env)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    with OwnedDir(tmp_path / "store", EXTRACT_PREFIX) as live:
        assert len([p for p in (tmp_path / "store").iterdir() if p.name.startswith(EXTRACT_PREFIX)]) == 4
        assert open_bundle(tar).version == 1
        left = sorted(p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(EXTRACT_PREFIX))
        assert left == sorted([live.name, live.name + ".lock"])
    assert not any(p.name.startswith(EXTRACT_PREFIX) for p in (tmp_path / "store").iterdir())


# --- 4. the manifest's own fields must agree with the hashed head --------------------------------

def test_swapped_labels_are_refused(capsys, bundle, image):
    m = manifest(bundle)
    m["labels"][0], m["labels"][1] = m["labels"][1], m["labels"][0]
    write_manifest(bundle, m)
    refused(capsys, ["predict", str(bundle), image], "manifest field 'labels' differs")
    refused(capsys, ["predict", str(bundle), image, "--no-verify"], "manifest field 'labels' differs")


def test_changed_preprocessing_is_refused(capsys, bundle, image):
    m = manifest(bundle)
    m["preprocess"]["mean"] = [0.5, 0.5, 0.5]
    write_manifest(bundle, m)
    refused(capsys, ["predict", str(bundle), image], "manifest field 'preprocess.mean' differs")


def test_edited_previous_is_refused_on_rollback(capsys, bundle):
    update_bundle(bundle, "retrain", add_memory)
    prev = manifest(bundle, "previous.json")
    prev["labels"] = list(reversed(prev["labels"]))
    write_manifest(bundle, prev, "previous.json")
    before = manifest(bundle)
    refused(capsys, ["rollback", str(bundle)], "'labels' differs")
    assert manifest(bundle) == before


def test_retrained_head_with_new_labels_passes(bundle):
    """What retrain does: a new head with one more class, the other edgetl.* metadata kept."""
    from edgetl.device.learn import make_head_onnx, read_head
    from edgetl.device.retraining import head_metadata_of

    live = open_bundle(bundle)
    W, b, labels = read_head(live.model_path("head"))
    metadata = head_metadata_of(live.model_path("head"))
    assert "edgetl.preprocess" in metadata

    def write(staging: Path, m: dict) -> dict:
        make_head_onnx(np.vstack([W, W[:1]]), np.append(b, 0.0), [*labels, "new"], staging / "head.onnx",
                       metadata=metadata)
        m["labels"] = [*labels, "new"]
        m["models"] = {**m["models"], "head": f"v{m['version']}/head.onnx"}
        return m

    new = update_bundle(bundle, "retrain", write)
    assert open_bundle(bundle).labels == [*labels, "new"] == new.labels
    assert rollback(bundle).version == 1 and open_bundle(bundle).labels == labels


# --- 5. malformed manifests and run.json ---------------------------------------------------------

def _set(m: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        m = m[key]
    if value is _DELETE:
        m.pop(leaf, None)
    else:
        m[leaf] = value


_DELETE = object()


@pytest.mark.parametrize("path, value, needle", [
    ("labels", None, "'labels'"),
    ("preprocess.input_size", "abc", "preprocess.input_size"),
    ("preprocess", None, "'preprocess'"),
    ("preprocess.mean", _DELETE, "missing mean"),
    ("preprocess.interpolation", "lanczos", "preprocess.interpolation"),
    ("precision", "int4", "'precision'"),
    ("version", "two", "'version'"),
    ("version", 10 ** 400, "'version'"),
    ("target.threads", 100000, "'target'"),
    ("files", [], "'files'"),
])
def test_malformed_manifest_fields_are_named(capsys, bundle, image, path, value, needle):
    m = manifest(bundle)
    _set(m, path, value)
    write_manifest(bundle, m)
    refused(capsys, ["predict", str(bundle), image], needle)


@pytest.mark.parametrize("payload, needle", [
    (random.Random(388).randbytes(64) + b"\xff\xfe", "not UTF-8"),
    ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"format_version": 1, "version": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_unreadable_manifest_is_one_line(capsys, bundle, image, payload, needle):
    (bundle / "manifest.json").write_bytes(payload)
    refused(capsys, ["predict", str(bundle), image], needle)


@pytest.mark.parametrize("field, value, needle", [
    ("labels", None, "'labels'"),
    ("num_features", "64", "'num_features'"),
    ("format", True, "RUN format"),
    ("preprocess", [], "'preprocess'"),
    ("backbone_weights", "efficientnet_lite0", "'backbone_weights'"),
    ("backbone_weights", {"builtin": "y", "sha256": "0" * 64}, "'backbone_weights'"),  # not this RUN's backbone
    ("backbone_weights", {"builtin": "x", "sha256": "../../etc"}, "'backbone_weights'"),
])
def test_malformed_run_json_is_named(tmp_path, field, value, needle):
    from edgetl.core.run import read_run_json
    from edgetl.errors import RunDirError

    run = tmp_path / "run"
    run.mkdir()
    info = {"format": 1, "labels": ["a", "b"], "backbone": "x", "preprocess": {}, "num_features": 64,
            "strategy": "linear-probe", field: value}
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunDirError, match=needle):
        read_run_json(run)
    (run / "run.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(RunDirError, match="not UTF-8"):
        read_run_json(run)


FUZZ_VALUES = [None, True, False, 0, -1, 1.5, float("nan"), 10 ** 400, 1e308, "", "abc", "x" * 5000,
               "\udcff", [], [None], [1, 2, 3], {}, {"a": None}, [[[[]]]]]


def _fuzz_paths(m: dict) -> list[str]:
    paths = [*m, *(k for k in ("modality", "artifacts", "source_stats", "backbone") if k not in m)]
    paths += [f"preprocess.{k}" for k in m["preprocess"]]
    paths += [f"target.{k}" for k in m["target"]]
    paths += [f"models.{k}" for k in m["models"]]
    return paths


def test_fuzzed_manifests_never_trace_back(capsys, bundle, data, image):
    """Type changes, nulls, huge numbers and bad strings in every field (fixed seed): every
    run ends with an exit code, and a refusal is one line."""
    update_bundle(bundle, "retrain", add_memory)
    live_text, prev_text = (bundle / "manifest.json").read_text(), (bundle / "previous.json").read_text()
    rng = random.Random(20240917)
    base = json.loads(live_text)
    cases = [(path, value) for path in _fuzz_paths(base) for value in rng.sample(FUZZ_VALUES, 3)]
    cases += [(f"files.{rel}.{k}", rng.choice(FUZZ_VALUES)) for rel in base["files"] for k in ("sha256", "bytes")]
    refusals = 0
    for i, (path, value) in enumerate(cases):
        command = ("predict", "evaluate", "rollback")[i % 3]
        target = "previous.json" if command == "rollback" else "manifest.json"
        m = json.loads(prev_text if command == "rollback" else live_text)
        if path.startswith("files.") and path.split(".", 1)[1].rsplit(".", 1)[0] not in m["files"]:
            continue
        if path.startswith("files."):
            rel, key = path[len("files."):].rsplit(".", 1)
            m["files"][rel][key] = value
        else:
            _set(m, path, value)
        try:
            text = json.dumps(m)
        except (UnicodeEncodeError, ValueError):
            continue
        (bundle / target).write_text(text, errors="surrogateescape")
        argv = {"predict": ["predict", str(bundle), image, "--json"],
                "evaluate": ["evaluate", str(bundle), str(data), "--json"],
                "rollback": ["rollback", str(bundle), "--json"]}[command]
        code, _, lines = run_cli(capsys, argv)
        errors = [line for line in lines if not line.startswith("edgetl: warning")]
        if code != 0:
            refusals += 1
            assert len(errors) == 1 and errors[0].startswith(f"edgetl {command}: "), (path, value, lines)
        (bundle / "manifest.json").write_text(live_text)
        (bundle / "previous.json").write_text(prev_text)
    assert refusals > len(cases) // 2


# --- 8. operating-system errors ------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["predict", "B", LONG + ".png"],
    ["predict", LONG, "x.png"],
    ["retrain", "B", LONG],
    ["evaluate", "B", f"data/{LONG}"],
    ["adapt", LONG, "D"],
])
def test_name_too_long_is_one_line(capsys, argv):
    refused(capsys, argv, "File name too long")


def test_name_too_long_in_the_api(tmp_path):
    from edgetl.modalities.image import load_image, scan_folder

    with pytest.raises(DataError, match="File name too long"):
        scan_folder(tmp_path / LONG)
    with pytest.raises(DataError, match="File name too long"):
        load_image(tmp_path / LONG)
    with pytest.raises(BundleError, match="File name too long"):
        open_bundle(tmp_path / LONG)


def test_folder_where_a_bundle_file_should_be(capsys, bundle, image):
    head = bundle / "v1" / "head.onnx"
    head.unlink()
    head.mkdir()
    refused(capsys, ["predict", str(bundle), image], "v1/head.onnx is not a regular file")


def test_unreadable_file_inside_a_bundle(capsys, bundle, image, monkeypatch):
    """PermissionError while hashing (simulated: the tests run as root, who reads anything)."""
    import builtins

    import edgetl.core.files as files

    def deny(path, *args, **kwargs):
        if str(path).endswith("head.onnx"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", deny, raising=False)
    refused(capsys, ["predict", str(bundle), image], "v1/head.onnx: cannot read (Permission denied)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_inside_a_bundle_for_real(capsys, bundle, image):
    (bundle / "v1" / "head.onnx").chmod(0)
    refused(capsys, ["predict", str(bundle), image], "Permission denied")


def _deny_listing(monkeypatch, denied: Path) -> None:
    """Make ``denied`` unreadable as a folder (the tests run as root, who reads anything)."""
    real_scandir, real_listdir = os.scandir, os.listdir

    def check(path):
        if Path(os.fsdecode(path)) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    monkeypatch.setattr(os, "scandir", lambda path=".": (check(path), real_scandir(path))[1])
    monkeypatch.setattr(os, "listdir", lambda path=".": (check(path), real_listdir(path))[1])


def test_unreadable_class_folder(capsys, bundle, data, tmp_path, monkeypatch):
    from edgetl.modalities.image import scan_folder

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    _deny_listing(monkeypatch, copy / "1")
    with pytest.raises(DataError, match="1: cannot read this folder .Permission denied"):
        scan_folder(copy)
    refused(capsys, ["retrain", str(bundle), str(copy)], "cannot read this folder")
    assert not any(p.name.startswith(".work-") for p in bundle.iterdir())


def test_plot_into_a_missing_folder(capsys, bundle, data):
    refused(capsys, ["evaluate", str(bundle), str(data), "--plot", "/nonexistent/dir/c.png"], "no such folder")


def test_last_resort_oserror_is_one_line(capsys, monkeypatch):
    import edgetl.commands.rollback as command

    def broken(args):
        raise OSError(errno.EIO, "Input/output error", "/dev/flaky")

    monkeypatch.setattr(command, "run", broken)
    line = refused(capsys, ["rollback", "B"], "Input/output error")
    assert line == "edgetl rollback: error: /dev/flaky: Input/output error"


# --- 10. scratch folders live in the bundle and are collected ------------------------------------

def test_work_dir_is_inside_the_bundle_and_removed(bundle):
    with work_dir(bundle) as work:
        assert work.parent == bundle and work.name.startswith(".work-")
        (work / "head.onnx").write_bytes(b"x")
        update_bundle(bundle, "retrain", add_memory)  # garbage collection spares a live one
        assert work.is_dir()
    assert not any(p.name.startswith(".work-") for p in bundle.iterdir())


def test_killed_work_dir_is_collected(bundle):
    code = ("import sys, time\nfrom edgetl.device.bundle import work_dir\n"
            "with work_dir(sys.argv[1]) as w:\n    (w / 'big').write_bytes(b'x' * 100000)\n"
            "    print('ready', flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", code, str(bundle)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    assert len([p for p in bundle.iterdir() if p.name.startswith(".work-")]) == 2  # folder and lock
    update_bundle(bundle, "retrain", add_memory)
    assert not any(p.name.startswith(".work-") for p in bundle.iterdir())


# --- 12. silent skips ----------------------------------------------------------------------------

def test_unreadable_subfolder_is_reported(capsys, bundle, data, tmp_path, monkeypatch):
    copy = tmp_path / "photos"
    shutil.copytree(data, copy)
    _deny_listing(monkeypatch, copy / "2")
    code, out, lines = run_cli(capsys, ["predict", str(bundle), str(copy), "--json"])
    assert code == 1 and len(lines) == 1 and "2: cannot read this folder (Permission denied)" in lines[0], lines
    rows = json.loads(out)
    assert sum(r["error"] is None for r in rows) == 8  # the readable folders are still predicted


def test_empty_path_is_refused(capsys, bundle):
    refused(capsys, ["predict", str(bundle), ""], "empty")
    refused(capsys, ["predict", "", "x.png"], "empty")


def test_adapt_on_a_file_says_so(capsys, bundle, image):
    refused(capsys, ["adapt", str(bundle), image], "is a file, not a folder")


# --- 13. --no-verify still notices damage ---------------------------------------------------------

def test_no_verify_warns_about_damaged_files(capsys, bundle, image):
    path = bundle / "v1" / "backbone.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a weight's low bit: the model still loads and runs
    path.write_bytes(bytes(data))
    refused(capsys, ["predict", str(bundle), image], "v1/backbone.onnx does not match its SHA-256")
    code, _, lines = run_cli(capsys, ["predict", str(bundle), image, "--no-verify"])
    assert code == 0 and len(lines) == 1, lines
    assert lines[0].startswith("edgetl: warning:") and "v1/backbone.onnx" in lines[0]


# --- signed bundles -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("vendor", "device", "other"):
        assert main(["keygen", "--out", str(root / f"{name}.key")]) == 0
        out[name] = root / f"{name}.key"
    return out


def test_keygen_writes_a_private_key_only_its_owner_reads(capsys, keys):
    assert (keys["vendor"].stat().st_mode & 0o777) == 0o600
    assert keys["vendor"].with_name("vendor.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    refused(capsys, ["keygen", "--out", str(keys["vendor"])], "already exists")


def test_trust_refuses_unsigned_and_tampered_and_accepts_signed(capsys, bundle, image, keys):
    vendor_pub = str(keys["vendor"]) + ".pub"
    refused(capsys, ["predict", str(bundle), image, "--trust", vendor_pub], "the bundle is not signed")
    sign_bundle(bundle, keys["vendor"])
    code, _, lines = run_cli(capsys, ["predict", str(bundle), image, "--trust", vendor_pub])
    assert code == 0 and not lines
    other_pub = str(keys["other"]) + ".pub"
    refused(capsys, ["predict", str(bundle), image, "--trust", other_pub], "which --trust does not name")
    # A tampered manifest with a valid hash table (every file matches) but no valid signature:
    m = manifest(bundle)
    m["target"]["threads"] = 1
    write_manifest(bundle, m)
    assert run_cli(capsys, ["predict", str(bundle), image])[0] == 0  # hashes alone cannot tell
    refused(capsys, ["predict", str(bundle), image, "--trust", vendor_pub], "modified after signing")
    # A forged signature entry for the tampered manifest:
    sig = json.loads((bundle / "manifest.sig").read_text())
    from edgetl.core.signing import document_digest

    entry = dict(sig["signatures"][0], document_sha256=document_digest({k: v for k, v in m.items() if k != "history"}))
    (bundle / "manifest.sig").write_text(json.dumps({"format": 1, "signatures": [entry]}))
    refused(capsys, ["predict", str(bundle), image, "--trust", vendor_pub], "does not verify")
    refused(capsys, ["evaluate", str(bundle), image, "--trust", vendor_pub], "does not verify")


def test_signatures_travel_through_archives_updates_and_rollback(capsys, tmp_path, models, image, keys):
    from edgetl.device.bundle import write_archive

    vendor_pub, device_pub = str(keys["vendor"]) + ".pub", str(keys["device"]) + ".pub"
    bundle = write_bundle(tmp_path / "b", models)
    sign_bundle(bundle, keys["vendor"])
    (tmp_path / "dist").mkdir()
    tar = write_archive(bundle, tmp_path / "dist" / "b.tar.gz")
    assert run_cli(capsys, ["predict", str(tar), image, "--trust", vendor_pub])[0] == 0

    unsigned = update_bundle(bundle, "adapt", add_memory)  # a device update without a key
    assert unsigned.history[-1]["device_made"] is True and unsigned.history[-1]["signed_by"] is None
    refused(capsys, ["predict", str(bundle), image, "--trust", vendor_pub], "no signature covers")
    assert rollback(bundle).version == 1  # back to the vendor's version: its signature holds again
    assert run_cli(capsys, ["predict", str(bundle), image, "--trust", vendor_pub])[0] == 0

    signed = update_bundle(bundle, "retrain", add_memory, sign_key=keys["device"])
    assert signed.history[-1]["signed_by"] == open_bundle(bundle, trust=[device_pub]).history[-1]["signed_by"]
    assert run_cli(capsys, ["predict", str(bundle), image, "--trust", vendor_pub, "--trust", device_pub])[0] == 0
    refused(capsys, ["predict", str(bundle), image, "--trust", vendor_pub], "which --trust does not name")
    assert rollback(bundle).version == 1
    assert open_bundle(bundle, trust=[vendor_pub]).version == 1


def test_package_sign_puts_the_signature_in_the_archive(capsys, tmp_path, models, image, keys):
    from _device_models import FEATURES

    run = tmp_path / "RUN"
    (run / "onnx").mkdir(parents=True)
    shutil.copy(models.backbone, run / "onnx" / "backbone.onnx")
    shutil.copy(models.head, run / "onnx" / "head.onnx")
    (run / "run.json").write_text(json.dumps({
        "format": 1, "labels": list(models.labels), "backbone": "tiny", "pretrained": False,
        "preprocess": models.spec.to_dict(), "num_features": FEATURES, "strategy": "linear-probe", "config": {},
        "data_root": "/nowhere", "split": {"train": [], "val": [], "val_fraction": 0.2, "seed": 0}, "metrics": {},
        "versions": {}}))
    target = tmp_path / "board.toml"
    target.write_text('runtime = "onnxruntime"\nprecision = "fp32"\nthreads = 1\nlatency_budget_ms = 50\n'
                      'memory_budget_mb = 200\nretraining = false\n')
    argv = ["package", str(run), "--target", str(target), "--out", str(tmp_path / "b"), "--archive",
            "--sign", str(keys["vendor"]), "--json"]
    code, out, lines = run_cli(capsys, argv)
    assert code == 0, lines
    assert json.loads(out)["archive"] == str(tmp_path / "b.tar.gz")
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert "b/manifest.sig" in tar.getnames()
    vendor_pub = str(keys["vendor"]) + ".pub"
    (tmp_path / "device").mkdir()
    shutil.copy(tmp_path / "b.tar.gz", tmp_path / "device" / "b.tar.gz")
    assert run_cli(capsys, ["predict", str(tmp_path / "device" / "b.tar.gz"), image, "--trust", vendor_pub])[0] == 0


def test_retrain_and_adapt_sign_the_version_they_make(capsys, bundle, data, image, keys):
    device_pub = str(keys["device"]) + ".pub"
    code, _, lines = run_cli(capsys, ["retrain", str(bundle), str(data), "--epochs", "2", "--force",
                                      "--sign", str(keys["device"])])
    assert code == 0, lines
    made = open_bundle(bundle, trust=[device_pub])  # refused unless the new version is signed by it
    assert made.history[-1]["event"] == "retrain" and made.history[-1]["signed_by"]
    code, _, lines = run_cli(capsys, ["adapt", str(bundle), str(data), "--source", str(data),
                                      "--sign", str(keys["device"])])
    assert code == 0, lines
    made = open_bundle(bundle, trust=[device_pub])
    assert made.history[-1]["event"] == "adapt" and made.history[-1]["signed_by"]
    assert run_cli(capsys, ["predict", str(bundle), image, "--trust", device_pub])[0] == 0
    refused(capsys, ["retrain", str(bundle), str(data), "--sign", str(data / "0" / Path(image).name)], "key")
