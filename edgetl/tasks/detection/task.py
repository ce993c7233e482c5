"""Object detection behind the task seam: boxes and their classes in images.

The backbone's output is a feature map [N, F, H, W] (stride s = input size / H); each location is
a row of the head, as torchvision's FCOS has it: the class head gives K + 1 logits per location
(index 0 = background) and the box head the FCOS log distances from the location's centre to the
box's sides (:func:`edgetl.tasks.detection.boxes.encode_boxes`). Decoding, the same on the
workstation and the device (numpy): softmax, locations whose best class clears the score
threshold, boxes decoded and mapped back through the letterbox into the image's own pixels,
per-class NMS, the best ``MAX_DETECTIONS``. The metric is COCO's mAP@[.5:.95] and mAP@.5
(:func:`edgetl.tasks.detection.metric.coco_evaluate`, equal to pycocotools).

Decoding and NMS run in numpy rather than inside the ONNX graph (``NonMaxSuppression``): one
implementation serves the workstation's evaluation, the quantization guard and every device,
whatever its runtime, and it costs well under a millisecond per image for the ~1,600 locations
of a 320-pixel input (benchmarks/detection_bench.py times it with the model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgetl.errors import DataError
from edgetl.tasks import TASKS

__all__ = ["Detection", "Detections", "DetectionTask", "DETECTION", "decode", "SCORE_THRESHOLD", "EVAL_THRESHOLD",
           "NMS_IOU", "MAX_DETECTIONS"]

BACKGROUND = "(background)"  # the head's output 0; parentheses keep it apart from any class name
SCORE_THRESHOLD = 0.3  # what predict reports by default (--score-threshold)
EVAL_THRESHOLD = 0.05  # what the metric sees: COCO ranks every detection, low scores included
NMS_IOU = 0.5
MAX_DETECTIONS = 100  # per image, COCO's maxDets


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's own pixels
    index: int  # class id of ``label``

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "box": [round(float(v), 2) for v in self.box]}


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first; ``error`` says why an image could not be read."""

    file: str | None
    detections: tuple[Detection, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "detections": [d.to_dict() for d in self.detections], "error": self.error}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def decode(logits: np.ndarray, codes: np.ndarray, grid: tuple[int, int], input_size: int,
           image_size: Sequence[int], *, score_threshold: float = EVAL_THRESHOLD, iou: float = NMS_IOU,
           max_detections: int = MAX_DETECTIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's head outputs (class logits [L, K+1], box codes [L, 4] over its H x W = L
    locations) -> ``(boxes [n, 4] in the image's pixels, scores [n], classes [n])``, best first."""
    from edgetl.tasks.detection.boxes import batched_nms, cell_centers, decode_boxes, from_letterbox, letterbox

    h, w = grid
    probs = _softmax(np.asarray(logits, np.float32))
    classes = probs[:, 1:].argmax(axis=1)
    scores = probs[np.arange(len(probs)), classes + 1]
    keep = np.flatnonzero(scores >= score_threshold)
    if not len(keep):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    stride = input_size / w
    boxes = decode_boxes(np.asarray(codes, np.float32)[keep], cell_centers(h, w, stride)[keep], stride)
    boxes = from_letterbox(boxes, letterbox(int(image_size[0]), int(image_size[1]), input_size))
    scores, classes = scores[keep], classes[keep]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ok = np.flatnonzero(area > 0)  # a box wholly in the padding clips to nothing
    boxes, scores, classes = boxes[ok], scores[ok], classes[ok]
    kept = batched_nms(boxes, scores, classes, iou)[:max_detections]
    return boxes[kept], scores[kept].astype(np.float32), classes[kept].astype(np.int64)


def _image_sizes(inputs: Mapping[str, Any], n: int, input_size: int) -> np.ndarray:
    """Each item's original (width, height); example inputs (``edgetl bench``) carry none, and
    then the letterboxed input is the image."""
    sizes = inputs.get("image_size")
    return np.full((n, 2), input_size, np.int64) if sizes is None else sizes


class DetectionTask:
    """Boxes and classes in images (see the module docstring)."""

    name = "detection"
    modalities = ("image",)
    noun = "image"
    pooled = False
    feature_axis = 1  # where the backbone output's features are: [N, F, H, W]
    extra_heads = ("box_head",)
    metric_label = "mAP@.5"  # what its summaries call the metric
    guard_budget = (0.02, 0.90)  # the quantization guard's: mAP@.5 drop, boxes found again (guard.py)
    # training rows sample the background (rows.py): the device learns in their space, rows weighed
    # alike, and gives the background output its bias for all locations back (row_retraining)
    background_sampled = True

    def recognises(self, data: Any) -> bool:
        from edgetl.tasks.detection.data import detect_format

        try:
            return detect_format(data) is not None
        except (OSError, ValueError, DataError):
            return False

    def read(self, data: Any, modality: Any, *, strict: bool = False, **options: Any) -> Any:
        from edgetl.tasks.detection.data import read_detection_data

        return read_detection_data(data, strict=strict)

    def head_labels(self, labels: Sequence[str]) -> list[str]:
        return [BACKGROUND, *labels]  # background first: class k is output k + 1

    def rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """features [N, F, H, W] -> rows [N*H*W, F], each image's locations row-major (y, x)."""
        n, f = output.shape[:2]
        return np.ascontiguousarray(np.moveaxis(output, 1, -1).reshape(-1, f))

    def item_rows(self, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        f = output.shape[1]
        return [np.ascontiguousarray(np.moveaxis(z, 0, -1).reshape(-1, f)) for z in output]

    def outputs(self, predictor: Any, z: np.ndarray, inputs: Mapping[str, np.ndarray], head: Any,
                extra: Mapping[str, Any]) -> dict[str, Any]:
        if "box_head" not in extra:
            from edgetl.errors import BundleError

            raise BundleError("a detection bundle needs its box head (models.box_head); re-package it")
        n, _, h, w = z.shape
        rows = self.rows(z, inputs)
        return {"logits": head.run(rows).reshape(n, h * w, -1), "boxes": extra["box_head"].run(rows).reshape(n, h * w, 4),
                "image_size": _image_sizes(inputs, n, predictor.spec.input_size),
                "grid": (h, w)}

    def predict(self, predictor: Any, sources: Sequence[Any], *, top_k: int = 1, batch_size: int | None = None,
                score_threshold: float | None = None) -> list[Detections]:
        threshold = SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
        size = predictor.spec.input_size
        results: list[Detections | None] = [None] * len(sources)
        for indices, out, errors in predictor.run_chunks(sources, batch_size, strict=False, logits=True):
            for i, reason in errors.items():
                results[i] = Detections(predictor._describe(sources[i]), (), reason)
            for row, i in enumerate(indices):
                boxes, scores, classes = decode(out["logits"][row], out["boxes"][row], out["grid"], size,
                                                out["image_size"][row], score_threshold=threshold)
                found = tuple(Detection(predictor.labels[c], float(s), tuple(map(float, b)), int(c))
                              for b, s, c in zip(boxes, scores, classes))
                results[i] = Detections(predictor._describe(sources[i]), found)
        return results  # type: ignore[return-value]

    # --- what ``edgetl bench`` times after the network (edgetl.benchmarking.worker) ------------

    def bench_outputs(self, raw: Any, x: Mapping[str, np.ndarray], spec: Any) -> dict[str, Any]:
        """The PyTorch model's outputs (class logits [N, L, K+1], box codes [N, L, 4]) as
        :meth:`outputs` gives the device's."""
        logits, codes = (np.asarray(r) for r in raw)
        side = int(round(np.sqrt(logits.shape[1])))
        return {"logits": logits, "boxes": codes, "image_size": _image_sizes(x, len(logits), spec.input_size),
                "grid": (side, side)}

    def bench_decode(self, out: Mapping[str, Any], spec: Any) -> np.ndarray:
        """Each image's detections decoded and NMS-filtered at the default score threshold, as
        ``edgetl predict`` does; returns their count per image."""
        sizes = out["image_size"]  # outputs and bench_outputs both give it
        return np.asarray([len(decode(out["logits"][i], out["boxes"][i], out["grid"], spec.input_size, sizes[i],
                                      score_threshold=SCORE_THRESHOLD)[0]) for i in range(len(out["logits"]))])

    # --- retraining on the device (edgetl.device.row_retraining) -------------------------------

    metric_name = "map50"

    def item_source(self, item: Any) -> Any:
        """What the predictor reads for an annotated item: its image's path."""
        return item.path

    def item_classes(self, item: Any, labels: Sequence[str]) -> np.ndarray:
        """The item's boxes' classes, indices into ``labels`` (its data's labels) as read."""
        return np.asarray(item.classes, np.int64)

    def training_rows(self, rows: np.ndarray, item: Any, classes: np.ndarray, spec: Any,
                      rng: np.random.Generator, *, sample: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's rows [H*W, F] -> the rows to learn from (its positive locations and sampled
        background, as the workstation trains: edgetl.tasks.detection.rows), their head outputs
        (0 = background) and box codes; ``classes``: the item's box classes as the head's
        labels index them."""
        from edgetl.tasks.detection.boxes import letterbox, to_letterbox
        from edgetl.tasks.detection.rows import Rows, location_rows

        side = int(round(np.sqrt(len(rows))))
        keep = ~np.asarray(item.crowd, bool)
        boxes = to_letterbox(item.boxes[keep], letterbox(item.width, item.height, spec.input_size))
        out = Rows()
        location_rows(rows, side, side, boxes, np.asarray(classes)[keep], spec.input_size, rng, out, 0,
                      all_rows=not sample)
        X, y, codes, _ = out.arrays()
        return X, y, codes

    def solve_extra_heads(self, X: np.ndarray, y: np.ndarray, targets: np.ndarray,
                          old: Mapping[str, tuple] | None = None) -> dict[str, tuple]:
        """The box head solved again on every row with a box (exact ridge regression), pulled
        toward the ``old`` box head where one is given (see solve_box_head)."""
        from edgetl.tasks.detection.rows import solve_box_head

        pos = y > 0
        order = np.random.default_rng(0).permutation(np.flatnonzero(pos))
        k = len(order) // 5  # a fifth of the rows chooses the penalty
        W, b, _ = solve_box_head(X[order[k:]], targets[order[k:]], X[order[:k]], targets[order[:k]],
                                 anchor=(old or {}).get("box_head"))
        return {"box_head": (W, b)}

    def score_heads(self, predictor: Any, items: list, classes: list, head: tuple, extra: dict,
                    labels: list[str]) -> float:
        """mAP@.5 of the heads ``head`` (W, b) and ``extra`` (box head) on annotated items."""
        from edgetl.tasks.detection.metric import coco_evaluate

        W, b = head
        Wb, bb = extra["box_head"]
        preds, truth = [], []
        for indices, x, _ in predictor.batches([it.path for it in items], strict=False):
            z = predictor.backbone.run(x)
            for i, rows in zip(indices, self.item_rows(z, x)):
                side = int(round(np.sqrt(len(rows))))
                boxes, scores, cls = decode(rows @ W.T + b, rows @ Wb.T + bb, (side, side), predictor.spec.input_size,
                                            x["image_size"][indices.index(i)])
                preds.append({"boxes": boxes, "scores": scores, "classes": cls})
                truth.append({"boxes": items[i].boxes, "classes": classes[i], "crowd": items[i].crowd})
        value = coco_evaluate(preds, truth, labels)["map50"]
        return float(value) if value is not None else 0.0

    def evaluate(self, predictor: Any, data: str | os.PathLike, *, batch_size: int | None = None) -> "DetectionEvaluation":
        """COCO mAP of ``predictor`` on annotated images (COCO JSON, YOLO or VOC); every class
        in DATA must be one of the model's."""
        from edgetl.tasks.detection.data import read_detection_data
        from edgetl.tasks.detection.metric import coco_evaluate

        found = read_detection_data(data)
        index = {label: i for i, label in enumerate(predictor.labels)}
        unknown = [name for name in found.labels if name not in index]
        if unknown:
            raise DataError(f"{found.root}: class(es) {', '.join(map(repr, unknown))} are not among the model's labels "
                            f"({', '.join(predictor.labels)}); evaluate on known classes, or retrain the bundle with them")
        to_model = np.asarray([index[name] for name in found.labels], np.int64)
        items = list(found.items)
        predictions = self.predict(predictor, [it.path for it in items], batch_size=batch_size,
                                   score_threshold=EVAL_THRESHOLD)
        preds, truth, errors = [], [], []
        for item, pred in zip(items, predictions):
            if not pred.ok:
                errors.append((str(item.path), pred.error or ""))
                continue
            preds.append({"boxes": np.asarray([d.box for d in pred.detections], np.float32).reshape(-1, 4),
                          "scores": np.asarray([d.score for d in pred.detections], np.float32),
                          "classes": np.asarray([d.index for d in pred.detections], np.int64)})
            truth.append({"boxes": item.boxes, "classes": to_model[item.classes], "crowd": item.crowd})
        if not preds:
            raise DataError(f"{found.root}: none of its {len(items)} image(s) could be read")
        metrics = coco_evaluate(preds, truth, predictor.labels)
        return DetectionEvaluation(metrics["map"], metrics["map50"], metrics["per_class"], metrics["n"],
                                   tuple(errors), {"runtime": predictor.runtime,
                                                   "precision_executed": predictor.precision_executed})


@dataclass(frozen=True)
class DetectionEvaluation:
    """``{"map", "map50", "per_class": {label: {"map", "map50", "n"}}, "n", "errors", ...}``."""

    map: float | None
    map50: float | None
    per_class: dict[str, Any]
    n: int
    errors: tuple[tuple[str, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"map": self.map, "map50": self.map50, "per_class": self.per_class, "n": self.n,
                "errors": [{"file": f, "error": e} for f, e in self.errors], **self.extra}


DETECTION = DetectionTask()
TASKS.register("detection", DETECTION)
