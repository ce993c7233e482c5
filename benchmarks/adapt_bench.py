"""Domain adaptation benchmark: real digits under a stated ImageNet-C corruption.

Data: scikit-learn's 1,797 real handwritten digits (32-pixel PNGs from
``edgetl.modalities.image.write_digits``), split per class, seeded, into two disjoint halves
(capped at ``--per-class`` each). The source half is labelled. The target half is
corrupted with ``edgetl.modalities.corruptions`` (default: ImageNet-C ``contrast`` at severity 2,
c = 0.3 around each image's per-channel mean; corruption seed 1); it serves both as the
unlabelled adaptation set and, with its labels, as the evaluation set (the transductive
setting of the DANN and CORAL papers).

Rows, all with the same seed, backbone (pretrained efficientnet_lite0), image size
(default 64 pixels, small so that it runs in a few minutes on 2 CPU cores) and
fine-tuning schedule (last 2 blocks, ``--epochs``, lr 3e-3):

- source only: ``edgetl train --strategy finetune``
- DANN, Deep CORAL: ``edgetl train --strategy adapt --adapt dann|coral``
- device alignment (coral, standardize): the source-only RUN exported, packaged for
  ``x86-ort-fp32`` and adapted with ``edgetl.device.alignment`` (source statistics from the
  source images); skipped with a note if the export/packaging stages are unavailable.

    python benchmarks/adapt_bench.py [--per-class 60] [--json benchmarks/adapt_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def split_digits(root: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    """All digits -> two disjoint per-class halves, ``per_class`` images each at most."""
    from edgetl.modalities.image import write_digits

    everything = write_digits(root / "all", seed=seed)
    rng = np.random.default_rng(seed)
    for klass in sorted(p for p in everything.iterdir() if p.is_dir()):
        files = sorted(klass.iterdir())
        files = [files[i] for i in rng.permutation(len(files))]
        half = min(len(files) // 2, per_class)
        for name, chosen in (("source", files[:half]), ("target_clean", files[half:2 * half])):
            (root / name / klass.name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, root / name / klass.name / f.name)
    return root / "source", root / "target_clean"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corruption", default="contrast")
    p.add_argument("--severity", type=int, default=2)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(Path(__file__).with_name("adapt_bench.json")))
    p.add_argument("--workdir", help="keep the data and runs here (default: a temporary folder)")
    args = p.parse_args(argv)

    import torch

    from edgetl.core import ui as _ui
    from edgetl.modalities.corruptions import SEVERITIES, Corruption, write_shifted
    from edgetl.workstation.evaluation import evaluate_run
    from edgetl.workstation.training import TrainConfig, train

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="adapt_bench-"))
    source, clean = split_digits(work / "data", args.per_class, args.seed)
    target = write_shifted(clean, work / "data" / "target", args.corruption, args.severity, seed=1)
    common = dict(image_size=args.image_size, epochs=args.epochs, batch_size=32, lr=3e-3, seed=args.seed, unfreeze=2)
    rows: list[dict] = []

    def row(name: str, t0: float, target_acc: float, source_val: float | None, **extra) -> None:
        rows.append(dict(method=name, target_accuracy=target_acc, source_val_accuracy=source_val,
                         seconds=time.perf_counter() - t0, **extra))
        _ui.info(f"{name}: target accuracy {target_acc:.3f}")

    t0 = time.perf_counter()
    src_run = train(source, work / "runs" / "source_only", TrainConfig(strategy="finetune", **common),
                    overwrite=True)
    row("source only (finetune)", t0, evaluate_run(src_run.run_dir, target)["accuracy"], src_run.val_accuracy)
    clean_acc = evaluate_run(src_run.run_dir, clean)["accuracy"]
    for method in ("dann", "coral"):
        t0 = time.perf_counter()
        cfg = TrainConfig(strategy="adapt", target_data=str(target), target_eval=str(target), adapt_method=method,
                          **common)
        r = train(source, work / "runs" / method, cfg, overwrite=True)
        row(f"{method.upper() if method == 'dann' else 'Deep CORAL'} (train --strategy adapt)", t0,
            r.metrics["target_accuracy_after"], r.val_accuracy)
    t0 = time.perf_counter()
    cfg = TrainConfig(strategy="adapt", target_data=str(target), target_eval=str(target), adapt_method="coral",
                      **{**common, "unfreeze": 0})
    r = train(source, work / "runs" / "feature_coral", cfg, overwrite=True)
    row("feature CORAL, frozen backbone (train --unfreeze 0)", t0, r.metrics["target_accuracy_after"], None)

    try:
        from edgetl.workstation.packaging import PackageConfig, package
        from edgetl.device.alignment import AdaptConfig, adapt
        from edgetl.workstation.onnx_export import export

        export(src_run.run_dir)
        for method in ("coral", "standardize"):
            t0 = time.perf_counter()
            bundle = package(src_run.run_dir, "x86-ort-fp32", work / f"bundle_{method}", PackageConfig(overwrite=True))
            res = adapt(bundle, target, AdaptConfig(method=method, source=source, eval_dir=target))
            row(f"device alignment: {method} (edgetl adapt, ORT fp32)", t0, res["accuracy_after"], None,
                accuracy_before=res["accuracy_before"])
    except Exception as exc:  # noqa: BLE001 - the benchmark reports what it could not run
        _ui.warn(f"device alignment skipped: {exc.__class__.__name__}: {exc}")

    shift = {"corruption": args.corruption, "severity": args.severity,
             "parameter": [SEVERITIES[Corruption(c)][args.severity - 1] for c in args.corruption.split("+")],
             "corruption_seed": 1}
    result = {"data": {"source": "sklearn digits, disjoint per-class halves", "per_class": args.per_class,
                       "n_source": sum(1 for _ in source.rglob("*.png")),
                       "n_target": sum(1 for _ in target.rglob("*.png"))},
              "shift": shift, "config": common, "source_only_clean_target_accuracy": clean_acc,
              "results": rows}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _ui.print_table(f"digits, {args.corruption} severity {args.severity} (clean target accuracy of source-only: "
                    f"{clean_acc:.3f})", ["method", "target acc", "source val acc", "seconds"],
                    [[r["method"], r["target_accuracy"], r["source_val_accuracy"], r["seconds"]] for r in rows])
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
