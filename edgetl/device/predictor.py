"""Prediction on the device: a bundle's backbone and head on its target's runtime,
fed by exactly the training preprocessing. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from edgetl.core.report import Report
from edgetl.errors import BundleError, ConfigError
from edgetl.modalities import Modality, batches, get_modality, run_batches
from edgetl.modalities.image import PreprocessSpec
from edgetl.modalities.image import find_images
from edgetl.runtimes import Session, load_session
from edgetl.tasks import get_task
from edgetl.tasks.classification import Prediction, softmax

__all__ = ["Prediction", "Predictor", "Adapter", "expand_inputs", "softmax", "PredictConfig", "PredictReport", "predict"]

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class Adapter:
    """Feature alignment applied to backbone embeddings before the head: ``z @ A.T + b``."""

    A: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        A = np.asarray(self.A, dtype=np.float32)
        b = np.asarray(self.b, dtype=np.float32)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or b.shape != (A.shape[0],):
            raise BundleError(f"adapter needs A [F, F] and b [F], got A {A.shape} and b {b.shape}")
        if not (np.isfinite(A).all() and np.isfinite(b).all()):
            raise BundleError("adapter holds NaN or infinite values; re-run adapt or roll back")
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "b", b)
        # z @ A.T with A.T materialized once, so each call is one contiguous GEMM
        object.__setattr__(self, "_At", np.ascontiguousarray(A.T))

    @property
    def num_features(self) -> int:
        return int(self.A.shape[0])

    def apply(self, z: np.ndarray) -> np.ndarray:
        out = z @ self._At  # type: ignore[attr-defined]
        out += self.b
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``adapter.npz`` (``A``, ``b``): the one writer of the format :meth:`load` reads."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, A=self.A, b=self.b)
        path = Path(path)
        path.write_bytes(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Adapter":
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(f["A"], f["b"])
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: not a readable adapter (.npz with A and b): {exc}") from None


def _fraction(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number from 0 to 1, got {value!r}")
    return float(value)


def _first(out: Any, n: int) -> Any:
    """The first ``n`` items of a chunk's outputs (an array, or a task's dict of arrays): the
    rest pad a fixed-batch backbone's batch."""
    if isinstance(out, dict):
        return {k: (v[:n] if isinstance(v, np.ndarray) and v.ndim else v) for k, v in out.items()}
    return out[:n]


def _warn_if_other_arch(bundle: Any) -> None:
    """A bundle made for another CPU architecture (an x86 target opened on a Raspberry Pi) runs
    if its runtime does, but was neither tuned nor validated for this CPU: say so."""
    from edgetl.core.isa import this_cpu
    from edgetl.core.targets import Arch
    from edgetl.core import ui as _ui

    target, cpu = bundle.target, this_cpu()
    if target.arch is not Arch.ANY and target.arch.value != cpu.arch:
        _ui.warn(f"{bundle.root}: this bundle was made for {target.arch.value} CPUs (target {target.name}), this is "
                 f"{cpu.arch}; its conformance check decides whether it computes the same here ('edgetl doctor "
                 f"{bundle.root}'), and a target for this CPU would be tuned for it")


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by the images inside them (recursive, sorted,
    hidden entries skipped). A folder without images is kept, so that it is reported."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out.extend(find_images(path) or [path])
        else:
            out.append(path)
    return out


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # an enum (targets.Runtime, ...) -> its string


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]  # NxHxWxC is a batch
    return list(images)


def _describe(source: Any) -> str | None:
    return str(source) if isinstance(source, (str, os.PathLike)) else None


class Predictor:
    """Backbone and head sessions, labels and preprocessing; created once, reused per call.

    Not for sharing between threads (an OpenVINO session holds one infer request): give
    each thread its own Predictor.
    """

    def __init__(
        self,
        backbone: Session,
        head: Session,
        labels: Sequence[str],
        spec: Any,
        *,
        adapter: Adapter | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bundle: Any = None,
        modality: Modality | str | None = None,
        task: str | None = None,
        extra_heads: dict[str, Session] | None = None,
    ):
        self.backbone, self.head = backbone, head
        self.extra_heads = dict(extra_heads or {})  # a task's other heads over the same rows (detection's boxes)
        self.task = get_task(task)  # what a prediction is (edgetl.tasks): classification by default
        self.labels = tuple(labels)
        self.modality = modality if hasattr(modality, "load") else get_modality(modality)  # type: ignore[arg-type]
        self.spec = spec
        self.adapter = adapter
        self.bundle = bundle
        self._side = None  # single-threaded copies of the sessions, made on first use (_side_by_side)
        self.conformance = None  # the bundle's conformance check here (from_bundle), if it ran
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        fixed = backbone.input_shape[0] if backbone.input_shape else None
        # A backbone exported with a fixed batch can only take that many images at once.
        self.batch_size = fixed if isinstance(fixed, int) else batch_size
        self._check_shapes()

    def _check_shapes(self) -> None:
        self.modality.check_session(self.backbone, self.spec)
        shape = getattr(self.backbone, "output_shape", (None, None))
        features = shape[self.task.feature_axis] if len(shape) > abs(self.task.feature_axis) else None
        head_in = self.head.input_shape[-1] if self.head.input_shape else None
        if isinstance(features, int) and isinstance(head_in, int) and features != head_in:
            raise BundleError(f"backbone makes {features} features but the head takes {head_in}")
        if self.adapter is not None and isinstance(head_in, int) and self.adapter.num_features != head_in:
            raise BundleError(f"adapter maps {self.adapter.num_features} features but the head takes {head_in}")
        classes = getattr(self.head, "output_shape", (None, None))[-1]
        outputs = len(self.task.head_labels(self.labels))
        if isinstance(classes, int) and classes != outputs:
            raise BundleError(f"head has {classes} outputs but the bundle's {len(self.labels)} labels need {outputs}")

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        *,
        verify: bool = True,
        runtime: str | None = None,
        threads: int | None = None,
        spinning: bool = False,
        conformance: str = "refuse",
        reference: bool = False,
    ) -> "Predictor":
        """Open a bundle (checking its file hashes unless ``verify`` is False) and load its
        models on the target's runtime, or on ``runtime`` when given.

        ``conformance`` (:class:`edgetl.device.conformance.Policy`): the bundle's conformance
        set is run here, once per machine (its verdict is remembered), and a bundle whose
        backbone computes other answers on this CPU than it was validated with is refused
        (``"refuse"``, the default: :class:`~edgetl.errors.NonConformingError`), run with a
        warning (``"warn"``), or just reported in :attr:`conformance` (``"record"``); ``"off"``
        skips it. ``reference``: load the backbone as the reference computes it
        (:func:`edgetl.runtimes.load_session`), as packaging does to build the set.

        ``spinning``: whether ONNX Runtime's workers busy-wait between ops. Off by default:
        :meth:`predict` and :meth:`embed` decode the next images in loading threads while
        the backbone runs (over many items they run side by side on single-threaded copies
        instead, see :meth:`run_chunks`), and spinning workers take the cores those threads need
        (benchmarks/scale_bench.py on 2 busy cores, 1,000 PNGs at 224 px, batch 1: 74 vs 32
        images/s over the folder; even fed tensors, batch 1: 13 vs 26 ms median). ``True`` gives ONNX Runtime's
        default, for tensors fed on otherwise idle cores."""
        from edgetl.device.bundle import open_bundle

        bundle = open_bundle(path, verify=verify)
        target = bundle.target
        # the manifest's runtime/precision are what was packaged (int8 may have fallen back to fp32)
        target_runtime = _value(bundle.runtime)
        runtime = _value(runtime) or target_runtime
        precision = _value(bundle.precision)
        device = target.device or None
        if runtime != target_runtime:
            device = None  # the target's device names a device of its own runtime
            if runtime == "onnxruntime" and precision == "bf16":
                precision = "fp32"  # bf16 is OpenVINO's; on ORT the same model runs in fp32
        backbone_path = bundle.model_path("backbone")
        if runtime == "onnxruntime" and Path(backbone_path).suffix.lower() == ".xml":
            raise ConfigError(f"this bundle's backbone is OpenVINO IR ({Path(backbone_path).name}); "
                              "only runtime 'openvino' can run it")
        threads = threads or target.threads
        backbone = load_session(backbone_path, runtime, threads=threads, precision=precision, device=device,
                                spinning=spinning, reference=reference)
        # The head is tiny and stays fp32 (it is what retraining changes).
        head = load_session(bundle.model_path("head"), runtime, threads=threads, precision="fp32", device=device,
                            spinning=spinning)
        extra = {name: load_session(bundle.path(rel), runtime, threads=threads, precision="fp32", device=device,
                                    spinning=spinning)
                 for name, rel in bundle.manifest["models"].items() if name not in ("backbone", "head")}
        adapter_rel = bundle.manifest.get("adapter")
        adapter = Adapter.load(bundle.path(adapter_rel)) if adapter_rel else None
        predictor = cls(
            backbone, head, bundle.labels, bundle.spec, adapter=adapter,
            batch_size=target.batch_size or DEFAULT_BATCH_SIZE, bundle=bundle, modality=bundle.modality,
            task=bundle.task, extra_heads=extra,
        )
        from edgetl.device.conformance import Policy, ensure

        if Policy(conformance) is not Policy.OFF:
            _warn_if_other_arch(bundle)
        predictor.conformance = ensure(predictor, conformance)
        return predictor

    @classmethod
    def from_files(
        cls,
        backbone: str | os.PathLike,
        head: str | os.PathLike,
        *,
        labels: Sequence[str],
        spec: PreprocessSpec,
        runtime: str = "onnxruntime",
        precision: str | None = None,
        threads: int | None = None,
        adapter: Adapter | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        modality: str | None = None,
        spinning: bool = False,
        task: str | None = None,
    ) -> "Predictor":
        """Load a backbone and head model file directly (no bundle); ``spinning`` as
        :meth:`from_bundle`'s."""
        return cls(
            load_session(backbone, runtime, threads=threads, precision=precision, spinning=spinning),
            load_session(head, runtime, threads=threads, precision="fp32", spinning=spinning),
            labels, spec, adapter=adapter, batch_size=batch_size, modality=modality, task=task,
        )

    # -- properties ---------------------------------------------------------------

    @property
    def runtime(self) -> str:
        return self.backbone.runtime

    @property
    def precision_executed(self) -> str:
        """What the backbone actually runs in (the head is always fp32)."""
        return self.backbone.precision_executed

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        size = getattr(self.spec, "input_size", None)
        shape = f"input={size}" if size is not None else f"modality={self.modality.name!r}"
        return (f"Predictor(runtime={self.runtime!r}, precision={self.precision_executed!r}, "
                f"classes={self.num_classes}, {shape})")

    def _describe(self, source: Any) -> str | None:
        """How a prediction names its item (the modality decides: a path, a shortened text)."""
        describe = getattr(self.modality, "describe", None)
        return describe(source) if describe is not None else _describe(source)

    # -- tensors in, arrays out --------------------------------------------------

    def embed_tensor(self, x: Any, *, adapted: bool = True) -> np.ndarray:
        """Model inputs (``{name: array}``, or the image batch [N, 3, H, W]) -> embeddings
        [N, F] (adapter applied unless ``adapted`` is False)."""
        z = self.backbone.run(x)
        return self.adapter.apply(z) if adapted and self.adapter is not None else z

    def logits_from_embeddings(self, z: np.ndarray) -> np.ndarray:
        """Head-input embeddings (what :meth:`embed` returns) -> logits [N, C]."""
        return self.head.run(z)

    def logits(self, x: Any) -> np.ndarray:
        """Model inputs (as for :meth:`embed_tensor`) -> logits [N, C]."""
        return self.head.run(self.embed_tensor(x))

    def apply_adapter(self, z: np.ndarray) -> np.ndarray:
        """Raw backbone embeddings -> head-input embeddings (identity without an adapter)."""
        return self.adapter.apply(np.asarray(z, np.float32)) if self.adapter is not None else z

    # -- images in ----------------------------------------------------------------

    def _chunk_size(self, batch_size: int | None) -> int:
        n = self.batch_size if batch_size is None else batch_size
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {n!r}")
        fixed = self.backbone.input_shape[0]
        if getattr(self.backbone, "batch_dependent", False):
            return 1  # an item's answer must not depend on its neighbours (OrtSession.batch_dependent)
        return fixed if isinstance(fixed, int) else n

    def _explain(self, sources: Sequence[Any], errors: dict[int, str]) -> dict[int, str]:
        for i in errors:
            source = sources[i]
            if isinstance(source, (str, os.PathLike)) and self.modality.name == "image" and Path(source).is_dir():
                if "cannot read" not in errors[i]:  # an unreadable folder says so (find_images lists it)
                    errors[i] = f"{source}: a folder with no images"
        return errors

    def _padded(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A fixed-batch backbone gets a full batch; the extra rows are dropped after."""
        fixed = self.backbone.input_shape[0]
        n = len(next(iter(inputs.values())))
        if not isinstance(fixed, int) or n >= fixed:
            return inputs
        return {k: np.concatenate([v, np.zeros((fixed - n, *v.shape[1:]), v.dtype)]) for k, v in inputs.items()}

    def batches(self, sources: Sequence[Any], batch_size: int | None = None, *, strict: bool = False):
        """Yield ``(indices, inputs, errors)`` per chunk: ``inputs`` are the model inputs of
        the loadable items at ``indices`` (padded to a fixed-batch backbone's batch);
        ``errors`` maps the others to their reason. With ``strict`` the first raises."""
        n = self._chunk_size(batch_size)
        for indices, inputs, errors in batches(self.modality, sources, self.spec, n, strict=strict,
                                               describe=lambda s: self._describe(s) or self.modality.item_noun):
            yield indices, (None if inputs is None else self._padded(inputs)), self._explain(sources, errors)

    def _side_by_side(self, n_items: int, chunk: int):
        """Single-threaded copies of the backbone and head, one run per thread side by side,
        for many items on ONNX Runtime with more than one thread; else None. Measured on 2
        cores, 1,000 PNGs at 224 px, batch 1 (benchmarks/scale_bench.py): 233 images/s vs 174
        with the loading threads feeding two-thread sessions; the backbone alone fed
        preprocessed batches runs 268."""
        threads = getattr(self.backbone, "threads", None) or 1
        if threads < 2 or n_items < 4 * threads * chunk or not hasattr(self.backbone, "single_threaded"):
            return None
        if self._side is None:
            self._side = (self.backbone.single_threaded(), self.head.single_threaded(),
                          {k: v.single_threaded() for k, v in self.extra_heads.items()})
        return self._side + (threads,)

    def run_chunks(self, sources: Sequence[Any], batch_size: int | None = None, *, strict: bool = False,
                   logits: bool = True, adapted: bool = True):
        """``(indices, outputs, errors)`` per chunk of ``sources``: the head's outputs as the task
        makes them (classification: the logits; detection: per-location logits and box codes) or,
        without ``logits``, the backbone's raw outputs, of the loadable items at ``indices``. Over
        many items on ONNX Runtime each thread loads and runs its own chunks (:meth:`_side_by_side`)."""
        def run(x, backbone, head, extra):  # x padded to a fixed-batch backbone's batch
            z = backbone.run(x)
            if not logits:
                return self.adapter.apply(z) if adapted and self.adapter is not None else z
            return self.task.outputs(self, z, x, head, extra)

        n = self._chunk_size(batch_size)
        side = self._side_by_side(len(sources), n)
        if side is None:
            for indices, x, errors in self.batches(sources, batch_size, strict=strict):
                out = None if x is None else _first(run(x, self.backbone, self.head, self.extra_heads), len(indices))
                yield indices, out, errors
            return
        backbone, head, extra, threads = side
        for indices, out, errors in run_batches(
                self.modality, sources, self.spec, n, lambda x: run(self._padded(x), backbone, head, extra),
                workers=threads, strict=strict, describe=lambda s: self._describe(s) or self.modality.item_noun):
            yield indices, (None if out is None else _first(out, len(indices))), self._explain(sources, errors)

    def embed(self, images: Any, *, batch_size: int | None = None, adapted: bool = True) -> np.ndarray:
        """Images (paths, PIL images or uint8 arrays) -> embeddings [N, F] float32, in
        batches. Raises :class:`DataError` on the first unreadable image."""
        sources = _as_list(images)
        chunks = [z for indices, z, _ in self.run_chunks(sources, batch_size, strict=True, logits=False, adapted=adapted)
                  if indices]
        if not chunks:
            features = self.head.input_shape[-1]
            return np.zeros((0, features if isinstance(features, int) else 0), np.float32)
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def predict(self, images: Any, *, top_k: int = 1, batch_size: int | None = None,
                score_threshold: float | None = None) -> list:
        """Predictions for items (paths, PIL images or uint8 arrays; texts for a text bundle: a
        string is one text there, not a path), one per item, in order, as the bundle's task
        makes them (classification: :class:`Prediction` with the label and its probability;
        detection: the boxes whose score is at least ``score_threshold``). An unusable item
        gives a prediction with ``error`` set; the others are still predicted."""
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        options = {} if score_threshold is None else {"score_threshold": _fraction(score_threshold, "score_threshold")}
        return self.task.predict(self, _as_list(images), top_k=top_k, batch_size=batch_size, **options)


# --------------------------------------------------------------------------- the verb


@dataclass(frozen=True)
class PredictConfig:
    """Options of :func:`predict` (the CLI builds the same object)."""

    top_k: int = 1
    batch_size: int | None = None  # None: the target's batch size
    runtime: str | None = None  # None: the bundle's own runtime
    threads: int | None = None
    verify: bool = True
    allow_nonconforming: bool = False  # run a bundle that fails its conformance check here (with a warning)
    score_threshold: float | None = None  # detection: report objects scoring at least this (None: 0.3)

    def __post_init__(self) -> None:
        for name in ("top_k", "batch_size", "threads"):
            v = getattr(self, name)
            if v is None and name != "top_k":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class PredictReport(Report):
    """One :class:`Prediction` per item, in order, and what ran them."""

    predictions: list[Prediction]
    runtime: str
    precision_executed: str

    def to_dict(self) -> dict[str, Any]:
        return {"predictions": [p.to_dict() for p in self.predictions], "runtime": self.runtime,
                "precision_executed": self.precision_executed}

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.ok]


def predict(bundle: str | os.PathLike, items: Any, config: PredictConfig | None = None) -> PredictReport:
    """Classify ``items`` (image paths, PIL images or arrays; texts for a text bundle) with a
    bundle on its deployed runtime. An unreadable item gives a prediction with ``error`` set."""
    cfg = config or PredictConfig()
    predictor = Predictor.from_bundle(bundle, verify=cfg.verify, runtime=cfg.runtime, threads=cfg.threads,
                                      conformance="warn" if cfg.allow_nonconforming else "refuse")
    predictions = predictor.predict(items, top_k=cfg.top_k, batch_size=cfg.batch_size,
                                    score_threshold=cfg.score_threshold)
    return PredictReport(predictions, predictor.runtime, predictor.precision_executed)
