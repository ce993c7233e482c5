"""The conformance set: a few dozen held-out items every bundle carries, with the backbone
outputs its reference computed for them, so that the device can check that it computes the
same on its own CPU and runtime. Torch-free; the one owner of ``conformance.npz``.

int8 is not computed the same everywhere (edgetl.core.isa): a bundle whose int8 agrees 1.00
with fp32 on a CPU with VNNI agreed 0.80 on a CPU without. The reference outputs are the
backbone's as the reference computes them (ONNX Runtime without graph optimization: int8
without integer kernels, the same on every CPU; OpenVINO, which has no such mode: as the
packaging machine ran it). The device runs the stored items through its own decoding,
preprocessing, backbone and the bundle's head, and compares top-1 labels with the head applied
to the reference outputs: below ``min_agreement`` (0.98) the bundle does not conform here,
except that one change is always allowed (a set of 43 items, a class-added head's margins moved
by retraining: one flipped item is 0.977 and says nothing about the kernels, which flip a fifth).

Items at a decision boundary are left out when the set is built (the lowest-margin third of
the candidates): two correct int8 executions can differ there. Measured on 359 held-out digits
at 224 px with EfficientNet-Lite0 int8 (7-bit weights) on an AVX2 CPU: this CPU's kernels
agreed with the reference on 0.994 of all of them and on 1.000 once the lowest-margin tenth
was left out; the same model with full-range weights, which saturate there, 0.80 and 0.84.

A verdict is remembered per bundle version (its files' hashes), runtime and version, and the
CPU's int8 flags, in ``$EDGETL_CONFORMANCE_DIR`` (default ``~/.cache/edgetl/conformance``), so
the check costs once per machine; like the embedding cache, that folder is trusted by whoever
can write it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl.core.isa import this_cpu
from edgetl.core.report import Report
from edgetl.errors import BundleError, ConfigError, EdgeTLError, NonConformingError

__all__ = ["FILE", "ARTIFACT", "DEFAULT_ITEMS", "MIN_AGREEMENT", "Policy", "ConformanceSet", "ConformanceReport",
           "build_set", "check", "ensure", "suggest_target"]

FILE = "conformance.npz"
ARTIFACT = "conformance"  # its name in the manifest's ``artifacts``
DEFAULT_ITEMS = 64
CANDIDATE_FACTOR = 1.5  # held-out items scored per item kept (the lowest-margin third is left out)
MIN_AGREEMENT = 0.98  # top-1 agreement with the reference; 64 items allow one change
ALWAYS_ALLOWED_CHANGES = 1  # whatever the set's size (see allowed_changes)
MAX_FILE_BYTES = 256 << 20
MAX_ITEMS = 4096
_FORMAT = 1


class Policy(str, Enum):
    """What opening a bundle does about its conformance set."""

    REFUSE = "refuse"  # check (once per machine); refuse a bundle that does not conform (the default)
    WARN = "warn"  # check; run anyway with a warning (--allow-nonconforming)
    RECORD = "record"  # check; the caller reports the result (bench, doctor)
    OFF = "off"  # no check (packaging's own provisional bundle)


# --- the file ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConformanceSet:
    """Encoded items (the modality's compact form: image files, UTF-8 texts) and the reference
    backbone's raw outputs for them, [N, F] float32."""

    items: tuple[bytes, ...]
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        z = np.asarray(self.embeddings)
        if z.ndim != 2 or len(z) != len(self.items) or not 1 <= len(self.items) <= MAX_ITEMS:
            raise BundleError(f"conformance set: {len(self.items)} items but embeddings of shape {z.shape}")
        if z.dtype != np.float32 or not np.isfinite(z).all():
            raise BundleError("conformance set: embeddings must be finite float32 values")

    def save(self, path: str | os.PathLike) -> Path:
        lengths = np.array([len(b) for b in self.items], np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, format=np.int64(_FORMAT), lengths=lengths,
                 data=np.frombuffer(b"".join(self.items), np.uint8), embeddings=self.embeddings)
        path = Path(path)
        path.write_bytes(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ConformanceSet":
        path = Path(path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise BundleError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes, not a conformance set; re-package")
            with np.load(path, allow_pickle=False) as f:
                if int(f["format"]) != _FORMAT:
                    raise BundleError(f"{path}: conformance set format {int(f['format'])} is not {_FORMAT}; re-package")
                lengths, data, z = f["lengths"], f["data"], f["embeddings"]
        except EdgeTLError:
            raise
        except (OSError, KeyError, ValueError, TypeError, EOFError) as exc:
            raise BundleError(f"{path}: not a readable conformance set ({exc}); re-package the bundle") from None
        if (lengths.ndim != 1 or lengths.dtype.kind != "i" or data.dtype != np.uint8 or (lengths < 0).any()
                or int(lengths.sum()) != data.size):
            raise BundleError(f"{path}: conformance set items are inconsistent; re-package the bundle")
        ends = np.cumsum(lengths)
        raw = data.tobytes()
        items = tuple(raw[int(e - n):int(e)] for e, n in zip(ends, lengths))
        return cls(items, z)


# --- building it (packaging) ---------------------------------------------------------------------

def _margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:] if logits.shape[1] > 1 else np.concatenate(
        [np.zeros_like(logits), logits], axis=1)
    return top2[:, 1] - top2[:, 0]


def select(logits: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to ``n`` rows: the lowest-margin third left out (see the module docstring),
    then round-robin over the predicted classes, each class's rows spread over its margins."""
    margins = _margins(logits)
    keep = np.argsort(-margins, kind="stable")[: max(1, int(np.ceil(len(margins) * 2 / 3)))]
    predicted = logits.argmax(1)
    pools = []
    for c in np.unique(predicted[keep]):
        rows = keep[predicted[keep] == c]  # by decreasing margin
        # alternate confident and less confident rows, so a small set spans the margins
        order = [rows[i // 2] if i % 2 == 0 else rows[len(rows) - 1 - i // 2] for i in range(len(rows))]
        pools.append(list(dict.fromkeys(order)))
    chosen: list[int] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return np.array(sorted(chosen), np.int64)


def build_set(reference: Any, sources: Sequence[Any], n: int = DEFAULT_ITEMS) -> ConformanceSet | None:
    """The conformance set of the bundle ``reference`` (a Predictor on the bundle's files, loaded
    as the reference computes them) from candidate held-out ``sources``; None when none loads."""
    modality, spec = reference.modality, reference.spec
    encoded: list[bytes] = []
    for source in sources:
        try:
            encoded.append(modality.encode(source, spec))
        except (EdgeTLError, OSError, ValueError):
            continue  # an unreadable candidate is not a conformance item
    if not encoded:
        return None
    z = reference.embed([modality.decode(b) for b in encoded], adapted=False)
    logits = reference.logits_from_embeddings(reference.apply_adapter(z))
    chosen = select(logits, n)
    return ConformanceSet(tuple(encoded[i] for i in chosen), np.ascontiguousarray(z[chosen], np.float32))


# --- checking it (the device) --------------------------------------------------------------------

@dataclass(frozen=True)
class ConformanceReport(Report):
    """What ``edgetl doctor BUNDLE`` prints: how the bundle's backbone computes here, next to
    the reference outputs it carries."""

    bundle: str
    version: int
    passed: bool
    agreement: float  # top-1 agreement of the bundle's head on this CPU's and the reference's outputs
    min_agreement: float
    n_items: int  # conformance items run
    max_logit_error: float  # largest |logit here - logit of the reference|, per unit of logit scale
    min_cosine: float  # smallest cosine between this CPU's backbone outputs and the reference's
    runtime: str
    runtime_version: str | None
    precision_executed: str
    cpu: dict[str, Any]
    target: str
    target_isa: str | None
    fits_target: bool  # this CPU is one of the target's (architecture and int8 instructions)
    cached: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "conforms" if self.passed else "does not conform"


def _runtime_version(runtime: str) -> str | None:
    from edgetl.runtimes import runtime_version

    return runtime_version(runtime)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)


def compare(predictor: Any, cset: ConformanceSet) -> dict[str, Any]:
    """Run the set's items through ``predictor`` (its decoding, preprocessing and backbone) and
    compare with the reference outputs through the same adapter and head."""
    modality = predictor.modality
    items = [modality.decode(b) for b in cset.items]
    z_here = predictor.embed(items, adapted=False)
    if z_here.shape != cset.embeddings.shape:
        raise BundleError(f"the backbone makes outputs of shape {z_here.shape[1:]} here, the conformance set holds "
                          f"{cset.embeddings.shape[1:]}; re-package the bundle")
    here = predictor.logits_from_embeddings(predictor.apply_adapter(z_here))
    ref = predictor.logits_from_embeddings(predictor.apply_adapter(cset.embeddings))
    scale = max(1.0, float(np.abs(ref).max()))
    return {"agreement": float((here.argmax(1) == ref.argmax(1)).mean()), "items": len(items),
            "max_logit_error": float(np.abs(here - ref).max()) / scale,
            "min_cosine": float(_cosines(z_here, cset.embeddings).min())}


def _verdict_dir() -> Path:
    if os.environ.get("EDGETL_CONFORMANCE_DIR"):
        return Path(os.environ["EDGETL_CONFORMANCE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgetl" / "conformance"


def _key(predictor: Any) -> str:
    bundle = predictor.bundle
    cpu = this_cpu()
    doc = {"format": _FORMAT, "files": {k: v["sha256"] for k, v in sorted(bundle.manifest["files"].items())},
           "runtime": predictor.runtime, "runtime_version": _runtime_version(predictor.runtime),
           "precision": predictor.precision_executed, "arch": cpu.arch, "flags": cpu.int8_flags}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


_NUMBERS = ("agreement", "max_logit_error", "min_cosine")


def _recall(key: str) -> dict[str, Any] | None:
    path = _verdict_dir() / f"{key}.json"
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 16).decode("utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(doc, dict) and doc.get("key") == key and isinstance(doc.get("items"), int)
          and all(isinstance(doc.get(k), (int, float)) and np.isfinite(doc[k]) for k in _NUMBERS))
    return doc if ok else None


def _remember(key: str, measured: dict[str, Any]) -> None:
    from edgetl.core.files import write_json_atomic

    try:
        folder = _verdict_dir()
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / f"{key}.json", {"key": key, **measured})
    except OSError:
        pass  # a read-only home: the check runs again next time, nothing else changes


def allowed_changes(n_items: int, min_agreement: float) -> int:
    """Top-1 changes a set of ``n_items`` allows at ``min_agreement``: never fewer than one, so that
    a small set (43 items: one change is 0.977) does not refuse a bundle for one boundary item."""
    return max(ALWAYS_ALLOWED_CHANGES, int(np.floor((1.0 - min_agreement) * n_items + 1e-9)))


def conforms(agreement: float, n_items: int, min_agreement: float) -> bool:
    changes = int(round((1.0 - agreement) * n_items))
    return changes <= allowed_changes(n_items, min_agreement)


def check(predictor: Any, *, min_agreement: float | None = None, use_cache: bool = True) -> ConformanceReport | None:
    """Check the bundle ``predictor`` was opened from (``Predictor.from_bundle``) against its
    conformance set, here; None when the bundle carries no set (made before edgetl had them)."""
    bundle = predictor.bundle
    if bundle is None:
        raise ConfigError("a conformance check needs a Predictor opened from a bundle (Predictor.from_bundle)")
    path = bundle.optional_path(ARTIFACT)
    if path is None:
        return None
    record = bundle.manifest.get("conformance") or {}
    threshold = float(min_agreement if min_agreement is not None else record.get("min_agreement", MIN_AGREEMENT))
    t0 = time.perf_counter()
    key = _key(predictor)
    measured = _recall(key) if use_cache else None
    cached = measured is not None
    if measured is None:
        measured = compare(predictor, ConformanceSet.load(path))
        _remember(key, measured)
    cpu = this_cpu()
    target = bundle.target
    return ConformanceReport(
        bundle=str(bundle.root), version=bundle.version, passed=conforms(measured["agreement"], int(measured["items"]), threshold),
        agreement=measured["agreement"], min_agreement=threshold, n_items=int(measured["items"]),
        max_logit_error=measured["max_logit_error"], min_cosine=measured["min_cosine"], runtime=predictor.runtime,
        runtime_version=_runtime_version(predictor.runtime), precision_executed=predictor.precision_executed,
        cpu=cpu.to_dict(), target=target.name, target_isa=target.isa.value if target.isa else None,
        fits_target=target.fits(cpu), cached=cached, seconds=time.perf_counter() - t0,
        extra={"reference": record.get("reference"), "validated": bundle.manifest.get("validated")},
    )


def suggest_target(target: Any) -> str | None:
    """A shipped target that fits this CPU, as close to ``target`` as there is (same runtime and
    precision, else same runtime, else any), or None."""
    from edgetl.core.targets import targets_for

    fitting = targets_for(this_cpu())
    for same in (lambda t: t.runtime == target.runtime and t.precision == target.precision,
                 lambda t: t.runtime == target.runtime, lambda t: True):
        found = [t for t in fitting if same(t) and t.name != target.name]
        if found:
            return found[0].name
    return None


def failure_message(report: ConformanceReport, target: Any) -> str:
    """One line: what does not conform, on what, why, and what to do."""
    cpu = report.cpu
    flags = ", ".join(cpu.get("int8_instructions") or []) or "no int8 instructions known"
    why = ""
    if not report.fits_target and report.target_isa:
        why = f"; the bundle is for {report.target_isa} CPUs (target {report.target}) and this one is not"
    suggestion = suggest_target(target)
    fix = f"package it for {suggestion}, which fits this CPU" if suggestion else "package it for a target that fits this CPU ('edgetl doctor' lists them)"
    return (f"{report.bundle}: the bundle's backbone computes other answers on this CPU than it was validated with: "
            f"top-1 agreement {report.agreement:.3f} on its {report.n_items} conformance items (needs "
            f"{report.min_agreement:.2f}, or at most {allowed_changes(report.n_items, report.min_agreement)} changed) with {report.runtime} {report.runtime_version or ''} on {cpu.get('model')} "
            f"({flags}){why}; {fix}, or pass --allow-nonconforming to run it anyway")


def ensure(predictor: Any, policy: Policy | str) -> ConformanceReport | None:
    """The check :meth:`Predictor.from_bundle` runs on opening a bundle (remembered per machine):
    refuse (:class:`NonConformingError`), warn, or just record, per ``policy``."""
    from edgetl.core import ui as _ui

    policy = Policy(policy)
    if policy is Policy.OFF:
        return None
    report = check(predictor)
    if report is None:
        if policy is not Policy.RECORD and predictor.precision_executed.startswith("int8"):
            _ui.warn(f"{predictor.bundle.root}: this int8 bundle carries no conformance set (made before edgetl had "
                     "them), so nothing checks that this CPU computes it as validated; re-package it")
        return None
    if not report.passed:
        message = failure_message(report, predictor.bundle.target)
        if policy is Policy.REFUSE:
            raise NonConformingError(message)
        if policy is Policy.WARN:
            _ui.warn(message.replace(", or pass --allow-nonconforming to run it anyway",
                                                     " (running it anyway: --allow-nonconforming)"))
    return report
