"""Every benchmark script, in sequence (``make bench``): the README table first (it builds
the RUN and IR that openvino_agreement.py measures), then the others. A failing script
is reported and the rest still run; the exit code says whether all passed.

    python benchmarks/run_all.py
    python benchmarks/run_all.py --only bench_readme,openvino_agreement
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = ("bench_readme", "openvino_agreement")


def scripts() -> list[str]:
    found = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "run_all")
    return [s for s in FIRST if s in found] + [s for s in found if s not in FIRST]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated script names (default: all)")
    args = p.parse_args(argv)
    names = scripts() if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    summary = []
    for name in names:
        print(f"\n=== benchmarks/{name}.py ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        summary.append((name, rc, time.perf_counter() - t0))
    print("\n=== summary ===")
    for name, rc, seconds in summary:
        print(f"{name:24} {'ok' if rc == 0 else f'FAILED (exit {rc})':18} {seconds:7.0f} s")
    return 0 if all(rc == 0 for _, rc, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
