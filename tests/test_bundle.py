"""The bundle store: packaging a RUN for each runtime, verification, safe archives,
atomic updates under kill -9, rollback, and the `package` / `rollback` commands.

The RUN is fake but real: ONNX models made with onnx.helper, OpenVINO IR converted
from them, and a run.json as docs/INTERNALS.md describes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from edgetl.device.bundle import (
    FORMAT_VERSION,
    Bundle,
    extract_archive,
    open_bundle,
    rollback,
    update_bundle,
    verify_bundle,
    write_archive,
)
from edgetl.cli import main
from edgetl.workstation.packaging import PackageConfig, package
from edgetl.errors import BundleError, RunDirError
from edgetl.modalities.image import PreprocessSpec
from edgetl.core.targets import Target, load_target

REPO = Path(__file__).resolve().parent.parent
FEATURES, LABELS, SIZE = 8, ["cat", "dog", "fox"], 32
SPEC = PreprocessSpec(input_size=SIZE)


# --- a fake RUN with real model files ----------------------------------------------------------

def _metadata(model) -> None:
    for key, value in {"edgetl.labels": json.dumps(LABELS), "edgetl.preprocess": json.dumps(SPEC.to_dict()),
                       "edgetl.num_features": str(FEATURES)}.items():
        model.metadata_props.add(key=key, value=value)


def write_backbone(path: Path, seed: int) -> Path:
    """images [N,3,H,W] -> GlobalAveragePool -> Flatten -> MatMul -> embedding [N,F]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((3, FEATURES)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "proj"], ["embedding"])],
        "backbone",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", FEATURES])],
        [numpy_helper.from_array(w, "proj")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    _metadata(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_head(path: Path) -> Path:
    """embedding [N,F] -> Gemm (transB) -> logits [N,C], the layout the device retrains."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["embedding", "head.weight", "head.bias"], ["logits"], transB=1)],
        "head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(LABELS)])],
        [numpy_helper.from_array(rng.standard_normal((len(LABELS), FEATURES)).astype(np.float32), "head.weight"),
         numpy_helper.from_array(np.zeros(len(LABELS), np.float32), "head.bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    _metadata(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# what `edgetl quantize` records in an int8 file: the CPUs it was built for (7-bit weights: any x86)
INT8_FACTS = {"isa": "x86-avx2", "weight_bits": 7}


def _built_for_any_x86(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    model.metadata_props.add(key="edgetl.int8", value=json.dumps(INT8_FACTS))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import openvino as ov

    run = tmp_path_factory.mktemp("run") / "RUN"
    (run / "onnx").mkdir(parents=True)
    (run / "openvino").mkdir()
    write_backbone(run / "onnx" / "backbone.onnx", seed=0)
    write_backbone(run / "onnx" / "backbone.int8.onnx", seed=2)  # stands in for the QDQ model
    _built_for_any_x86(run / "onnx" / "backbone.int8.onnx")
    write_head(run / "onnx" / "head.onnx")
    for stem in ("backbone", "backbone.int8"):
        model = ov.convert_model(str(run / "onnx" / f"{stem}.onnx"))
        if stem == "backbone.int8":
            model.set_rt_info(json.dumps(INT8_FACTS), "edgetl_int8")
        ov.save_model(model, str(run / "openvino" / f"{stem}.xml"))
    info = {
        "format": 1, "labels": LABELS, "backbone": "tiny", "pretrained": False, "preprocess": SPEC.to_dict(),
        "num_features": FEATURES, "strategy": "linear-probe", "config": {}, "data_root": "/nowhere",
        "split": {"train": [], "val": [], "val_fraction": 0.2, "seed": 0}, "metrics": {"val_accuracy": 0.9},
        "versions": {},
        "quantize": {"report": [
            {"runtime": "onnxruntime", "precision": "fp32", "accuracy": 0.9},
            {"runtime": "onnxruntime", "precision": "int8", "accuracy": 0.88, "precision_executed": "int8"},
        ]},
    }
    (run / "run.json").write_text(json.dumps(info))
    return run


def no_retrain(name: str) -> Target:
    """A shipped target without retraining (training artifacts take seconds to make)."""
    return Target.from_dict({**load_target(name).to_dict(), "retraining": False})


@pytest.fixture()
def bundle(run_dir, tmp_path) -> Path:
    return package(run_dir, no_retrain("x86-ort-int8"), tmp_path / "bundle").bundle


def manifest(root: Path, name: str = "manifest.json") -> dict:
    return json.loads((root / name).read_text())


def add_memory(payload: bytes):
    """An update's write(): a new memory.npz in the new version, everything else carried."""

    def write(staging: Path, m: dict) -> dict:
        (staging / "memory.npz").write_bytes(payload)
        m["memory"] = f"v{m['version']}/memory.npz"
        return m

    return write


# --- package and open ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, backbone",
    [
        ("x86-ort-int8", "backbone.int8.onnx"),
        ("x86-ort-fp32", "backbone.onnx"),
        ("x86-openvino-int8", "backbone.int8.xml"),
        ("x86-openvino-fp32", "backbone.xml"),
        ("x86-openvino-bf16", "backbone.xml"),
    ],
)
def test_package_round_trip(run_dir, tmp_path, name, backbone):
    target = no_retrain(name)
    out = package(run_dir, target, tmp_path / "b").bundle
    b = open_bundle(out)
    assert isinstance(b, Bundle) and b.root == out and b.version == 1
    assert b.labels == LABELS and b.preprocess == SPEC and b.target == target
    assert b.model_path("backbone") == out / "v1" / backbone
    assert b.model_path("head") == out / "v1" / "head.onnx"
    assert (b.runtime.value, b.precision.value) == (target.runtime.value, target.precision.value)
    m = b.manifest
    assert m["format_version"] == FORMAT_VERSION and m["num_features"] == FEATURES
    assert m["onnx"] == {"ir_version": 10, "opset": 17}
    assert m["versions"]["edgetl"] and m["versions"]["onnxruntime"] == "1.19.2" and m["versions"]["openvino"]
    assert m["training"] is m["memory"] is m["adapter"] is None
    assert [h["event"] for h in m["history"]] == ["package"]
    expected = {f"v1/{backbone}", "v1/head.onnx"} | ({f"v1/{backbone[:-4]}.bin"} if backbone.endswith(".xml") else set())
    assert set(m["files"]) == expected
    for rel, entry in m["files"].items():
        data = (out / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "v1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    # The files are the runtime's real models: they load and run there.
    x = np.ones((2, 3, SIZE, SIZE), np.float32)
    if target.runtime.value == "onnxruntime":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(b.model_path("backbone")), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"images": x})[0].shape == (2, FEATURES)
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(b.model_path("backbone")), "CPU")
        assert compiled(x)[0].shape == (2, FEATURES)


def test_accuracy_recorded(run_dir, tmp_path):
    m = open_bundle(package(run_dir, no_retrain("x86-ort-int8"), tmp_path / "b")).manifest
    assert m["accuracy"] == {"fp32": 0.9, "deployed": 0.88, "precision_executed": "int8"}
    m = open_bundle(package(run_dir, no_retrain("x86-openvino-int8"), tmp_path / "c")).manifest
    # no openvino row in the report: the fp32 reference is known, the deployed accuracy is not
    assert m["accuracy"] == {"fp32": 0.9, "deployed": None, "precision_executed": None}


def test_package_with_retraining_adds_training_artifacts(run_dir, tmp_path):
    pytest.importorskip("edgetl.device.learn")
    b = open_bundle(package(run_dir, "x86-ort-int8", tmp_path / "b"))
    assert b.manifest["training"] == "v1/training"
    training = b.optional_path("training")
    assert (training / "training_model.onnx").is_file() and (training / "checkpoint").exists()
    assert "v1/training/training_model.onnx" in b.manifest["files"]
    assert b.optional_path("memory") is None


def test_input_size_override(run_dir, tmp_path):
    d = no_retrain("x86-ort-fp32").to_dict() | {"input_size": 48}
    with pytest.raises(BundleError, match=r"fixed \[32, 32\] images.*input_size = 48"):
        package(run_dir, Target.from_dict(d), tmp_path / "b")
    d["input_size"] = SIZE
    assert open_bundle(package(run_dir, Target.from_dict(d), tmp_path / "b")).preprocess.input_size == SIZE


def test_user_target_file(run_dir, tmp_path):
    toml = tmp_path / "board.toml"
    toml.write_text('runtime = "openvino"\nprecision = "fp32"\nthreads = 1\nlatency_budget_ms = 50\nmemory_budget_mb = 200\n')
    b = open_bundle(package(run_dir, str(toml), tmp_path / "b"))
    assert b.target.name == "board" and b.model_path("backbone").name == "backbone.xml"


@pytest.mark.parametrize(
    "remove, target, stage",
    [
        ("onnx/backbone.int8.onnx", "x86-ort-int8", "edgetl quantize"),
        ("onnx/head.onnx", "x86-ort-fp32", "edgetl export"),
        ("openvino/backbone.int8.bin", "x86-openvino-int8", "edgetl quantize"),
        ("onnx/backbone.onnx", "x86-ort-fp32", "edgetl export"),
        ("openvino/backbone.xml", "x86-openvino-bf16", "edgetl export"),
    ],
)
def test_missing_model_names_the_stage(run_dir, tmp_path, remove, target, stage):
    run = tmp_path / "RUN"
    shutil.copytree(run_dir, run)
    (run / remove).unlink()
    with pytest.raises(RunDirError, match=f"needs {remove}, which is missing; run '{stage} "):
        package(run, no_retrain(target), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="no such RUN directory"):
        package(tmp_path / "nope", "x86-ort-int8", tmp_path / "b")


def test_overwrite_rules(run_dir, bundle, tmp_path):
    with pytest.raises(BundleError, match="already exists; pass --force"):
        package(run_dir, no_retrain("x86-ort-fp32"), bundle)
    package(run_dir, no_retrain("x86-ort-fp32"), bundle, PackageConfig(overwrite=True))
    assert open_bundle(bundle).precision.value == "fp32"
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="not a bundle; refusing to replace it"):
        package(run_dir, no_retrain("x86-ort-fp32"), precious, PackageConfig(overwrite=True))
    assert (precious / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert open_bundle(package(run_dir, no_retrain("x86-ort-fp32"), empty)).version == 1


# --- verification -------------------------------------------------------------------------------

def test_tampered_file_refused_and_no_verify_override(bundle):
    path = bundle / "v1" / "head.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"v1/head.onnx does not match its SHA-256.*modified or corrupted.*--no-verify"):
        open_bundle(bundle)
    with pytest.raises(BundleError, match="v1/head.onnx"):
        verify_bundle(bundle)
    assert open_bundle(bundle, verify=False).version == 1


def test_missing_file_refused(bundle):
    (bundle / "v1" / "head.onnx").unlink()
    with pytest.raises(BundleError, match="v1/head.onnx is missing"):
        open_bundle(bundle)


def test_unknown_format_version_refused(bundle):
    m = manifest(bundle)
    m["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 99 is not supported.*reads format_version 1"):
        open_bundle(bundle, verify=False)


def test_not_a_bundle(tmp_path, bundle):
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle \\(no manifest.json\\); make one with 'edgetl package"):
        open_bundle(tmp_path / "empty")
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(bundle)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "v1/../../x", "v1\\head.onnx"])
def test_manifest_paths_cannot_escape(bundle, bad):
    m = manifest(bundle)
    m["models"]["head"] = bad
    m["files"][bad] = {"sha256": "0" * 64, "bytes": 1}
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="outside the bundle|not a relative POSIX path"):
        open_bundle(bundle, verify=False)


def test_symlinked_file_refused(bundle, tmp_path):
    outside = tmp_path / "evil.onnx"
    shutil.copy(bundle / "v1" / "head.onnx", outside)
    (bundle / "v1" / "head.onnx").unlink()
    (bundle / "v1" / "head.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        open_bundle(bundle, verify=False)
    with pytest.raises(BundleError, match="symbolic link"):
        Bundle(bundle, manifest(bundle)).model_path("head")


# --- archives -----------------------------------------------------------------------------------

def test_archive_round_trip(run_dir, tmp_path):
    out = package(run_dir, no_retrain("x86-openvino-int8"), tmp_path / "b", PackageConfig(archive=True))
    tar = tmp_path / "b.tar.gz"
    assert tar.is_file()
    b = open_bundle(tar)
    assert b.root.name == "b" and b.root.parent.parent == tmp_path
    assert b.manifest == manifest(out) and b.model_path("backbone").name == "backbone.int8.xml"
    assert open_bundle(tar).root == b.root  # extracted once, reused
    elsewhere = tmp_path / "cache"
    assert open_bundle(tar, extract_to=elsewhere).root.parent.parent == elsewhere
    shutil.rmtree(out)  # the archive is still there: packaging again must not clobber it silently
    with pytest.raises(BundleError, match="b.tar.gz: already exists; pass --force"):
        package(run_dir, no_retrain("x86-openvino-int8"), out, PackageConfig(archive=True))
    package(run_dir, no_retrain("x86-openvino-int8"), out, PackageConfig(archive=True, overwrite=True))


def _tar_with(tmp_path: Path, add) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("bundle/manifest.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        add(tar)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> Callable:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    return add


@pytest.mark.parametrize(
    "add, pattern",
    [
        (_member("../escaped.txt"), "climbs out"),
        (_member("bundle/../../escaped.txt"), "climbs out"),
        (_member("/tmp/escaped.txt"), "absolute or non-POSIX path"),
        (_member("bundle/link", tarfile.SYMTYPE, link="/etc/passwd"), "is a link"),
        (_member("bundle/hard", tarfile.LNKTYPE, link="bundle/manifest.json"), "is a link"),
        (_member("bundle/dev", tarfile.CHRTYPE), "device, fifo or special"),
        (_member("bundle/blk", tarfile.BLKTYPE), "device, fifo or special"),
        (_member("bundle/fifo", tarfile.FIFOTYPE), "device, fifo or special"),
    ],
)
def test_unsafe_archives_refused(tmp_path, add, pattern):
    tar = _tar_with(tmp_path, add)
    with pytest.raises(BundleError, match=pattern):
        extract_archive(tar, tmp_path / "dest")
    with pytest.raises(BundleError, match=pattern):
        open_bundle(tar)
    assert not (tmp_path / "dest").exists() and not (tmp_path / "escaped.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.tar.gz"]  # no half-extracted folder left


def test_oversized_archive_refused(tmp_path):
    tar = _tar_with(tmp_path, _member("bundle/big.bin", data=bytes(10_000)))
    with pytest.raises(BundleError, match="unpacks to more than 5,000 bytes"):
        extract_archive(tar, tmp_path / "dest", max_bytes=5_000)
    assert extract_archive(tar, tmp_path / "dest").joinpath("bundle", "big.bin").stat().st_size == 10_000


def test_garbage_archive_refused(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        open_bundle(junk)


def test_write_archive_only_live_version(bundle, tmp_path):
    update_bundle(bundle, "retrain", add_memory(b"m" * 100))
    tar = write_archive(bundle, tmp_path / "live.tar.gz")
    with tarfile.open(tar) as t:
        names = sorted(t.getnames())
    assert names == sorted(["bundle/manifest.json", "bundle/v1/backbone.int8.onnx", "bundle/v1/head.onnx",
                            "bundle/v2/memory.npz"])
    assert open_bundle(tar).version == 2


# --- updates and rollback -----------------------------------------------------------------------

def test_update_creates_new_version_and_previous(bundle):
    old = manifest(bundle)
    b = update_bundle(bundle, "retrain", add_memory(b"memory" * 1000), details={"accuracy_after": 0.95})
    assert b.version == 2 and manifest(bundle) == b.manifest
    assert manifest(bundle, "previous.json") == old
    m = b.manifest
    assert m["memory"] == "v2/memory.npz" and b.optional_path("memory").read_bytes() == b"memory" * 1000
    # unchanged files are referenced, not copied
    assert m["models"] == old["models"] and set(m["files"]) == set(old["files"]) | {"v2/memory.npz"}
    assert sorted(p.name for p in (bundle / "v2").iterdir()) == ["memory.npz"]
    assert m["history"][-1]["event"] == "retrain" and m["history"][-1]["accuracy_after"] == 0.95
    assert [h["version"] for h in m["history"]] == [1, 2]
    assert open_bundle(bundle).version == 2


def test_update_replacing_a_file_and_garbage_collection(bundle):
    def new_head(staging: Path, m: dict) -> dict:
        shutil.copy(bundle / m["models"]["head"], staging / "head.onnx")
        m["models"]["head"] = f"v{m['version']}/head.onnx"
        return m

    update_bundle(bundle, "retrain", new_head)  # v2: new head, v1 backbone
    (bundle / ".staging-deadbeef").mkdir()  # a killed update's leftovers
    (bundle / "v9").mkdir()
    assert update_bundle(bundle, "retrain", new_head).version == 3  # garbage goes first

    def versions() -> list[str]:
        return sorted((p.name for p in bundle.iterdir() if p.name.startswith("v")), key=lambda n: int(n[1:]))

    assert versions() == ["v1", "v2", "v3"] and not (bundle / ".staging-deadbeef").exists()
    update_bundle(bundle, "retrain", new_head)
    assert versions() == ["v1", "v2", "v3", "v4"]  # v2 is garbage now, removed at the next update
    update_bundle(bundle, "retrain", new_head)
    # v2 is gone; live v5 and previous v4 keep their heads, v1 the shared backbone; v3 goes next time
    assert versions() == ["v1", "v3", "v4", "v5"]
    m = manifest(bundle)
    assert m["models"] == {"backbone": "v1/backbone.int8.onnx", "head": "v5/head.onnx"}
    assert set(m["files"]) == {"v1/backbone.int8.onnx", "v5/head.onnx"}
    open_bundle(bundle)


def test_update_refuses_dangling_reference(bundle):
    def bad(staging: Path, m: dict) -> dict:
        m["adapter"] = f"v{m['version']}/adapter.npz"  # never written
        return m

    before = manifest(bundle)
    with pytest.raises(BundleError, match="refers to v2/adapter.npz, but did not write it"):
        update_bundle(bundle, "adapt", bad)
    assert manifest(bundle) == before and not (bundle / "v2").exists()


def test_rollback_restores_exactly(bundle):
    v1 = manifest(bundle)
    v2 = update_bundle(bundle, "retrain", add_memory(b"x" * 500)).manifest
    b = rollback(bundle)
    assert b.version == 1 and open_bundle(bundle).version == 1
    restored = manifest(bundle)
    assert {k: v for k, v in restored.items() if k != "history"} == {k: v for k, v in v1.items() if k != "history"}
    assert restored["history"][-1] | {"time": None} == {"version": 1, "event": "rollback", "time": None, "from_version": 2}
    assert manifest(bundle, "previous.json") == v2
    assert rollback(bundle).version == 2  # rolling back twice returns
    assert open_bundle(bundle).manifest["memory"] == "v2/memory.npz"


def test_rollback_without_previous(bundle, capsys):
    with pytest.raises(BundleError, match="nothing to roll back to"):
        rollback(bundle)
    assert main(["rollback", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgetl rollback: error:") and "\n" not in err


def test_rollback_refuses_damaged_previous(bundle):
    update_bundle(bundle, "retrain", add_memory(b"x"))
    update_bundle(bundle, "retrain", add_memory(b"y"))
    (bundle / "v2" / "memory.npz").write_bytes(b"z")
    with pytest.raises(BundleError, match="cannot roll back to version 2: .*v2/memory.npz does not match"):
        rollback(bundle)
    assert open_bundle(bundle).version == 3


def test_oserror_in_write_leaves_old_version(bundle):
    before = manifest(bundle)

    def disk_full(staging: Path, m: dict) -> dict:
        (staging / "memory.npz").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(BundleError, match=r"update 'retrain' failed \(No space left on device\); version 1 is still live"):
        update_bundle(bundle, "retrain", disk_full)
    assert manifest(bundle) == before and not (bundle / "previous.json").exists()
    assert sorted(p.name for p in bundle.iterdir()) == [".lock", "manifest.json", "v1"]
    open_bundle(bundle)

    def crash(staging: Path, m: dict) -> dict:
        raise RuntimeError("bug in the caller")

    with pytest.raises(RuntimeError):
        update_bundle(bundle, "retrain", crash)
    assert manifest(bundle) == before and sorted(p.name for p in bundle.iterdir()) == [".lock", "manifest.json", "v1"]


def _child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, **kwargs)


def test_real_file_size_limit_in_update_leaves_old_version(bundle):
    """A real OSError from the kernel (EFBIG under RLIMIT_FSIZE, like a full disk)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from edgetl.device.bundle import update_bundle\n"
        "from edgetl.errors import BundleError\n"
        "def write(staging, m):\n"
        "    (staging / 'memory.npz').write_bytes(bytes(4 << 20))\n"
        "    m['memory'] = f\"v{m['version']}/memory.npz\"\n"
        "    return m\n"
        "try:\n"
        "    update_bundle(sys.argv[1], 'retrain', write)\n"
        "except BundleError as exc:\n"
        "    print(exc)\n"
    )
    before = manifest(bundle)
    out = _child(code, str(bundle), stdout=subprocess.PIPE, text=True).communicate(timeout=60)[0]
    assert "failed (File too large); version 1 is still live" in out
    assert manifest(bundle) == before and sorted(p.name for p in bundle.iterdir()) == [".lock", "manifest.json", "v1"]


def test_concurrent_update_waits_for_the_lock(bundle):
    fd = os.open(bundle / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(BundleError, match="another process is updating this bundle"):
            update_bundle(bundle, "retrain", add_memory(b"x"), lock_timeout=0.2)
    finally:
        os.close(fd)
    assert update_bundle(bundle, "retrain", add_memory(b"x")).version == 2


KILL_LOOP = """
import os, sys
from edgetl.device.bundle import update_bundle

def write(staging, m):
    n = m["version"]
    for name in ("memory.npz", "adapter.npz"):
        with open(staging / name, "wb") as f:
            f.write(os.urandom(1 << 20) + str(n).encode())
    os.makedirs(staging / "training")
    (staging / "training" / "checkpoint").write_bytes(os.urandom(1 << 20))
    m["memory"], m["adapter"], m["training"] = f"v{n}/memory.npz", f"v{n}/adapter.npz", f"v{n}/training"
    return m

print("ready", flush=True)
while True:
    update_bundle(sys.argv[1], "retrain", write)
"""


def test_kill_9_at_any_moment_leaves_a_complete_version(bundle):
    rng = random.Random(1234)
    seen: list[int] = []
    for _ in range(24):
        child = _child(KILL_LOOP, str(bundle), stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        b = open_bundle(bundle)  # verify=True: every file of the live version complete and unchanged
        assert b.manifest == manifest(bundle)
        if (bundle / "previous.json").exists():
            prev = manifest(bundle, "previous.json")
            assert prev["version"] <= b.version
            for rel, entry in prev["files"].items():  # previous never names a removed file
                assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == entry["sha256"]
        assert not seen or b.version >= seen[-1]
        seen.append(b.version)
    assert seen[-1] > 1, "the child never got to finish an update; the test proves nothing"
    final = update_bundle(bundle, "retrain", add_memory(b"after"))  # and updates still work after all that
    assert final.version > seen[-1] and not list(bundle.glob(".staging-*"))


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_package_table(run_dir, tmp_path, capsys):
    toml = tmp_path / "t.toml"
    toml.write_text('runtime = "onnxruntime"\nprecision = "int8"\nthreads = 2\nlatency_budget_ms = 15\n'
                    'memory_budget_mb = 300\n')
    out = tmp_path / "b"
    assert main(["package", str(run_dir), "--target", str(toml), "--out", str(out), "--archive"]) == 0
    cap = capsys.readouterr()
    assert "v1/backbone.int8.onnx" in cap.out and "88.00%" in cap.out and "archive" in cap.err
    assert (tmp_path / "b.tar.gz").is_file()
    assert main(["package", str(run_dir), "--target", str(toml), "--out", str(out), "--json", "--force"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "int8" and result["accuracy"]["deployed"] == 0.88 and "v1/head.onnx" in result["files"]


@pytest.mark.parametrize(
    "target, make_run, expected",
    [
        ("x86-ort-int9", True, "unknown target 'x86-ort-int9' (did you mean 'x86-ort-int8'?)"),
        ("x86-ort-int8", False, "no such RUN directory"),
        ("x86-ort-int8", True, "needs onnx/backbone.int8.onnx, which is missing; run 'edgetl export "),
    ],
)
def test_cli_package_errors_are_one_line(tmp_path, capsys, target, make_run, expected):
    run = tmp_path / "RUN"
    if make_run:
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"format": 1, "labels": LABELS, "backbone": "tiny",
                                                   "preprocess": SPEC.to_dict(), "num_features": FEATURES,
                                                   "strategy": "linear-probe"}))
    code = main(["package", str(run), "--target", target, "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("edgetl package: error:") and "\n" not in err and "Traceback" not in err
    assert expected in err and not (tmp_path / "b").exists()


def test_cli_rollback_json(bundle, capsys):
    update_bundle(bundle, "retrain", add_memory(b"x"))
    assert main(["rollback", str(bundle), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["version"], out["from_version"]) == (1, 2) and out["history"][-1]["event"] == "rollback"
