"""The picture of ``edgetl select``: estimated accuracy against deployed p90 latency, the
Pareto front (no other candidate is both faster and more accurate) and the budget line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["plot_selection", "pareto_front"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point dominates, fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_selection(report: Any, path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = [c for c in report.candidates if c.get("p90_ms") is not None]
    pts = [(c["p90_ms"], c["probe_accuracy"]) for c in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, (x, y) in zip(rows, pts):
        chosen = c.get("candidate", c["backbone"]) == report.recommended
        ax.scatter([x], [y], s=90 if chosen else 50, marker="*" if chosen else "o",
                   color="tab:green" if c["meets_budget"] else "tab:gray", zorder=3)
        shape = f"{c['input_size']} px" if c.get("input_size") else f"{c.get('max_length')} tokens"
        ax.annotate(f"{c['backbone']} ({shape})", (x, y), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="tab:blue", label="Pareto front")
    if report.recommended:
        ax.scatter([], [], marker="*", s=90, color="tab:green", label=f"recommended: {report.recommended}")
    ax.set_xlim(left=0, right=max([report.budget_ms] + [x for x, _ in pts]) * 1.15)
    ax.axvline(report.budget_ms, color="tab:red", label=f"budget {report.budget_ms:g} ms (p90)")
    ax.set(xlabel=f"p90 latency on {report.target} (ms)",
           ylabel=f"{report.sample['folds']}-fold linear-probe accuracy (sample of {report.sample['n']})",
           title=f"edgetl select: {Path(report.data).name} on {report.target}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
