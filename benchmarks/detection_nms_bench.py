"""Decoding and NMS: in numpy on the device (what edgetl does) or inside an ONNX graph
(``NonMaxSuppression``, which ONNX Runtime and OpenVINO both run), timed on the same head
outputs of real images and compared detection for detection.

The head outputs come from a detection bundle (``--bundle``, with ``--images`` an annotated
folder) or, by default, from one built here: five classes of composite scenes
(edgetl.workstation.detection_data.write_composite_scenes: real objects pasted onto real photos,
320 px), EfficientNet-Lite0 at stride 8, exact probe, packaged for x86-ort-fp32; held-out
scenes holding 40 objects of each class (84 images). Per image, at predict's score threshold
(0.3) and IoU 0.5:

- numpy: ``edgetl.tasks.detection.task.decode`` (softmax, best class per location, box decoding,
  mapping back out of the letterbox, per-class NMS index for index as torchvision's);
- graph: the same softmax, best class, box decoding and ``NonMaxSuppression`` per class with the
  kept boxes gathered, as one ONNX model run by each runtime (the boxes clipped to the input;
  mapping out of the letterbox left out, so images must be as large as the input). Where the
  two may differ by construction: the graph caps 100 boxes per class, numpy 100 per image (the
  result records the most any image got); ONNX keeps scores above the threshold, numpy at or
  above it; numpy drops boxes of zero area. The detections are compared one for one.

    python benchmarks/detection_nms_bench.py [--bundle B --images DATA] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ["digit_0", "face", "cat", "shuttle", "coffee"]
REPEATS = 20


def _edgetl(*argv) -> None:
    result = subprocess.run([sys.executable, "-m", "edgetl.cli", *map(str, argv)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"edgetl {' '.join(map(str, argv))}: {result.stderr.strip()[-2000:]}")


def _build(work: Path) -> tuple[Path, Path]:
    from edgetl.workstation.detection_data import write_composite_scenes as scenes

    scenes(work / "train", CLASSES, per_class=40, seed=0, size=320)
    scenes(work / "test", CLASSES, per_class=40, seed=2, size=320, split="test")
    _edgetl("train", work / "train", "--task", "detection", "--out", work / "run", "--backbone",
            "efficientnet_lite0", "--image-size", 320, "--force")
    _edgetl("export", work / "run")
    _edgetl("package", work / "run", "--target", "x86-ort-fp32", "--out", work / "bundle", "--force")
    return work / "bundle", work / "test"


def decode_graph(L: int, K: int, grid: tuple[int, int], input_size: int, score_threshold: float, iou: float,
                 max_per_class: int):
    """logits [L, K+1], codes [L, 4] -> kept boxes [M, 4], scores [M], (batch, class, location) [M, 3]."""
    from onnx import TensorProto, helper, numpy_helper

    from edgetl.core.formats import MAX_IR_VERSION
    from edgetl.tasks.detection.boxes import MAX_LOG_DISTANCE, cell_centers

    h, w = grid
    stride = input_size / w
    centers = cell_centers(h, w, stride)
    const = {
        "starts": np.asarray([1], np.int64), "ends": np.asarray([K + 1], np.int64), "axis1": np.asarray([1], np.int64),
        "axis0": np.asarray([0], np.int64), "maxlog": np.asarray(MAX_LOG_DISTANCE, np.float32),
        "stride": np.asarray(stride, np.float32), "zero": np.asarray(0, np.float32),
        "size": np.asarray(input_size, np.float32),
        "cx": centers[:, :1].copy(), "cy": centers[:, 1:].copy(),
        "max_out": np.asarray([max_per_class], np.int64), "iou": np.asarray([iou], np.float32),
        "thr": np.asarray([score_threshold], np.float32),
        "col0": np.asarray([0], np.int64), "col1": np.asarray([1], np.int64), "col2": np.asarray([2], np.int64),
        "col3": np.asarray([3], np.int64), "col4": np.asarray([4], np.int64), "two": np.asarray([2], np.int64),
        "three": np.asarray([3], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Softmax", ["logits"], ["probs"], axis=1),
        n("Slice", ["probs", "starts", "ends", "axis1"], ["cls"]),
        n("ReduceMax", ["cls"], ["best"], axes=[1], keepdims=1),
        n("Equal", ["cls", "best"], ["is_best"]),
        n("Cast", ["is_best"], ["is_best_f"], to=TensorProto.FLOAT),
        n("Mul", ["cls", "is_best_f"], ["cls_best"]),
        n("Transpose", ["cls_best"], ["scores_kl"], perm=[1, 0]),
        n("Unsqueeze", ["scores_kl", "axis0"], ["scores"]),
        n("Min", ["codes", "maxlog"], ["clipped"]),
        n("Exp", ["clipped"], ["dist"]),
        n("Mul", ["dist", "stride"], ["d"]),
        *(n("Slice", ["d", f"col{i}", f"col{i + 1}", "axis1"], [f"d{i}"]) for i in range(4)),
        n("Sub", ["cx", "d0"], ["x1"]), n("Sub", ["cy", "d1"], ["y1"]),
        n("Add", ["cx", "d2"], ["x2"]), n("Add", ["cy", "d3"], ["y2"]),
        n("Concat", ["x1", "y1", "x2", "y2"], ["boxes_raw"], axis=1),
        n("Clip", ["boxes_raw", "zero", "size"], ["boxes_l"]),
        n("Unsqueeze", ["boxes_l", "axis0"], ["boxes"]),
        n("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["selected"]),
        n("Slice", ["selected", "two", "three", "axis1"], ["loc_2d"]),
        n("Squeeze", ["loc_2d", "axis1"], ["loc"]),
        n("Gather", ["boxes_l", "loc"], ["kept_boxes"], axis=0),
        n("GatherND", ["scores", "selected"], ["kept_scores"]),
    ]
    graph = helper.make_graph(
        nodes, "decode_nms",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [L, K + 1]),
         helper.make_tensor_value_info("codes", TensorProto.FLOAT, [L, 4])],
        [helper.make_tensor_value_info("kept_boxes", TensorProto.FLOAT, ["M", 4]),
         helper.make_tensor_value_info("kept_scores", TensorProto.FLOAT, ["M"]),
         helper.make_tensor_value_info("selected", TensorProto.INT64, ["M", 3])],
        [numpy_helper.from_array(v, k) for k, v in const.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgetl-bench")
    model.ir_version = MAX_IR_VERSION  # what ONNX Runtime 1.19 loads
    return model


def _same(numpy_out, graph_out) -> bool:
    """The same detections: class and score for class and score, boxes within float rounding."""
    boxes, scores, classes = numpy_out
    g_boxes, g_scores, g_sel = graph_out
    if len(boxes) != len(g_boxes):
        return False
    a = sorted(zip(classes.tolist(), np.round(scores, 5).tolist(), np.round(boxes, 2).tolist()))
    b = sorted(zip(g_sel[:, 1].tolist(), np.round(g_scores, 5).tolist(), np.round(g_boxes, 2).tolist()))
    return all(x[0] == y[0] and abs(x[1] - y[1]) < 1e-4 and np.allclose(x[2], y[2], atol=0.05) for x, y in zip(a, b))


def main() -> int:
    import onnxruntime as ort
    import openvino as ov

    from edgetl.core.isa import cpu_class, this_cpu
    from edgetl.device.predictor import Predictor
    from edgetl.tasks.detection.data import read_detection_data
    from edgetl.tasks.detection.task import MAX_DETECTIONS, NMS_IOU, SCORE_THRESHOLD, decode

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if (args.bundle is None) != (args.images is None):
        parser.error("--bundle and --images go together")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-nms-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle, images = (args.bundle, args.images) if args.bundle else _build(work)
    predictor = Predictor.from_bundle(bundle)
    size = predictor.spec.input_size
    outputs = []
    for indices, out, _ in predictor.run_chunks([it.path for it in read_detection_data(images).items], 8):
        outputs += [(out["logits"][r], out["boxes"][r], out["grid"], out["image_size"][r]) for r in range(len(indices))]
    if any(tuple(int(v) for v in o[3]) != (size, size) for o in outputs):
        raise SystemExit(f"{images}: the graph leaves the letterbox out; give images of {size} x {size} pixels")
    L, K1 = outputs[0][0].shape
    model = decode_graph(L, K1 - 1, outputs[0][2], size, SCORE_THRESHOLD, NMS_IOU, MAX_DETECTIONS)
    path = work / "decode_nms.onnx"
    path.write_bytes(model.SerializeToString())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    names = ("kept_boxes", "kept_scores", "selected")
    ort_session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ov_model = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1})
    ov_outputs = [ov_model.output(name) for name in names]
    runs = {"onnxruntime": lambda x: ort_session.run(list(names), x),
            "openvino": lambda x: (lambda r: [r[o] for o in ov_outputs])(ov_model(x))}
    times = {"numpy": [], "onnxruntime": [], "openvino": []}
    same = {"onnxruntime": 0, "openvino": 0}
    detections = []
    for logits, codes, grid, image_size in outputs:
        feed = {"logits": np.ascontiguousarray(logits, np.float32), "codes": np.ascontiguousarray(codes, np.float32)}
        for _ in range(REPEATS):
            t = time.perf_counter()
            mine = decode(logits, codes, grid, size, image_size, score_threshold=SCORE_THRESHOLD)
            times["numpy"].append((time.perf_counter() - t) * 1e3)
        detections.append(len(mine[0]))
        for name, run in runs.items():
            for _ in range(REPEATS):
                t = time.perf_counter()
                got = run(feed)
                times[name].append((time.perf_counter() - t) * 1e3)
            same[name] += _same(mine, got)
    cpu = this_cpu()
    doc = {"cpu": cpu.to_dict(), "construction": __doc__.split("\n\n")[1], "images": len(outputs),
           "locations": int(L), "classes": int(K1 - 1), "score_threshold": SCORE_THRESHOLD, "iou": NMS_IOU,
           "threads": 1, "repeats": REPEATS, "detections_per_image": statistics.median(detections),
           "most_detections_in_an_image": max(detections),
           "ms": {k: {"median": statistics.median(v), "p90": sorted(v)[int(0.9 * len(v))]} for k, v in times.items()},
           "same_detections_as_numpy": {k: f"{v}/{len(outputs)}" for k, v in same.items()}}
    for k, v in doc["ms"].items():
        print(f"{k:12s} median {v['median']:.3f} ms  p90 {v['p90']:.3f} ms"
              + (f"  same detections as numpy: {doc['same_detections_as_numpy'][k]}" if k != "numpy" else ""))
    isa = cpu_class(cpu)
    out = args.out or ROOT / "benchmarks" / "results" / f"detection_nms_{isa}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
