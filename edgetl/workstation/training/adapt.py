"""Unsupervised domain adaptation on the workstation: labelled source images, unlabelled
target images, one classifier that works on the target.

Frozen-backbone methods (cheap; the backbone is embedded once per image set):

- **feature-coral** (default): the source-only exact probe is fitted first; then the
  source embeddings are recoloured to the target's covariance
  (:func:`edgetl.device.alignment.align_rows`, the device's estimator: shrinkage toward
  trace/F * I, :data:`SHRINKAGE`) and the head is re-solved on them with the convex probe
  solver (CORAL as Sun et al. 2016 train it). Best on benchmarks/transfer_bench.py.
- **adabn** (Li et al., 2016): every BatchNorm layer's statistics recomputed per domain:
  the head is solved on source features under the source images' statistics, and the
  deployed backbone gets the target images'. (Recomputing only the target's, leaving
  the pretraining statistics for the source, fell to 0.15 on clean digits.) **adabn+feature-coral**: both.

Fine-tuning methods (``--unfreeze N``), trained by ``train_finetune`` with an alignment
loss on the embedding, source and target batches in one forward pass (so BatchNorm sees
mixed-domain batches in training as at test time):

- **DANN** (Ganin et al., 2016): an MLP domain classifier behind a gradient-reversal
  layer, coefficient lambda(p) = 2 / (1 + exp(-10 p)) - 1 over training progress p.
- **coral** (Deep CORAL, Sun and Saenko, 2016): ||C_s - C_t||_F^2 / (4 d^2) between batch
  covariances, times ``adapt_weight`` * :data:`CORAL_BASE_WEIGHT`. With ``--unfreeze 0``
  it becomes feature-coral.

The guard: ``target_accuracy_before`` is the source-only exact probe's accuracy on
``target_eval``; with ``target_eval`` the adapted model is kept only if it beats it
(else the source-only model is written, ``adapt_kept`` False, ``adapt_reason`` says why).
Without labels, ``target_before``/``target_after`` are the prediction entropy and class
balance on the target pool (:func:`edgetl.device.alignment.indicators`), and a collapse
onto few classes is refused with a one-line error and no RUN. A fine-tuned method (DANN,
Deep CORAL) must also still solve the source task: below the source-only probe's
source-validation accuracy by more than :data:`SOURCE_MARGIN`, the source-only probe is
written instead (``adapt_kept`` False, ``adapt_reason`` and a warning say why: too little
data to fine-tune); when kept, a warning says its target accuracy is unchecked. With
little data prefer feature-coral: it trains nothing but the head, which it solves exactly.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgetl.core import ui as _ui
from edgetl.modalities.image import scan_folder
from edgetl.device.alignment import DEFAULT_SHRINKAGE, SourceStats, align_rows, collapsed, indicators, list_unlabelled
from edgetl.errors import ConfigError, DataError
from edgetl.modalities.image import PreprocessSpec
from edgetl.workstation.training.data import ImageDataset, embed_images, make_loader
from edgetl.workstation.training.loops import batchnorms, evaluate_model, train_finetune, train_probe
from edgetl.workstation.training.strategies import STRATEGIES, FitData, Fitted

__all__ = ["AdaptMethod", "train_adapt", "dann_lambda", "coral_loss", "GradientReversal", "DomainClassifier"]


class AdaptMethod(str, Enum):
    FEATURE_CORAL = "feature-coral"  # frozen backbone: source features recoloured to the target, head re-solved
    ADABN = "adabn"  # BatchNorm statistics recomputed on the target, head kept
    ADABN_CORAL = "adabn+feature-coral"  # both
    DANN = "dann"  # fine-tuning
    CORAL = "coral"  # Deep CORAL, fine-tuning (with --unfreeze 0: feature-coral)


FROZEN = (AdaptMethod.FEATURE_CORAL, AdaptMethod.ADABN, AdaptMethod.ADABN_CORAL)
DEFAULT_METHOD = AdaptMethod.FEATURE_CORAL  # best on benchmarks/transfer_bench.py (see the module docstring)


def dann_lambda(progress: float) -> float:
    """DANN's schedule for the gradient-reversal coefficient, 0 at the start, -> 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


class GradientReversal(nn.Module):
    """Identity forward; multiplies the gradient by ``-coeff`` backward."""

    def forward(self, x: torch.Tensor, coeff: float) -> torch.Tensor:
        return _ReverseGrad.apply(x, coeff)


def _covariance(z: torch.Tensor) -> torch.Tensor:
    zc = z - z.mean(0, keepdim=True)
    return zc.T @ zc / (len(z) - 1)


def coral_loss(zs: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ||C_s - C_t||_F^2 / (4 d^2) between batch covariances."""
    if len(zs) < 2 or len(zt) < 2:  # a covariance needs two samples
        return zs.sum() * 0.0
    d = zs.shape[1]
    return ((_covariance(zs) - _covariance(zt)) ** 2).sum() / (4.0 * d * d)


class _TargetStream:
    """Endless, seeded batches of preprocessed target images; the last one's embeddings
    are left here by the joint forward pass for the alignment loss to pick up."""

    def __init__(self, paths: Sequence[Path], spec: PreprocessSpec, batch_size: int, augment: bool, seed: int):

        ds = ImageDataset(paths, [0] * len(paths), spec, augment=augment)
        self.loader = make_loader(ds, min(batch_size, len(paths)), True, seed)
        self.iterator = iter(self.loader)
        self.z: torch.Tensor | None = None

    def next_batch(self) -> torch.Tensor:
        try:
            x, _ = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            x, _ = next(self.iterator)
        return x


def _joint_forward(model: nn.Module, stream: _TargetStream) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``forward_features`` that, in training mode, runs source and target in one pass
    (see the module docstring) and returns the source embeddings only."""
    backbone = model.backbone

    def forward_features(x: torch.Tensor) -> torch.Tensor:
        if not model.training:
            return backbone(x)
        xt = stream.next_batch().to(x.device)
        z = backbone(torch.cat([x, xt]))
        stream.z = z[len(x):]
        return z[: len(x)]

    return forward_features


class DomainClassifier(nn.Module):
    """DANN's discriminator: embedding -> hidden -> hidden -> domain logit, behind the GRL."""

    def __init__(self, num_features: int, hidden: int = 256):
        super().__init__()
        self.reverse = GradientReversal()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor, coeff: float) -> torch.Tensor:
        return self.net(self.reverse(z, coeff)).squeeze(1)


class _DANNLoss(nn.Module):
    def __init__(self, num_features: int, stream: _TargetStream, weight: float):
        super().__init__()
        self.classifier, self.stream, self.weight = DomainClassifier(num_features), stream, weight

    def forward(self, zs: torch.Tensor, progress: float) -> torch.Tensor:
        zt = self.stream.z
        logits = self.classifier(torch.cat([zs, zt]), dann_lambda(progress))
        domain = torch.cat([torch.zeros(len(zs)), torch.ones(len(zt))]).to(logits.device)
        return self.weight * nn.functional.binary_cross_entropy_with_logits(logits, domain)


# With d = 1280 the 1/(4 d^2)-normalized CORAL loss is tiny next to the cross-entropy, so
# ``adapt_weight`` multiplies this base weight (of 1, 100 and 3000, 100 adapted best on
# digits under low contrast; 1 barely moves the features).
CORAL_BASE_WEIGHT = 100.0


class _CORALLoss(nn.Module):
    def __init__(self, stream: _TargetStream, weight: float):
        super().__init__()
        self.stream, self.weight = stream, weight * CORAL_BASE_WEIGHT

    def forward(self, zs: torch.Tensor, progress: float) -> torch.Tensor:
        return self.weight * coral_loss(zs, self.stream.z)


# --------------------------------------------------------------------------- evaluation


def _target_eval_set(folder: str, train_paths: Sequence[Path], train_y: Sequence[int]) -> tuple[list[Path], list[int]]:
    """Labelled target images mapped onto the source's class indices (by folder name)."""
    names = {Path(p).parent.name: int(y) for p, y in zip(train_paths, train_y)}
    ev = scan_folder(folder, min_classes=1)
    unknown = [c for c in ev.labels if c not in names]
    if unknown:
        raise DataError(f"{ev.root}: class folder(s) {', '.join(map(repr, unknown))} are not among the training "
                        f"labels ({', '.join(sorted(names))}); --target-eval must use the same class names")
    to_source = [names[c] for c in ev.labels]
    return ev.paths, [to_source[y] for y in ev.targets]


def _accuracy(model: nn.Module, paths, labels, spec: PreprocessSpec, device: torch.device) -> float:

    return evaluate_model(model, make_loader(ImageDataset(paths, labels, spec), 64, False, 0), device)[1]


def _embed(model, paths, spec, device, what: str) -> np.ndarray:
    return embed_images(model.backbone, paths, spec, device, description=f"embedding {what}").double().numpy()


def adabn(model, paths: Sequence[Path], spec: PreprocessSpec, device: torch.device, batch_size: int = 64) -> int:
    """AdaBN (Li et al., 2016): every BatchNorm layer's running mean and variance
    recomputed on ``paths`` (a cumulative average over all of them, no augmentation), all
    weights kept. Returns the number of BatchNorm layers updated (0: the backbone has none)."""
    layers = batchnorms(model)
    if not layers:
        return 0
    model.eval()
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches
        m.train()
    loader = make_loader(ImageDataset(paths, [0] * len(paths), spec), batch_size, False, 0)
    with torch.no_grad():
        for x, _ in _ui.progress(loader, "AdaBN: target statistics"):
            model.backbone(x.to(device))
    for m, momentum in zip(layers, saved):
        m.momentum = momentum
    model.eval()
    return len(layers)


def _set_head(model, W: np.ndarray, b: np.ndarray) -> None:
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(np.asarray(W, np.float32)))
        model.head.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))


def _head_of(model) -> tuple[np.ndarray, np.ndarray]:
    return model.head.weight.detach().double().cpu().numpy(), model.head.bias.detach().double().cpu().numpy()


def _frozen_adapt(model, method: AdaptMethod, cfg, train_paths, train_y, val_paths, val_y, target_paths, spec,
                  device, zs: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """The frozen-backbone methods, from the source-only probe in ``model`` and the source
    embeddings ``zs`` (train, val) of the unadapted backbone."""
    from edgetl.workstation.probe_solver import solve_probe

    extra: dict[str, Any] = {}
    if method in (AdaptMethod.ADABN, AdaptMethod.ADABN_CORAL):
        # each domain normalised by its own statistics: the head learns source features under
        # source statistics (not the pretraining data's), the deployed backbone gets the target's
        n = adabn(model, list(train_paths) + list(val_paths), spec, device)
        extra["adabn_layers"] = n
        if n == 0:
            _ui.warn(f"{model.backbone.__class__.__name__} has no BatchNorm layers: AdaBN changes nothing")
        zs = (_embed(model, train_paths, spec, device, "source train"), _embed(model, val_paths, spec, device, "source val"))
        sol = solve_probe(zs[0], np.asarray(train_y), zs[1], np.asarray(val_y), model.head.out_features,
                          refit=cfg.refit, seed=cfg.seed)
        _set_head(model, sol.W, sol.b)
        adabn(model, target_paths, spec, device)
    if method in (AdaptMethod.FEATURE_CORAL, AdaptMethod.ADABN_CORAL):
        zt = _embed(model, target_paths, spec, device, "target")
        source = SourceStats.from_embeddings(np.concatenate(zs))
        aligned = [align_rows(z, source, zt, shrinkage=SHRINKAGE) for z in zs]
        sol = solve_probe(aligned[0], np.asarray(train_y), aligned[1], np.asarray(val_y), model.head.out_features,
                          refit=cfg.refit, seed=cfg.seed)
        _set_head(model, sol.W, sol.b)
        extra.update(coral_C=sol.C, coral_shrinkage=SHRINKAGE,
                     ledoit_wolf={"source": source.shrinkage["lw"],
                                  "target": SourceStats.from_embeddings(zt).shrinkage["lw"]})
    extra["adapt_mode"] = {AdaptMethod.FEATURE_CORAL: "feature-coral (frozen backbone; head re-solved on source "
                                                      "features recoloured to the target)",
                           AdaptMethod.ADABN: "adabn (BatchNorm statistics per domain: head solved under the "
                                              "source's, the target's deployed)",
                           AdaptMethod.ADABN_CORAL: "adabn + feature-coral"}[method]
    return extra


# Covariance shrinkage of feature CORAL: the device's default (see edgetl.device.alignment).
SHRINKAGE = DEFAULT_SHRINKAGE


def train_adapt(model, cfg, train_paths, train_y, val_paths, val_y, spec: PreprocessSpec, device: torch.device,
                ) -> tuple[list[dict], Any, dict[str, Any]]:
    """Adapt ``model`` to ``cfg.target_data`` (see the module docstring).
    Returns ``(history, early_stop, extra_metrics)``; ``early_stop.state`` is the model to keep."""
    import copy

    try:
        method = AdaptMethod(cfg.adapt_method or DEFAULT_METHOD.value)
    except ValueError:
        raise ConfigError(f"unknown adapt method {cfg.adapt_method!r}; choose "
                          f"{', '.join(m.value for m in AdaptMethod)}") from None
    if not cfg.adapt_weight > 0:
        raise ConfigError(f"adapt_weight must be positive, got {cfg.adapt_weight}")
    if cfg.unfreeze == 0 and method is AdaptMethod.DANN:
        raise ConfigError("DANN aligns features by training the backbone, which --unfreeze 0 freezes; "
                          "use --unfreeze 2 (or more), or --adapt feature-coral")
    if cfg.unfreeze == 0 and method is AdaptMethod.CORAL:
        method = AdaptMethod.FEATURE_CORAL  # a loss on frozen features has nothing to train
    target_paths = list_unlabelled(cfg.target_data, what="--target-data")
    evaluation = _target_eval_set(cfg.target_eval, train_paths, train_y) if cfg.target_eval else None
    _ui.info(f"adapting with {method.value} to {len(target_paths)} unlabelled target images")
    extra: dict[str, Any] = {"adapt_method": method.value, "n_target": len(target_paths)}
    initial = copy.deepcopy(model.state_dict())

    # source only: the exact linear probe on the pretrained backbone (what `edgetl train` makes)
    history, stop, probe_extra = train_probe(model, cfg, train_paths, train_y, val_paths, val_y, spec, device)
    model.load_state_dict(stop.state)
    source_only = copy.deepcopy(stop.state)
    W0, b0 = _head_of(model)
    zs = (_embed(model, train_paths, spec, device, "source train"), _embed(model, val_paths, spec, device, "source val"))
    zt0 = _embed(model, target_paths, spec, device, "target (unadapted)")
    ze0 = _embed(model, evaluation[0], spec, device, "target eval (unadapted)") if evaluation else None
    extra["target_before"] = indicators(zt0 @ W0.T + b0)
    if evaluation is not None:
        extra["target_accuracy_before"] = float(((ze0 @ W0.T + b0).argmax(1) == np.asarray(evaluation[1])).mean())
        extra["target_baseline"] = "source-only linear probe on the pretrained backbone (exact solve)"

    if method in FROZEN:
        extra.update(_frozen_adapt(model, method, cfg, train_paths, train_y, val_paths, val_y, target_paths, spec,
                                   device, zs))
        extra["source_val_accuracy_after"] = _accuracy(model, val_paths, val_y, spec, device)
        extra["probe"] = probe_extra["probe"]
        stop.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        model.load_state_dict(initial)
        stream = _TargetStream(target_paths, spec, cfg.batch_size, cfg.augment, cfg.seed + 1)
        loss: nn.Module = (_DANNLoss(model.num_features, stream, cfg.adapt_weight).to(device)
                           if method is AdaptMethod.DANN else _CORALLoss(stream, cfg.adapt_weight))
        history, stop = train_finetune(model, cfg, train_paths, train_y, val_paths, val_y, spec, device,
                                       extra_loss=loss, features=_joint_forward(model, stream))
        model.load_state_dict(stop.state)
        extra["adapt_mode"] = "dann" if method is AdaptMethod.DANN else "deep-coral"

    # the guard: never silently worse than source only
    W1, b1 = _head_of(model)
    extra["target_after"] = indicators(_embed(model, target_paths, spec, device, "target (adapted)") @ W1.T + b1)
    reason = None
    if evaluation is not None:
        after = _accuracy(model, *evaluation, spec, device)
        extra["target_accuracy_adapted"] = after
        if after <= extra["target_accuracy_before"]:
            reason = (f"adaptation would take target accuracy from {extra['target_accuracy_before']:.3f} to "
                      f"{after:.3f}; kept the source-only model")
    elif collapsed(extra["target_before"], extra["target_after"]):
        raise DataError(f"{cfg.target_data}: {method.value} collapses predictions onto few classes (balance "
                        f"{extra['target_before']['balance']:.2f} -> {extra['target_after']['balance']:.2f}); "
                        "no model written (check the images, or pass --target-eval LABELLED_DIR)")
    elif method not in FROZEN:
        reason = _finetuned_guard(model, method, extra, zs, W0, b0, val_paths, val_y, spec, device)
    extra["adapt_kept"] = reason is None
    if reason is not None:
        _ui.warn(reason)
        extra["adapt_reason"] = reason
        model.load_state_dict(source_only)
        stop.state = copy.deepcopy(source_only)
        extra["target_after"] = extra["target_before"]
    if evaluation is not None:
        extra["target_accuracy_after"] = _accuracy(model, *evaluation, spec, device)
    return history, stop, extra


# Without target labels, a fine-tuned adaptation (DANN, Deep CORAL) is kept only if it still
# solves the source task: its source-validation accuracy within this much of the source-only
# probe's. Both start from scratch (a random head; LP-FT lowered their target accuracy): with
# too little data they can end near chance (issue 30: Deep CORAL on 140 photos, 0.50 on 2
# classes), which this catches. It is conservative: on benchmarks/adapt_guard_bench.py's photo
# shift Deep CORAL fell to 0.80 on the source split (probe 1.00) yet reached 0.63 on the target
# (source-only 0.53); the guard kept source-only and said so, and --target-eval keeps such a
# model. Target accuracy cannot be checked without labels, so what is kept is also said.
SOURCE_MARGIN = 0.05


def _finetuned_guard(model, method: AdaptMethod, extra: dict[str, Any], zs, W0, b0, val_paths, val_y,
                     spec: PreprocessSpec, device) -> str | None:
    """The reason to keep the source-only probe instead of a fine-tuned adaptation trained
    without ``--target-eval``, or None; records both source-validation accuracies and warns
    either way, since nothing measured the adapted model on the target."""
    if not len(val_y):
        _ui.warn(f"{method.value} without --target-eval or a validation split: nothing checked the adapted model; "
                 "prefer --adapt feature-coral with little data")
        return None
    probe = float(((zs[1] @ W0.T + b0).argmax(1) == np.asarray(val_y)).mean())
    adapted = _accuracy(model, val_paths, val_y, spec, device)
    extra["source_val_accuracy_before"], extra["source_val_accuracy_after"] = probe, adapted
    h0, h1 = extra["target_before"]["entropy"], extra["target_after"]["entropy"]
    if adapted < probe - SOURCE_MARGIN:
        chance = 1.0 / max(1, model.head.out_features)
        return (f"{method.value} fell to {adapted:.3f} on the source validation split, where the source-only probe "
                f"reaches {probe:.3f} (chance {chance:.2f}), and without --target-eval nothing shows it is better on "
                "the target: kept the source-only probe (pass --target-eval LABELLED_DIR to keep it only if it beats "
                "source-only there, or use --adapt feature-coral, the default, or more images)")
    _ui.warn(f"{method.value} kept without --target-eval: source validation {probe:.3f} (source-only probe) -> "
             f"{adapted:.3f}, target prediction entropy {h0:.2f} -> {h1:.2f}; its target accuracy is unchecked "
             "(pass --target-eval LABELLED_DIR to keep it only if it beats source-only)")
    return None


@STRATEGIES.register("adapt")
def _adapt(data: FitData) -> Fitted:
    return Fitted(*train_adapt(*data.loop_args()))
