"""Exporting an NER RUN: ``backbone.onnx`` (``input_ids``, ``attention_mask`` [N, T] -> token
features [N, T, F], batch and sequence dynamic), ``head.onnx`` (rows [R, F] -> tag logits [R, K],
the format the device retrains, labelled with the tags), ``model.onnx`` (ids and mask -> tag
logits [N, T, K]) and the backbone's OpenVINO IR, each checked against PyTorch on real validation
sentences as classification's are (edgetl.workstation.onnx_export): on every real token (padding
excluded), the same rounding-derived limits, the per-token top tag must agree; and a text alone,
unpadded, must give what it gives padded inside the batch, and batch 1 what batch N gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


__all__ = ["export_token_classification", "FEATURES"]

FEATURES = "features"  # the backbone's output: token features


def _dynamic_outputs(path: Path, names: list[str]) -> None:
    """Declare each output's first two axes ``batch`` and ``sequence``: the TorchScript exporter
    writes the traced sequence length as a fixed size (dynamo declares them itself)."""
    import onnx

    model = onnx.load(str(path))
    changed = False
    for out in model.graph.output:
        if out.name not in names:
            continue
        dims = out.type.tensor_type.shape.dim
        for axis, name in ((0, "batch"), (1, "sequence")):
            if len(dims) > axis and not dims[axis].dim_param:
                dims[axis].Clear()
                dims[axis].dim_param = name
                changed = True
    if changed:
        onnx.save(model, str(path))


def export_token_classification(run, model, onnx_dir: Path, ov_dir: Path, metadata: dict[str, str],
                                x: dict[str, np.ndarray], cfg) -> tuple[dict, dict, Path, list[str] | None, Any]:
    """Write the files; return ``(files, seconds, xml, failures or None when not validated,
    validation record)``."""
    from edgetl.core.formats import LOGITS, META_LABELS
    from edgetl.device.learn import make_head_onnx
    from edgetl.modalities import get_modality
    from edgetl.tasks import get_task
    from edgetl.workstation.onnx_export import export_module, write_files

    inputs = get_modality("text").inputs(run.spec)
    width = int(x["attention_mask"][:2].sum(1).max())
    example = {k: v[:2, :width] for k, v in x.items()}
    tags = get_task("token-classification").head_labels(run.info.get("tags") or run.labels)
    head_meta = {k: v for k, v in metadata.items() if k != META_LABELS}

    def traced(module, path: Path, out: str) -> None:
        export_module(module, example, path, inputs, out, cfg)
        _dynamic_outputs(path, [out])

    plan = [
        ("backbone", lambda p: traced(model.backbone, p, FEATURES)),
        ("head", lambda p: make_head_onnx(model.head.weight.detach().numpy(), model.head.bias.detach().numpy(),
                                          tags, p, metadata=head_meta)),
        ("model", lambda p: traced(model, p, LOGITS)),
    ]
    files, seconds, xml = write_files(plan, onnx_dir, ov_dir, metadata, cfg)
    if not cfg.validate:
        return files, seconds, xml, None, None
    results, failures = _validate(model, onnx_dir, xml, x, cfg, len(tags))
    return files, seconds, xml, failures, results


def _validate(model, onnx_dir: Path, xml: Path, x: dict[str, np.ndarray], cfg, n_tags: int) -> tuple[dict, list[str]]:
    import torch

    from edgetl.workstation.onnx_export import ort_run, ov_run, run_checks

    with torch.no_grad():
        z = model.forward_features(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"]))
        ref = {"features": z.numpy(), "logits": model.forward_head(z).numpy()}
    noise = _noise(model, x, ref)
    real = x["attention_mask"].astype(bool)  # padding positions are no one's tokens
    files = {name: onnx_dir / f"{name}.onnx" for name in ("backbone", "head", "model")}
    cache: dict[str, np.ndarray] = {}

    def once(key: str, fn):
        if key not in cache:
            cache[key] = fn()
        return cache[key]

    ort_model = lambda: once("model", lambda: ort_run(files["model"], x))  # noqa: E731
    ort_backbone = lambda: once("backbone", lambda: ort_run(files["backbone"], x))  # noqa: E731
    checks = [
        ("onnxruntime/backbone", lambda: ort_backbone()[real], ref["features"][real], False, "features"),
        ("onnxruntime/head", lambda: ort_run(files["head"], ref["features"][real]), ref["logits"][real], True, None),
        ("onnxruntime/model", lambda: ort_model()[real], ref["logits"][real], True, "logits"),
        ("onnxruntime/head(backbone)", lambda: ort_run(files["head"], ort_backbone()[real]), ort_model()[real], True,
         "logits"),
        ("openvino-f32/backbone", lambda: ov_run(xml, x)[real], ref["features"][real], False, "features"),
        ("openvino-f32/model", lambda: ov_run(files["model"], x)[real], ref["logits"][real], True, "logits"),
    ]
    results, failures = run_checks(checks, cfg, noise)
    limit = max(cfg.atol, cfg.rounding_factor * noise["logits"])  # another batch, another summation order
    try:
        batch = ort_model()
        lengths = x["attention_mask"].sum(1)
        # dynamic batch: the first text alone (at the batch's width) gives its rows of the batch
        single = ort_run(files["model"], {k: v[:1] for k, v in x.items()})
        n0 = int(lengths[0])
        results["dynamic_batch_max_abs_diff"] = float(np.abs(single[0, :n0] - batch[0, :n0]).max())
        if results["dynamic_batch_max_abs_diff"] > limit:
            failures.append(f"dynamic batch: batch 1 differs from batch {len(lengths)} by "
                            f"{results['dynamic_batch_max_abs_diff']:.2e}")
        # dynamic sequence: the shortest text alone, unpadded, gives what it gave padded in the batch
        i = int(np.argmin(lengths))
        n = int(lengths[i])
        alone = ort_run(files["model"], {k: v[i:i + 1, :n] for k, v in x.items()})
        diff = float(np.abs(alone[0] - batch[i, :n]).max())
        results["dynamic_sequence"] = {"lengths": [n, int(real.shape[1])], "max_abs_diff": diff,
                                       "top1_agreement": float((alone[0].argmax(-1) == batch[i, :n].argmax(-1)).mean())}
        if diff > limit:
            failures.append(f"dynamic sequence: a {n}-token text alone differs from the same text padded to "
                            f"{real.shape[1]} by {diff:.2e}")
    except Exception as exc:  # noqa: BLE001 - a model refusing another shape is a failed check
        failures.append(f"dynamic shapes: runtime error {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
    results["samples"] = int(len(real))
    results["tokens"] = int(real.sum())
    results["tags"] = n_tags
    results["passed"] = not failures
    results["failures"] = failures
    return results, failures


def _noise(model, x: dict, ref: dict) -> dict[str, float]:
    """max |float32 - float64| of PyTorch's own outputs on the real tokens (see
    onnx_export._rounding_noise)."""
    import copy

    import torch

    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        z = m64.forward_features(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"]))
        logits = m64.forward_head(z)
    real = x["attention_mask"].astype(bool)
    return {"features": float(np.abs(ref["features"][real] - z.numpy()[real]).max()),
            "logits": float(np.abs(ref["logits"][real] - logits.numpy()[real]).max())}
