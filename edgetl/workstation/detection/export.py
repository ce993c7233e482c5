"""Exporting a detection RUN: ``backbone.onnx`` (images -> features [N, F, H, W]), ``head.onnx``
(rows [R, F] -> class logits [R, K+1], the format the device retrains), ``box_head.onnx`` (rows ->
box codes [R, 4]), ``model.onnx`` (images -> logits [N, H*W, K+1] and boxes [N, H*W, 4]) and the
backbone's OpenVINO IR, each checked against PyTorch on real validation images as classification's
are (edgetl.workstation.onnx_export): the same rounding-derived limits, and the per-location top
class must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


__all__ = ["export_detection", "FEATURES", "BOXES"]

FEATURES = "features"  # the backbone's output: a feature map
BOXES = "boxes"  # the box head's output


def _rows(z: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(z, 1, -1).reshape(-1, z.shape[1]))


def _heads_graph(model) -> Any:
    """features [N, F, H, W] -> class logits [N, H*W, K+1] and box codes [N, H*W, 4], as
    ``DetectionModel.forward_head``: the locations as rows in row-major (y, x) order, then both
    Linear layers (MatMul + Add over the batch). The fused ``model.onnx`` is the backbone's graph
    joined to this one (onnx_export.fuse), not a second trace."""
    from onnx import TensorProto, helper, numpy_helper

    from edgetl.core.formats import LOGITS
    from edgetl.device.learn.head import OPSET

    def linear(name: str, layer) -> tuple[list, list]:
        W = layer.weight.detach().numpy().astype(np.float32)
        b = layer.bias.detach().numpy().astype(np.float32)
        inits = [numpy_helper.from_array(np.ascontiguousarray(W.T), f"{name}_W"), numpy_helper.from_array(b, f"{name}_b")]
        nodes = [helper.make_node("MatMul", ["rows", f"{name}_W"], [f"{name}_mm"]),
                 helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [LOGITS if name == "head" else BOXES])]
        return nodes, inits

    f = model.head.weight.shape[1]
    head_nodes, head_inits = linear("head", model.head)
    box_nodes, box_inits = linear("box_head", model.box_head)
    graph = helper.make_graph(
        [helper.make_node("Transpose", [FEATURES], ["nhwf"], perm=[0, 2, 3, 1]),
         helper.make_node("Reshape", ["nhwf", "rows_shape"], ["rows"]), *head_nodes, *box_nodes],
        "edgetl_detection_heads",
        [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["N", f, "H", "W"])],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", "L", model.head.weight.shape[0]]),
         helper.make_tensor_value_info(BOXES, TensorProto.FLOAT, ["N", "L", 4])],
        [numpy_helper.from_array(np.asarray([0, -1, f], np.int64), "rows_shape"), *head_inits, *box_inits],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgetl")


def export_detection(run, model, onnx_dir: Path, ov_dir: Path, metadata: dict[str, str], x: dict[str, np.ndarray],
                     cfg) -> tuple[dict, dict, Path, list[str] | None, Any]:
    """Write the files; return ``(files, seconds, xml, failures or None when not validated,
    validation record)``."""
    import torch

    from edgetl.core.formats import META_LABELS
    from edgetl.device.learn import make_head_onnx
    from edgetl.modalities import get_modality
    from edgetl.tasks import get_task
    from edgetl.workstation.onnx_export import export_module, fuse, ort_run, ov_run, run_checks, write_files

    inputs = get_modality("image").inputs(run.spec)
    example = {"images": x["images"][:2]}
    head_labels = get_task("detection").head_labels(run.labels)
    head_meta = {k: v for k, v in metadata.items() if k != META_LABELS}
    plan = [
        ("backbone", lambda p: export_module(model.backbone, example, p, inputs, FEATURES, cfg)),
        ("head", lambda p: make_head_onnx(model.head.weight.detach().numpy(), model.head.bias.detach().numpy(),
                                          head_labels, p, metadata=head_meta)),
        ("box_head", lambda p: make_head_onnx(model.box_head.weight.detach().numpy(),
                                              model.box_head.bias.detach().numpy(), ["l", "t", "r", "b"], p,
                                              metadata={**head_meta, "edgetl.outputs": "box codes"})),
        ("model", lambda p: fuse(onnx_dir / "backbone.onnx", _heads_graph(model), p, io=FEATURES)),
    ]
    files, seconds, xml = write_files(plan, onnx_dir, ov_dir, metadata, cfg)
    if not cfg.validate:
        return files, seconds, xml, None, None
    with torch.no_grad():
        z = model.forward_features(torch.from_numpy(x["images"]))
        logits, boxes = model.forward_head(z)
        ref = {"features": z.numpy(), "logits": logits.numpy(), "boxes": boxes.numpy()}
    noise = _noise(model, x, ref)
    rows = _rows(ref["features"])
    n = len(x["images"])
    feed = {"images": x["images"]}
    checks = [
        ("onnxruntime/backbone", lambda: ort_run(onnx_dir / "backbone.onnx", feed), ref["features"], False, "features"),
        ("onnxruntime/head", lambda: ort_run(onnx_dir / "head.onnx", rows), ref["logits"].reshape(-1, len(head_labels)),
         True, None),
        ("onnxruntime/box_head", lambda: ort_run(onnx_dir / "box_head.onnx", rows), ref["boxes"].reshape(-1, 4), False,
         None),
        ("onnxruntime/model", lambda: _ort_model(onnx_dir / "model.onnx", feed)[0].reshape(-1, len(head_labels)),
         ref["logits"].reshape(-1, len(head_labels)), True, "logits"),
        ("onnxruntime/model boxes", lambda: _ort_model(onnx_dir / "model.onnx", feed)[1].reshape(-1, 4),
         ref["boxes"].reshape(-1, 4), False, "boxes"),
        ("openvino-f32/backbone", lambda: ov_run(xml, feed), ref["features"], False, "features"),
    ]
    results, failures = run_checks(checks, cfg, noise)
    results["samples"] = n
    results["passed"] = not failures
    results["failures"] = failures
    return files, seconds, xml, failures, results


def _ort_model(path: Path, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _noise(model, x: dict, ref: dict) -> dict[str, float]:
    """max |float32 - float64| of PyTorch's own outputs (see onnx_export._rounding_noise)."""
    import copy

    import torch

    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        z = m64.forward_features(torch.from_numpy(x["images"]).double())
        logits, boxes = m64.forward_head(z)
    return {"features": float(np.abs(ref["features"] - z.numpy()).max()),
            "logits": float(np.abs(ref["logits"] - logits.numpy()).max()),
            "boxes": float(np.abs(ref["boxes"] - boxes.numpy()).max())}
