"""The accuracy guard: quantize, measure on held-out images, and while the budget does not
hold keep the most sensitive nodes in fp32 (1, 2, 4, ... of them), up to a limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Budget:
    max_drop: float  # fp32 accuracy - int8 accuracy, as a fraction
    min_agreement: float  # top-1 agreement with the fp32 model

    def holds(self, drop: float, agreement: float) -> bool:
        return drop <= self.max_drop + 1e-9 and agreement >= self.min_agreement - 1e-9


@dataclass(frozen=True)
class Scorer:
    """Accuracy of an int8 model's predictions against labels, and agreement with fp32's."""

    y_true: np.ndarray
    fp32_pred: np.ndarray

    @property
    def fp32_accuracy(self) -> float:
        return float((self.fp32_pred == self.y_true).mean())

    def __call__(self, pred: np.ndarray) -> dict[str, float]:
        accuracy = float((pred == self.y_true).mean())
        return {"accuracy": accuracy, "drop": self.fp32_accuracy - accuracy,
                "agreement": float((pred == self.fp32_pred).mean())}


def schedule(max_steps: int, max_nodes: int) -> list[int]:
    """How many nodes each fallback step keeps in fp32: 1, 2, 4, ... capped at ``max_nodes``."""
    counts: list[int] = []
    for step in range(max_steps):
        n = min(2 ** step, max_nodes)
        if counts and n == counts[-1]:
            break
        counts.append(n)
    return counts


def run_guard(
    build: Callable[[list[str], int], Path],
    measure: Callable[[Path], dict[str, float]],
    rank: Callable[[Path], list[str]],
    budget: Budget,
    *,
    max_steps: int,
    max_nodes: int,
) -> tuple[Path | None, dict[str, Any]]:
    """Return the first model that meets the budget (or None) and the guard's record.

    ``build(nodes, step)`` writes a model with ``nodes`` kept in fp32; ``measure`` scores
    it; ``rank`` orders the candidates of the first model, most sensitive first."""
    steps: list[dict[str, Any]] = []

    def attempt(nodes: list[str]) -> Path:
        path = build(nodes, len(steps))
        m = measure(path)
        steps.append({"step": len(steps), "fp32_nodes": list(nodes), **m, "passed": budget.holds(m["drop"], m["agreement"])})
        return path

    first = attempt([])
    record: dict[str, Any] = {"steps": steps, "ranking": []}
    if steps[-1]["passed"]:
        return first, {**record, "passed": True}
    ranking = rank(first)
    record["ranking"] = ranking[:max_nodes]
    for n in schedule(max_steps, min(max_nodes, len(ranking))):
        path = attempt(ranking[:n])
        if steps[-1]["passed"]:
            return path, {**record, "passed": True}
    return None, {**record, "passed": False}
