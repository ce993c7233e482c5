"""The README's results table: EfficientNet-Lite0 on the digits, accuracy and latency for
PyTorch eager, ONNX Runtime fp32/int8 and OpenVINO fp32/bf16/int8 at batch 1 and 8, plus
the deployed bundle (target x86-ort-int8) through edgetl and the runtime called directly
on the same files (edgetl's own overhead).

    python benchmarks/bench_readme.py                 # ~10 min on 2 cores, the first time
    python benchmarks/bench_readme.py --repeats 5 --duration 3

Builds (once, cached in --work, default build/bench_readme) the digits, a linear-probe RUN at 224 px, its export,
int8 quantization and the bundle; then measures everything in one interleaved
`edgetl bench` session. Writes benchmarks/results/readme.{json,csv,png,md} and prints
the markdown table, with the machine named, ready to paste into the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

TARGET = "x86-ort-int8"
NAMES = {("torch", "fp32"): "PyTorch eager fp32", ("onnxruntime", "fp32"): "ONNX Runtime fp32",
         ("onnxruntime", "int8"): "ONNX Runtime int8 (QDQ)", ("openvino", "fp32"): "OpenVINO fp32",
         ("openvino", "bf16"): "OpenVINO bf16", ("openvino", "int8"): "OpenVINO int8 (NNCF)"}


def _stage(name: str, done: bool, fn) -> None:
    if done:
        print(f"· {name}: cached", file=sys.stderr)
        return
    t0 = time.perf_counter()
    print(f"· {name} ...", file=sys.stderr, flush=True)
    fn()
    print(f"· {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def prepare(work: Path, epochs: int | None) -> tuple[Path, Path, Path]:
    """Digits, RUN (trained, exported, quantized), validation folder and bundle, cached."""
    from edgetl.modalities.image import write_digits

    data, run, val, bundle = work / "digits", work / "run", work / "val", work / f"bundle-{TARGET}"
    _stage("digits", (data / "9").is_dir(), lambda: write_digits(data))

    def train():
        from edgetl.workstation.training import TrainConfig, train as train_fn

        train_fn(data, run, TrainConfig(backbone="efficientnet_lite0", epochs=epochs), overwrite=True)

    _stage("train (linear probe, 224 px)", (run / "model.pt").is_file(), train)

    def export():
        from edgetl.workstation.onnx_export import export as export_fn

        export_fn(run)

    _stage("export", (run / "openvino" / "backbone.xml").is_file(), export)

    def quantize():
        try:
            from edgetl.workstation.quantization import quantize as quantize_fn
        except ImportError as exc:
            sys.exit(f"bench_readme: edgetl.quantize is not available ({exc}); int8 rows need it")
        quantize_fn(run)

    _stage("quantize", (run / "onnx" / "backbone.int8.onnx").is_file()
           and (run / "openvino" / "backbone.int8.xml").is_file(), quantize)

    def val_folder():
        from edgetl.core.run import read_run_json

        info = read_run_json(run)
        root = Path(info["data_root"])
        shutil.rmtree(val, ignore_errors=True)
        for rel in info["split"]["val"]:
            dst = val / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / rel, dst)

    _stage("validation images", val.is_dir(), val_folder)

    def package():
        from edgetl.workstation.packaging import package as package_fn

        package_fn(run, TARGET, bundle, overwrite=True)

    _stage(f"package for {TARGET}", (bundle / "manifest.json").is_file(), package)
    return run, val, bundle


def measure(run: Path, val: Path, bundle: Path, args: argparse.Namespace):
    from edgetl.benchmarking import BenchConfig, execute, plan

    timing = dict(warmup=args.warmup, duration=args.duration, repeats=args.repeats, data=val)
    matrix = BenchConfig(batches=tuple(args.batch), threads=(args.threads,), **timing)
    deployed = BenchConfig(runtimes=("onnxruntime",), batches=tuple(args.batch), threads=(args.threads,), **timing)
    jobs = plan(run, matrix) + plan(bundle, deployed)
    return execute(jobs, matrix)


def _f(v, fmt=".2f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(report, bundle: Path) -> tuple[str, list[str]]:
    from edgetl.benchmarking.environment import machine_name

    env, rows = report.environment, report.results
    v = env["versions"]
    lines = [
        "| configuration | runs in | batch | p50 ms | p90 ms | items/s | peak RSS MB | size MB | × PyTorch | accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {NAMES.get((r['runtime'], r['precision']), r['runtime'])} ({r['mode']}) | {r['status']}: "
                         f"{r['reason']} | {r['batch']} | | | | | | | |")
            continue
        name = NAMES[(r["runtime"], r["precision"])]
        if r.get("path") == "backbone+head" and r["files"] and str(bundle) in r["files"][0]:
            name = f"**deployed bundle ({TARGET})**, " + ("through edgetl" if r["mode"] == "edgetl" else
                                                           "runtime called directly, same files")
        speed = "" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.1f}×"
        lines.append(f"| {name} | {r['precision_executed']} | {r['batch']} | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | "
                     f"{_f(r['throughput'], '.0f')} | {_f(r['peak_rss_mb'], '.0f')} | {_f(r['size_mb'])} | {speed} | "
                     f"{_f(r['accuracy'], '.3f')} |")
    checks = []
    for batch in sorted({r["batch"] for r in rows}):
        edge = next((r for r in rows if r["status"] == "ok" and r["mode"] == "edgetl" and r["batch"] == batch
                     and r["files"] and str(bundle) in r["files"][0]), None)
        direct = next((r for r in rows if r["status"] == "ok" and r["mode"] == "direct" and r["batch"] == batch), None)
        if edge and direct:
            overhead = edge["p50_ms"] / direct["p50_ms"] - 1
            lines.append(f"| edgetl's own overhead (deployed vs direct, p50) | | {batch} | {overhead:+.1%} | | | | | | |")
            if batch == 1:
                checks.append(f"edgetl overhead at batch 1: {overhead:+.1%} (goal ≤ +10%): "
                              f"{'PASS' if overhead <= 0.10 else 'FAIL'}")
                speed = edge["speedup_vs_torch"]
                if speed is not None:
                    checks.append(f"deployed int8 vs PyTorch eager fp32 at batch 1: {speed:.1f}× (goal ≥ 6×): "
                                  f"{'PASS' if speed >= 6 else 'FAIL'}")
    s = report.settings
    header = (f"Measured on **{machine_name(env)}**, {env['os']}, Python {env['python']}, "
              f"onnxruntime-training-cpu {v.get('onnxruntime-training-cpu', '?')}, openvino {v.get('openvino', '?')}, "
              f"torch {v.get('torch', '?')}; EfficientNet-Lite0 224 px linear probe on scikit-learn's digits, "
              f"accuracy on its {rows[0].get('accuracy_n') or 'validation'} validation images; "
              f"{rows[0]['threads']} threads; each row the median of {s['repeats']} interleaved passes of "
              f"{s['duration_s'] or s['iterations']} {'s' if s['duration_s'] else 'iterations'}, each in a fresh "
              f"process; image tensor → logits, preprocessing excluded; load average at start "
              f"{', '.join(f'{x:.1f}' for x in env['load_average'] or [])}. "
              f"Produced by `python benchmarks/bench_readme.py`.")
    return header + "\n\n" + "\n".join(lines) + "\n", checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=HERE.parent / "build" / "bench_readme",
                   help="cache of data, RUN and bundle (default: build/bench_readme, ignored by git)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where readme.{json,csv,png,md} go")
    p.add_argument("--batch", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="linear-probe epochs (default: edgetl's)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgetl.cli import _quiet_third_party

    _quiet_third_party()
    run, val, bundle = prepare(args.work, args.epochs)
    report = measure(run, val, bundle, args)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "readme.json")
    report.write_csv(args.out / "readme.csv")
    report.write_plot(args.out / "readme.png", title="EfficientNet-Lite0 on digits: accuracy vs latency")
    from edgetl.commands.bench import print_results

    print_results(report)
    table, checks = markdown(report, bundle)
    (args.out / "readme.md").write_text(table)
    print("\n" + table)
    for line in checks:
        print(line)
    print(f"\nwrote {args.out}/readme.json, readme.csv, readme.png, readme.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
