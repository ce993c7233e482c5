"""On-device retraining for a task whose head reads many rows per item (detection: one row per
feature-map location), new classes included, torch-free, atomic (edgetl.device.bundle).

The new annotated items become rows through the bundle's own backbone and the task
(:meth:`Task.training_rows`: for detection, FCOS assignment and background sampling, as the
workstation trains); the replay memory (edgetl.device.row_memory) adds rows of what the data
lacks. The class head is solved exactly: new classes by :func:`edgetl.device.learn.addition.
add_classes` (the old outputs, the background's included, kept bit for bit, so no decision
between them changes; the new outputs solved class-balanced over every row), known classes by
the class-balanced solve anchored at the old head (:func:`edgetl.device.learn.solver.solve_head`).
The task's other heads (detection's box head) are solved again on every row that has a target
(ridge regression, exact). The new version goes live only if the task's metric on held-out new
items (detection: mAP@.5) does not fall and the old outputs keep at least ``MIN_KEPT`` of their
row accuracy on the replay memory, unless ``force``; the version that then goes live is solved
again on all the items, the held-out ones included (as the workstation refits on train +
validation), and the replay memory offered all their rows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core.report import Report
from edgetl.errors import BundleError, DataError

__all__ = ["RowRetrainReport", "retrain_rows", "MIN_KEPT"]

MIN_KEPT = 0.90  # of the old outputs' row accuracy on the replay memory


@dataclass(frozen=True)
class RowRetrainReport(Report):
    """What :func:`retrain_rows` did (``switched``: the new version is live)."""

    bundle: str
    switched: bool
    version: int
    previous_version: int
    labels: list[str]
    new_classes: list[str]
    n_items: int
    n_train: int
    n_holdout: int
    n_rows: int
    metric: str  # the task's metric on the held-out items, e.g. "map50"
    before: float | None
    after: float | None
    memory_before: float | None  # the old outputs' row accuracy on the replay memory
    memory_after: float | None
    learner: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str | None = None


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(holdout * n)) if n >= 5 else 0
    return np.sort(order[k:]), np.sort(order[:k])


def _accuracy(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, outputs: int) -> float | None:
    mask = y < outputs
    if not mask.any():
        return None
    return float(((X[mask] @ W.T + b).argmax(1) == y[mask]).mean())


def retrain_rows(bundle: str | os.PathLike, data: str | os.PathLike, cfg: Any) -> RowRetrainReport:
    """Retrain a bundle's heads on annotated ``data`` (see the module docstring)."""
    from edgetl.device.bundle import update_bundle
    from edgetl.device.learn.addition import add_classes
    from edgetl.device.learn.head import head_metadata, make_head_onnx, read_head
    from edgetl.device.learn.solver import solve_head
    from edgetl.device.predictor import Predictor
    from edgetl.device.row_memory import ROW_MEMORY_FILE, RowMemory, background_shift, task_rows

    started = time.perf_counter()
    root = Path(bundle)
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise BundleError(f"{root}: retraining needs a writable bundle folder (extract an archive first); "
                          "nothing was changed")
    predictor = Predictor.from_bundle(root, verify=cfg.verify,
                                      conformance="warn" if cfg.allow_nonconforming else "refuse")
    task, live = predictor.task, predictor.bundle
    found = task.read(data, predictor.modality, strict=cfg.strict)
    if not found.items:
        raise DataError(f"{data}: no annotated items to retrain on")
    new_classes = [c for c in found.labels if c not in live.labels]
    labels = list(live.labels) + new_classes
    to_all = np.asarray([labels.index(c) for c in found.labels], np.int64)
    head_labels = task.head_labels(labels)
    old_outputs = len(task.head_labels(live.labels))
    items = list(found.items)
    classes = [to_all[c] if len(c) else np.zeros(0, np.int64)
               for c in (task.item_classes(it, found.labels) for it in items)]
    train_idx, hold_idx = _split(len(items), cfg.holdout, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()

    def rows_of(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The rows of these items (sampled as the workstation samples them) and their locations."""
        locations: list[int] = []
        X_, y_, t_ = task_rows(predictor, [items[i] for i in indices], [classes[i] for i in indices], rng,
                               sample=True, locations=locations)
        return X_, y_, t_, sum(locations)

    X_new, y_new, t_new, n_locations = rows_of(train_idx)
    missing = [c for c in new_classes
               if not np.isin(y_new, [head_labels.index(o) for o in task.head_labels([c])[1:]]).any()]
    if missing:
        raise DataError(f"{data}: new class(es) {', '.join(missing)} have no usable annotation in the training part "
                        f"(e.g. boxes too small for the feature map, or only in held-out {task.noun}s); add more examples")
    memory_path = live.optional_path("row_memory")
    memory = RowMemory.load(memory_path).grown(head_labels) if memory_path else None
    embed_seconds = time.perf_counter() - t0
    W_old, b_old, _ = read_head(live.model_path("head"))
    old_extra = {name: read_head(live.model_path(name))[:2] for name in task.extra_heads}

    def solve(X_new, y_new, t_new, n_locations):
        """Every head solved on the memory's rows and these new ones."""
        shift = background_shift(y_new, n_locations) if task.background_sampled else 0.0
        X = np.concatenate([memory.rows, X_new]) if memory is not None else X_new
        y = np.concatenate([memory.labels, y_new]) if memory is not None else y_new
        T = np.concatenate([memory.targets, t_new]) if memory is not None else t_new
        # the rows sample the background: solve in their space (background bias less the shift), then
        # give the background its bias for all locations back (background_shift)
        b_rows = b_old.copy()
        b_rows[0] -= shift
        if new_classes:
            grown = add_classes(X, y, W_old, b_rows, len(head_labels), balanced=not task.background_sampled)
            W, b = grown.W, grown.b.copy()
            b[0] = b_old[0]  # the old outputs exactly as they were
            learner = {"name": "exact", "classes": "added", "C": grown.C, "background_shift": shift}
        else:
            W64, b64 = solve_head(X, y, len(head_labels), 1.0, anchor=(W_old, b_rows))
            W, b = W64.astype(np.float32), b64.astype(np.float32)
            b[0] += shift
            learner = {"name": "exact", "classes": "refit, anchored at the old head", "C": 1.0,
                       "background_shift": shift}
        extra = task.solve_extra_heads(X, y, T, old_extra)  # {name: (W, b)}: detection's box head, anchored
        return W, b, extra, learner, len(y)

    t1 = time.perf_counter()
    W, b, extra, learner, n_rows = solve(X_new, y_new, t_new, n_locations)
    train_seconds = time.perf_counter() - t1
    # the gate: the task's metric on held-out items, and the old outputs on the memory's rows
    hold = [items[i] for i in hold_idx]
    before = after = None
    if hold:
        before = task.score_heads(predictor, hold, [classes[i] for i in hold_idx], (W_old, b_old), old_extra, labels)
        after = task.score_heads(predictor, hold, [classes[i] for i in hold_idx], (W, b), extra, labels)
    mem_before = mem_after = None
    if memory is not None and len(memory):  # the old head can only answer its own outputs
        W_pad = np.vstack([W_old, np.zeros((len(head_labels) - old_outputs, W_old.shape[1]), np.float32)])
        mem_before = _accuracy(memory.rows, memory.labels, W_pad,
                               np.concatenate([b_old, np.full(len(head_labels) - old_outputs, -np.inf)]), old_outputs)
        mem_after = _accuracy(memory.rows, memory.labels, W, b, old_outputs)
    reason = None
    # with new classes, the old head scores their objects as missed: learning them must raise it
    if before is not None and after is not None and after < before:
        reason = f"held-out {task.metric_name} fell from {before:.3f} to {after:.3f}"
    elif mem_before and mem_after is not None and mem_after < MIN_KEPT * mem_before:
        reason = (f"the old classes kept {mem_after / mem_before:.1%} of their accuracy on the replay memory "
                  f"(needs {MIN_KEPT:.0%})")
    common = dict(bundle=str(root), labels=labels, new_classes=new_classes, n_items=len(items),
                  n_train=len(train_idx), n_holdout=len(hold_idx), n_rows=int(n_rows), metric=task.metric_name,
                  before=before, after=after, memory_before=mem_before, memory_after=mem_after, learner=learner)
    if reason is not None and not cfg.force:
        return RowRetrainReport(switched=False, version=live.version, previous_version=live.version,
                                seconds=_seconds(embed_seconds, train_seconds, started),
                                reason=f"{reason}; nothing changed (--force switches anyway)", **common)
    if len(hold_idx):
        # The gate judged the learner on items it did not see; the version that goes live is solved
        # on all of them, as the workstation refits on train + validation once C is chosen.
        t0 = time.perf_counter()
        X_hold, y_hold, t_hold, hold_locations = rows_of(hold_idx)
        X_new, y_new, t_new = (np.concatenate([X_new, X_hold]), np.concatenate([y_new, y_hold]),
                               np.concatenate([t_new, t_hold]))
        embed_seconds += time.perf_counter() - t0
        t1 = time.perf_counter()
        W, b, extra, learner, n_rows = solve(X_new, y_new, t_new, n_locations + hold_locations)
        train_seconds += time.perf_counter() - t1
        learner = {**learner, "refit": "train and held-out items"}
        common.update(learner=learner, n_rows=int(n_rows))
    new_memory = (memory.merge(X_new, y_new, t_new, seed=cfg.seed) if memory is not None
                  else RowMemory.sample(X_new, y_new, t_new, head_labels, seed=cfg.seed))
    import onnx

    meta = head_metadata(onnx.load(str(live.model_path("head"))))

    def write(staging: Path, manifest: dict) -> dict:
        n = manifest["version"]
        make_head_onnx(W, b, head_labels, staging / "head.onnx", metadata=meta)
        manifest["models"]["head"] = f"v{n}/head.onnx"
        for name, (We, be) in extra.items():
            make_head_onnx(We, be, [f"{name}:{i}" for i in range(len(We))], staging / f"{name}.onnx", metadata=meta)
            manifest["models"][name] = f"v{n}/{name}.onnx"
        new_memory.save(staging / ROW_MEMORY_FILE)
        manifest["artifacts"] = {**(manifest.get("artifacts") or {}), "row_memory": f"v{n}/{ROW_MEMORY_FILE}"}
        if manifest.get("training"):
            from edgetl.device.learn import make_training_artifacts, ort_training_available

            if ort_training_available():
                make_training_artifacts(staging / "head.onnx", staging / "training")
                manifest["training"] = f"v{n}/training"
            else:
                manifest["training"] = None
        manifest["labels"] = labels
        return manifest

    details = {"new_classes": new_classes, "metric": task.metric_name, "before": before, "after": after,
               "learner": learner, "data": str(Path(data).resolve())}
    updated = update_bundle(root, "retrain", write, details=details, sign_key=cfg.sign_key)
    return RowRetrainReport(switched=True, version=updated.version, previous_version=live.version,
                            seconds=_seconds(embed_seconds, train_seconds, started), **common)


def _seconds(embed: float, train: float, started: float) -> dict[str, float]:
    return {"embed": round(embed, 3), "train": round(train, 3), "total": round(time.perf_counter() - started, 3)}
