"""The device install resolves everywhere: the environment markers in pyproject.toml pick
exactly one ONNX Runtime per platform, and pip resolves the built wheel to wheels only
(no torch) for a Raspberry Pi (aarch64, Python 3.11) and for Python 3.13 on x86-64.

Where the training wheel exists was checked with ``pip download --only-binary=:all:``:
onnxruntime-training-cpu 1.19.2 has cp310-cp312 wheels for manylinux_2_27 x86_64,
win_amd64 and macOS 11 universal2 (x86_64 + arm64), none for aarch64 Linux or cp313.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
TRAINING, PLAIN = "onnxruntime-training-cpu", "onnxruntime"
HEAVY_PREFIXES = ("torch", "nvidia-", "transformers", "triton")
DEFAULT_INDEX = "https://pypi.org/simple"


def marker_env(system: str, machine: str, python: str) -> dict[str, str]:
    """A complete PEP 508 marker environment (nothing falls back to this machine's)."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "os_name": "nt" if system == "Windows" else "posix",
        "platform_machine": machine,
        "platform_release": "",
        "platform_system": system,
        "platform_version": "",
        "platform_python_implementation": "CPython",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": {"Linux": "linux", "Windows": "win32", "Darwin": "darwin"}[system],
    }


def dependencies() -> list[Requirement]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]


def applicable(env: dict[str, str]) -> set[str]:
    return {canonicalize_name(r.name) for r in dependencies() if r.marker is None or r.marker.evaluate(env)}


# (system, platform_machine, python) -> the ONNX Runtime it must get
EXPECTED = {
    ("Linux", "x86_64", "3.10"): TRAINING,
    ("Linux", "x86_64", "3.11"): TRAINING,
    ("Linux", "x86_64", "3.12"): TRAINING,
    ("Linux", "x86_64", "3.13"): PLAIN,
    ("Linux", "aarch64", "3.11"): PLAIN,  # Raspberry Pi OS 64-bit (Bookworm)
    ("Linux", "aarch64", "3.13"): PLAIN,
    ("Windows", "AMD64", "3.12"): TRAINING,
    ("Darwin", "arm64", "3.12"): TRAINING,  # universal2 wheel
    ("Darwin", "x86_64", "3.11"): TRAINING,
}


@pytest.mark.parametrize("platform", list(EXPECTED), ids=["-".join(p) for p in EXPECTED])
def test_markers_pick_one_onnxruntime(platform):
    deps = applicable(marker_env(*platform))
    assert deps & {TRAINING, PLAIN} == {EXPECTED[platform]}
    assert {"numpy", "onnx", "openvino", "tokenizers"} <= deps
    assert ("tomli" in deps) == (platform[2] == "3.10")
    assert not [d for d in deps if d.startswith(HEAVY_PREFIXES)]


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13", "3.14"])
def test_onnxruntime_markers_are_complements(python):
    """Exactly one of the two everywhere, including platforms edgetl never named."""
    machines = ["x86_64", "AMD64", "arm64", "aarch64", "ARM64", "armv7l", "i686", "x86", "ppc64le", "riscv64"]
    for system in ("Linux", "Windows", "Darwin"):
        for machine in machines:
            chosen = applicable(marker_env(system, machine, python)) & {TRAINING, PLAIN}
            assert len(chosen) == 1, (system, machine, python, chosen)


# --------------------------------------------------------------------------- resolution


def _pip_settings() -> dict[str, str]:
    """index-url and cert from pip's own configuration, as a user's pip would see them."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60).stdout
    settings = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    index = os.environ.get("PIP_INDEX_URL") or settings.get("index-url") or DEFAULT_INDEX
    if not index.startswith(("http://", "https://")):
        index = DEFAULT_INDEX  # a local mirror is not what a device installs from
    return {"index-url": index, "cert": os.environ.get("PIP_CERT") or settings.get("cert", "")}


@pytest.fixture(scope="module")
def pip_settings() -> dict[str, str]:
    settings = _pip_settings()
    url = urlparse(settings["index-url"])
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"package index {url.hostname} unreachable ({exc}); CI has PyPI")
    return settings


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy (the build writes build/ and *.egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "edgetl", "targets"):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(root / "dist")]
    if importlib.util.find_spec("setuptools"):
        cmd.insert(4, "--no-build-isolation")  # offline and fast; without setuptools pip fetches it
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_isolated_env())
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (root / "dist").glob("edgetl-*.whl")
    return path


def _isolated_env() -> dict[str, str]:
    # This machine's pip configuration (local mirrors, find-links, constraints) must not
    # change what a device would resolve from the index.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_PROXY")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


# pip evaluates environment markers against the interpreter running it, whatever
# --platform/--python-version say (pypa/pip#11664, open). So pip runs with the target's
# marker environment patched in; the report's "environment" proves the patch took.
_PIP_FOR_TARGET = """
import json, sys
import pip._vendor.packaging.markers as markers
target = json.loads(sys.argv[1])
markers.default_environment = lambda: dict(target)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""

TARGETS = {
    "raspberry-pi-aarch64-py3.11": (("Linux", "aarch64", "3.11"), [f"manylinux_2_{i}_aarch64" for i in range(17, 37)] + ["manylinux2014_aarch64"], PLAIN),
    "x86_64-py3.13": (("Linux", "x86_64", "3.13"), [f"manylinux_2_{i}_x86_64" for i in range(5, 29)] + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"], PLAIN),
    "x86_64-py3.11": (("Linux", "x86_64", "3.11"), [f"manylinux_2_{i}_x86_64" for i in range(5, 29)] + ["manylinux2014_x86_64"], TRAINING),
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_device_install_resolves_to_wheels(target, wheel, pip_settings, tmp_path):
    platform, tags, runtime = TARGETS[target]
    env = marker_env(*platform)
    cmd = [sys.executable, "-c", _PIP_FOR_TARGET, json.dumps(env), "install", "--dry-run", "--ignore-installed",
           "--only-binary=:all:", "--python-version", platform[2], "--implementation", "cp",
           "--target", str(tmp_path / "target"), "--report", str(tmp_path / "report.json"),
           "--index-url", pip_settings["index-url"], "-q"]
    if pip_settings["cert"]:
        cmd += ["--cert", pip_settings["cert"]]
    for tag in tags:
        cmd += ["--platform", tag]
    done = subprocess.run(cmd + [str(wheel)], capture_output=True, text=True, timeout=240, env=_isolated_env())
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["environment"]["platform_machine"] == platform[1]
    assert report["environment"]["python_version"] == platform[2]
    items = {canonicalize_name(i["metadata"]["name"]): i["download_info"]["url"] for i in report["install"]}
    assert not [u for u in items.values() if not u.endswith(".whl")], "not all wheels"
    assert not [n for n in items if n.startswith(HEAVY_PREFIXES)], sorted(items)
    assert runtime in items and ({TRAINING, PLAIN} - {runtime}).isdisjoint(items), sorted(items)
    assert {"edgetl", "numpy", "onnx", "openvino", "tokenizers"} <= set(items)
