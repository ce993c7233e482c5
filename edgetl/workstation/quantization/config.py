"""Options of :func:`edgetl.workstation.quantization.quantize`: engines, methods, budgets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from edgetl.core.isa import Isa
from edgetl.errors import ConfigError

__all__ = ["Engine", "Method", "Calibration", "ActivationType", "QuantizeConfig"]


class Engine(str, Enum):
    ORT = "ort"  # ONNX Runtime static QDQ -> onnx/backbone.int8.onnx
    NNCF = "nncf"  # NNCF for OpenVINO -> openvino/backbone.int8.xml
    ORT_DYNAMIC = "ort-dynamic"  # ONNX Runtime dynamic int8, int8 weights per channel (text's default on ORT)
    BOTH = "both"  # one engine per runtime


class Method(str, Enum):
    STATIC = "static"  # calibrated activations and weights in int8
    DYNAMIC = "dynamic"  # weights only, activations quantized at run time (ORT only; little help for convs)


class Calibration(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class ActivationType(str, Enum):
    UINT8 = "uint8"  # asymmetric u8 x s8 weights: VNNI's native form (measured 2.5x faster than fp32)
    INT8 = "int8"  # symmetric s8 x s8: slower than fp32 on an x86 CPU with AMX (measured 6.2 vs 1.7 ms)


@dataclass(frozen=True)
class QuantizeConfig:
    """Options of :func:`quantize`. ``max_drop`` is a fraction (0.01 = 1 point)."""

    engine: Engine = Engine.BOTH
    # The int8 instruction class of the CPUs the model will run on (a target's ``isa``): x86-avx2
    # gets 7-bit weights (ORT reduce_range, NNCF's overflow fix), exact on every x86-64 CPU;
    # x86-vnni and ARM get full-range weights, which saturate on x86 CPUs without VNNI.
    isa: Isa = Isa.X86_AVX2
    method: Method = Method.STATIC
    calibration: Calibration = Calibration.MINMAX  # ONNX Runtime's calibrator; NNCF uses its own min-max
    calib: str | None = None  # image folder; default: a stratified sample of the training split
    calib_size: int = 128
    # the budget, in the task's metric (top-1 accuracy, mAP@.5, entity F1) and its agreement with
    # fp32; None: the task's own (Task.guard_budget: classification 1 point and 0.97)
    max_drop: float | None = None
    min_agreement: float | None = None
    per_channel: bool = True
    # ONNX Runtime static int8: correct each convolution's bias for the mean error its int8
    # weights add (ort_qdq.correct_bias); 7-bit weights then agree with fp32 like 8-bit ones
    bias_correction: bool = True
    activations: ActivationType = ActivationType.UINT8
    max_steps: int = 6  # fallback steps: 1, 2, 4, ... nodes in fp32
    max_fp32_nodes: int = 32
    ranking_images: int = 32  # calibration images used to rank nodes by the error they add
    seed: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("engine", Engine), ("isa", Isa), ("method", Method), ("calibration", Calibration),
                           ("activations", ActivationType)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(k.value for k in kind)
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}") from None
        if self.method is Method.DYNAMIC and self.engine is not Engine.ORT:
            raise ConfigError("dynamic quantization exists for ONNX Runtime only; use --engine ort with --method dynamic")
        if self.max_drop is not None and not 0.0 <= self.max_drop < 1.0:
            raise ConfigError(f"max_drop must be a fraction in [0, 1) (0.01 = 1 point), got {self.max_drop}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        for name in ("calib_size", "max_fp32_nodes", "ranking_images"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0 (0: no fallback), got {self.max_steps}")

    def for_task(self, task: Any) -> "QuantizeConfig":
        """The budget filled in from the task's own where it was left to it."""
        from dataclasses import replace

        max_drop, min_agreement = task.guard_budget
        return replace(self, max_drop=max_drop if self.max_drop is None else self.max_drop,
                       min_agreement=min_agreement if self.min_agreement is None else self.min_agreement)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}
