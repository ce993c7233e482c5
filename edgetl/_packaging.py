"""Packaging: a RUN's models for a target, copied into a new bundle. Re-exported as
:func:`edgetl.bundle.package`; the bundle format itself lives in :mod:`edgetl.bundle`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Mapping

from ._files import fsync_dir, fsync_tree, hash_dir, remove, utc_now
from ._ui import warn
from .errors import BundleError, RunDirError
from .preprocess import PreprocessSpec
from .targets import Precision, Runtime, Target, load_target

MAX_IR_VERSION = 10  # onnxruntime 1.19.2, the project's runtime, loads IR <= 10


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
    needed = [*backbone, onnx_dir / "head.onnx"]
    for src in needed:
        if not src.is_file():
            # export writes the fp32 ONNX models and the fp32 OpenVINO IR; quantize the int8 ones
            made_by_export = ".int8." not in src.name or not (onnx_dir / "backbone.onnx").is_file()
            hint = export_hint if made_by_export else quantize_hint
            raise RunDirError(
                f"{run_dir}: target {target.name!r} needs {src.relative_to(run_dir).as_posix()}, which is missing; {hint}"
            )
    return [(src, src.name) for src in needed], backbone[0].name


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

    from . import __version__

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
    from .run import deployed_accuracy

    metrics = info.get("metrics") if isinstance(info.get("metrics"), dict) else {}
    fp32_row = deployed_accuracy(info, target.runtime.value, "fp32")
    row = deployed_accuracy(info, target.runtime.value, target.precision.value) or {}
    fp32 = fp32_row["deployed"] if fp32_row else metrics.get("val_accuracy")
    if fp32 is None and row.get("deployed") is None:
        return None
    return {"fp32": fp32, "deployed": row.get("deployed"), "precision_executed": row.get("precision_executed")}


def _add_training_artifacts(head_path: Path, out_dir: Path) -> bool:
    """ORT training artifacts for the head (checked loadable before they are kept)."""
    from .device.head_training import make_training_artifacts

    make_training_artifacts(head_path, out_dir)
    return True


# --- replay memory (for on-device retraining; see edgetl.device.memory) ---------------------


SOURCE_STATS_FILE = "source_stats.npz"  # edgetl.device.alignment.SOURCE_STATS


def _add_replay_memory(tmp: Path, manifest: dict[str, Any], info: Mapping[str, Any], per_class: int) -> str | None:
    """Write ``v1/memory.npz``: embeddings of up to ``per_class`` images per class of the RUN's
    training split, computed by the bundle being written (a Predictor on its own files, so
    they are what the device computes: deployed backbone, runtime and precision). Returns
    its manifest path, or None (with a warning) when the images or the runtime are missing."""
    from .bundle import MANIFEST
    from .device.memory import MEMORY_FILE, _check_per_class, memory_from_run
    from .device.predictor import Predictor
    from .errors import EdgeTLError

    _check_per_class(per_class)  # a bad value is the caller's error, not a missing memory
    (tmp / MANIFEST).write_text(json.dumps(manifest))  # provisional: Predictor reads a bundle
    try:
        predictor = Predictor.from_bundle(tmp, verify=False)
        memory, problems = memory_from_run(predictor, info, per_class=per_class)
    except EdgeTLError as exc:
        memory, problems = None, [f"cannot compute the replay memory ({exc})"]
    finally:
        (tmp / MANIFEST).unlink()
    if memory is None or not len(memory):
        warn(f"the bundle gets no replay memory ({'; '.join(problems) or 'no training images'}); "
             "retraining on new classes only may then forget the old ones")
        return None
    for problem in problems:
        warn(f"replay memory: {problem}")
    memory.save(tmp / "v1" / MEMORY_FILE)
    # The same embeddings describe the source domain for on-device adaptation; unlike the
    # memory, they stay as packaged when retraining later mixes in the device's domain.
    from .device.alignment import write_source_stats

    write_source_stats(tmp / "v1" / SOURCE_STATS_FILE, memory.embeddings)
    return f"v1/{MEMORY_FILE}"


def _prepare_out(out: Path, overwrite: bool) -> None:
    from .bundle import MANIFEST

    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise BundleError(f"{out}: already exists; pass --force to replace it, or choose another --out")
        if not (out / MANIFEST).is_file():
            # --force replaces a bundle, never an arbitrary folder the user pointed at by mistake.
            raise BundleError(f"{out}: exists and is not a bundle; refusing to replace it, even with --force")


def package(
    run_dir: str | os.PathLike,
    target: str | os.PathLike | Target,
    out: str | os.PathLike,
    *,
    archive: bool = False,
    overwrite: bool = False,
    memory_per_class: int = 20,  # edgetl.device.memory.DEFAULT_PER_CLASS
) -> Path:
    """Make a bundle for ``target`` from an exported (and, for int8, quantized) RUN.

    Copies the models the target's runtime and precision need into ``out/v1/``, adds the
    head's training artifacts and a replay memory of ``memory_per_class`` training-image
    embeddings per class when the target retrains, and writes ``manifest.json``. The
    bundle is built beside ``out`` and renamed into place, so a crash leaves no half
    bundle. With ``archive``, also writes ``out.tar.gz``. Returns ``out``.
    """
    from .bundle import FORMAT_VERSION, MANIFEST, _check_manifest, write_archive
    from .run import read_run_json  # torch-free reader; the RUN format's one owner

    run_dir, out = Path(run_dir), Path(out)
    target = load_target(target)
    info = read_run_json(run_dir)
    sources, backbone_name = _model_sources(run_dir, target)
    _prepare_out(out, overwrite)
    tar_path = out.with_name(out.name + ".tar.gz")
    if archive and tar_path.exists() and not overwrite:
        raise BundleError(f"{tar_path}: already exists; pass --force to replace it")
    try:
        spec = PreprocessSpec.from_dict(info["preprocess"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{run_dir}/run.json: bad 'preprocess' ({exc}); re-run 'edgetl train'") from None
    if target.input_size:
        spec = spec.with_input_size(target.input_size)
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
        training = None
        if target.retraining:
            _add_training_artifacts(vdir / "head.onnx", vdir / "training")
            training = "v1/training"
        now = utc_now()
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": 1,
            "created": now,
            "labels": list(info["labels"]),
            "preprocess": spec.to_dict(),
            "num_features": info["num_features"],
            "backbone": info.get("backbone"),
            "target": target.to_dict(),
            "runtime": target.runtime.value,
            "precision": target.precision.value,
            "models": {"backbone": f"v1/{backbone_name}", "head": "v1/head.onnx"},
            "training": training,
            "memory": None,
            "adapter": None,
            "files": hash_dir(vdir, "v1"),
            "onnx": onnx_facts,
            "versions": _versions(),
            "accuracy": _accuracy(info, target),
            "history": [{"version": 1, "event": "package", "time": now, "run": str(run_dir.resolve())}],
        }
        if target.retraining:
            memory = _add_replay_memory(tmp, manifest, info, memory_per_class)
            if memory is not None:
                manifest.update(memory=memory, source_stats=f"v1/{SOURCE_STATS_FILE}", files=hash_dir(vdir, "v1"))
        _check_manifest(tmp, manifest, "new manifest")
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        fsync_tree(tmp)
        if out.is_dir() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
            os.rename(out, old)
            os.rename(tmp, out)
            remove(old)
        else:
            os.replace(tmp, out)  # replaces an empty folder too
        fsync_dir(out.parent)
    except OSError as exc:
        raise BundleError(f"{out}: packaging failed ({exc.strerror or exc}); nothing was written") from None
    finally:
        remove(tmp)
    if archive:
        write_archive(out, tar_path)
    return out
