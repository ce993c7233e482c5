"""Options and result of :func:`edgetl.workstation.training.train`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from edgetl.core.data import check_number, check_seed
from edgetl.errors import ConfigError

__all__ = ["Strategy", "TrainConfig", "TrainReport", "TrainResult"]


class Strategy(str, Enum):
    LINEAR_PROBE = "linear-probe"
    FINETUNE = "finetune"
    ADAPT = "adapt"


# Per-strategy defaults where the user gave none: a probe trains only a Linear layer on
# cached embeddings (cheap epochs, higher rate); fine-tuning moves the backbone too.
_DEFAULTS = {
    Strategy.LINEAR_PROBE: dict(epochs=30, lr=3e-3, batch_size=64),
    Strategy.FINETUNE: dict(epochs=8, lr=1e-3, batch_size=32),
    Strategy.ADAPT: dict(epochs=8, lr=1e-3, batch_size=32),
}


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``edgetl train``; ``None`` means the strategy's default."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    # what to learn (edgetl.tasks): classification, detection, token-classification; None: from the data
    task: str | None = None
    strategy: Strategy = Strategy.LINEAR_PROBE
    unfreeze: int | None = 2  # last N blocks trainable in finetune/adapt; None = all
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    backbone_lr_scale: float = 0.1  # the backbone learns this much slower than the head
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5  # early stopping: epochs without a lower validation loss
    refit: bool = True  # linear probe: refit the chosen C on train + validation (--no-refit keeps them apart)
    # finetune: start from the solved linear probe (LP-FT), not a random head. None: on for
    # finetune, off for adapt's fine-tuning methods, where it hurts. Measured on the digits shift
    # of tests/test_adapt.py (contrast severity 2, 64 px, target accuracy; source-only fine-tuning
    # 0.453): DANN 0.587, with LP-FT 0.310, with LP-FT and frozen BatchNorm 0.493; Deep CORAL
    # 0.547, with LP-FT 0.287. (adapt's default, feature CORAL, re-solves the head exactly.)
    lp_ft: bool | None = None
    val_split: float = 0.2
    seed: int = 0
    image_size: int | None = None  # override the backbone's input size
    max_length: int | None = None  # text: tokens per text (default 128, recorded in the spec)
    text_column: str = "text"  # text data (CSV/TSV/JSONL): the columns to read
    label_column: str = "label"
    augment: bool = True  # fine-tuning only: random resized crop + horizontal flip
    # fine-tuning: BatchNorm of the trainable blocks normalises with its running statistics
    # ("frozen", as Keras' transfer-learning guide advises) or with each batch's ("update").
    # None: frozen for finetune, update for adapt (DANN/Deep CORAL align batch statistics).
    batchnorm: str | None = None
    dropout: float = 0.0
    device: str = "auto"
    strict: bool = False
    # frozen-backbone embeddings (probe, LP-FT's probe stage): see edgetl.workstation.embedding
    embed_with: str = "auto"  # auto: ONNX Runtime on the CPU, PyTorch on a GPU
    embed_cache: bool = True  # reuse rows computed before for the same bytes and weights (--no-cache)
    cache_dir: str | None = None  # None: $EDGETL_CACHE_DIR or ~/.cache/edgetl/embeddings
    workers: int | None = None  # image-decoding threads; None: the machine's cores
    # domain adaptation (strategy "adapt"), see edgetl.workstation.training.adapt
    target_data: str | None = None
    adapt_method: str = "feature-coral"  # see edgetl.workstation.training.adapt
    adapt_weight: float = 1.0
    target_eval: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        for name in ("epochs", "batch_size", "image_size", "max_length"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.unfreeze is not None and (not isinstance(self.unfreeze, int) or self.unfreeze < 0):
            raise ConfigError(f"unfreeze must be a number of blocks >= 0 or None (all), got {self.unfreeze!r}")
        if self.lr is not None:
            check_number("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_number("val_split", self.val_split, 0.0, 1.0, lo_open=True, hi_open=True)
        check_number("weight_decay", self.weight_decay, 0.0, 10.0)
        check_number("adapt_weight", self.adapt_weight, 0.0, 1000.0, lo_open=True)
        check_number("backbone_lr_scale", self.backbone_lr_scale, 0.0, 1.0, lo_open=True)
        check_seed(self.seed)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.batchnorm not in (None, "frozen", "update"):
            raise ConfigError(f"batchnorm must be frozen or update, got {self.batchnorm!r}")
        self.embed_options()  # validates embed_with and workers
        if self.strategy is Strategy.ADAPT and not self.target_data:
            raise ConfigError("strategy 'adapt' needs target data: pass --target-data UNLABELLED_DIR")

    def embed_options(self):
        from edgetl.workstation.embedding import EmbedOptions

        return EmbedOptions(engine=self.embed_with, cache=self.embed_cache, cache_dir=self.cache_dir,
                            workers=self.workers)

    def resolved(self) -> "TrainConfig":
        d = _DEFAULTS[self.strategy]
        return replace(
            self,
            epochs=self.epochs or d["epochs"],
            lr=self.lr or d["lr"],
            batch_size=self.batch_size or d["batch_size"],
            batchnorm=self.batchnorm or ("update" if self.strategy is Strategy.ADAPT else "frozen"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strategy"] = self.strategy.value
        return d


@dataclass
class TrainReport:
    """What :func:`train` made: the RUN folder, the best validation result, the history."""

    run_dir: Path
    val_accuracy: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run_dir), "val_accuracy": self.val_accuracy, "best_epoch": self.best_epoch,
                "metrics": self.metrics}


TrainResult = TrainReport  # the earlier name
