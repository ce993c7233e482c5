"""edgetl bench"""

from __future__ import annotations

import argparse
import sys

from edgetl.commands._args import Number, batch_list, count, seconds, str_list, thread_list

HELP = "latency, throughput, memory, size and accuracy per runtime and precision"
DESCRIPTION = """\
Benchmark a RUN directory (PyTorch eager, ONNX Runtime fp32/int8, OpenVINO fp32/bf16/int8
from its exported and quantized files), a bundle (its deployed runtime through edgetl,
and the runtime called directly on the same files: edgetl's own overhead), or a single
.onnx/.xml model file.

Every configuration runs in a fresh process (honest peak memory and cold start), and
configurations are repeated in interleaved passes (--repeats); each row reports the
median over passes. Timed: image tensor -> logits, preprocessing excluded. Rows other
than PyTorch run with torch blocked, as on a device. precision_executed is what the
runtime actually ran (OpenVINO may run f32 models in bf16). speedup_vs_torch compares
p50 with the PyTorch eager fp32 row of the same batch and threads.

--target NAME (repeatable; a shipped name or a .toml path) adds the target's
configuration and marks its budgets (p90 latency, peak memory) pass/fail; --check then
exits 1 when a budget is missed or a target's row could not run. A target whose
runtime or device is absent here is reported as skipped, with the reason.

Examples:
  edgetl bench runs/digits --batch 1,8 --data data/val --json bench.json --plot bench.png
  edgetl bench bundle/ --run runs/digits --repeats 5
  edgetl bench bundle/ --target rpi4-ort-int8 --check
  edgetl bench b-ort-int8/ b-openvino-int8/ b-ort-fp32/ --run runs/digits --plot bench.png
  edgetl bench runs/digits/openvino/backbone.xml --runtimes openvino --threads 2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_OR_BUNDLE", nargs="+",
                   help="RUN directory, bundle directory, or .onnx/.xml model file; several are measured in one run, "
                        "side by side (bundles for different targets, say)")
    p.add_argument("--target", action="append", default=[], metavar="NAME",
                   help="check this target's budgets (repeatable; name or .toml path)")
    p.add_argument("--runtimes", type=str_list, metavar="LIST", help="from torch,onnxruntime,openvino (default: all)")
    p.add_argument("--precisions", type=str_list, metavar="LIST", help="from fp32,int8,bf16 (default: all)")
    p.add_argument("--batch", type=batch_list, metavar="LIST", help="batch sizes, e.g. 1,8 (default: 1, or the target's)")
    p.add_argument("--threads", type=thread_list, metavar="LIST", help="thread counts, e.g. 1,2 (default: 2, or the target's)")
    p.add_argument("--warmup", type=Number(int, 0, 1_000_000, what="a number of runs"), default=10, metavar="N", help="untimed runs first (default: 10)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--duration", type=seconds, default=2.0, metavar="S",
                     help="seconds timed per configuration and pass (default: 2)")
    how.add_argument("--iterations", type=count, metavar="N", help="timed runs per configuration and pass")
    p.add_argument("--repeats", type=Number(int, 1, 1000, what="a number of passes"), default=3, metavar="R",
                   help="interleaved passes over all configurations (default: 3)")
    p.add_argument("--data", metavar="DATA", help="image folder: time real images and report accuracy")
    p.add_argument("--run", metavar="RUN", help="with a bundle: the RUN whose PyTorch model is the reference row")
    p.add_argument("--no-direct", dest="direct", action="store_false",
                   help="with a bundle: skip the row that calls the runtime directly")
    p.add_argument("--json", metavar="F", help="write the results as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="F", help="write the results as CSV")
    p.add_argument("--plot", metavar="F", help="write a PNG: accuracy against latency (or latency bars)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target's budget is missed")


def _mark(ok: object) -> str:
    return "-" if ok is None else ("[green]pass[/]" if ok else "[bold red]FAIL[/]")


def _num(value: object, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _conforms(c: object) -> str:
    """A bundle row's conformance check here: its top-1 agreement with the reference."""
    if not isinstance(c, dict) or c.get("passed") is None:
        return "-"
    return f"{'[green]yes[/]' if c['passed'] else '[bold red]NO[/]'} {c['agreement']:.2f}"


def print_results(report) -> None:
    """The results as a rich table on stdout; rows that did not run are listed under it."""
    from rich.console import Console
    from rich.table import Table

    from edgetl.benchmarking.environment import machine_name

    has_target = any(r.get("target") for r in report.results)
    several = len({r.get("source") for r in report.results if r["runtime"] != "torch"}) > 1
    table = Table(title=f"edgetl bench · {machine_name(report.environment)}", title_justify="left")
    for col in ("configuration", "executed", "batch", "thr", "p50 ms", "p90 ms", "p99 ms", "items/s", "RSS MB",
                "size MB", "cold ms", "×torch", "accuracy", "conforms", *(("budget p90 / memory",) if has_target else ())):
        table.add_column(col, justify="left" if col in ("configuration", "executed") else "right")
    notes = []
    for r in report.results:
        name = f"{r['runtime']} {r['precision']}" + ("" if r["mode"] in ("edgetl", "eager") else f" ({r['mode']})")
        if several and r.get("source") and r["runtime"] != "torch":
            name = f"{r['source']}: {name}"
        if r["status"] != "ok":
            notes.append(f"{name}, batch {r['batch']}, {r['threads']} thread(s): {r['status']}: {r['reason']}")
            table.add_row(name, "-", str(r["batch"]), str(r["threads"]), f"[yellow]{r['status']}[/]",
                          *[""] * (9 + has_target))
            continue
        row = [name, r["precision_executed"], str(r["batch"]), str(r["threads"]), _num(r["p50_ms"], ".3g"),
               _num(r["p90_ms"], ".3g"), _num(r["p99_ms"], ".3g"), _num(r["throughput"], ",.0f" if r["throughput"] >= 100 else ".3g"),
               _num(r["peak_rss_mb"], ".0f"), _num(r["size_mb"], ".2f"), _num(r["cold_start_ms"], ".0f"),
               "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.1f}×",
               "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}", _conforms(r.get("conformance"))]
        if has_target:
            row.append(f"{r['target']}: {_mark(r['p90_pass'])} ≤{r['budget_p90_ms']:g} ms / "
                       f"{_mark(r['memory_pass'])} ≤{r['budget_memory_mb']:g} MB" if r.get("target") else "")
        table.add_row(*row)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 180))
    console.print(table)
    for note in notes:
        console.print(f"  {note}", markup=False)


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.benchmarking import BenchConfig, bench

    if args.json == "-":
        _ui.quiet()
    cfg = BenchConfig(
        runtimes=tuple(args.runtimes) if args.runtimes else None,
        precisions=tuple(args.precisions) if args.precisions else None,
        batches=tuple(args.batch) if args.batch else None,
        threads=tuple(args.threads) if args.threads else None,
        warmup=args.warmup, duration=None if args.iterations else args.duration, iterations=args.iterations,
        repeats=args.repeats, targets=tuple(args.target), data=args.data, run=args.run, direct=args.direct,
    )
    report = bench(args.source, cfg)
    if args.json == "-":
        _ui.print_json(report.to_dict())
    else:
        print_results(report)
        if args.json:
            _ui.info(f"wrote {report.write_json(args.json)}")
    if args.csv:
        _ui.info(f"wrote {report.write_csv(args.csv)}")
    if args.plot:
        written = report.write_plot(args.plot)
        if written:
            _ui.info(f"wrote {written}")
    misses = report.misses
    for miss in misses:
        print(f"edgetl bench: budget: {miss}", file=sys.stderr)
    return 1 if args.check and misses else 0
