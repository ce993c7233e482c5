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
from typing import Any

import numpy as np

from . import _ui
from .errors import ConfigError, ExportMismatchError, RunDirError
from .preprocess import preprocess_batch
from .run import load_run, package_versions, update_run_json

__all__ = ["Exporter", "ExportConfig", "export", "MAX_IR_VERSION"]

MAX_IR_VERSION = 10  # ONNX Runtime 1.19.2 loads IR <= 10
MAX_OPSET = 21  # highest default-domain opset ONNX Runtime 1.19.2 implements
FILES = ("backbone", "head", "model")


class Exporter(str, Enum):
    DYNAMO = "dynamo"  # torch.export based, the maintained exporter
    TORCHSCRIPT = "torchscript"  # legacy tracer, deprecated but several times faster to run


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    exporter: Exporter = Exporter.DYNAMO
    validate: bool = True
    samples: int = 64  # validation images
    atol: float = 1e-4  # max |onnx - torch| on embeddings and logits
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


def _export_module(module, example, path: Path, names: tuple[str, str], cfg: ExportConfig) -> None:
    import torch

    inp, out = names
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if cfg.exporter is Exporter.DYNAMO:
            from torch.export import Dim

            torch.onnx.export(
                module, (example,), str(path), dynamo=True, external_data=False, opset_version=cfg.opset,
                input_names=[inp], output_names=[out], dynamic_shapes=({0: Dim("batch")},), verbose=False,
            )
        else:
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=cfg.opset,
                input_names=[inp], output_names=[out], dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}},
            )


def _finish(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
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


def _to_openvino(onnx_path: Path, out_dir: Path) -> Path:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "backbone.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def _ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ov_run(path: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    # Pinned to f32: on CPUs with AMX, OpenVINO would otherwise run this model in bf16.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[0]


def _compare(name: str, got: np.ndarray, ref: np.ndarray, cfg: ExportConfig, logits: bool) -> tuple[dict, list[str]]:
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
    row = {"max_abs_diff": diff, "min_cosine": cos}
    if diff > cfg.atol:
        failures.append(f"{name}: max |diff| {diff:.2e} > {cfg.atol:.0e}")
    if cos is not None and cos < cfg.min_cosine:
        failures.append(f"{name}: cosine {cos:.6f} < {cfg.min_cosine}")
    if logits:
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        row["top1_agreement"] = agree
        if agree < cfg.min_agreement:
            failures.append(f"{name}: top-1 agreement {agree:.3f} < {cfg.min_agreement}")
    return row, failures


def _validation_images(run, n: int) -> np.ndarray:
    try:
        paths, _ = run.split_paths("val")
    except RunDirError:
        paths, _ = run.split_paths("train")
    step = max(1, len(paths) // n)  # spread over classes: the split is sorted by class
    return preprocess_batch(paths[::step][:n], run.preprocess)


def _validate(onnx_dir: Path, ov_xml: Path, torch_out: dict[str, np.ndarray], x: np.ndarray,
              cfg: ExportConfig) -> tuple[dict, list[str]]:
    results: dict[str, Any] = {}
    failures: list[str] = []
    z_ref = torch_out["embedding"]
    checks = [
        ("onnxruntime/backbone", lambda: _ort_run(onnx_dir / "backbone.onnx", x), z_ref, False),
        ("onnxruntime/head", lambda: _ort_run(onnx_dir / "head.onnx", z_ref), torch_out["logits"], True),
        ("onnxruntime/model", lambda: _ort_run(onnx_dir / "model.onnx", x), torch_out["logits"], True),
        ("onnxruntime/head(backbone)", lambda: _ort_run(onnx_dir / "head.onnx", _ort_run(onnx_dir / "backbone.onnx", x)),
         _ort_run(onnx_dir / "model.onnx", x), True),
        ("openvino-f32/backbone", lambda: _ov_run(ov_xml, x), z_ref, False),
        ("openvino-f32/model", lambda: _ov_run(onnx_dir / "model.onnx", x), torch_out["logits"], True),
    ]
    for name, run_fn, ref, logits in _ui.progress(checks, "validating"):
        try:
            got = run_fn()
        except Exception as exc:  # noqa: BLE001 - a runtime refusing the file is a failed check
            failures.append(f"{name}: runtime error {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        results[name], fails = _compare(name, got, ref, cfg, logits)
        failures += fails
    # Dynamic batch: one image alone gives the same output as inside a batch.
    single = _ort_run(onnx_dir / "model.onnx", x[:1])
    results["dynamic_batch_max_abs_diff"] = float(np.abs(single - _ort_run(onnx_dir / "model.onnx", x)[:1]).max())
    if results["dynamic_batch_max_abs_diff"] > cfg.atol:
        failures.append(f"dynamic batch: batch 1 differs from batch {len(x)} by {results['dynamic_batch_max_abs_diff']:.2e}")
    return results, failures


def export(run_dir: str | os.PathLike, config: ExportConfig | None = None) -> dict[str, Any]:
    """Export RUN's model to ONNX (backbone, head, fused) and OpenVINO IR; validate; return the report."""
    import torch

    from .device.head_training import make_head_onnx

    cfg = config or ExportConfig()
    run = load_run(run_dir)
    root = Path(run_dir)
    onnx_dir, ov_dir = root / "onnx", root / "openvino"
    onnx_dir.mkdir(exist_ok=True)
    spec = run.preprocess
    model = run.model.eval()
    metadata = {
        "edgetl.labels": json.dumps(run.labels),
        "edgetl.preprocess": json.dumps(spec.to_dict()),
        "edgetl.num_features": str(run.info["num_features"]),
        "edgetl.backbone": run.info["backbone"],
    }
    x = _validation_images(run, cfg.samples)
    example = torch.from_numpy(x[: min(2, len(x))].copy())

    files, seconds = {}, {}
    for name in _ui.progress(FILES, f"exporting ({cfg.exporter.value})"):
        t0 = time.perf_counter()
        path = onnx_dir / f"{name}.onnx"
        if name == "head":  # one Gemm, written directly: the format the device retrains
            make_head_onnx(model.head.weight.detach().numpy(), model.head.bias.detach().numpy(), run.labels, path,
                           metadata={k: v for k, v in metadata.items() if k != "edgetl.labels"})
        else:
            module = model.backbone if name == "backbone" else model
            _export_module(module, example, path, ("images", "embedding" if name == "backbone" else "logits"), cfg)
        files[name] = _finish(path, metadata)
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    xml = _to_openvino(onnx_dir / "backbone.onnx", ov_dir)
    seconds["openvino"] = time.perf_counter() - t0

    report: dict[str, Any] = {
        "config": {**asdict(cfg), "exporter": cfg.exporter.value},
        "files": files,
        "openvino": {"xml": str(xml.relative_to(root)), "bytes": xml.with_suffix(".bin").stat().st_size},
        "seconds": seconds,
        "versions": package_versions("torch", "onnx", "onnxscript", "onnxruntime-training-cpu", "openvino"),
    }
    failures: list[str] = []
    if cfg.validate:
        with torch.no_grad():
            z = model.forward_features(torch.from_numpy(x))
            torch_out = {"embedding": z.numpy(), "logits": model.forward_head(z).numpy()}
        report["validation"], failures = _validate(onnx_dir, xml, torch_out, x, cfg)
        report["validation"]["samples"] = len(x)
        report["validation"]["passed"] = not failures
        report["validation"]["failures"] = failures
    update_run_json(root, "export", report)
    if failures:
        raise ExportMismatchError(failures)
    return report
