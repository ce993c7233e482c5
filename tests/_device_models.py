"""Small real models and bundles for device-side tests, built without torch.

The backbone is a real conv net (onnx.helper, seeded weights); the head is a Linear
layer fitted in closed form (ridge regression) on that backbone's embeddings of the real
digits, so its predictions mean something. Built once per test session and shared by
the modules that use it; the lead's real-pipeline bundle fixture can replace
``tiny_bundle`` wherever a test takes it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.core.files import sha256_file
from edgetl.modalities.image import Interpolation, PreprocessSpec, preprocess_batch

SIZE = 32
FEATURES = 64
# The digits are dark ink on white paper: centring on white makes the random convolutions
# respond to the ink rather than to the background.
SPEC = PreprocessSpec(input_size=SIZE, mean=(1.0, 1.0, 1.0), std=(0.25, 0.25, 0.25),
                      interpolation=Interpolation.BILINEAR, crop_pct=0.875)
LABELS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class TinyModels:
    backbone: Path  # fp32 ONNX, images [N,3,32,32] -> embedding [N,64]
    backbone_int8: Path  # ORT static QDQ
    backbone_xml: Path  # OpenVINO IR of the fp32 backbone
    head: Path  # Linear: embedding -> logits [N,10]
    # the head fitted again on the int8 backbone's (reference) embeddings, as packaging solves
    # an int8 bundle's head on its deployed features: this random-conv backbone separates the
    # digits by small differences that int8 rounding moves
    head_int8: Path
    labels: tuple[str, ...] = LABELS
    spec: PreprocessSpec = SPEC


_CACHE: dict[str, object] = {}


def _save(model, path: Path) -> Path:
    import onnx

    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_backbone(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name, shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["embedding"], axis=1),
    ]
    inits = [w("w1", (16, 3, 3, 3)), w("b1", (16,)), w("w2", (32, 16, 3, 3)), w("b2", (32,)),
             w("w3", (FEATURES, 32, 3, 3)), w("b3", (FEATURES,))]
    graph = helper.make_graph(
        nodes, "backbone",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", FEATURES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _metadata(model)
    return _save(model, path)


def _metadata(model) -> None:
    from onnx import helper

    helper.set_model_props(model, {
        "edgetl.labels": json.dumps(list(LABELS)),
        "edgetl.preprocess": json.dumps(SPEC.to_dict()),
        "edgetl.num_features": str(FEATURES),
    })


def write_head(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    classes, features = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["embedding", "weight", "bias"], ["logits"], transB=1)],
        "head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weight.astype(np.float32), "weight"),
         numpy_helper.from_array(bias.astype(np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _metadata(model)
    return _save(model, path)


def fit_head(z: np.ndarray, y: np.ndarray, classes: int, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares Linear head on standardized features, folded back into W, b."""
    mu, sd = z.mean(0), z.std(0) + 1e-6
    zs = np.hstack([(z - mu) / sd, np.ones((len(z), 1))])
    onehot = np.eye(classes)[y] * 2 - 1
    coef = np.linalg.solve(zs.T @ zs + ridge * np.eye(zs.shape[1]), zs.T @ onehot)  # [F+1, C]
    weight = (coef[:-1] / sd[:, None]).T
    bias = coef[-1] - weight @ mu
    return weight * 4, bias * 4  # sharper softmax, same argmax


def quantize_qdq(src: Path, dst: Path, images: np.ndarray, *, reduce_range: bool = True) -> Path:
    """ORT static QDQ int8. ``reduce_range`` (7-bit weights, edgetl.core.isa's x86-avx2) computes
    the same on every CPU; full-range weights saturate on x86 CPUs without VNNI (this tiny
    backbone then predicts at chance there)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"images": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self._it, None)

    # per channel, as edgetl quantizes: ORT 1.19 applies reduce_range to per-channel weights only
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, reduce_range=reduce_range, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    import onnx

    model = onnx.load(str(dst))
    return _save(model, dst)


def to_openvino(src: Path, xml: Path) -> Path:
    import openvino as ov

    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)
    return xml


def tiny_models(root: Path, digits_dir: Path) -> TinyModels:
    """Build (once per session) the backbone, its int8 and IR variants, and a head fitted
    on ``digits_dir``."""
    if "models" in _CACHE:
        return _CACHE["models"]  # type: ignore[return-value]
    import onnxruntime as ort

    from edgetl.modalities.image import scan_folder

    root.mkdir(parents=True, exist_ok=True)
    backbone = write_backbone(root / "backbone.onnx")
    folder = scan_folder(digits_dir)
    x = preprocess_batch(folder.paths, SPEC)
    z = ort.InferenceSession(str(backbone), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    weight, bias = fit_head(z, folder.targets, len(LABELS))
    head = write_head(root / "head.onnx", weight, bias)
    int8 = quantize_qdq(backbone, root / "backbone.int8.onnx", x[::20])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the reference int8
    z8 = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    head_int8 = write_head(root / "head.int8.onnx", *fit_head(z8, folder.targets, len(LABELS)))
    xml = to_openvino(backbone, root / "backbone.xml")
    models = TinyModels(backbone, int8, xml, head, head_int8)
    _CACHE["models"] = models
    return models


def write_bundle(
    out: Path,
    models: TinyModels,
    *,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    adapter: tuple[np.ndarray, np.ndarray] | None = None,
    threads: int = 2,
    batch_size: int = 8,
) -> Path:
    """A bundle laid out as docs/INTERNALS.md says, written by hand so that device tests
    do not depend on the packaging stage."""
    version_dir = out / "v1"
    version_dir.mkdir(parents=True)
    if runtime == "openvino" and precision != "int8":
        shutil.copy(models.backbone_xml, version_dir / "backbone.xml")
        shutil.copy(models.backbone_xml.with_suffix(".bin"), version_dir / "backbone.bin")
        backbone = "v1/backbone.xml"
    elif precision == "int8":
        shutil.copy(models.backbone_int8, version_dir / "backbone.int8.onnx")
        backbone = "v1/backbone.int8.onnx"
    else:
        shutil.copy(models.backbone, version_dir / "backbone.onnx")
        backbone = "v1/backbone.onnx"
    shutil.copy(models.head_int8 if precision == "int8" else models.head, version_dir / "head.onnx")
    adapter_rel = None
    if adapter is not None:
        np.savez(version_dir / "adapter.npz", A=adapter[0], b=adapter[1])
        adapter_rel = "v1/adapter.npz"
    files = {
        p.relative_to(out).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(version_dir.rglob("*")) if p.is_file()
    }
    from edgetl.core.targets import Target

    target = Target(
        name=f"test-{runtime}-{precision}", runtime=runtime, precision=precision, threads=threads,
        batch_size=batch_size, latency_budget_ms=100.0, memory_budget_mb=1000.0, description="device tests",
    ).to_dict()
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    manifest = {
        "format_version": 1, "version": 1, "created": now, "labels": list(models.labels),
        "preprocess": models.spec.to_dict(), "num_features": FEATURES, "target": target,
        "runtime": runtime, "precision": precision,
        "models": {"backbone": backbone, "head": "v1/head.onnx"},
        "training": None, "memory": None, "adapter": adapter_rel, "files": files,
        "onnx": {"ir_version": 10, "opset": 17}, "versions": {}, "accuracy": {},
        "history": [{"version": 1, "event": "package", "time": now}],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def add_conformance(bundle: Path, sources: list, *, isa: str | None = None) -> Path:
    """Give a hand-written bundle a conformance set built as packaging builds one (the reference
    outputs of ``sources``), and optionally a target CPU class (``isa``)."""
    from edgetl.device import conformance as conf
    from edgetl.device.predictor import Predictor

    manifest = json.loads((bundle / "manifest.json").read_text())
    if isa is not None:
        manifest["target"] = {**manifest["target"], "isa": isa}  # (its arch follows from the isa)
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    reference = Predictor.from_bundle(bundle, verify=False, conformance="off", reference=True)
    cset = conf.build_set(reference, sources)
    cset.save(bundle / "v1" / conf.FILE)
    manifest["artifacts"] = {**(manifest.get("artifacts") or {}), conf.ARTIFACT: f"v1/{conf.FILE}"}
    manifest["conformance"] = {"items": len(cset.items), "min_agreement": conf.MIN_AGREEMENT,
                               "reference": {"runtime": reference.runtime}}
    path = bundle / "v1" / conf.FILE
    manifest["files"][f"v1/{conf.FILE}"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle
