"""Packaging: a RUN's models for a target, copied into a new bundle. Re-exported as
:func:`edgetl.device.bundle.package`; the bundle format itself lives in :mod:`edgetl.device.bundle`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from dataclasses import dataclass

import numpy as np

from edgetl.core.formats import MAX_IR_VERSION
from edgetl.core.report import Report
from edgetl.device.alignment import SOURCE_STATS, write_source_stats
from edgetl.device.memory import (DEFAULT_PRECISION, Selection, check_per_class, check_precision, check_selection,
                                  per_class_for_budget)
from edgetl.modalities import get_modality
from edgetl.core.files import fsync_dir, fsync_tree, hash_dir, remove, utc_now
from edgetl.core.ui import warn
from edgetl.errors import BundleError, EdgeTLError, RunDirError
from edgetl.core.targets import Precision, Runtime, Target, load_target



def _model_sources(run_dir: Path, target: Target) -> tuple[list[tuple[Path, str]], str]:
    """The RUN files the target needs as ``(source, name in the version folder)`` and the
    backbone's name; a missing one raises :class:`RunDirError` naming the stage to run."""
    onnx_dir, ov_dir = run_dir / "onnx", run_dir / "openvino"
    export_hint = f"run 'edgetl export {run_dir}' first"
    quantize_hint = f"run 'edgetl quantize {run_dir}' first"
    if target.runtime is Runtime.ONNXRUNTIME:
        name = "backbone.int8.onnx" if target.precision is Precision.INT8 else "backbone.onnx"
        backbone = [onnx_dir / name]
    else:
        stem = "backbone.int8" if target.precision is Precision.INT8 else "backbone"  # bf16 runs the fp32 IR
        backbone = [ov_dir / f"{stem}.xml", ov_dir / f"{stem}.bin"]
    needed = [*backbone, onnx_dir / "head.onnx", *(onnx_dir / f"{name}.onnx" for name in _task(run_dir).extra_heads)]
    for src in needed:
        if not src.is_file():
            # export writes the fp32 ONNX models and the fp32 OpenVINO IR; quantize the int8 ones
            made_by_export = ".int8." not in src.name or not (onnx_dir / "backbone.onnx").is_file()
            hint = export_hint if made_by_export else quantize_hint
            raise RunDirError(
                f"{run_dir}: target {target.name!r} needs {src.relative_to(run_dir).as_posix()}, which is missing; {hint}"
            )
    return [(src, src.name) for src in needed], backbone[0].name


def _task(run_dir: Path) -> Any:
    from edgetl.core.run import read_run_json
    from edgetl.tasks import get_task

    return get_task(read_run_json(run_dir).get("task"))


def _onnx_info(paths: list[Path], target: Target) -> dict[str, int]:
    import onnx

    ir, opset = 0, 0
    for path in paths:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
            raise BundleError(f"{path}: not a readable ONNX model ({exc}); re-run 'edgetl export'") from None
        if model.ir_version > MAX_IR_VERSION:
            raise BundleError(
                f"{path}: ONNX IR version {model.ir_version} is newer than onnxruntime 1.19.2 loads "
                f"({MAX_IR_VERSION}); re-export it with ir_version <= {MAX_IR_VERSION}"
            )
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise BundleError(f"{path}: weights are in an external data file; re-export as a single .onnx file")
        size = target.input_size
        if size and path.name.startswith("backbone") and model.graph.input:
            dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][2:4]
            if any(d and d != size for d in dims):
                raise BundleError(
                    f"{path}: the backbone takes fixed {dims} images but target {target.name!r} sets input_size = "
                    f"{size}; remove input_size from the target or re-export with a dynamic image size"
                )
        ir = max(ir, model.ir_version)
        opset = max([opset, *(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))])
    return {"ir_version": ir, "opset": opset}


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    from edgetl.core.version import __version__

    def first(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "edgetl": __version__,
        "onnx": first("onnx"),
        "onnxruntime": first("onnxruntime-training-cpu", "onnxruntime-training", "onnxruntime"),
        "openvino": first("openvino"),
    }


def _accuracy(info: Mapping[str, Any], target: Target) -> dict[str, Any] | None:
    """What the RUN knows about accuracy: the fp32 reference (the report's fp32 row for the
    target's runtime, else training's validation accuracy) and, when ``edgetl quantize``
    measured it, the accuracy of the target's runtime and precision."""
    from edgetl.core.run import deployed_accuracy

    metrics = info.get("metrics") if isinstance(info.get("metrics"), dict) else {}
    fp32_row = deployed_accuracy(info, target.runtime.value, "fp32")
    row = deployed_accuracy(info, target.runtime.value, target.precision.value) or {}
    fp32 = fp32_row["deployed"] if fp32_row else metrics.get("val_accuracy")
    if fp32 is None and row.get("deployed") is None:
        return None
    return {"fp32": fp32, "deployed": row.get("deployed"), "precision_executed": row.get("precision_executed")}


def _add_training_artifacts(head_path: Path, out_dir: Path) -> bool:
    """ORT training artifacts for the head (checked loadable before they are kept), where this
    ONNX Runtime can make them; without a training build the device trains in numpy, which
    needs none (and a device with ONNX Runtime training generates them on its first retrain)."""
    from edgetl.device.learn import make_training_artifacts, ort_training_available

    if not ort_training_available():
        warn("this ONNX Runtime has no training build, so the bundle gets no training artifacts; "
             "retraining on the device uses the numpy trainer (or makes artifacts where it can)")
        return False
    make_training_artifacts(head_path, out_dir)
    return True


# --- the probe solved on the deployed backbone --------------------------------------------

# An int8 backbone's embeddings differ from the fp32 ones the RUN's probe was solved on (about
# 20% relative, efficientnet_lite0 with ORT static QDQ). A linear probe is a convex problem on
# those features, so the bundle's head is solved again, the same way, on what the deployed
# backbone computes. Measured (benchmarks/deployed_head_bench.py, 128 px, ORT int8): the digits'
# int8 validation accuracy 0.892 with the fp32 head, 0.908 with the head solved on int8
# features; photos 0.944 and 0.963 (fp32 backbone and head: 0.908 and 0.963).


@contextmanager
def _bundle_predictor(tmp: Path, manifest: Mapping[str, Any], *, reference: bool = False) -> Iterator[Any]:
    """A Predictor on the bundle being written: its own files, so what it computes is what the
    device computes (deployed backbone, runtime and precision), or with ``reference`` what the
    reference computes (:func:`edgetl.runtimes.load_session`). Reads a provisional
    ``manifest.json``, removed again on the way out."""
    from edgetl.device.bundle import MANIFEST
    from edgetl.device.predictor import Predictor

    (tmp / MANIFEST).write_text(json.dumps(manifest))
    try:
        yield Predictor.from_bundle(tmp, verify=False, conformance="off", reference=reference)
    finally:
        (tmp / MANIFEST).unlink()


# --- int8 for the target's CPUs, and the conformance set -------------------------------------

def _check_int8_cpus(run_dir: Path, backbone: Path, target: Target) -> dict[str, Any] | None:
    """An int8 backbone may ship only to CPUs it was built for (edgetl.core.isa): full-range
    weights saturate on x86 CPUs without VNNI. Returns what the file records."""
    if target.precision is not Precision.INT8:
        return None
    from edgetl.core.isa import int8_mismatch
    from edgetl.workstation.quantization.engines import int8_facts

    facts = int8_facts(backbone)
    reason = int8_mismatch(facts, target.isa)
    if reason is not None:
        raise BundleError(f"{run_dir}: cannot package for {target.name}: {reason}; quantize for it first: "
                          f"'edgetl quantize {run_dir} --target {target.name}'")
    return facts


def _computes_as_reference(target: Target, int8: Mapping[str, Any] | None) -> bool:
    """Whether this machine must compute the bundle's int8 features as the reference does (for
    the deployed head and the replay memory) because its own kernels differ from the target
    CPUs': another architecture, or saturation without VNNI. OpenVINO has no reference mode."""
    from edgetl.core.isa import saturates, this_cpu

    if target.precision is not Precision.INT8 or target.runtime is not Runtime.ONNXRUNTIME:
        return False
    cpu = this_cpu()
    return not target.fits(cpu) and (target.arch.value != cpu.arch
                                     or saturates(cpu, (int8 or {}).get("weight_bits") == 7))


def _candidates(run_dir: Path, info: Mapping[str, Any], n: int, seed: int = 0) -> list[Any]:
    """Up to ``n`` held-out items of the RUN (its validation split, else its training split),
    round-robin over classes (an image with boxes: its first box's) in a seeded order."""
    from edgetl.workstation.quantization import stratum
    from edgetl.workstation.run import Run

    run = Run(run_dir, dict(info), None)
    for which in ("val", "train"):
        try:
            items, targets = run.split_items(which)
        except EdgeTLError:
            continue
        if items:
            break
    else:
        return []
    by_class: dict[int, list[Any]] = {}
    for item, target in zip(items, targets):
        by_class.setdefault(stratum(target), []).append(item)
    rng = np.random.default_rng(seed)
    pools = [[by_class[c][i] for i in rng.permutation(len(by_class[c]))] for c in sorted(by_class)]
    out: list[Any] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


def _add_conformance(tmp: Path, manifest: dict[str, Any], run_dir: Path, info: Mapping[str, Any], target: Target,
                     int8: Mapping[str, Any] | None) -> None:
    """Write ``v1/conformance.npz`` (edgetl.device.conformance) from the RUN's held-out items,
    with the outputs the reference computes; run it here where this CPU is one of the target's,
    and record the result in ``manifest["validated"]``. A bundle that does not conform on a CPU
    it is for is refused: nothing is written."""
    from edgetl.core.isa import this_cpu
    from edgetl.device import conformance as conf
    from edgetl.runtimes import runtime_version

    with _bundle_predictor(tmp, manifest, reference=True) as reference:
        sources = _candidates(run_dir, info, int(np.ceil(conf.DEFAULT_ITEMS * conf.CANDIDATE_FACTOR)))
        cset = conf.build_set(reference, sources) if sources else None
        runtime = reference.runtime
    if cset is None:
        warn("the bundle gets no conformance set: the RUN's held-out items are not readable here, so no device "
             "can check that it computes the bundle as validated")
        return
    cset.save(tmp / "v1" / conf.FILE)
    cpu = this_cpu()
    manifest["artifacts"] = {**(manifest.get("artifacts") or {}), conf.ARTIFACT: f"v1/{conf.FILE}"}
    manifest["conformance"] = {
        "items": len(cset.items), "min_agreement": conf.MIN_AGREEMENT,
        "reference": {"runtime": runtime, "version": runtime_version(runtime),
                      "computed": ("without graph optimization: int8 without integer kernels, the same on every CPU"
                                   if runtime == "onnxruntime" else "as run on the packaging machine"),
                      "cpu": cpu.model, "int8_flags": cpu.int8_flags}}
    manifest["files"] = hash_dir(tmp / "v1", "v1")
    if not target.fits(cpu):
        manifest["validated"] = {"skipped": f"the packaging CPU ({cpu.model}: {', '.join(cpu.int8_instructions)}) is "
                                            f"not a {target.isa.value if target.isa else target.arch.value} CPU; "
                                            "each device checks the set itself", "int8": int8}
        return
    with _bundle_predictor(tmp, manifest) as here:
        measured = conf.compare(here, cset)
        executed = here.precision_executed
    passed = measured["agreement"] >= conf.MIN_AGREEMENT
    manifest["validated"] = {"runtime": runtime, "runtime_version": runtime_version(runtime),
                             "precision_executed": executed, "isa": target.isa.value if target.isa else None,
                             "int8": int8, "cpu": cpu.model, "int8_flags": cpu.int8_flags, **measured,
                             "passed": passed}
    if not passed:
        raise BundleError(f"the bundle does not conform on this CPU, which is one of the target's: top-1 agreement "
                          f"{measured['agreement']:.3f} with its reference on {measured['items']} held-out items "
                          f"(needs {conf.MIN_AGREEMENT}); re-quantize ('edgetl quantize RUN --target {target.name}') "
                          "or choose an fp32 target")


def _deployed_head(tmp: Path, manifest: dict[str, Any], info: Mapping[str, Any],
                   reference: bool = False) -> tuple[dict[str, Any] | None, Any]:
    """For a linear-probe RUN on an int8 target: solve the probe again on the deployed
    backbone's embeddings of the RUN's own split, as training did (C chosen on validation, or
    by k-fold when it is small; refit on train + validation when the RUN did). Rewrites
    ``v1/head.onnx`` (metadata kept) and returns the record for the manifest's
    ``accuracy.head`` (None, with a warning and the RUN's head kept, when the split cannot be
    embedded again) and the training split's rows as ``split_embeddings`` gave them (for the
    replay memory; None when not embedded). ``val_before`` scores the RUN's head on the deployed validation
    embeddings (in-sample when the RUN refitted on train + validation), ``val_after`` the new
    head fit on train alone."""
    import onnx

    from edgetl.device.learn.head import head_metadata, make_head_onnx, read_head
    from edgetl.device.memory import split_embeddings
    from edgetl.workstation.probe_solver import fit_logreg, score_head, solve_probe

    head_path = tmp / "v1" / "head.onnx"
    train = None
    try:
        with _bundle_predictor(tmp, manifest, reference=reference) as predictor:
            train = split_embeddings(predictor, info, "train")
            X_va, y_va, more = split_embeddings(predictor, info, "val")
        X_tr, y_tr, problems = train[0], train[1], train[2] + more
    except EdgeTLError as exc:
        X_tr = X_va = y_tr = np.zeros(0)
        problems = [str(exc)]
    W0, b0, labels = read_head(head_path)
    n = len(labels)
    if len(X_tr) == 0 or len(X_va) == 0 or len(np.unique(y_tr)) < n:
        warn("the head stays as solved on fp32 features: the RUN's split cannot be embedded by the deployed "
             f"backbone ({'; '.join(problems) or 'a class has no training rows'})")
        return None, train
    probe = (info.get("metrics") or {}).get("probe") if isinstance(info.get("metrics"), dict) else None
    refit = bool(probe.get("refit", True)) if isinstance(probe, dict) else True
    held_out = solve_probe(X_tr, y_tr, X_va, y_va, n, refit=False)
    # the refit at the C just chosen, on train + validation, as solve_probe(refit=True) does
    W, b = (fit_logreg(np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va]), n, held_out.C) if refit
            else (held_out.W, held_out.b))
    meta = head_metadata(onnx.load(str(head_path)))
    make_head_onnx(W, b, labels, head_path, metadata=meta)
    before, after = score_head(W0, b0, X_va, y_va), score_head(held_out.W, held_out.b, X_va, y_va)
    return {"solved_on": "deployed backbone", "C": held_out.C, "selection": held_out.selection, "refit": refit,
            "val_before": {"loss": before[0], "accuracy": before[1], "in_sample": refit},
            "val_after": {"loss": after[0], "accuracy": after[1]},
            # what the bundle scores on the validation split, as `edgetl quantize` reports it
            "deployed_accuracy": score_head(W, b, X_va, y_va)[1],
            "n_train": int(len(y_tr)), "n_val": int(len(y_va))}, train


# --- replay memory (for on-device retraining; see edgetl.device.memory) ---------------------




def _add_replay_memory(tmp: Path, manifest: dict[str, Any], info: Mapping[str, Any], cfg: "PackageConfig",
                       train_rows: Any = None, reference: bool = False) -> str | None:
    """Write ``v1/memory.npz``: embeddings of up to ``per_class`` images per class of the RUN's
    training split, computed by the bundle being written (:func:`_bundle_predictor`), or
    chosen from ``train_rows`` when :func:`_deployed_head` embedded the split already. Returns
    its manifest path, or None (with a warning) when the images or the runtime are missing."""
    from edgetl.device.memory import MEMORY_FILE, memory_from_run

    try:
        with _bundle_predictor(tmp, manifest, reference=reference) as predictor:
            memory, problems = memory_from_run(predictor, info, per_class=cfg.memory_per_class,
                                               selection=cfg.memory_selection, memory_mb=cfg.memory_mb,
                                               precision=cfg.memory_precision, train_rows=train_rows)
    except EdgeTLError as exc:
        memory, problems = None, [f"cannot compute the replay memory ({exc})"]
    if memory is None or not len(memory):
        warn(f"the bundle gets no replay memory ({'; '.join(problems) or 'no training images'}); "
             "retraining on new classes only may then forget the old ones")
        return None
    for problem in problems:
        warn(f"replay memory: {problem}")
    memory.save(tmp / "v1" / MEMORY_FILE)
    # The same embeddings describe the source domain for on-device adaptation; unlike the
    # memory, they stay as packaged when retraining later mixes in the device's domain.
    write_source_stats(tmp / "v1" / SOURCE_STATS, memory.embeddings)
    return f"v1/{MEMORY_FILE}"


def _add_row_memory(tmp: Path, manifest: dict[str, Any], run_dir: Path, info: Mapping[str, Any],
                    reference: bool) -> None:
    """Write ``v1/row_memory.npz`` (edgetl.device.row_memory): rows of the RUN's training items
    as the bundle being written computes them, a seeded sample per head output."""
    from edgetl.device.row_memory import ROW_MEMORY_FILE, RowMemory, task_rows
    from edgetl.workstation.run import Run

    try:
        items_paths, items = Run(run_dir, dict(info), None).split_items("train")
        with _bundle_predictor(tmp, manifest, reference=reference) as predictor:
            task = predictor.task
            X, y, T = task_rows(predictor, list(items), [task.item_classes(it, info["labels"]) for it in items],
                                np.random.default_rng(0), sample=True)
            head_labels = predictor.task.head_labels(predictor.labels)
    except EdgeTLError as exc:
        warn(f"the bundle gets no replay memory ({exc}); retraining on new classes only may then forget the old ones")
        return
    RowMemory.sample(X, y, T, head_labels).save(tmp / "v1" / ROW_MEMORY_FILE)
    manifest["artifacts"] = {**(manifest.get("artifacts") or {}), "row_memory": f"v1/{ROW_MEMORY_FILE}"}
    manifest["files"] = hash_dir(tmp / "v1", "v1")


def _prepare_out(out: Path, overwrite: bool) -> None:
    from edgetl.device.bundle import MANIFEST

    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise BundleError(f"{out}: already exists; pass --force to replace it, or choose another --out")
        if not (out / MANIFEST).is_file():
            # --force replaces a bundle, never an arbitrary folder the user pointed at by mistake.
            raise BundleError(f"{out}: exists and is not a bundle; refusing to replace it, even with --force")


@dataclass(frozen=True)
class PackageConfig:
    """Options of :func:`package`."""

    archive: bool = False  # also write BUNDLE.tar.gz
    overwrite: bool = False  # replace an existing bundle at ``out`` (never another folder)
    # replay-memory rows per class, when the target retrains; None: the bytes of 20 float32 rows
    # (edgetl.device.memory.default_per_class: 39 float16 rows of 1,280 features)
    memory_per_class: int | None = None
    memory_mb: float | None = None  # or a budget in MB (10^6 bytes), split evenly over the classes
    memory_selection: Selection = Selection.HERDING  # exemplars closest to the class mean, or random
    memory_precision: str = DEFAULT_PRECISION  # float16 (centred; half the bytes a row) or float32
    # int8 targets, linear-probe RUNs: solve the head again on the deployed backbone's features
    # (see _deployed_head)
    deployed_head: bool = True
    # a conformance set (edgetl.device.conformance): held-out items and their reference outputs,
    # which every device runs before it trusts the bundle
    conformance: bool = True

    def __post_init__(self) -> None:
        check_per_class(self.memory_per_class)
        if self.memory_mb is not None:
            per_class_for_budget(self.memory_mb, 1, 1)  # bounds; the fit is checked once F and C are known
        object.__setattr__(self, "memory_selection", check_selection(self.memory_selection))
        check_precision(self.memory_precision)


@dataclass(frozen=True)
class PackageReport(Report):
    """The bundle written (a report that is also its path: ``open_bundle(report)`` works)."""

    bundle: Path
    archive: Path | None
    version: int
    target: str
    runtime: str
    precision: str
    files: dict[str, Any]
    accuracy: dict[str, Any] | None

    def __fspath__(self) -> str:
        return str(self.bundle)

    def __truediv__(self, other: str) -> Path:
        return self.bundle / other


def _task_of(info: Mapping[str, Any]) -> Any:
    from edgetl.tasks import get_task

    return get_task(info.get("task"))


def _task_name(info: Mapping[str, Any]) -> str:
    return _task_of(info).name


def _spec(info: Mapping[str, Any], run_dir: Path, target: Target) -> Any:
    """The modality's spec from run.json, with the target's input size where it sets one."""
    modality = get_modality(info.get("modality"))
    try:
        spec = modality.spec_from_dict(info["preprocess"])
    except (KeyError, TypeError, ValueError, EdgeTLError) as exc:
        raise RunDirError(f"{run_dir}/run.json: bad 'preprocess' ({exc}); re-run 'edgetl train'") from None
    if target.input_size:
        if not hasattr(spec, "with_input_size"):
            raise BundleError(f"target {target.name!r} sets input_size, which {modality.name} models do not take")
        spec = spec.with_input_size(target.input_size)
    return spec


def _copy_artifacts(run_dir: Path, info: Mapping[str, Any], vdir: Path) -> dict[str, str]:
    """The RUN's extra files (``run.json["artifacts"]``: a tokenizer, say) into the version."""
    out = {}
    for name, rel in (info.get("artifacts") or {}).items():
        src = run_dir / str(rel)
        if not src.is_file():
            raise RunDirError(f"{run_dir}: run.json names artifact {name!r} at {rel}, which is missing; re-run 'edgetl train'")
        shutil.copyfile(src, vdir / src.name)
        out[str(name)] = f"v1/{src.name}"
    return out


def _manifest(run_dir: Path, info: Mapping[str, Any], target: Target, spec: Any, vdir: Path, backbone_name: str,
              training: str | None, artifacts: dict[str, str], onnx_facts: dict[str, int]) -> dict[str, Any]:
    from edgetl.device.bundle import FORMAT_VERSION

    now = utc_now()
    return {
        "format_version": FORMAT_VERSION,
        "version": 1,
        "created": now,
        "labels": list(info["labels"]),
        "modality": get_modality(info.get("modality")).name,
        "task": _task_name(info),
        "preprocess": spec.to_dict(),
        "num_features": info["num_features"],
        "backbone": info.get("backbone"),
        "target": target.to_dict(),
        "runtime": target.runtime.value,
        "precision": target.precision.value,
        "models": {"backbone": f"v1/{backbone_name}", "head": "v1/head.onnx",
                   **{name: f"v1/{name}.onnx" for name in _task_of(info).extra_heads}},
        "training": training,
        "memory": None,
        "adapter": None,
        "artifacts": artifacts,
        "files": hash_dir(vdir, "v1"),
        "onnx": onnx_facts,
        "versions": _versions(),
        "accuracy": _accuracy(info, target),
        "history": [{"version": 1, "event": "package", "time": now, "run": str(run_dir.resolve())}],
    }


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished bundle into place (an old bundle is swapped out, then removed)."""
    fsync_tree(tmp)
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
        os.rename(out, old)
        os.rename(tmp, out)
        remove(old)
    else:
        os.replace(tmp, out)  # replaces an empty folder too
    fsync_dir(out.parent)


def package(
    run_dir: str | os.PathLike,
    target: str | os.PathLike | Target,
    out: str | os.PathLike,
    config: PackageConfig | None = None,
) -> PackageReport:
    """Make a bundle for ``target`` from an exported (and, for int8, quantized) RUN.

    Copies the models the target's runtime and precision need (and the RUN's artifacts, such
    as a tokenizer) into ``out/v1/``, adds the head's training artifacts and a replay memory
    when the target retrains, and writes ``manifest.json``. The bundle is built beside
    ``out`` and renamed into place, so a crash leaves no half bundle.
    """
    from edgetl.core.run import read_run_json  # torch-free reader; the RUN format's one owner
    from edgetl.device.bundle import MANIFEST, check_manifest, write_archive

    cfg = config or PackageConfig()
    run_dir, out = Path(run_dir), Path(out)
    target = load_target(target)
    info = read_run_json(run_dir)
    sources, backbone_name = _model_sources(run_dir, target)
    int8 = _check_int8_cpus(run_dir, sources[0][0], target)
    _prepare_out(out, cfg.overwrite)
    tar_path = out.with_name(out.name + ".tar.gz")
    if cfg.archive and tar_path.exists() and not cfg.overwrite:
        raise BundleError(f"{tar_path}: already exists; pass --force to replace it")
    spec = _spec(info, run_dir, target)
    onnx_files = [src for src, _ in sources if src.suffix == ".onnx"]
    if target.runtime is not Runtime.ONNXRUNTIME and (run_dir / "onnx" / "backbone.onnx").is_file():
        onnx_files.append(run_dir / "onnx" / "backbone.onnx")  # the IR's input size comes from it
    onnx_facts = _onnx_info(onnx_files, target)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
        tmp.mkdir()
    except OSError as exc:
        raise BundleError(f"{out}: cannot create the bundle ({exc.strerror or exc})") from None
    try:
        vdir = tmp / "v1"
        vdir.mkdir()
        for src, name in sources:
            shutil.copyfile(src, vdir / name)
        artifacts = _copy_artifacts(run_dir, info, vdir)
        head = train_rows = None
        pooled = _task_of(info).pooled  # one row per item: the classification head's own solver and memory
        if cfg.deployed_head and pooled and target.precision is Precision.INT8 and info.get("strategy") == "linear-probe":
            provisional = _manifest(run_dir, info, target, spec, vdir, backbone_name, None, artifacts, onnx_facts)
            head, train_rows = _deployed_head(tmp, provisional, info, _computes_as_reference(target, int8))
        training = None
        if target.retraining:
            if _add_training_artifacts(vdir / "head.onnx", vdir / "training"):
                training = "v1/training"
        manifest = _manifest(run_dir, info, target, spec, vdir, backbone_name, training, artifacts, onnx_facts)
        if head is not None:
            manifest["accuracy"] = dict(manifest["accuracy"] or {}, head=head)
            manifest["accuracy"]["deployed"] = head["deployed_accuracy"]
        if target.retraining and not pooled:  # a head over many rows per item: a memory of rows
            _add_row_memory(tmp, manifest, run_dir, info, _computes_as_reference(target, int8))
        if target.retraining and pooled:
            memory = _add_replay_memory(tmp, manifest, info, cfg, train_rows, _computes_as_reference(target, int8))
            if memory is not None:
                manifest.update(memory=memory, source_stats=f"v1/{SOURCE_STATS}", files=hash_dir(vdir, "v1"))
        if cfg.conformance:
            _add_conformance(tmp, manifest, run_dir, info, target, int8)
        check_manifest(tmp, manifest, "new manifest")
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        _publish(tmp, out)
    except OSError as exc:
        raise BundleError(f"{out}: packaging failed ({exc.strerror or exc}); nothing was written") from None
    finally:
        remove(tmp)
    if cfg.archive:
        write_archive(out, tar_path)
    return PackageReport(out, tar_path if cfg.archive else None, 1, target.name, manifest["runtime"],
                         manifest["precision"], manifest["files"], manifest["accuracy"])
