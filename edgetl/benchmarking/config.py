"""What a benchmark measures: its options, one configuration (a job), the result keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.core.targets import Target, load_target
from edgetl.errors import ConfigError

__all__ = ["BenchConfig", "Job", "RUNTIMES", "PRECISIONS", "VALID", "RESULT_KEYS", "MEASURES", "MB"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8", "bf16")
# (runtime, precision) pairs that exist: torch is the fp32 eager reference; bf16 is OpenVINO's.
VALID = {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
         ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")}
RESULT_KEYS = ("runtime", "precision", "precision_executed", "batch", "threads", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "throughput", "peak_rss_mb", "size_mb", "cold_start_ms", "speedup_vs_torch", "accuracy")
MEASURES = "image tensor -> logits (backbone, adapter, head); preprocessing excluded"
MB = 2**20  # sizes and memory are in MiB, like the targets' memory_budget_mb


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``None`` means: the source's natural choice (every runtime and
    precision for a RUN; the bundle's target for a bundle)."""

    runtimes: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    batches: tuple[int, ...] | None = None  # default (1,), or the target's batch size
    threads: tuple[int, ...] | None = None  # default 2 (as the shipped x86 targets), or the target's
    warmup: int = 10
    duration: float | None = 2.0  # seconds timed per repeat, unless ``iterations`` is set
    iterations: int | None = None
    repeats: int = 3
    targets: tuple[Target, ...] = ()
    data: Path | None = None  # image folder: real inputs, and accuracy
    run: Path | None = None  # with a bundle: the RUN whose PyTorch model is the reference
    direct: bool = True  # with a bundle: also time the runtime called directly
    timeout: float = 900.0  # seconds per worker

    def __post_init__(self) -> None:
        for name, allowed in (("runtimes", RUNTIMES), ("precisions", PRECISIONS)):
            values = getattr(self, name)
            if values is not None:
                values = tuple(str(getattr(v, "value", v)) for v in values)
                bad = [v for v in values if v not in allowed]
                if bad or not values:
                    raise ConfigError(f"{name}: unknown {', '.join(map(repr, bad)) or 'empty list'}; "
                                      f"choose from {', '.join(allowed)}")
                object.__setattr__(self, name, values)
        for name in ("batches", "threads"):
            values = getattr(self, name)
            if values is not None and (not values or any(not isinstance(v, int) or v < 1 for v in values)):
                raise ConfigError(f"{name} must be positive integers, got {values!r}")
        if self.iterations is None and (self.duration is None or not self.duration > 0):
            raise ConfigError("give a positive duration (seconds) or a number of iterations")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"iterations must be positive, got {self.iterations}")
        if self.warmup < 0 or self.repeats < 1:
            raise ConfigError("warmup must be >= 0 and repeats >= 1")
        object.__setattr__(self, "targets", tuple(load_target(t) for t in self.targets))
        for name in ("data", "run"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


@dataclass(frozen=True)
class Job:
    """One configuration: what the worker loads and how it is labelled in the results."""

    kind: str  # torch | edgetl | direct | model
    runtime: str
    precision: str
    batch: int
    threads: int
    files: tuple[Path, ...]  # what size_mb counts
    spec: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # worker inputs
    target: Target | None = None
    skipped: str | None = None  # known before running: the reason

    @property
    def mode(self) -> str:
        return {"torch": "eager", "direct": "direct"}.get(self.kind, "edgetl")

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision} {self.mode} b{self.batch} t{self.threads}"
