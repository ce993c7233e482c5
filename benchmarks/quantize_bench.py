"""fp32 vs int8 per runtime: accuracy, agreement, size, batch-1 latency, quantization time.

    python benchmarks/quantize_bench.py RUN [--engine both] [--threads 2] [--json out.json]
    python benchmarks/quantize_bench.py --build runs/bench [--image-size 224]   # digits RUN first

RUN must be exported (``edgetl export RUN``); it is quantized in place (as ``edgetl
quantize`` would). Latency: median of batch-1 runs at ``--threads`` threads after a
warm-up; OpenVINO's fp32 IR is timed pinned to f32 and as OpenVINO runs it by default
(bf16 on CPUs with AMX), and every row names the precision executed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _build(out: Path, image_size: int) -> Path:
    import tempfile

    from edgetl.modalities.image import write_digits
    from edgetl.workstation.onnx_export import export
    from edgetl.workstation.training import TrainConfig, train

    data = write_digits(Path(tempfile.mkdtemp(prefix="digits-")) / "data", per_class=100, seed=0)
    run = train(data, out, TrainConfig(image_size=image_size)).run_dir
    export(run)
    return run


def _median_ms(fn, x: np.ndarray, runs: int) -> float:
    for _ in range(5):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _latency(run: Path, row: dict, threads: int, runs: int) -> float:
    size = json.loads((run / "run.json").read_text())["preprocess"]["input_size"]
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    path = run / row["file"]
    if row["runtime"] == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return _median_ms(lambda a: sess.run(None, {"images": a}), x, runs)
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if row.get("inference_precision_hint") == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    return _median_ms(lambda a: request.infer([a]), x, runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="exported RUN directory")
    p.add_argument("--build", metavar="OUT", help="train + export a digits RUN at OUT first")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--engine", choices=["ort", "nncf", "both"], default="both")
    p.add_argument("--calibration", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", metavar="FILE", help="write the results here")
    args = p.parse_args(argv)

    from edgetl.core import ui as _ui
    from edgetl.errors import QuantizationError
    from edgetl.workstation.quantization import QuantizeConfig, quantize
    from edgetl.core.run import package_versions

    if not args.run and not args.build:
        p.error("give an exported RUN, or --build OUT")
    run = _build(Path(args.build), args.image_size) if args.build else Path(args.run)
    t0 = time.perf_counter()
    try:
        report = quantize(run, QuantizeConfig(engine=args.engine, calibration=args.calibration))
    except QuantizationError as exc:
        report = exc.report  # type: ignore[attr-defined]
        _ui.warn(str(exc))
    wall = time.perf_counter() - t0
    for row in report["report"]:
        row["latency_ms"] = _latency(run, row, args.threads, args.runs)
    rows = [(r["runtime"], r["precision"], r["precision_executed"], r["accuracy"], r["drop"], r["agreement"],
             r["size_mb"], r["size_ratio"], len(r.get("fp32_nodes", [])), r["latency_ms"]) for r in report["report"]]
    _ui.print_table(
        f"quantize bench: {report['evaluation']['images']} held-out images, batch 1, {args.threads} threads",
        ["runtime", "precision", "executed", "accuracy", "drop", "agreement", "MB", "ratio", "fp32 nodes", "p50 ms"],
        rows,
    )
    seconds = {k: round(v, 2) for k, v in report["seconds"].items()}
    _ui.print_table("quantization time (s)", list(seconds), [list(seconds.values())])
    result = {"run": str(run), "threads": args.threads, "wall_seconds": wall, "rows": report["report"],
              "seconds": report["seconds"], "guard": report["guard"], "passed": report["passed"],
              "versions": package_versions("onnxruntime-training-cpu", "openvino", "nncf")}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
