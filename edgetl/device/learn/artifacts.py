"""ONNX Runtime training artifacts for the head: generated from head.onnx (IR 10, AdamW with
PyTorch semantics), checked loadable, and opened for training. Needs a build of ONNX
Runtime with training (``onnxruntime-training-cpu``); where there is none the numpy
trainer (:mod:`edgetl.device.learn.numpy_trainer`) needs no artifacts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from edgetl.core.formats import MAX_IR_VERSION
from edgetl.device.learn.head import BIAS, WEIGHT, head_metadata, make_head_onnx, read_head
from edgetl.device.learn.ort_shim import artifacts_api, captured_stderr, onnxblock_api, open_training, set_adamw
from edgetl.errors import RetrainError

__all__ = ["ARTIFACT_FILES", "LABELS_INPUT", "DEFAULT_ADAMW", "make_training_artifacts", "artifact_paths",
           "artifacts_start_from"]

LABELS_INPUT = "labels"  # int64 [N] class indices: the training/eval models' second input
ARTIFACT_FILES = {
    "training_model": "training_model.onnx",
    "eval_model": "eval_model.onnx",
    "optimizer_model": "optimizer_model.onnx",
    "checkpoint": "checkpoint",
}
# AdamW hyperparameters written into the artifacts (HeadTrainConfig's defaults; a trainer
# with other values patches a copy of the optimizer model)
DEFAULT_ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}


def artifact_paths(artifacts_dir: str | os.PathLike) -> dict[str, Path]:
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
    metadata = {k: v for k, v in head_metadata(onnx.load(str(head_path))).items() if k.startswith("edgetl.")}
    out = Path(out_dir)
    paths = {k: out / v for k, v in ARTIFACT_FILES.items()}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise RetrainError(f"{out}: already holds {', '.join(existing)}; write to an empty folder or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)

    # Generate from a canonical head (one Gemm, our parameter names) whatever exporter
    # wrote the input, so the training graph and the exported head are always the same.
    # the scratch head lives in out_dir (a kill -9 leaves it where the caller cleans up)
    with tempfile.TemporaryDirectory(prefix=".edgetl-head-", dir=out) as tmp:
        canonical = onnx.load(str(make_head_onnx(W, b, labels, Path(tmp) / "head.onnx", metadata=metadata)))
    art, blocks = artifacts_api(), onnxblock_api()
    with captured_stderr() as log:
        try:
            art.generate_artifacts(
                canonical,
                requires_grad=[WEIGHT, BIAS],
                loss=art.LossType.CrossEntropyLoss,  # mean reduction; labels input named LABELS_INPUT
                optimizer=blocks.optim.AdamW(**DEFAULT_ADAMW),
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
            changed |= set_adamw(model, **DEFAULT_ADAMW)
        merged = {**head_metadata(model), **metadata}  # train_head re-adds these to the exported head
        if key == "training_model" and head_metadata(model) != merged:
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




def artifacts_start_from(training_dir: Path, W: np.ndarray, b: np.ndarray) -> bool:
    """True if the artifacts in ``training_dir`` are complete and start from exactly ``W, b``."""
    from edgetl.device.learn.ort_shim import training_api

    if not all((training_dir / name).exists() for name in ARTIFACT_FILES.values()):
        return False
    try:
        state = training_api().CheckpointState.load_checkpoint(str(training_dir / ARTIFACT_FILES["checkpoint"]))
        return bool(np.array_equal(state.parameters[WEIGHT].data, W) and np.array_equal(state.parameters[BIAS].data, b))
    except Exception:  # noqa: BLE001 - unreadable artifacts are regenerated
        return False
