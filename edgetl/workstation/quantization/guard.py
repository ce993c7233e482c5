"""The accuracy guard: quantize, measure on held-out images, and while the budget does not
hold keep the most sensitive nodes in fp32 (1, 2, 4, ... of them), up to a limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.core.isa import Cpu, Isa, isa_info, saturates


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


@dataclass(frozen=True)
class Int8Judge:
    """Which score decides for a target's CPUs: int8 is judged as those CPUs will compute it.

    Every int8 model is scored twice: as the reference (the graph run with no integer kernel
    at all: QDQ pairs in float, integer products in float64; the same on every CPU), and as
    this machine's kernels compute it. This machine's score decides where it computes int8 as
    the target's CPUs do (same architecture, and no saturation: 7-bit weights, or a CPU with
    VNNI); otherwise the reference does, and a large gap between the two is reported as this
    CPU's saturation rather than spent on keeping layers in fp32."""

    isa: Isa
    cpu: Cpu

    @property
    def reduce_range(self) -> bool:
        return isa_info(self.isa).reduced_range

    @property
    def here_computes_as_target(self) -> bool:
        return isa_info(self.isa).arch == self.cpu.arch and not saturates(self.cpu, self.reduce_range)

    def __call__(self, reference: dict[str, float] | None, here: dict[str, float]) -> dict[str, Any]:
        decide_here = self.here_computes_as_target or reference is None
        decisive = here if decide_here else reference
        out: dict[str, Any] = {"accuracy": decisive["accuracy"], "drop": decisive["drop"],
                               "agreement": decisive["agreement"],
                               "judged_on": "this CPU" if decide_here else "reference", "this_cpu": here}
        if reference is not None:
            out["reference"] = reference
        if not self.here_computes_as_target:
            why = ("this CPU's int8 kernels saturate with full-range weights (no VNNI)"
                   if saturates(self.cpu, self.reduce_range) else f"this CPU is not {self.isa.value}")
            out["note"] = (f"{why}: top-1 agreement {here['agreement']:.3f} here; the {self.isa.value} CPUs the "
                           f"model is for compute the reference" +
                           (f" ({reference['agreement']:.3f})" if reference is not None else ""))
        return out


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
