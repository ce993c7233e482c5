"""edgetl doctor [BUNDLE]"""

from __future__ import annotations

import argparse

from edgetl.commands._args import path_arg

HELP = "this CPU's int8 instructions, the targets that fit it, the runtimes; with BUNDLE: its conformance check here"
DESCRIPTION = """\
Without BUNDLE: report this machine's CPU as int8 sees it (AVX2, AVX-512 VNNI, AVX-VNNI,
AMX; on ARM the dot-product and int8 matrix-multiply extensions), the deployment targets
that fit it, fastest first (by the latency measured on this CPU class), each inference
runtime's version and the precisions it actually executes (OpenVINO is asked by compiling
a tiny model for each: on CPUs with AVX-512 BF16 or AMX it runs float models in bf16 unless
told f32; on ARM CPUs it runs int8 IRs in fp16), and which trainer 'edgetl retrain' and
'edgetl adapt' use (ONNX Runtime training artifacts where onnxruntime-training-cpu is
installed, else the numpy trainer: the same AdamW update, step for step).

With BUNDLE: run the bundle's conformance set here (a few dozen held-out items it carries,
with the outputs its reference computed) and report the top-1 agreement with the reference,
the largest logit error, the runtime and its version, this CPU's flags and the verdict. int8
is not computed alike on every CPU: on x86 CPUs without VNNI, int8 built with full-range
weights saturates. predict, evaluate and retrain run the same check the first time they
open a bundle on a machine (remembered per CPU and runtime version) and refuse a bundle that
does not conform (unless --allow-nonconforming). Exit status 3 when it does not conform.

Torch-free: run it on the device.

Examples:
  edgetl doctor
  edgetl doctor --json
  edgetl doctor bundle/
  edgetl doctor bundle.tar.gz --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", nargs="?", type=path_arg,
                   help="a bundle folder or .tar.gz: run its conformance set here")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], help="BUNDLE: check it on this runtime instead")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def _machine(ui, caps: dict) -> None:
    from edgetl.core.isa import this_cpu
    from edgetl.core.targets import targets_for

    cpu = this_cpu()
    vnni = "" if cpu.arch != "x86_64" else (" (has VNNI)" if cpu.vnni else " (no VNNI: full-range int8 saturates here)")
    ui.print_table(f"this CPU: {cpu.model} ({cpu.arch}), flags from {cpu.source}",
                   ["int8 instructions", "CPU classes (isa)"],
                   [[(", ".join(cpu.int8_instructions) or "none known") + vnni,
                     ", ".join(i.value for i in _fitting(cpu)) or "none"]])
    fitting = targets_for(cpu)
    classes = [i.value for i in _fitting(cpu)]
    rows = []
    for t in fitting:
        measured = next(((c, t.measured_ms[c]) for c in classes if t.measured_ms and c in t.measured_ms), None)
        rows.append([t.name, f"{t.runtime.value} {t.precision.value}",
                     f"{measured[1]:.1f} on {measured[0]}" if measured else "-",
                     "yes" if t.runtime_available()[0] else "no"])
    ui.print_table("targets that fit this CPU, fastest first (ms: EfficientNet-Lite0, 224 px, batch 1)",
                   ["target", "runs", "measured ms", "installed"], rows)
    rt = []
    for name, r in caps["runtimes"].items():
        executed = r.get("precisions_executed") or {}
        rt.append([name, r["version"] or "not installed", r.get("distribution") or "",
                   ", ".join(f"{k}->{v}" for k, v in executed.items()) or r["install"]])
    ui.print_table(f"runtimes on {caps['system']} {caps['machine']}, Python {caps['python']}",
                   ["runtime", "version", "distribution", "precision asked -> executed"], rt)
    ui.info(f"on-device retraining: {caps['retraining']['detail']}")


def _fitting(cpu):
    from edgetl.core.isa import fitting_isas

    return fitting_isas(cpu)


def _bundle(args: argparse.Namespace, ui) -> int:
    from edgetl.device.conformance import check, failure_message
    from edgetl.device.predictor import Predictor
    from edgetl.errors import BundleError

    predictor = Predictor.from_bundle(args.bundle, runtime=args.runtime, conformance="off")
    report = check(predictor, use_cache=False)
    if report is None:
        raise BundleError(f"{args.bundle}: this bundle carries no conformance set (made before edgetl had them); "
                          "re-package it to get one")
    if args.json:
        ui.print_json({**report.to_dict(), "verdict": report.verdict})
    else:
        cpu = report.cpu
        ui.print_table(
            f"{report.bundle} v{report.version} (target {report.target}) on this CPU",
            ["check", "value"],
            [["items", report.n_items], ["top-1 agreement with the reference", f"{report.agreement:.3f}"],
             ["needed", f"{report.min_agreement:.2f}"], ["largest logit error (of logit scale)", f"{report.max_logit_error:.3g}"],
             ["smallest cosine of backbone outputs", f"{report.min_cosine:.5f}"],
             ["runtime", f"{report.runtime} {report.runtime_version or ''} ({report.precision_executed})"],
             ["CPU", f"{cpu['model']} ({cpu['arch']}: {', '.join(cpu['int8_instructions']) or 'none known'})"],
             ["target's CPU class", f"{report.target_isa or 'any'} ({'this CPU is one' if report.fits_target else 'this CPU is not one'})"],
             ["verdict", report.verdict]])
    if not report.passed:
        import sys

        print(f"edgetl doctor: {failure_message(report, predictor.bundle.target)}", file=sys.stderr)
        return 3
    return 0


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.capabilities import capabilities

    if args.json:
        _ui.quiet()
    if args.bundle:
        return _bundle(args, _ui)
    if args.runtime:
        from edgetl.errors import ConfigError

        raise ConfigError("--runtime is for checking a BUNDLE")
    caps = capabilities()
    if args.json:
        from edgetl.core.isa import this_cpu
        from edgetl.core.targets import targets_for

        cpu = this_cpu()
        _ui.print_json({**caps, "cpu": cpu.to_dict(),
                        "targets": [t.name for t in targets_for(cpu)]})
        return 0
    _machine(_ui, caps)
    return 0
