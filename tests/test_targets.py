"""Deployment targets: the shipped TOML files, the schema's errors, user files, the
`edgetl targets` command, and that the TOML files ship in a real wheel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.cli import main
from edgetl.errors import TargetError
from edgetl.core.targets import Arch, Precision, Runtime, Target, list_targets, load_target, target_names

REPO = Path(__file__).resolve().parent.parent
REQUIRED_SHIPPED = {
    "x86-ort-int8", "x86-ort-fp32", "x86-openvino-int8", "x86-openvino-fp32", "x86-openvino-bf16", "rpi4-ort-int8",
    "x86-vnni-ort-int8",
}

GOOD = """\
name = "my-board"
description = "a user's board"
runtime = "onnxruntime"
precision = "int8"
threads = 3
latency_budget_ms = 40
memory_budget_mb = 256
"""


def write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- shipped targets ---------------------------------------------------------------------------

def test_required_targets_ship():
    assert REQUIRED_SHIPPED <= set(target_names())


@pytest.mark.parametrize("name", target_names())
def test_shipped_target_validates(name):
    target = load_target(name)
    assert target.name == name == (REPO / "targets" / f"{name}.toml").stem
    assert target.description and target.arch is not Arch.ANY
    assert Target.from_dict(target.to_dict()) == target
    json.dumps(target.to_dict())  # manifest-ready
    if target.arch is Arch.X86_64:
        # Budgets with margin over what this machine measured (ORT int8 3.4 ms, fp32 6.5 ms,
        # OpenVINO f32 4.5 ms, bf16 3.1 ms) and a memory budget a ~100-300 MB process meets.
        assert 10 <= target.latency_budget_ms <= 30
        assert 250 <= target.memory_budget_mb <= 1024
        assert target.threads == 2 and target.batch_size == 1


def test_rpi4_target():
    t = load_target("rpi4-ort-int8")
    assert (t.runtime, t.precision, t.threads, t.arch) == (Runtime.ONNXRUNTIME, Precision.INT8, 4, Arch.AARCH64)


def test_every_shipped_target_names_its_cpu_class():
    from edgetl.core.targets import Isa

    isas = {t.name: t.isa for t in list_targets()}
    assert None not in isas.values()
    assert isas["rpi4-ort-int8"] is Isa.ARM64 and isas["x86-vnni-ort-int8"] is Isa.X86_VNNI
    # the default x86 int8 targets are safe on every x86-64 CPU with AVX2
    assert isas["x86-ort-int8"] is Isa.X86_AVX2 and isas["x86-openvino-int8"] is Isa.X86_AVX2


def test_a_target_without_isa_gets_its_architecture_s_baseline(tmp_path):
    from edgetl.core.targets import Isa

    assert load_target(write(tmp_path, GOOD + 'arch = "x86_64"\n')).isa is Isa.X86_AVX2
    assert load_target(write(tmp_path, GOOD + 'arch = "aarch64"\n', "arm.toml")).isa is Isa.ARM64
    anywhere = load_target(write(tmp_path, GOOD, "any.toml"))
    assert anywhere.isa is None and anywhere.arch is Arch.ANY
    assert load_target(write(tmp_path, GOOD + 'isa = "x86-vnni"\n', "vnni.toml")).arch is Arch.X86_64


@pytest.mark.parametrize("arch, flags, fitting", [
    ("x86_64", ["avx2", "fma"], {"x86-ort-int8", "x86-openvino-int8", "x86-ort-fp32"}),
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], {"x86-ort-int8", "x86-vnni-ort-int8", "x86-openvino-int8"}),
    ("x86_64", ["avx2", "avx_vnni"], {"x86-vnni-ort-int8"}),
    ("x86_64", ["avx2", "amx_int8", "amx_tile"], {"x86-vnni-ort-int8"}),
    ("aarch64", ["asimd"], {"rpi4-ort-int8"}),
    ("aarch64", ["asimd", "asimddp"], {"rpi4-ort-int8"}),
])
def test_which_targets_fit_a_cpu(arch, flags, fitting):
    from edgetl.core.isa import cpu_class, cpu_from_flags, fitting_isas
    from edgetl.core.targets import targets_for

    cpu = cpu_from_flags(arch, flags)
    assert cpu_class(cpu) == fitting_isas(cpu)[0].value  # what result files measured on it are named
    assert cpu_class(cpu_from_flags(arch, [])) == ("x86_64" if arch == "x86_64" else "arm64")
    names = [t.name for t in targets_for(cpu)]
    assert fitting <= set(names)
    assert all(t.fits(cpu) == (t.name in names) for t in list_targets())
    if arch == "x86_64":
        assert ("x86-vnni-ort-int8" in names) == cpu.vnni and "rpi4-ort-int8" not in names
        assert [i.value for i in fitting_isas(cpu)] == (["x86-vnni", "x86-avx2"] if cpu.vnni else ["x86-avx2"])
    else:
        assert not any(n.startswith("x86") for n in names)
        assert [i.value for i in fitting_isas(cpu)][0] == ("arm64-dotprod" if "asimddp" in flags else "arm64")


def test_targets_for_orders_by_the_latency_measured_on_the_cpu_class():
    from edgetl.core.isa import cpu_from_flags
    from edgetl.core.targets import targets_for

    for cpu in (cpu_from_flags("x86_64", ["avx2"]), cpu_from_flags("x86_64", ["avx2", "avx512_vnni"])):
        ordered = targets_for(cpu)
        classes = ["x86-vnni", "x86-avx2"] if cpu.vnni else ["x86-avx2"]
        speeds = [next((t.measured_ms[c] for c in classes if t.measured_ms and c in t.measured_ms), float("inf"))
                  for t in ordered]
        assert speeds == sorted(speeds)


def test_this_cpu_is_read_and_classified():
    import platform

    from edgetl.core.isa import fitting_isas, saturates, this_cpu

    cpu = this_cpu()
    assert cpu.arch == {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    assert cpu.source in ("/proc/cpuinfo", "numpy", "none")
    if cpu.arch == "x86_64" and cpu.source != "none":
        assert "avx2" in cpu.flags and fitting_isas(cpu)  # every machine this project runs on has AVX2
        assert saturates(cpu, reduced_range=False) == (not cpu.vnni) and not saturates(cpu, reduced_range=True)


def test_list_targets_sorted_and_complete():
    assert [t.name for t in list_targets()] == target_names() == sorted(target_names())


def test_runtime_available_here():
    for name in ("x86-ort-int8", "x86-openvino-int8"):
        ok, why = load_target(name).runtime_available()
        assert ok, why


def test_runtime_unavailable_device_has_reason():
    t = Target(name="gpu", runtime="onnxruntime", device="CUDAExecutionProvider", precision="fp32",
               threads=1, latency_budget_ms=5, memory_budget_mb=100)
    ok, why = t.runtime_available()
    assert not ok and "CUDAExecutionProvider" in why


# --- schema errors -----------------------------------------------------------------------------

def test_user_toml_path(tmp_path):
    path = write(tmp_path, GOOD)
    for ref in (path, str(path)):
        t = load_target(ref)
        assert (t.name, t.runtime, t.precision, t.threads) == ("my-board", Runtime.ONNXRUNTIME, Precision.INT8, 3)
        assert t.device == "CPUExecutionProvider" and t.batch_size == 1 and t.input_size is None
        assert t.retraining is False and t.latency_budget_ms == 40.0


def test_name_defaults_to_file_stem(tmp_path):
    path = write(tmp_path, GOOD.replace('name = "my-board"\n', ""), "pi-zero.toml")
    assert load_target(path).name == "pi-zero"


def test_unknown_key_suggests(tmp_path):
    path = write(tmp_path, GOOD.replace("threads = 3", "thread = 3"))
    with pytest.raises(TargetError, match=r"unknown key 'thread' \(did you mean 'threads'\?\)") as exc:
        load_target(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    "line, replacement, pattern",
    [
        ('runtime = "onnxruntime"', 'runtime = "tensorrt"', r"'runtime': 'tensorrt'.*allowed values: onnxruntime, openvino"),
        ('precision = "int8"', 'precision = "int4"', r"'precision': 'int4'.*allowed values: fp32, int8, bf16"),
        ("threads = 3", "threads = 0", r"'threads': 0 \(expected an integer from 1"),
        ("threads = 3", 'threads = "4"', r"'threads': '4' \(expected an integer"),
        ("threads = 3", "threads = 2.5", r"'threads': 2.5"),
        ("latency_budget_ms = 40", "latency_budget_ms = -1", r"'latency_budget_ms': -1 \(expected a number > 0\)"),
        ("memory_budget_mb = 256", "memory_budget_mb = true", r"'memory_budget_mb': True"),
        ("threads = 3", "threads = 3\nretraining = \"yes\"", r"'retraining': 'yes' \(expected true or false\)"),
        ("threads = 3", "threads = 3\ninput_size = 4", r"'input_size': 4"),
        ("threads = 3", "threads = 3\narch = \"riscv\"", r"'arch': 'riscv'.*allowed values: x86_64, aarch64, any"),
        ('precision = "int8"', 'precision = "bf16"', r"'precision': 'bf16' \(only runtime 'openvino'"),
        ("threads = 3", 'threads = 3\ndevice = "CPU"', r"'device': 'CPU' \(with runtime 'onnxruntime'"),
        ('name = "my-board"', 'name = "my board/1"', r"'name': 'my board/1'"),
        ("threads = 3", 'threads = 3\nisa = "x86-avx512"', r"'isa': 'x86-avx512'.*allowed values: x86-avx2, x86-vnni"),
        ("threads = 3", 'threads = 3\nisa = "arm64"\narch = "x86_64"', r"'isa' 'arm64' is for aarch64 CPUs"),
        ("threads = 3", 'threads = 3\nmeasured_ms = { x86-avx3 = 2.0 }', r"'measured_ms'.*not a CPU class"),
        ("threads = 3", 'threads = 3\nmeasured_ms = { x86-avx2 = -2.0 }', r"'measured_ms'.*expected a number > 0"),
    ],
)
def test_bad_value_names_key_value_and_allowed(tmp_path, line, replacement, pattern):
    assert line in GOOD
    path = write(tmp_path, GOOD.replace(line, replacement))
    with pytest.raises(TargetError, match=pattern):
        load_target(path)


def test_openvino_device_checked(tmp_path):
    text = GOOD.replace('"onnxruntime"', '"openvino"')
    assert load_target(write(tmp_path, text + 'device = "GPU.0"\n')).device == "GPU.0"
    with pytest.raises(TargetError, match="'device': 'CPUExecutionProvider'"):
        load_target(write(tmp_path, text + 'device = "CPUExecutionProvider"\n', "b.toml"))


def test_missing_required_key(tmp_path):
    path = write(tmp_path, GOOD.replace("threads = 3\n", ""))
    with pytest.raises(TargetError, match="missing required key.*threads"):
        load_target(path)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target(write(tmp_path, "name = \n"))
    with pytest.raises(TargetError, match="no such target file"):
        load_target(tmp_path / "nope.toml")


def test_unknown_name_suggests():
    with pytest.raises(TargetError, match=r"unknown target 'x86-ort-int'.*did you mean 'x86-ort-int8'\?.*known:"):
        load_target("x86-ort-int")


def test_target_built_in_python_is_validated():
    with pytest.raises(TargetError, match="'threads': -2"):
        Target(name="t", runtime="onnxruntime", precision="fp32", threads=-2, latency_budget_ms=1, memory_budget_mb=1)
    t = Target(name="t", runtime="openvino", precision="bf16", threads=1, latency_budget_ms=1, memory_budget_mb=1)
    assert t.runtime is Runtime.OPENVINO and t.device == "CPU"


def test_from_dict_rejects_unknown_key():
    d = load_target("x86-ort-int8").to_dict() | {"latency_budget": 3}
    with pytest.raises(TargetError, match="did you mean 'latency_budget_ms'"):
        Target.from_dict(d)


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_table(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "deployment target" in out and "rpi4" in out


def test_cli_doctor_names_this_cpu_and_the_targets_that_fit_it(capsys):
    from edgetl.core.isa import this_cpu
    from edgetl.core.targets import targets_for

    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cpu = this_cpu()
    assert doc["cpu"]["arch"] == cpu.arch and doc["cpu"]["int8_flags"] == cpu.int8_flags
    assert doc["targets"] == [t.name for t in targets_for(cpu)] and doc["targets"]
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "targets that fit this CPU" in out and doc["targets"][0][:12] in out


def test_cli_json(capsys):
    assert main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(target_names())
    assert all(r["runtime_available"] is True and "runtime_status" in r for r in rows)


def test_cli_user_file(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["targets", str(path), "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["my-board"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["targets", "x86-ovino-int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgetl targets: error: unknown target") and "\n" not in err and "Traceback" not in err
    assert main(["targets", str(write(tmp_path, GOOD.replace("threads", "thraeds")))]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'threads'" in err and "\n" not in err


# --- packaging ---------------------------------------------------------------------------------

def _declared_packages() -> list[str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_pyproject_lists_every_subpackage():
    # The package list is explicit (to map targets/ to edgetl._targets); a subpackage
    # missing from it would silently be left out of the wheel.
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "edgetl").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    missing = sorted(found - set(_declared_packages()))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


@pytest.mark.slow
def test_wheel_ships_targets(tmp_path):
    """A real (non-editable) install from a wheel finds the shipped targets."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # build from a copy: no build/ or egg-info in the shared tree
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "edgetl", src / "edgetl", ignore=ignore)
    shutil.copytree(REPO / "targets", src / "targets", ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True, capture_output=True, cwd=tmp_path, timeout=300,
    )
    (wheel,) = wheels.glob("edgetl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {f"edgetl/_targets/{n}.toml" for n in REQUIRED_SHIPPED}
    assert shipped <= set(names)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", str(wheel), "--no-deps", "-q", "--target", str(site)],
        check=True, capture_output=True, cwd=tmp_path, timeout=300,
    )
    code = "import edgetl.core.targets as t; print(t._shipped_dir()); print(','.join(t.target_names()))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120).stdout.split("\n")
    assert Path(out[0]) == site / "edgetl" / "_targets"
    assert REQUIRED_SHIPPED <= set(out[1].split(","))
