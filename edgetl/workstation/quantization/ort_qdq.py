"""ONNX Runtime int8: shape-inference pre-processing, calibration (once), QDQ or dynamic
quantization with a growing list of nodes kept in fp32, the fused int8 model, and
per-layer errors against fp32. Used by :mod:`edgetl.workstation.quantization`; workstation side."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgetl.modalities import Inputs, count, take

# Op types whose nodes can be kept in fp32 (the guard's candidates): the ones that carry
# weights or change the activation range. Clip/Relu are folded into the preceding
# quantized output by the QDQ quantizer and have no node of their own to exclude.
GUARD_OP_TYPES = frozenset({"Conv", "Gemm", "MatMul", "Add", "Mul", "ConvTranspose", "GlobalAveragePool", "ReduceMean"})


def quiet_logs() -> None:
    # The quantizer logs "consider pre-processing" and per-tensor notes at WARNING/INFO.
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def pre_process(src: Path, dst: Path) -> None:
    """Shape inference + ORT's basic graph optimisation, as ORT recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ORT 1.19's symbolic shape inference cannot read opset-18 ReduceMean (axes as an input)
    # and fails; it matters for transformers with symbolic dims, not for CNNs, where ONNX's
    # own shape inference (still run) gives every shape.
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def zero_overflowing_channels(src: Path, dst: Path, ranges: Any, *, reduce_range: bool = False) -> int:
    """Write ``src`` to ``dst`` with near-dead output channels zeroed; return how many.

    Pretrained CNNs have output channels whose folded weights are ~1e-9 but whose bias is
    not (EfficientNet-Lite0 has dozens). ORT gives such a channel a weight scale of ~1e-11,
    bias / (input scale * weight scale) overflows int32 and the channel outputs garbage
    (measured on digits: 3.5 points of top-1 agreement lost). A channel of exact zeros gets
    weight scale 1 and its bias quantizes normally. Only channels that would overflow are
    zeroed; what they contributed is below 1e-4 of their bias.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    zeroed = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[1] not in inits or node.input[0] not in ranges:
            continue
        lo, hi = (float(np.min(v)) for v in ranges[node.input[0]].range_value)
        in_scale = (max(hi, 0.0) - min(lo, 0.0)) / 255.0
        w = numpy_helper.to_array(inits[node.input[1]]).copy()
        bias = np.abs(numpy_helper.to_array(inits[node.input[2]]).astype(np.float64))
        w_scale = np.abs(w.reshape(len(w), -1)).max(axis=1).astype(np.float64) / (64.0 if reduce_range else 127.0)
        # Half of int32's range, so rounding and the activation type never tip it over.
        overflow = (w_scale > 0) & (bias >= 2.0**30 * in_scale * w_scale)
        if overflow.any():
            w[overflow] = 0.0
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
            zeroed += int(overflow.sum())
    onnx.save(model, str(dst))
    return zeroed


def bias_corrections(src: Path, x: Inputs, *, reduce_range: bool, batch: int = 8) -> dict[str, tuple[str, np.ndarray]]:
    """Each convolution's bias corrected for the mean error its quantized weights will add
    (empirical bias correction, Nagel et al. 2019, "Data-Free Quantization"), as ``{node name:
    (bias initializer, corrected bias)}``; :func:`apply_biases` writes them.

    Rounding weights to int8 shifts each output channel's mean by ``sum(dW * E[x])``; over the
    many depthwise convolutions of a MobileNet/EfficientNet these shifts add up. The weights are
    rounded here exactly as ONNX Runtime's QDQ quantizer will round them (symmetric per output
    channel, max |w| to 127, or to 64 with ``reduce_range``), the input means come from ``x``
    (calibration items), and the bias absorbs minus the shift. Measured on digits,
    EfficientNet-Lite0 int8 with 7-bit weights (reference execution, top-1 agreement with fp32):
    0.975 -> 1.000 (200 held out, 128 px), 0.950 -> 0.992 (120, 128 px), 0.992 -> 1.000 (359,
    224 px); mean logit error halved."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node
             if n.op_type == "Conv" and len(n.input) >= 3 and n.input[1] in inits and n.input[2] in inits]
    names = sorted({n.input[0] for n in convs})
    if not names:
        return {}
    sess = session(_with_outputs(src, names))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i in range(0, count(x), batch):  # per-channel input means, a few items at a time
        chunk = take(x, slice(i, i + batch))
        for name, value in zip(names, sess.run(names, dict(chunk))):
            v = np.asarray(value, np.float64)  # [N, C, H, W]
            sums[name] = sums.get(name, 0.0) + v.sum(axis=(0, *range(2, v.ndim)))
            counts[name] = counts.get(name, 0) + v.size // v.shape[1]
    levels = 64.0 if reduce_range else 127.0
    out: dict[str, tuple[str, np.ndarray]] = {}
    for node in convs:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        if w.ndim != 4:
            continue
        scale = np.abs(w.reshape(len(w), -1)).max(axis=1) / levels
        scale[scale == 0] = 1.0
        s4 = scale[:, None, None, None]
        dw = np.clip(np.round(w / s4), -levels, levels) * s4 - w  # [O, C/groups, kH, kW]
        means = sums[node.input[0]] / max(counts[node.input[0]], 1)  # E[x] per input channel
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        mean_in = np.asarray(means, np.float64).reshape(groups, dw.shape[1])  # [groups, C/groups]
        group_of = np.arange(len(dw)) // (len(dw) // groups)
        shift = (dw.sum(axis=(2, 3)) * mean_in[group_of]).sum(axis=1)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        out[node.name] = (node.input[2], (bias - shift).astype(np.float32))
    return out


def apply_biases(src: Path, dst: Path, corrections: dict[str, tuple[str, np.ndarray]], skip: list[str]) -> None:
    """``src`` with the :func:`bias_corrections` of every node but ``skip`` (kept in fp32, so
    its weights are not rounded) written to ``dst``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    for node, (name, bias) in corrections.items():
        if node not in skip and name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(bias, name))
    onnx.save(model, str(dst))


def session(path: Path | bytes, threads: int | None = None, *, reference: bool = False):
    """An ORT session; ``reference``: no graph optimization, so a QDQ model computes in float
    exactly as the ONNX standard defines it (the machine-independent "ideal" int8)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    source: str | bytes = path if isinstance(path, bytes) else str(path)
    if reference:
        from edgetl.runtimes.reference import reference_model

        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = reference_model(path) or source
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_batched(path: Path, x: Inputs | np.ndarray, batch: int = 50, *, reference: bool = False) -> np.ndarray:
    sess = session(path, reference=reference)
    if isinstance(x, np.ndarray):  # embeddings for a head
        x = {sess.get_inputs()[0].name: x}
    return np.concatenate([sess.run(None, take(x, slice(i, i + batch)))[0] for i in range(0, count(x), batch)])


class _Reader:
    """CalibrationDataReader over preprocessed images, a batch per call, advancing a bar."""

    def __init__(self, x: Inputs, batch: int, advance: Callable[[int], None]):
        self._batches: Iterator[dict] = iter([take(x, slice(i, i + batch)) for i in range(0, count(x), batch)])
        self._advance = advance

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._advance(count(batch))
        return batch

    def __iter__(self):  # the CalibrationDataReader protocol in 1.19
        return iter(self.get_next, None)


def calibrate(model: Path, x: Inputs, method: str, symmetric: bool, work: Path,
              advance: Callable[[int], None]) -> Any:
    """Activation ranges of every quantizable tensor, computed once and reused by every guard step."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    calibrator = create_calibrator(
        model, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(work / "augmented.onnx"), calibrate_method=methods[method],
        extra_options={"symmetric": symmetric},
    )
    # One collect_data call per batch: the calibrators keep every intermediate tensor of a
    # call in memory (gigabytes for 200 images at 224 pixels) and merge ranges/histograms
    # across calls.
    for i in range(0, count(x), 16):
        calibrator.collect_data(_Reader(take(x, slice(i, i + 16)), 16, advance))
    return calibrator.compute_data()


def quantize_static(model: Path, out: Path, ranges: Any, exclude: list[str], *, per_channel: bool,
                    activation_type: str, reduce_range: bool = False) -> None:
    """QDQ int8: per-channel symmetric int8 weights (7-bit, in [-64, 64], with ``reduce_range``:
    see edgetl.core.isa), per-tensor activations (u8 asymmetric or s8)."""
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    # quantize_static would re-run calibration on every guard step; QDQQuantizer (public in
    # 1.19, the version pinned for on-device training) takes the ranges computed once.
    act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
    quantizer = QDQQuantizer(
        load_model_with_shape_infer(model), per_channel, reduce_range, QuantType.QInt8, act, ranges, [], list(exclude),
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        {"WeightSymmetric": True, "ActivationSymmetric": activation_type == "int8"},
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(out), False)


def quantize_dynamic(model: Path, out: Path, exclude: list[str], *, per_channel: bool,
                     weight_type: str = "uint8", reduce_range: bool = False) -> None:
    """Weights-only int8 (activations quantized on the fly). ORT's CPU ConvInteger takes
    uint8 weights only, hence QUInt8 for CNNs; transformers (MatMulInteger) take QInt8.
    ``reduce_range``: 7-bit weights, which the int8 kernels of x86 CPUs without VNNI cannot
    saturate (edgetl.core.isa)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_dynamic

    ort_dynamic(str(model), str(out), per_channel=per_channel, reduce_range=reduce_range,
                weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
                nodes_to_exclude=list(exclude))


def finish(path: Path, metadata: list[tuple[str, str]], ir_version: int) -> None:
    """Carry the fp32 file's metadata and IR version over (the quantizer drops both)."""
    import onnx

    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, ir_version)
    del model.metadata_props[:]
    for key, value in metadata:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def fuse_head(backbone: Path, head: Path, out: Path) -> None:
    """model.int8.onnx = head(backbone.int8): the head's Gemm appended to the int8 graph."""
    import onnx

    b, h = onnx.load(str(backbone)), onnx.load(str(head))
    taken = {t.name for t in b.graph.initializer} | {o for n in b.graph.node for o in n.output}
    rename = {name: (f"head/{name}" if name in taken else name)
              for name in [t.name for t in h.graph.initializer] + [o for n in h.graph.node for o in n.output]}
    rename["logits"] = "logits"
    for t in h.graph.initializer:
        t.name = rename[t.name]
        b.graph.initializer.append(t)
    for node in h.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
        node.name = f"head/{node.name}" if node.name else "head/Gemm"
        b.graph.node.append(node)
    del b.graph.output[:]
    b.graph.output.extend(h.graph.output)
    onnx.save(b, str(out))
    onnx.checker.check_model(str(out))


def _with_outputs(path: Path, names: list[str]) -> bytes:
    import onnx

    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def layer_errors(fp32: Path, int8: Path, x: Inputs, *, reference: bool = False) -> list[tuple[str, float]]:
    """Guard candidates (node names of the fp32 graph) ranked by the error each adds, largest
    first: the relative L2 error, against fp32, of the value its consumers see in the int8
    model, minus the largest such error among its inputs (what it inherited)."""
    import onnx

    graph = onnx.load(str(fp32)).graph
    qgraph = onnx.load(str(int8), load_external_data=False).graph
    # In the QDQ graph consumers read DequantizeLinear(QuantizeLinear(t)); Clip/Relu after a
    # quantized node are folded into that pair, so the pair's output carries the name of
    # the last tensor of the fused run (the Clip output) in its input.
    quant_of = {n.output[0]: n.input[0] for n in qgraph.node if n.op_type == "QuantizeLinear"}
    seen = {quant_of[n.input[0]]: n.output[0] for n in qgraph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in quant_of}
    produced = {o for n in qgraph.node for o in n.output}
    weights = {t.name for t in graph.initializer}
    names = [o for n in graph.node for o in n.output if o in seen or o in produced]
    q_names = [seen.get(o, o) for o in names]
    ref = session(_with_outputs(fp32, names)).run(names, dict(x))
    got = session(_with_outputs(int8, q_names), reference=reference).run(q_names, dict(x))
    # (float values only: a transformer's graph also carries masks and shapes)
    # (a transformer's additive attention mask holds -inf/float-min: non-finite entries are left out)
    def rel(g: np.ndarray, r: np.ndarray) -> float:
        g, r = np.float64(g), np.float64(r)
        ok = np.isfinite(g) & np.isfinite(r)
        return float(np.linalg.norm(g[ok] - r[ok]) / (np.linalg.norm(r[ok]) + 1e-12)) if ok.any() else 0.0

    err = {k: rel(g, r) for k, g, r in zip(names, got, ref)
           if np.asarray(r).dtype.kind == "f" and np.shape(g) == np.shape(r)}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def out_error(name: str) -> float:
        # A Clip/Relu fused into its producer: the error shows on the Clip's output.
        nxt = consumers.get(name, [])
        if name not in seen and len(nxt) == 1 and nxt[0].op_type in ("Clip", "Relu"):
            return out_error(nxt[0].output[0])
        return err.get(name, 0.0)

    scores = [(n.name, out_error(n.output[0]) - max((err.get(i, 0.0) for i in n.input if i not in weights), default=0.0))
              for n in graph.node if n.op_type in GUARD_OP_TYPES]
    return sorted(scores, key=lambda s: -s[1])


def latency_ms(path: Path, x: Inputs, threads: int = 2, runs: int = 30) -> float:
    """Median batch-1 latency at ``threads`` threads (a quick check, not a benchmark)."""
    import time

    sess = session(path, threads)
    one = take(x, slice(1))
    for _ in range(5):
        sess.run(None, one)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, one)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))
