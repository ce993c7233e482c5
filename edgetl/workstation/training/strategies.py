"""Training strategies, one registry: each takes the data of a fit and returns what it learnt.

``linear-probe`` trains the head on cached embeddings of the frozen backbone; ``finetune``
unfreezes the last blocks; ``adapt`` fine-tunes while aligning with an unlabelled target
domain (:mod:`edgetl.workstation.training.adapt`). ``TrainConfig.strategy`` and the CLI's
``--strategy`` choices are this registry's names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from edgetl.core.registry import Registry
from edgetl.errors import ConfigError

__all__ = ["FitData", "Fitted", "STRATEGIES"]


@dataclass(frozen=True)
class FitData:
    """Everything a strategy needs: the model, options, the split, the spec, the device."""

    model: Any  # EdgeModel
    cfg: Any  # TrainConfig, resolved
    train_items: Sequence[Any]
    train_y: Sequence[int]
    val_items: Sequence[Any]
    val_y: Sequence[int]
    spec: Any
    device: Any  # torch.device
    backbone: Any = None  # the Backbone: a head-only model (a linear probe) embeds with it

    def loop_args(self) -> tuple:
        """The loops' positional arguments (model, cfg, train, val, spec, device)."""
        return (self.model, self.cfg, list(self.train_items), list(self.train_y), list(self.val_items),
                list(self.val_y), self.spec, self.device)


@dataclass
class Fitted:
    """What a strategy returns: per-epoch history, the early-stopping record (``state`` is the
    model to keep, ``best``/``best_epoch`` its validation score) and extra metrics."""

    history: list[dict]
    stop: Any
    extra: dict[str, Any] = field(default_factory=dict)


STRATEGIES: Registry[Callable[[FitData], Fitted]] = Registry("strategy", ConfigError)
