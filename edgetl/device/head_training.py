"""Train the classifier head on the device with ONNX Runtime training artifacts.

Torch-free (numpy, onnx, onnxruntime-training). The head is one Linear layer,
``logits = embedding @ W.T + b``, stored as ``head.onnx`` (``embedding`` [N,F] ->
``logits`` [N,C]). The flow on a device::

    W, b, labels = read_head("head.onnx")
    W, b = grow_head(W, b, 2)                               # only if new classes arrive
    make_head_onnx(W, b, labels + ["8", "9"], "staging/head.onnx")
    make_training_artifacts("staging/head.onnx", "staging/training")
    result = train_head("staging/training", X, y, X_val, y_val, HeadTrainConfig(),
                        export_path="staging/head.onnx")

Training artifacts (``make_training_artifacts``): ``training_model.onnx`` takes
``embedding`` (float32 [N,F]) and ``labels`` (int64 [N], class indices) and returns the
mean cross-entropy loss; ``eval_model.onnx`` is the same without gradients;
``optimizer_model.onnx`` is AdamW; ``checkpoint`` holds ``head.weight`` and ``head.bias``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .._ui import progress
from ..errors import ConfigError, RetrainError
from ._ort_training import artifacts_api, captured_stderr, onnxblock_api, open_training, set_adamw

__all__ = [
    "WEIGHT",
    "BIAS",
    "LABELS_INPUT",
    "ARTIFACT_FILES",
    "GrowInit",
    "Sampling",
    "Monitor",
    "HeadTrainConfig",
    "HeadTrainResult",
    "make_head_onnx",
    "read_head",
    "grow_head",
    "make_training_artifacts",
    "epoch_batches",
    "train_head",
]

WEIGHT = "head.weight"  # same names as the torch state dict of EdgeModel.head
BIAS = "head.bias"
INPUT = "embedding"
OUTPUT = "logits"
LABELS_INPUT = "labels"  # int64 [N] class indices: the training/eval models' second input
ARTIFACT_FILES = {
    "training_model": "training_model.onnx",
    "eval_model": "eval_model.onnx",
    "optimizer_model": "optimizer_model.onnx",
    "checkpoint": "checkpoint",
}
MAX_IR_VERSION = 10  # ORT 1.19.2 refuses newer IR; recent onnx writes 14
OPSET = 17


class GrowInit(str, Enum):
    """How rows for new classes start (see :func:`grow_head`)."""

    MEAN = "mean"  # mean of the existing rows and biases
    ZERO = "zero"  # zero weights, bias at the mean of the existing biases


class Sampling(str, Enum):
    """How each epoch's batches are drawn (see :func:`epoch_batches`)."""

    SHUFFLE = "shuffle"  # a permutation of the training set
    BALANCED = "balanced"  # with replacement, every class equally likely


class Monitor(str, Enum):
    """What picks the best epoch and drives early stopping."""

    # Validation sets on a device are small (tens of samples): accuracy moves in steps
    # of one sample and its maximum is often a lucky early epoch; the loss is smooth.
    # Measured on digits with 40 new samples per class (8 splits): picking by loss gave
    # new-class accuracy 0.888 on average (worst 0.839), by accuracy 0.856 (worst 0.699).
    LOSS = "val_loss"  # lowest validation loss
    ACCURACY = "val_acc"  # highest validation accuracy, ties broken by loss


@dataclass(frozen=True)
class HeadTrainConfig:
    """Options of :func:`train_head`. AdamW follows ``torch.optim.AdamW`` exactly
    (decoupled weight decay applied before the step, bias correction on both moments)."""

    epochs: int = 50
    lr: float = 1e-2
    batch_size: int = 32
    seed: int = 0
    patience: int = 10  # epochs without a better validation result before stopping; 0 = never stop early
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    sampling: Sampling = Sampling.BALANCED
    monitor: Monitor = Monitor.LOSS

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.patience, int) and self.patience >= 0):
            raise ConfigError(f"patience must be an integer >= 0 (0 = no early stopping), got {self.patience!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (len(self.betas) == 2 and all(0 <= x < 1 for x in self.betas)):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be positive, got {self.eps!r}")
        object.__setattr__(self, "sampling", _choice(Sampling, self.sampling, "sampling"))
        object.__setattr__(self, "monitor", _choice(Monitor, self.monitor, "monitor"))


def _choice(enum: type[Enum], value: object, name: str):
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"{name} must be one of {', '.join(e.value for e in enum)}, got {value!r}") from None


@dataclass(frozen=True)
class HeadTrainResult:
    """What :func:`train_head` returns. ``W``/``b`` are the best parameters by
    ``config.monitor`` (the starting head counts as epoch 0); ``best_val_acc`` is theirs."""

    W: np.ndarray
    b: np.ndarray
    labels: tuple[str, ...]
    history: list[dict] = field(repr=False)  # per epoch: epoch, loss (mean train batch loss), val_acc, val_loss
    best_epoch: int = 0
    initial_val_acc: float | None = None
    best_val_acc: float | None = None
    first_step_loss: float = float("nan")
    step_losses: list[float] = field(default_factory=list, repr=False)
    head_path: Path | None = None
    seconds: float = 0.0


# --------------------------------------------------------------------------- head file


def make_head_onnx(
    W: np.ndarray,
    b: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    opset: int = OPSET,
) -> Path:
    """Write the inference head ``embedding`` [N,F] -> ``logits`` [N,C] (one Gemm,
    transB=1, IR 10) with ``edgetl.labels`` and ``edgetl.num_features`` metadata;
    ``metadata`` adds other ``edgetl.*`` entries (e.g. ``edgetl.preprocess``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    W = np.ascontiguousarray(W, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    labels = [str(x) for x in labels]
    if W.ndim != 2 or b.shape != (W.shape[0],) or len(labels) != W.shape[0]:
        raise RetrainError(
            f"head shapes disagree: W {W.shape}, b {b.shape}, {len(labels)} labels "
            "(W must be [classes, features], b [classes], one label per class)"
        )
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise RetrainError("head parameters hold NaN or infinity; retrain with a lower learning rate")
    n_classes, n_features = W.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", [INPUT, WEIGHT, BIAS], [OUTPUT], transB=1)],
        "edgetl_head",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", n_classes])],
        [numpy_helper.from_array(W, WEIGHT), numpy_helper.from_array(b, BIAS)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgetl")
    model.ir_version = MAX_IR_VERSION
    props = dict(metadata or {})
    props["edgetl.labels"] = json.dumps(labels)
    props["edgetl.num_features"] = str(n_features)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _head_parts(model) -> tuple[np.ndarray, np.ndarray]:
    """W [C,F] and b [C] of a single-Linear head: Gemm (transB 0 or 1) or MatMul + Add,
    weights as initializers or Constant nodes (what torch exporters write)."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    nodes = [n for n in model.graph.node if n.op_type not in ("Constant", "Identity")]
    attrs = {a.name: a for n in nodes for a in n.attribute}
    ops = [n.op_type for n in nodes]
    if ops == ["Gemm"] and len(nodes[0].input) == 3:
        gemm = nodes[0]
        if attrs.get("transA") and attrs["transA"].i:
            raise RetrainError("head.onnx Gemm has transA=1; re-export the head as embedding @ W.T + b")
        if any(k in attrs and abs(attrs[k].f - 1.0) > 0 for k in ("alpha", "beta")):
            raise RetrainError("head.onnx Gemm has alpha/beta != 1; re-export the head as embedding @ W.T + b")
        W, b = consts.get(gemm.input[1]), consts.get(gemm.input[2])
        if W is not None and not (attrs.get("transB") and attrs["transB"].i):
            W = W.T
    elif ops == ["MatMul", "Add"]:
        matmul, add = nodes
        W = consts.get(matmul.input[1])
        W = None if W is None else W.T
        b = consts.get(add.input[1] if add.input[0] == matmul.output[0] else add.input[0])
    else:
        raise RetrainError(
            f"head.onnx is not a single Linear layer (nodes: {', '.join(ops) or 'none'}); re-export the head"
        )
    if W is None or b is None or W.ndim != 2 or b.reshape(-1).shape[0] != W.shape[0]:
        raise RetrainError("head.onnx weights are not constant [classes, features] and [classes]; re-export the head")
    return np.ascontiguousarray(W, dtype=np.float32), np.ascontiguousarray(b.reshape(-1), dtype=np.float32)


def _metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_head(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(W [C,F], b [C], labels)`` of a head file (ours, or one exported from torch)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise RetrainError(f"{path}: no head model; package the bundle again to get head.onnx")
    model = onnx.load(str(path))
    W, b = _head_parts(model)
    meta = _metadata(model)
    try:
        labels = [str(x) for x in json.loads(meta["edgetl.labels"])]
    except (KeyError, ValueError):
        raise RetrainError(f"{path}: no valid edgetl.labels metadata; re-export the head with edgetl") from None
    if len(labels) != W.shape[0]:
        raise RetrainError(f"{path}: {len(labels)} labels for {W.shape[0]} classes; re-export the head")
    return W, b, labels


def grow_head(
    W: np.ndarray, b: np.ndarray, n_new: int, *, init: GrowInit | str = GrowInit.MEAN
) -> tuple[np.ndarray, np.ndarray]:
    """Append ``n_new`` classes to a head; old rows are kept bit for bit.

    ``MEAN`` (default) starts each new row at the mean of the old rows and biases, so
    a new class's logit starts at the mean of the old logits for every input: below
    the winning class (old predictions unchanged), not far below (its softmax
    probability and so its gradient are not vanishing), and in the span of directions
    the head already uses. ``ZERO`` gives a constant logit at the mean old bias.
    """
    init = _choice(GrowInit, init, "init")
    if not (isinstance(n_new, int) and n_new >= 1):
        raise ConfigError(f"n_new must be an integer >= 1, got {n_new!r}")
    W = np.asarray(W, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if init is GrowInit.MEAN:
        w_row, b_new = W.mean(axis=0), b.mean()
    else:
        w_row, b_new = np.zeros(W.shape[1], np.float32), b.mean()
    W2 = np.concatenate([W, np.tile(w_row, (n_new, 1))]).astype(np.float32)
    b2 = np.concatenate([b, np.full(n_new, b_new)]).astype(np.float32)
    return W2, b2


# --------------------------------------------------------------------------- artifacts


def _artifact_paths(artifacts_dir: str | os.PathLike) -> dict[str, Path]:
    root = Path(artifacts_dir)
    paths = {k: root / v for k, v in ARTIFACT_FILES.items()}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise RetrainError(
            f"{root}: training artifacts incomplete (missing {', '.join(missing)}); "
            "regenerate them with make_training_artifacts"
        )
    return paths


def make_training_artifacts(
    head_onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, Path]:
    """Generate ORT training artifacts for a head and check they load.

    Writes ``training_model.onnx`` (inputs ``embedding``, ``labels`` int64 [N]; output
    the mean cross-entropy), ``eval_model.onnx``, ``optimizer_model.onnx`` (AdamW, torch
    semantics, default :class:`HeadTrainConfig` values) and ``checkpoint`` into
    ``out_dir``; returns ``{"training_model": path, ...}`` (keys of ``ARTIFACT_FILES``).
    Every ``.onnx`` is set to IR 10; a checkpoint, module and optimizer are created once
    as a check. Raises :class:`RetrainError` if anything fails.
    """
    import onnx

    head_path = Path(head_onnx_path)
    W, b, labels = read_head(head_path)
    metadata = {k: v for k, v in _metadata(onnx.load(str(head_path))).items() if k.startswith("edgetl.")}
    out = Path(out_dir)
    paths = {k: out / v for k, v in ARTIFACT_FILES.items()}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise RetrainError(f"{out}: already holds {', '.join(existing)}; write to an empty folder or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)

    # Generate from a canonical head (one Gemm, our parameter names) whatever exporter
    # wrote the input, so the training graph and the exported head are always the same.
    with tempfile.TemporaryDirectory(prefix="edgetl-head-") as tmp:
        canonical = onnx.load(str(make_head_onnx(W, b, labels, Path(tmp) / "head.onnx", metadata=metadata)))
    art, blocks = artifacts_api(), onnxblock_api()
    defaults = HeadTrainConfig()
    with captured_stderr() as log:
        try:
            art.generate_artifacts(
                canonical,
                requires_grad=[WEIGHT, BIAS],
                loss=art.LossType.CrossEntropyLoss,  # mean reduction; labels input named LABELS_INPUT
                optimizer=blocks.optim.AdamW(betas=defaults.betas, eps=defaults.eps, weight_decay=defaults.weight_decay),
                artifact_directory=str(out),
            )
            error = None
        except Exception as exc:  # noqa: BLE001 - ORT raises RuntimeError, onnx ValidationError, ...
            error = exc
    if error is not None:
        detail = (log[0].strip().splitlines() or [""])[-1]
        raise RetrainError(f"generating training artifacts failed: {error} {detail}".strip()) from error

    for key in ("training_model", "eval_model", "optimizer_model"):
        model = onnx.load(str(paths[key]))
        changed = model.ir_version > MAX_IR_VERSION
        model.ir_version = min(model.ir_version, MAX_IR_VERSION)
        if key == "optimizer_model":
            changed |= set_adamw(model, betas=defaults.betas, eps=defaults.eps, weight_decay=defaults.weight_decay)
        merged = {**_metadata(model), **metadata}  # train_head re-adds these to the exported head
        if key == "training_model" and _metadata(model) != merged:
            changed = True
            del model.metadata_props[:]
            for k, v in merged.items():
                model.metadata_props.add(key=k, value=v)
        if changed:
            onnx.save(model, str(paths[key]))
    try:
        open_training(paths)
    except Exception as exc:  # noqa: BLE001 - the check: any failure to load is a refusal
        raise RetrainError(f"training artifacts in {out} do not load in onnxruntime: {exc}") from exc
    return paths


# --------------------------------------------------------------------------- training


def epoch_batches(
    y: np.ndarray, batch_size: int, rng: np.random.Generator, sampling: Sampling | str = Sampling.SHUFFLE
) -> list[np.ndarray]:
    """One epoch of index batches (the last may be smaller).

    ``SHUFFLE``: a permutation. ``BALANCED``: ``len(y)`` draws with replacement, each
    class equally likely (a replay memory of 20 per class then weighs as much as 200 new
    samples of one class), the cheap fix for class imbalance: no change to the loss graph.
    """
    n = len(y)
    if Sampling(sampling) is Sampling.BALANCED:
        _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        p = 1.0 / (len(counts) * counts[inverse])
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    else:
        order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _check_xy(X, y, n_features: int, n_classes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise RetrainError(f"{what} embeddings have shape {X.shape}; the head expects [N, {n_features}]")
    if y.shape != (X.shape[0],):
        raise RetrainError(f"{what}: {X.shape[0]} embeddings but {y.shape[0] if y.ndim else 0} labels")
    if X.shape[0] and (y.min() < 0 or y.max() >= n_classes):
        raise RetrainError(
            f"{what} labels must be class indices in [0, {n_classes}); grow the head for new classes first"
        )
    if not np.isfinite(X).all():
        raise RetrainError(f"{what} embeddings hold NaN or infinity; check the backbone output")
    return X, y


def _evaluate(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the head ``W, b`` in float64."""
    logits = X.astype(np.float64) @ W.T.astype(np.float64) + b
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float((logits.argmax(axis=1) == y).mean()), float(-log_prob[np.arange(len(y)), y].mean())


def _score(acc: float, loss: float, monitor: Monitor) -> tuple[float, float]:
    """Larger is better."""
    return (-loss, acc) if monitor is Monitor.LOSS else (acc, -loss)


def _verify_export(path: Path, W: np.ndarray, b: np.ndarray, X: np.ndarray) -> None:
    import onnxruntime as ort

    W2, b2, _ = read_head(path)
    if not (np.array_equal(W2, W) and np.array_equal(b2, b)):
        raise RetrainError(f"{path}: exported head parameters differ from the trained ones; retrain")
    if len(X):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT], {INPUT: X[:64]})[0]
        want = X[:64] @ W.T + b
        if not np.allclose(got, want, atol=1e-4, rtol=1e-4):
            raise RetrainError(f"{path}: exported head disagrees with the trained parameters; retrain")


def train_head(
    artifacts_dir: str | os.PathLike,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: HeadTrainConfig | None = None,
    *,
    export_path: str | os.PathLike | None = None,
) -> HeadTrainResult:
    """Train the head held in ``artifacts_dir`` (from :func:`make_training_artifacts`).

    Batches come from ``np.random.default_rng(config.seed)`` via :func:`epoch_batches`.
    After each epoch the current parameters are scored on the validation set (numpy,
    float64); the best by ``config.monitor`` (the starting head is epoch 0) are kept and
    training stops after ``patience`` epochs without improvement. Without validation
    data the last parameters are kept. With ``export_path``, the best head is written
    there by :func:`make_head_onnx` (bit-exact parameters, metadata kept) and checked.
    The artifacts themselves are never modified.
    """
    import onnx

    config = config or HeadTrainConfig()
    started = time.perf_counter()
    paths = _artifact_paths(artifacts_dir)
    metadata = {k: v for k, v in _metadata(onnx.load(str(paths["training_model"]))).items() if k.startswith("edgetl.")}
    optimizer_model = onnx.load(str(paths["optimizer_model"]))

    with tempfile.TemporaryDirectory(prefix="edgetl-optim-") as tmp:
        optimizer_path = None
        if set_adamw(optimizer_model, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay):  # hyperparameters differ: use a patched copy
            optimizer_path = Path(tmp) / ARTIFACT_FILES["optimizer_model"]
            onnx.save(optimizer_model, str(optimizer_path))
        try:
            state, module, optimizer = open_training(paths, optimizer_path)
        except Exception as exc:  # noqa: BLE001
            raise RetrainError(f"training artifacts in {artifacts_dir} do not load: {exc}; regenerate them") from exc

    W = np.array(state.parameters[WEIGHT].data, dtype=np.float32)
    b = np.array(state.parameters[BIAS].data, dtype=np.float32)
    n_classes, n_features = W.shape
    X_train, y_train = _check_xy(X_train, y_train, n_features, n_classes, "training")
    if len(y_train) == 0:
        raise RetrainError("no training samples; add labelled data to retrain on")
    has_val = X_val is not None and y_val is not None and len(y_val) > 0
    if has_val:
        X_val, y_val = _check_xy(X_val, y_val, n_features, n_classes, "validation")
    try:
        labels = tuple(json.loads(metadata["edgetl.labels"]))
    except (KeyError, ValueError):
        labels = tuple(str(i) for i in range(n_classes))

    best = (W, b)
    best_epoch = 0
    initial_acc = best_acc = None
    best_key = (-math.inf, -math.inf)
    if has_val:
        initial_acc, val_loss = _evaluate(W, b, X_val, y_val)
        best_acc, best_key = initial_acc, _score(initial_acc, val_loss, config.monitor)

    rng = np.random.default_rng(config.seed)
    optimizer.set_learning_rate(config.lr)
    module.train()
    history: list[dict] = []
    step_losses: list[float] = []
    stale = 0
    for epoch in progress(range(1, config.epochs + 1), "retraining head"):
        batch_losses = []
        for idx in epoch_batches(y_train, config.batch_size, rng, config.sampling):
            loss = float(module(X_train[idx], y_train[idx]))
            if not math.isfinite(loss):
                raise RetrainError(f"training diverged (loss {loss}) in epoch {epoch}; lower lr (now {config.lr})")
            optimizer.step()
            module.lazy_reset_grad()
            batch_losses.append(loss)
        step_losses.extend(batch_losses)
        W = np.array(state.parameters[WEIGHT].data, dtype=np.float32)
        b = np.array(state.parameters[BIAS].data, dtype=np.float32)
        row = {"epoch": epoch, "loss": float(np.mean(batch_losses)), "val_acc": None, "val_loss": None}
        if has_val:
            acc, val_loss = _evaluate(W, b, X_val, y_val)
            row.update(val_acc=acc, val_loss=val_loss)
            if _score(acc, val_loss, config.monitor) > best_key:
                best, best_epoch, best_acc, best_key, stale = (W, b), epoch, acc, _score(acc, val_loss, config.monitor), 0
            else:
                stale += 1
        else:
            best, best_epoch = (W, b), epoch
        history.append(row)
        if has_val and config.patience and stale >= config.patience:
            break

    head_path = None
    if export_path is not None:
        head_path = make_head_onnx(best[0], best[1], labels, export_path, metadata=metadata)
        _verify_export(head_path, best[0], best[1], X_val if has_val else X_train)
    return HeadTrainResult(
        W=best[0],
        b=best[1],
        labels=labels,
        history=history,
        best_epoch=best_epoch,
        initial_val_acc=initial_acc,
        best_val_acc=best_acc,
        first_step_loss=step_losses[0],
        step_losses=step_losses,
        head_path=head_path,
        seconds=time.perf_counter() - started,
    )
