"""The "ideal" int8 model: an int8 ONNX graph rewritten so that no op runs on integer kernels.

A QDQ model already is one when ONNX Runtime runs it without graph optimization: its
QuantizeLinear/DequantizeLinear pairs compute in float. A dynamically quantized model is not:
``MatMulInteger`` and ``ConvInteger`` always run ORT's int8 kernels, which saturate on x86 CPUs
without VNNI (edgetl.core.isa). Here each of them becomes the same product in floats (casts,
zero points subtracted, MatMul or Conv) and a cast back to int32: MatMul in float64, exact
(|a - za|, |b - zb| <= 255 and float64 holds every integer below 2^53); Conv in float32, as
ONNX Runtime has no float64 convolution (exact up to 2^24, within 1e-7 beyond).
Torch-free; used by the reference sessions of :mod:`edgetl.runtimes.ort`.
"""

from __future__ import annotations

from pathlib import Path

INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger"})


def has_integer_ops(model) -> bool:
    return any(n.op_type in INTEGER_OPS for n in model.graph.node)


def _cast(helper, name: str, out: str, to: int):
    return helper.make_node("Cast", [name], [out], name=f"{out}/cast", to=to)


def reference_model(source: Path | bytes) -> bytes | None:
    """The model (a file or its bytes) with every integer op replaced by its exact float64
    equivalent; None when it has none (run it as it is)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
    if not has_integer_ops(model):
        return None
    nodes = []
    for node in model.graph.node:
        if node.op_type not in INTEGER_OPS:
            nodes.append(node)
            continue
        a, b, *zps = list(node.input) + ["", ""]
        za, zb = zps[0], zps[1]
        p = f"edgetl_ref/{node.name or node.output[0]}"
        operands = []
        real = TensorProto.DOUBLE if node.op_type == "MatMulInteger" else TensorProto.FLOAT
        for tag, x, zp in (("a", a, za), ("b", b, zb)):
            xf = f"{p}/{tag}"
            nodes.append(_cast(helper, x, xf, real))
            if zp:
                nodes.append(_cast(helper, zp, f"{xf}_zp", real))
                zp_use = f"{xf}_zp"
                # MatMulInteger's zero points are scalars or per column of B ([N]), which
                # broadcast as they are
                if node.op_type == "ConvInteger" and tag == "b":
                    # a per-output-channel weight zero point [M] broadcasts over [M, C, kH, kW]
                    shape = f"{xf}_zp_shape"
                    nodes.append(helper.make_node("Constant", [], [shape], name=f"{shape}/const",
                                                  value=helper.make_tensor(shape, TensorProto.INT64, [4], [-1, 1, 1, 1])))
                    nodes.append(helper.make_node("Reshape", [f"{xf}_zp", shape], [f"{xf}_zp4"], name=f"{xf}_zp4/reshape"))
                    zp_use = f"{xf}_zp4"
                nodes.append(helper.make_node("Sub", [xf, zp_use], [f"{xf}_c"], name=f"{xf}_c/sub"))
                operands.append(f"{xf}_c")
            else:
                operands.append(xf)
        product = f"{p}/product"
        if node.op_type == "MatMulInteger":
            nodes.append(helper.make_node("MatMul", operands, [product], name=product))
        else:
            nodes.append(helper.make_node("Conv", operands, [product], name=product,
                                          **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        nodes.append(_cast(helper, product, node.output[0], TensorProto.INT32))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()
