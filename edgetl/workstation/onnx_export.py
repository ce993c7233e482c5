"""ONNX export of the backbone, head and fused model, validated against PyTorch.

``export(run_dir)`` writes ``RUN/onnx/{backbone,head,model}.onnx`` (dynamic batch, one
self-contained file each, IR <= 10, metadata inside) and ``RUN/openvino/backbone.xml``
(fp32 IR), then checks every file on ONNX Runtime and OpenVINO (precision pinned to f32)
against PyTorch on real validation images. All failures are collected into one
:class:`ExportMismatchError`; the results go into ``run.json["export"]``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl.core import ui as _ui
from edgetl.errors import ConfigError, ExportMismatchError, RunDirError
from edgetl.core.formats import (EMBEDDING, MAX_IR_VERSION, MAX_OPSET, META_ARTIFACTS, META_BACKBONE, META_LABELS,
                                 META_MODALITY, META_NUM_FEATURES, META_PREPROCESS, META_TASK)
from edgetl.core.report import Report
from edgetl.core.run import package_versions, update_run_json
from edgetl.modalities import InputSpec, Modality, batches, count, get_modality
from edgetl.workstation.run import load_run

__all__ = ["Exporter", "ExportConfig", "ExportReport", "export", "MAX_IR_VERSION"]

FILES = ("backbone", "head", "model")
Inputs = dict[str, np.ndarray]


class Exporter(str, Enum):
    DYNAMO = "dynamo"  # torch.export based, the maintained exporter
    TORCHSCRIPT = "torchscript"  # legacy tracer, deprecated but several times faster to run


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    exporter: Exporter = Exporter.DYNAMO
    validate: bool = True
    samples: int = 64  # validation images
    # max |onnx - torch| allowed on embeddings and logits: the larger of ``atol`` per unit of
    # output scale and ``rounding_factor`` times what float32 rounding alone does to PyTorch's
    # own outputs on these inputs (measured against the same model in float64; see
    # _rounding_noise). Another float32 implementation (ONNX Runtime, OpenVINO, AVX2 or
    # AVX-512 kernels) sums in another order and lands within a few times that.
    atol: float = 1e-4
    rounding_factor: float = 16.0
    min_cosine: float = 0.9999
    min_agreement: float = 0.99  # top-1 agreement with PyTorch

    def __post_init__(self) -> None:
        object.__setattr__(self, "exporter", Exporter(self.exporter))
        if not 13 <= self.opset <= MAX_OPSET:
            raise ConfigError(f"opset must be between 13 and {MAX_OPSET} (what ONNX Runtime 1.19.2 runs), got {self.opset}")
        if self.exporter is Exporter.DYNAMO and self.opset < 18:
            raise ConfigError("the dynamo exporter writes opset 18 or newer; use --opset 18+ or --exporter torchscript")
        if self.samples <= 0:
            raise ConfigError(f"samples must be positive, got {self.samples}")


def _takes_varargs(module) -> bool:
    import inspect

    params = inspect.signature(module.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def export_module(module, example: Inputs, path: Path, inputs: tuple[InputSpec, ...], out: str | Sequence[str],
                   cfg: ExportConfig) -> None:
    """Export ``module(*inputs)`` with the modality's input names and dynamic axes; ``out``
    names its output (or outputs, for a module that returns a tuple)."""
    outs = [out] if isinstance(out, str) else list(out)
    tmps = [_TMP_OUTPUT if i == 0 else f"{_TMP_OUTPUT}_{i}" for i in range(len(outs))]
    import torch

    args = tuple(torch.from_numpy(example[i.name].copy()) for i in inputs)
    names = [i.name for i in inputs]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if cfg.exporter is Exporter.DYNAMO:
            from torch.export import Dim

            dims: dict[str, Any] = {}
            shapes: Any = tuple({axis: dims.setdefault(n, Dim(n)) for axis, n in i.dynamic_axes.items()} for i in inputs)
            if _takes_varargs(module):  # forward(*inputs): torch.export wants the shapes as one group
                shapes = (shapes,)
            # The dynamo exporter names values after the modules that make them, and a
            # transformer's token embedding is called "embedding": export under a name no
            # module has, then give the graph output its real name.
            torch.onnx.export(
                module, args, str(path), dynamo=True, external_data=False, opset_version=cfg.opset,
                input_names=names, output_names=tmps, dynamic_shapes=shapes, verbose=False,
            )
            for tmp, name in zip(tmps, outs):
                _rename_output(path, tmp, name)
        else:
            axes = {i.name: i.dynamic_axes for i in inputs} | {name: {0: "batch"} for name in outs}
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=cfg.opset,
                input_names=names, output_names=outs, dynamic_axes=axes,
            )


_TMP_OUTPUT = "edgetl_graph_output"


def fuse(backbone: Path, head: Any, out: Path, io: str = EMBEDDING) -> Path:
    """The fused model: the backbone's graph, then the ``head`` graph (a file or an ONNX model)
    on its output ``io``, joined from what is already written (``onnx.compose``) rather than a
    second trace of the whole model, which took as long as the first (28 s for
    efficientnet_lite0 with the dynamo exporter). Validated against PyTorch like the other files."""
    import onnx
    from onnx import compose

    b = onnx.load(str(backbone))
    h = onnx.load(str(head)) if isinstance(head, (str, os.PathLike)) else head
    opset = next(o.version for o in b.opset_import if o.domain in ("", "ai.onnx"))
    for o in h.opset_import:  # head ops (Gemm, MatMul, Add, Transpose, Reshape) are the same from opset 14 on
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    h.ir_version = b.ir_version
    del h.metadata_props[:]  # the backbone's (the RUN's) are the fused model's
    h = compose.add_prefix(h, "edgetl_head/", rename_inputs=False, rename_outputs=False)
    fused = compose.merge_models(b, h, io_map=[(io, io)], producer_name="edgetl")
    onnx.save(fused, str(out))
    return out


def _rename_output(path: Path, tmp: str, out: str) -> None:
    """Rename graph output ``tmp`` to ``out``, first renaming any inner value called ``out``."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph

    def rename(old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
        for coll in (graph.value_info, graph.output, graph.input):
            for v in coll:
                if v.name == old:
                    v.name = new
        for init in graph.initializer:
            if init.name == old:
                init.name = new

    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    if out in taken:
        inner = out + "_inner"
        while inner in taken:
            inner += "_"
        rename(out, inner)
    rename(tmp, out)
    onnx.save(model, str(path))


def finish_file(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Make the file self-describing and loadable by ORT 1.19.2; return its facts."""
    import onnx

    model = onnx.load(str(path))  # pulls in any external data written beside it
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    existing = {p.key for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            continue
        model.metadata_props.add(key=key, value=value)
    for stray in path.parent.glob(path.name + "*.data"):
        stray.unlink()
    onnx.save(model, str(path))  # one file: weights inline (models are far below 2 GB)
    onnx.checker.check_model(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"path": path.name, "bytes": path.stat().st_size, "ir_version": model.ir_version, "opset": opset}


def to_openvino(onnx_path: Path, out_dir: Path) -> Path:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "backbone.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def write_files(plan: Sequence[tuple[str, Any]], onnx_dir: Path, ov_dir: Path, metadata: dict[str, str],
                cfg: ExportConfig) -> tuple[dict, dict, Path]:
    """Write each ``(name, write(path))`` of ``plan`` as ``onnx_dir/<name>.onnx`` with the
    RUN's metadata, then the backbone's OpenVINO IR; returns (files, seconds, the IR's .xml)."""
    files, seconds = {}, {}
    for name, write in _ui.progress(plan, f"exporting ({cfg.exporter.value})"):
        t0 = time.perf_counter()
        path = onnx_dir / f"{name}.onnx"
        write(path)
        files[name] = finish_file(path, metadata)
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    xml = to_openvino(onnx_dir / "backbone.onnx", ov_dir)
    seconds["openvino"] = time.perf_counter() - t0
    return files, seconds, xml


def run_checks(checks: Sequence[tuple], cfg: ExportConfig, noise: dict[str, float]) -> tuple[dict, list[str]]:
    """Run each ``(name, run(), expected, logits_like, noise kind)`` check against PyTorch's
    outputs (compare_outputs); a runtime refusing a file is a failed check, not a crash."""
    results: dict[str, Any] = {"float32_rounding": noise}
    failures: list[str] = []
    for name, run_fn, ref, logits, kind in _ui.progress(checks, "validating"):
        try:
            got = run_fn()
        except Exception as exc:  # noqa: BLE001 - a runtime refusing the file is a failed check
            failures.append(f"{name}: runtime error {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        results[name], fails = compare_outputs(name, got, ref, cfg, logits, noise[kind] if kind else 0.0)
        failures += fails
    return results, failures


def _run(path: Path, runtime: str, x: Inputs | np.ndarray) -> np.ndarray:
    """One batch through a file on a runtime, loaded as the device loads it (OpenVINO
    pinned to f32: on CPUs with AMX it would otherwise run this model in bf16)."""
    from edgetl.runtimes import load_session

    return load_session(path, runtime, precision="fp32").run(x)


def ort_run(path: Path, x: Inputs | np.ndarray) -> np.ndarray:
    return _run(path, "onnxruntime", x)


def ov_run(path: Path, x: Inputs | np.ndarray) -> np.ndarray:
    return _run(path, "openvino", x)


def _rows(x: Inputs, n: int) -> Inputs:
    return {k: v[:n] for k, v in x.items()}


def _rounding_noise(model, x: Inputs, inputs: tuple[InputSpec, ...], out: dict[str, np.ndarray]) -> dict[str, float]:
    """How far float32 rounding alone moves this model's outputs on these inputs: max |PyTorch
    float32 - PyTorch float64| of the embedding and the logits. A solved probe head amplifies
    rounding (standardisation folded into large weights), and kernels that sum in another order
    (AVX2 or AVX-512, ONNX Runtime or OpenVINO) differ from PyTorch by a few times this; a wrong
    op or constant differs by orders of magnitude more."""
    import copy

    import torch

    m64 = copy.deepcopy(model).double().eval()
    args = [torch.from_numpy(x[i.name]).double() if i.dtype.startswith("float") else torch.from_numpy(x[i.name])
            for i in inputs]
    with torch.no_grad():
        z = m64.forward_features(*args)
        logits = m64.forward_head(z)
    return {"embedding": float(np.abs(out["embedding"] - z.numpy()).max()),
            "logits": float(np.abs(out["logits"] - logits.numpy()).max())}


def compare_outputs(name: str, got: np.ndarray, ref: np.ndarray, cfg: ExportConfig, logits: bool,
             noise: float = 0.0) -> tuple[dict, list[str]]:
    failures = []
    if got.shape != ref.shape:
        return {"shape": list(got.shape)}, [f"{name}: shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}"]
    diff = float(np.abs(got - ref).max())
    a, b = got.reshape(len(got), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    # Cosine is meaningless for vectors whose norm is within the absolute tolerance (a
    # randomly initialised network can emit ~1e-8 embeddings); those rows are judged by
    # the absolute difference alone.
    norms = np.linalg.norm(b, axis=1)
    rows = norms > cfg.atol
    cos = float(np.min((a[rows] * b[rows]).sum(1) / (np.linalg.norm(a[rows], axis=1) * norms[rows]))) if rows.any() else None
    # atol is per unit of output scale: float32 rounding grows with the magnitude of the
    # values; and rounding_factor x the measured rounding noise where that is larger
    scaled = cfg.atol * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    limit = max(scaled, cfg.rounding_factor * noise)
    row = {"max_abs_diff": diff, "min_cosine": cos, "abs_limit": limit, "float32_rounding": noise}
    if diff > limit:
        failures.append(f"{name}: max |diff| {diff:.2e} > {limit:.1e}")
    if cos is not None and cos < cfg.min_cosine:
        failures.append(f"{name}: cosine {cos:.6f} < {cfg.min_cosine}")
    if logits:
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        row["top1_agreement"] = agree
        if agree < cfg.min_agreement:
            failures.append(f"{name}: top-1 agreement {agree:.3f} < {cfg.min_agreement}")
    return row, failures


def _validation_inputs(run, modality: Modality, spec: Any, n: int) -> Inputs:
    """Model inputs of up to ``n`` real held-out items (training ones if there is no split)."""
    try:
        items, _ = run.split_items("val")
    except RunDirError:
        items, _ = run.split_items("train")
    step = max(1, len(items) // n)  # spread over classes: the split is sorted by class
    chosen = items[::step][:n]
    return next(batches(modality, chosen, spec, len(chosen), strict=True))[1]


def _validate(onnx_dir: Path, ov_xml: Path, torch_out: dict[str, np.ndarray], x: Inputs,
              cfg: ExportConfig, noise: dict[str, float]) -> tuple[dict, list[str]]:
    z_ref = torch_out["embedding"]
    # (the head alone, on PyTorch's own embeddings, is a Gemm: only its own sum's rounding)
    checks = [
        ("onnxruntime/backbone", lambda: ort_run(onnx_dir / "backbone.onnx", x), z_ref, False, "embedding"),
        ("onnxruntime/head", lambda: ort_run(onnx_dir / "head.onnx", z_ref), torch_out["logits"], True, None),
        ("onnxruntime/model", lambda: ort_run(onnx_dir / "model.onnx", x), torch_out["logits"], True, "logits"),
        ("onnxruntime/head(backbone)", lambda: ort_run(onnx_dir / "head.onnx", ort_run(onnx_dir / "backbone.onnx", x)),
         ort_run(onnx_dir / "model.onnx", x), True, "logits"),
        ("openvino-f32/backbone", lambda: ov_run(ov_xml, x), z_ref, False, "embedding"),
        ("openvino-f32/model", lambda: ov_run(onnx_dir / "model.onnx", x), torch_out["logits"], True, "logits"),
    ]
    results, failures = run_checks(checks, cfg, noise)
    # Dynamic batch: one image alone gives the same output as inside a batch.
    single = ort_run(onnx_dir / "model.onnx", _rows(x, 1))
    results["dynamic_batch_max_abs_diff"] = float(np.abs(single - ort_run(onnx_dir / "model.onnx", x)[:1]).max())
    batch_limit = max(cfg.atol, cfg.rounding_factor * noise["logits"])  # another batch, another summation order
    if results["dynamic_batch_max_abs_diff"] > batch_limit:
        n = len(next(iter(x.values())))
        failures.append(f"dynamic batch: batch 1 differs from batch {n} by {results['dynamic_batch_max_abs_diff']:.2e}")
    if "attention_mask" in x:
        # Dynamic sequence: the shortest text alone, unpadded, gives what it gave padded in the batch.
        lengths = x["attention_mask"].sum(1)
        i = int(np.argmin(lengths))
        alone = {k: v[i:i + 1, : int(lengths[i])] for k, v in x.items()}
        got = ort_run(onnx_dir / "model.onnx", alone)
        diff = float(np.abs(got - ort_run(onnx_dir / "model.onnx", x)[i:i + 1]).max())
        results["dynamic_sequence"] = {"lengths": [int(lengths[i]), int(x["attention_mask"].shape[1])],
                                       "max_abs_diff": diff}
        if diff > batch_limit:
            failures.append(f"dynamic sequence: a {int(lengths[i])}-token text alone differs from the same text "
                            f"padded to {x['attention_mask'].shape[1]} by {diff:.2e}")
    return results, failures


@dataclass(frozen=True)
class ExportReport(Report):
    """``run.json["export"]``: files written, validation against PyTorch, timings, versions."""

    config: dict[str, Any]
    files: dict[str, Any]
    openvino: dict[str, Any]
    seconds: dict[str, float]
    versions: dict[str, str]
    validation: dict[str, Any] | None = None


def export(run_dir: str | os.PathLike, config: ExportConfig | None = None) -> ExportReport:
    """Export RUN's model to ONNX (backbone, head, fused) and OpenVINO IR; validate; return the report."""
    import torch

    from edgetl.device.learn import make_head_onnx

    cfg = config or ExportConfig()
    run = load_run(run_dir)
    root = Path(run_dir)
    onnx_dir, ov_dir = root / "onnx", root / "openvino"
    onnx_dir.mkdir(exist_ok=True)
    modality = get_modality(run.modality)
    spec = run.spec
    model = run.model.eval()
    metadata = {
        META_LABELS: json.dumps(run.labels),
        META_PREPROCESS: json.dumps(spec.to_dict()),
        META_NUM_FEATURES: str(run.info["num_features"]),
        META_BACKBONE: run.info["backbone"],
        META_MODALITY: modality.name,
        META_TASK: run.task,
    }
    if run.info.get("artifacts"):  # the files the model needs besides itself (a tokenizer), by hash
        from edgetl.core.files import sha256_file

        metadata[META_ARTIFACTS] = json.dumps({name: sha256_file(run.artifact(name))
                                               for name in sorted(run.info["artifacts"])})
    x = _validation_inputs(run, modality, spec, cfg.samples)
    from edgetl.workstation.task_hooks import hooks

    task_hooks = hooks(run.task)
    if task_hooks is not None:  # a task with files of its own (detection: a box head)
        files, seconds, xml, failures, validation = task_hooks.export(run, model, onnx_dir, ov_dir, metadata, x, cfg)
        return _report(root, cfg, files, seconds, xml, validation, failures or [])
    example = _rows(x, 2)
    inputs = modality.inputs(spec)

    plan = {
        "backbone": lambda p: export_module(model.backbone, example, p, inputs, EMBEDDING, cfg),
        # one Gemm, written directly: the format the device retrains
        "head": lambda p: make_head_onnx(model.head.weight.detach().numpy(), model.head.bias.detach().numpy(),
                                         run.labels, p, metadata={k: v for k, v in metadata.items() if k != META_LABELS}),
        "model": lambda p: fuse(onnx_dir / "backbone.onnx", onnx_dir / "head.onnx", p),
    }
    files, seconds, xml = write_files([(name, plan[name]) for name in FILES], onnx_dir, ov_dir, metadata, cfg)

    failures: list[str] = []
    validation = None
    if cfg.validate:
        with torch.no_grad():
            z = model.forward_features(*(torch.from_numpy(x[i.name]) for i in inputs))
            torch_out = {"embedding": z.numpy(), "logits": model.forward_head(z).numpy()}
        noise = _rounding_noise(model, x, inputs, torch_out)
        validation, failures = _validate(onnx_dir, xml, torch_out, x, cfg, noise)
        validation["samples"] = count(x)
        validation["passed"] = not failures
        validation["failures"] = failures
    return _report(root, cfg, files, seconds, xml, validation, failures)


def _report(root: Path, cfg: ExportConfig, files: dict, seconds: dict, xml: Path, validation: dict | None,
            failures: list[str]) -> ExportReport:
    """``run.json["export"]`` written, then the failures raised together, or the report returned."""
    report: dict[str, Any] = {
        "config": {**asdict(cfg), "exporter": cfg.exporter.value},
        "files": files,
        "openvino": {"xml": str(xml.relative_to(root)), "bytes": xml.with_suffix(".bin").stat().st_size},
        "seconds": seconds,
        "versions": package_versions("torch", "onnx", "onnxscript", "onnxruntime-training-cpu", "openvino"),
    }
    if validation is not None:
        report["validation"] = validation
    update_run_json(root, "export", report)
    if failures:
        raise ExportMismatchError(failures)
    return ExportReport(**report)
