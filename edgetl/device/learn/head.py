"""The head file format: one Linear layer, ``logits = embedding @ W.T + b``, stored as an
ONNX Gemm (``embedding`` [N,F] -> ``logits`` [N,C], transB=1, IR 10) with ``edgetl.labels``
and ``edgetl.num_features`` metadata. The one writer and reader of head.onnx. Torch-free."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgetl.core.formats import EMBEDDING, LOGITS, MAX_IR_VERSION, META_LABELS, META_NUM_FEATURES
from edgetl.errors import ConfigError, RetrainError

__all__ = ["WEIGHT", "BIAS", "INPUT", "OUTPUT", "OPSET", "GrowInit", "make_head_onnx", "read_head", "grow_head",
           "head_metadata", "choice"]

WEIGHT = "head.weight"  # same names as the torch state dict of EdgeModel.head
BIAS = "head.bias"
INPUT = EMBEDDING
OUTPUT = LOGITS
OPSET = 17


class GrowInit(str, Enum):
    """How rows for new classes start (see :func:`grow_head`)."""

    MEAN = "mean"  # mean of the existing rows and biases
    ZERO = "zero"  # zero weights, bias at the mean of the existing biases


def choice(enum: type[Enum], value: object, name: str):
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"{name} must be one of {', '.join(e.value for e in enum)}, got {value!r}") from None


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
    props[META_LABELS] = json.dumps(labels)
    props[META_NUM_FEATURES] = str(n_features)
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


def head_metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_head(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(W [C,F], b [C], labels)`` of a head file (ours, or one exported from torch)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise RetrainError(f"{path}: no head model; package the bundle again to get head.onnx")
    model = onnx.load(str(path))
    W, b = _head_parts(model)
    meta = head_metadata(model)
    try:
        labels = [str(x) for x in json.loads(meta[META_LABELS])]
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
    init = choice(GrowInit, init, "init")
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
