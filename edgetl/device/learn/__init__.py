"""On-device learning of the head: its file format (:mod:`.head`), ONNX Runtime training
artifacts (:mod:`.artifacts`), the training loop with its two steppers (:mod:`.trainer`:
ONNX Runtime where a training build exists, :mod:`.numpy_trainer` everywhere else), and the
exact solver (:mod:`.solver`, numpy L-BFGS) with the class-addition learner built on it
(:mod:`.addition`: old rows kept, new rows solved; generic over rows, labels and a head).

    W, b, labels = read_head("head.onnx")
    W, b = grow_head(W, b, 2)                               # only if new classes arrive
    result = fit_head(W, b, labels + ["8", "9"], X, y, X_val, y_val, HeadTrainConfig(),
                      artifacts_dir=artifacts_or_None, export_path="staging/head.onnx")
"""

from edgetl.device.learn.artifacts import ARTIFACT_FILES, LABELS_INPUT, artifacts_start_from, make_training_artifacts
from edgetl.device.learn.head import BIAS, WEIGHT, GrowInit, grow_head, head_metadata, make_head_onnx, read_head
from edgetl.device.learn.trainer import (HeadTrainConfig, HeadTrainResult, Monitor, Sampling, Trainer, epoch_batches,
                                         fit_head, ort_training_available, resolve_trainer, train_head)

__all__ = ["ARTIFACT_FILES", "LABELS_INPUT", "make_training_artifacts", "artifacts_start_from", "WEIGHT", "BIAS",
           "GrowInit", "grow_head", "head_metadata", "make_head_onnx", "read_head", "HeadTrainConfig",
           "HeadTrainResult", "Monitor", "Sampling", "Trainer", "epoch_batches", "fit_head", "train_head",
           "ort_training_available", "resolve_trainer"]
