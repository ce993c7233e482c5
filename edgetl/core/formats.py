"""Names and limits that every stage shares: model I/O names, metadata keys, ONNX limits.

One owner for each: the exporter writes them, the device reads them, the tests check them.
"""

from __future__ import annotations

__all__ = ["MAX_IR_VERSION", "MAX_OPSET", "EMBEDDING", "LOGITS", "META_LABELS", "META_PREPROCESS",
           "META_NUM_FEATURES", "META_BACKBONE", "META_MODALITY", "META_ARTIFACTS", "META_INT8", "META_TASK"]

# ONNX Runtime 1.19.2 (the last wheel with on-device training) loads IR <= 10 and implements
# default-domain opsets up to 21; recent onnx writes IR 11+ unless told otherwise.
MAX_IR_VERSION = 10
MAX_OPSET = 21

EMBEDDING = "embedding"  # backbone output [N, F] = head input
LOGITS = "logits"  # head and fused-model output [N, C]

META_LABELS = "edgetl.labels"  # JSON list, index = class id
META_PREPROCESS = "edgetl.preprocess"  # JSON: the modality's spec (image preprocessing, tokenisation)
META_NUM_FEATURES = "edgetl.num_features"
META_BACKBONE = "edgetl.backbone"
META_MODALITY = "edgetl.modality"
META_TASK = "edgetl.task"  # edgetl.tasks' name; absent = classification
META_ARTIFACTS = "edgetl.artifacts"  # JSON {name: sha256} of the RUN's extra files (a tokenizer.json)
META_INT8 = "edgetl.int8"  # JSON {"isa", "weight_bits": 7 | 8}: the CPUs an int8 backbone was built for
