"""What a training run writes besides the model: history.csv and curves.png."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["write_history", "plot_curves"]


def write_history(run_dir: Path, history: list[dict]) -> None:
    keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    if history and "C" in history[0]:  # a solved linear probe: one row per L2 strength
        keys.insert(1, "C")
    with open(run_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def plot_curves(run_dir: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probe = bool(history) and "C" in history[0]
    x = [h["C"] if probe else h["epoch"] for h in history]
    xlabel = "L2 strength C (inverse regularisation)" if probe else "epoch"
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, name in ((a, "loss", "cross-entropy loss"), (b, "acc", "accuracy")):
        if probe:  # the chosen C's training value, the validation curve over every C
            ax.plot(x, [h[f"val_{key}"] for h in history], "o-", label="validation (selection data)")
            ax.plot(x, [float("nan") if h[f"train_{key}"] is None else h[f"train_{key}"] for h in history], "s",
                    label="train (chosen C)")
            ax.set_xscale("log")
        else:
            ax.plot(x, [h[f"train_{key}"] for h in history], label="train")
            ax.plot(x, [h[f"val_{key}"] for h in history], label="validation")
        ax.set(xlabel=xlabel, ylabel=name, title=name)
    b.set(ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
