"""Prediction on the device: a bundle's backbone and head on its target's runtime,
fed by exactly the training preprocessing. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import BundleError, ConfigError, DataError, EdgeTLError
from ..data import find_images
from ..preprocess import ImageInput, PreprocessSpec, preprocess
from .runtimes import Session, load_session

__all__ = ["Prediction", "Predictor", "Adapter", "Evaluation", "evaluate_folder", "evaluate_bundle", "expand_inputs"]

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class Prediction:
    """One image's result. ``score`` is the softmax probability of ``label``; ``top_k``
    holds ``(label, probability)`` pairs, best first. When the image could not be read,
    ``error`` says why and the other fields are None/empty."""

    file: str | None
    label: str | None
    score: float | None
    top_k: tuple[tuple[str, float], ...] = ()
    error: str | None = None
    index: int | None = None  # class id of ``label``

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": lab, "score": s} for lab, s in self.top_k],
            "error": self.error,
        }


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

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Adapter":
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(f["A"], f["b"])
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: not a readable adapter (.npz with A and b): {exc}") from None


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


def _as_list(images: Any) -> list[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]  # NxHxWxC is a batch
    return list(images)


def _describe(source: ImageInput) -> str | None:
    return str(source) if isinstance(source, (str, os.PathLike)) else None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


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
        spec: PreprocessSpec,
        *,
        adapter: Adapter | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bundle: Any = None,
    ):
        self.backbone, self.head = backbone, head
        self.labels = tuple(labels)
        self.spec = spec
        self.adapter = adapter
        self.bundle = bundle
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        fixed = backbone.input_shape[0] if backbone.input_shape else None
        # A backbone exported with a fixed batch can only take that many images at once.
        self.batch_size = fixed if isinstance(fixed, int) else batch_size
        self._check_shapes()

    def _check_shapes(self) -> None:
        shape = self.backbone.input_shape
        size = self.spec.input_size
        if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size))):
            raise BundleError(f"backbone input is {list(shape)}, but the preprocessing makes [N, 3, {size}, {size}]")
        features = getattr(self.backbone, "output_shape", (None, None))[-1]
        head_in = self.head.input_shape[-1] if self.head.input_shape else None
        if isinstance(features, int) and isinstance(head_in, int) and features != head_in:
            raise BundleError(f"backbone makes {features} features but the head takes {head_in}")
        if self.adapter is not None and isinstance(head_in, int) and self.adapter.num_features != head_in:
            raise BundleError(f"adapter maps {self.adapter.num_features} features but the head takes {head_in}")
        classes = getattr(self.head, "output_shape", (None, None))[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise BundleError(f"head has {classes} outputs but the bundle lists {len(self.labels)} labels")

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        *,
        verify: bool = True,
        runtime: str | None = None,
        threads: int | None = None,
    ) -> "Predictor":
        """Open a bundle (checking its file hashes unless ``verify`` is False) and load its
        models on the target's runtime, or on ``runtime`` when given."""
        from ..bundle import open_bundle

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
        backbone = load_session(backbone_path, runtime, threads=threads, precision=precision, device=device)
        # The head is tiny and stays fp32 (it is what retraining changes).
        head = load_session(bundle.model_path("head"), runtime, threads=threads, precision="fp32", device=device)
        adapter_rel = bundle.manifest.get("adapter")
        adapter = Adapter.load(bundle.path(adapter_rel)) if adapter_rel else None
        return cls(
            backbone, head, bundle.labels, bundle.preprocess, adapter=adapter,
            batch_size=target.batch_size or DEFAULT_BATCH_SIZE, bundle=bundle,
        )

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
    ) -> "Predictor":
        """Load a backbone and head model file directly (no bundle)."""
        return cls(
            load_session(backbone, runtime, threads=threads, precision=precision),
            load_session(head, runtime, threads=threads, precision="fp32"),
            labels, spec, adapter=adapter, batch_size=batch_size,
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
        return (f"Predictor(runtime={self.runtime!r}, precision={self.precision_executed!r}, "
                f"classes={self.num_classes}, input={self.spec.input_size})")

    # -- tensors in, arrays out --------------------------------------------------

    def embed_tensor(self, x: np.ndarray, *, adapted: bool = True) -> np.ndarray:
        """Preprocessed batch [N, 3, H, W] -> embeddings [N, F] (adapter applied unless
        ``adapted`` is False)."""
        z = self.backbone.run(x)
        return self.adapter.apply(z) if adapted and self.adapter is not None else z

    def logits_from_embeddings(self, z: np.ndarray) -> np.ndarray:
        """Head-input embeddings (what :meth:`embed` returns) -> logits [N, C]."""
        return self.head.run(z)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed batch [N, 3, H, W] -> logits [N, C]."""
        return self.head.run(self.embed_tensor(x))

    def apply_adapter(self, z: np.ndarray) -> np.ndarray:
        """Raw backbone embeddings -> head-input embeddings (identity without an adapter)."""
        return self.adapter.apply(np.asarray(z, np.float32)) if self.adapter is not None else z

    # -- images in ----------------------------------------------------------------

    def _batches(self, sources: list[ImageInput], batch_size: int | None, *, strict: bool):
        """Yield ``(indices, batch, errors)`` per chunk: the rows of ``batch`` are the
        readable images at ``indices``; ``errors`` maps the others to their reason."""
        n = self.batch_size if batch_size is None else batch_size
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {n!r}")
        fixed = self.backbone.input_shape[0]
        n = fixed if isinstance(fixed, int) else n
        size = self.spec.input_size
        buffer = np.empty((n, 3, size, size), dtype=np.float32)
        for start in range(0, len(sources), n):
            chunk = sources[start:start + n]
            indices: list[int] = []
            errors: dict[int, str] = {}
            for i, source in enumerate(chunk, start):
                try:
                    buffer[len(indices)] = preprocess(source, self.spec)
                except (EdgeTLError, OSError, ValueError) as exc:
                    if strict and isinstance(exc, DataError):
                        raise
                    if strict:
                        raise DataError(f"{_describe(source) or 'image'}: {exc}") from None
                    is_dir = isinstance(source, (str, os.PathLike)) and Path(source).is_dir()
                    errors[i] = f"{source}: a folder with no images" if is_dir else str(exc)
                    continue
                indices.append(i)
            # a fixed-batch backbone gets the whole buffer; a dynamic one only the filled rows
            batch = buffer if isinstance(fixed, int) else buffer[: len(indices)]
            yield indices, batch, errors

    def embed(self, images: Any, *, batch_size: int | None = None, adapted: bool = True) -> np.ndarray:
        """Images (paths, PIL images or uint8 arrays) -> embeddings [N, F] float32, in
        batches. Raises :class:`DataError` on the first unreadable image."""
        sources = _as_list(images)
        chunks = []
        for indices, batch, _ in self._batches(sources, batch_size, strict=True):
            if indices:
                chunks.append(self.embed_tensor(batch, adapted=adapted)[: len(indices)])
        if not chunks:
            features = self.head.input_shape[-1]
            return np.zeros((0, features if isinstance(features, int) else 0), np.float32)
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def predict(self, images: Any, *, top_k: int = 1, batch_size: int | None = None) -> list[Prediction]:
        """Classify images (paths, PIL images or uint8 arrays). An unreadable image gives a
        :class:`Prediction` with ``error`` set; the others are still predicted."""
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        k = min(top_k, self.num_classes)
        sources = _as_list(images)
        results: list[Prediction | None] = [None] * len(sources)
        for indices, batch, errors in self._batches(sources, batch_size, strict=False):
            for i, reason in errors.items():
                results[i] = Prediction(_describe(sources[i]), None, None, (), reason)
            if not indices:
                continue
            probs = softmax(self.logits(batch)[: len(indices)])
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            for row, i in enumerate(indices):
                best = [(self.labels[c], float(probs[row, c])) for c in order[row]]
                results[i] = Prediction(_describe(sources[i]), best[0][0], best[0][1], tuple(best),
                                        index=int(order[row, 0]))
        return results  # type: ignore[return-value]


@dataclass(frozen=True)
class Evaluation:
    """Accuracy on labelled images. ``confusion[t, p]`` counts images of class ``t``
    predicted as ``p`` (indices into ``labels``, the model's classes)."""

    labels: tuple[str, ...]
    confusion: np.ndarray
    errors: tuple[tuple[str, str], ...] = ()  # (file, reason) of images that could not be read
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. runtime, precision_executed

    @classmethod
    def from_predictions(
        cls, labels: Sequence[str], y_true: Sequence[int], y_pred: Sequence[int], **kwargs: Any
    ) -> "Evaluation":
        c = len(labels)
        confusion = np.zeros((c, c), dtype=np.int64)
        np.add.at(confusion, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
        return cls(tuple(labels), confusion, **kwargs)

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.n) if self.n else float("nan")

    @property
    def per_class(self) -> dict[str, float]:
        """Accuracy (recall) of each class that has at least one image."""
        totals = self.confusion.sum(axis=1)
        return {lab: float(self.confusion[i, i] / totals[i]) for i, lab in enumerate(self.labels) if totals[i]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "per_class": self.per_class,
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
            "errors": [{"file": f, "error": e} for f, e in self.errors],
            **self.extra,
        }


def evaluate_folder(
    predictor: Predictor, data: str | os.PathLike, *, batch_size: int | None = None
) -> Evaluation:
    """Accuracy of ``predictor`` on an image folder (one subfolder per class, named by
    label). Every class in ``data`` must be one of the model's labels."""
    from ..data import scan_folder

    folder = scan_folder(data, min_classes=1, verify=False)  # unreadable files are counted below
    index = {label: i for i, label in enumerate(predictor.labels)}
    unknown = [name for name in folder.labels if name not in index]
    if unknown:
        raise DataError(
            f"{folder.root}: class folder(s) {', '.join(map(repr, unknown))} are not among the model's labels "
            f"({', '.join(predictor.labels)}); evaluate on known classes, or retrain the bundle with them"
        )
    to_model = np.asarray([index[name] for name in folder.labels], dtype=np.int64)
    predictions = predictor.predict(folder.paths, batch_size=batch_size)
    y_true, y_pred, errors = [], [], []
    for (path, target), pred in zip(folder.samples, predictions):
        if pred.ok:
            y_true.append(to_model[target])
            y_pred.append(pred.index)
        else:
            errors.append((str(path), pred.error or ""))
    if not y_true:
        raise DataError(f"{folder.root}: none of its {len(predictions)} image(s) could be read")
    return Evaluation.from_predictions(
        predictor.labels, y_true, y_pred, errors=tuple(errors),
        extra={"runtime": predictor.runtime, "precision_executed": predictor.precision_executed},
    )


def evaluate_bundle(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    *,
    batch_size: int | None = None,
    verify: bool = True,
    runtime: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """``{"accuracy", "n", "per_class", "confusion", ...}`` of a bundle on an image folder."""
    predictor = Predictor.from_bundle(bundle, verify=verify, runtime=runtime, threads=threads)
    return evaluate_folder(predictor, data, batch_size=batch_size).to_dict()
