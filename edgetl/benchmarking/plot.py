"""The benchmark plot: accuracy against p50 latency (points, log axis) when accuracy is
known, else a bar chart of p50 per configuration on a linear axis from zero (bars on a log
axis made a 2.3x gain look like 20x), each bar labelled with its time and its ratio to
PyTorch. matplotlib is optional on a device: without it, no plot and a note."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgetl.core import ui as _ui

_COLORS = {"torch": "tab:red", "onnxruntime": "tab:blue", "openvino": "tab:purple"}
_MARKERS = {1: "o", 8: "s"}


def _label(r: dict[str, Any], source: bool = False) -> str:
    mode = "" if r["mode"] in ("edgetl", "eager") else f" {r['mode']}"
    executed = r.get("precision_executed") or r["precision"]
    where = f"{r['source']}: " if source and r.get("source") and r["runtime"] != "torch" else ""
    return f"{where}{r['runtime']} {executed}{mode} b{r['batch']}"


def plot(report: Any, path: str | os.PathLike, title: str | None = None) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _ui.warn("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    rows = [r for r in report.results if r["status"] == "ok"]
    if not rows:
        _ui.warn("no configuration ran: no plot written")
        return None
    env = report.environment
    several = len({r.get("source") for r in rows if r["runtime"] != "torch"}) > 1
    title = title or f"edgetl bench · {env.get('cpu')} · {env.get('cpus_usable') or env.get('cpu_count')} CPUs"
    with_acc = [r for r in rows if r.get("accuracy") is not None]
    if with_acc:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for r in with_acc:
            ax.scatter(r["p50_ms"], 100 * r["accuracy"], s=60, color=_COLORS.get(r["runtime"], "gray"),
                       marker=_MARKERS.get(r["batch"], "^"), edgecolor="black" if r["mode"] == "direct" else None)
            ax.annotate(_label(r, several), (r["p50_ms"], 100 * r["accuracy"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=7)
        ax.set_xscale("log")
        ax.set(xlabel="p50 latency per batch (ms, log scale)", ylabel="top-1 accuracy (%)", title=title)
        ax.grid(True, which="both", alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
        labels = [f"{_label(r, several)} t{r['threads']}" for r in rows]
        values = [r["p50_ms"] for r in rows]
        ax.barh(range(len(rows)), values, color=[_COLORS.get(r["runtime"], "gray") for r in rows])
        for i, r in enumerate(rows):
            ratio = r.get("speedup_vs_torch")
            text = f" {r['p50_ms']:.3g} ms" + (f" ({ratio:.1f}x torch)" if ratio and r["runtime"] != "torch" else "")
            ax.text(r["p50_ms"], i, text, va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.35)  # linear from zero: bar lengths are the latencies
        ax.set(xlabel="p50 latency per batch (ms)", title=title)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
