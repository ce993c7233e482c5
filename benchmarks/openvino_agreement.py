"""Does `edgetl bench` agree with OpenVINO's own `benchmark_app`?

Times the same IR file, with the same compile properties (PERFORMANCE_HINT=LATENCY,
INFERENCE_NUM_THREADS, INFERENCE_PRECISION_HINT, given to benchmark_app through
-load_config), batch 1, synchronous API, random inputs, with both tools in alternating
rounds; prints edgetl's p50 over benchmark_app's median per precision. The goal: within
15% (a ratio between 0.85 and 1.15).

    python benchmarks/openvino_agreement.py                       # the README's IR
    python benchmarks/openvino_agreement.py --xml RUN/openvino/backbone.xml --threads 4
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
DEFAULT_XML = HERE.parent / "build" / "bench_readme" / "run" / "openvino" / "backbone.xml"  # bench_readme.py makes it
_MEDIAN = re.compile(r"Median:\s+([0-9.]+)\s*(ms|us|s)\b")


def _benchmark_app() -> str:
    found = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(found).exists():
        sys.exit("openvino_agreement: benchmark_app not found (it comes with 'pip install openvino')")
    return found


def benchmark_app_median(xml: Path, threads: int, precision: str, seconds: float) -> float:
    import openvino as ov

    port = ov.Core().read_model(str(xml)).inputs[0]
    dims = [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
    dims[0] = 1
    config = {"CPU": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads),
                      "INFERENCE_PRECISION_HINT": precision}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        proc = subprocess.run(
            [_benchmark_app(), "-m", str(xml), "-d", "CPU", "-api", "sync", "-load_config", f.name,
             "-shape", f"{port.get_any_name()}[{','.join(map(str, dims))}]", "-t", str(int(max(1, seconds)))],
            capture_output=True, text=True, timeout=300 + seconds,
        )
    finally:
        Path(f.name).unlink(missing_ok=True)
    match = _MEDIAN.search(proc.stdout)
    if proc.returncode or not match:
        sys.exit(f"openvino_agreement: benchmark_app failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]


def edgetl_p50(xml: Path, threads: int, precision: str, seconds: float) -> tuple[float, str]:
    from edgetl.core import ui as _ui
    from edgetl.benchmarking import BenchConfig, bench

    _ui.quiet()

    cfg = BenchConfig(runtimes=("openvino",), precisions=("bf16" if precision == "bf16" else "fp32",),
                      batches=(1,), threads=(threads,), duration=seconds, repeats=1, warmup=20)
    (row,) = bench(xml, cfg).results
    if row["status"] != "ok":
        sys.exit(f"openvino_agreement: edgetl bench failed: {row['reason']}")
    return row["p50_ms"], row["precision_executed"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--xml", type=Path, default=DEFAULT_XML, help="OpenVINO IR (default: the README benchmark's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default="f32,bf16", help="INFERENCE_PRECISION_HINT values, e.g. f32,bf16")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per tool and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians over rounds are compared")
    args = p.parse_args(argv)
    if not args.xml.is_file():
        sys.exit(f"openvino_agreement: {args.xml} not found; run benchmarks/bench_readme.py first or pass --xml")
    import os

    os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
    print(f"{args.xml}, batch 1, {args.threads} threads, PERFORMANCE_HINT=LATENCY, sync API, "
          f"{args.rounds} alternating rounds of {args.seconds:g} s")
    print(f"{'hint':6} {'executed':9} {'edgetl p50 ms':>14} {'benchmark_app median ms':>24} {'ratio':>7}  within 15%")
    worst = 0.0
    for precision in [s.strip() for s in args.precisions.split(",") if s.strip()]:
        ours, theirs, executed = [], [], ""
        for _ in range(args.rounds):
            p50, executed = edgetl_p50(args.xml, args.threads, precision, args.seconds)
            ours.append(p50)
            theirs.append(benchmark_app_median(args.xml, args.threads, precision, args.seconds))
        a, b = statistics.median(ours), statistics.median(theirs)
        ratio = a / b
        worst = max(worst, abs(ratio - 1))
        print(f"{precision:6} {executed:9} {a:14.3f} {b:24.3f} {ratio:7.3f}  {'yes' if abs(ratio - 1) <= 0.15 else 'NO'}")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
