"""Fine-tuned adaptation on a small real shift, with and without the guard (issue 30).

Source: 20 training crops of each of 5 scikit-image photos (astronaut, brick, camera,
chelsea, coffee; ``edgetl.workstation.datasets.write_photos``, 96 px files, trained at 64 px).
Target: 20 test crops of each, from regions no training crop touches, under ImageNet-C
contrast at severity 2 (``edgetl.modalities.corruptions``); unlabelled pool and evaluation
set at once (the transductive setting of the DANN and CORAL papers).

Rows (target accuracy of the RUN written):

- ``source-only probe``: ``edgetl train`` (linear probe, exact);
- ``feature-coral``, ``coral`` (Deep CORAL), ``dann``: ``--strategy adapt`` without
  ``--target-eval`` (what a user without target labels gets: the guard may keep the
  source-only probe and say so), and with ``--target-eval`` (``as trained``: the adapted
  model's own target accuracy, which the guard could not see).

    python benchmarks/adapt_guard_bench.py [--json benchmarks/results/adapt_guard_photos.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASSES = ["astronaut", "brick", "camera", "chelsea", "coffee"]
SMALL = dict(image_size=64, epochs=6, batch_size=32, lr=3e-3, seed=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(Path(__file__).with_name("results") / "adapt_guard_photos.json"))
    p.add_argument("--methods", default="feature-coral,coral,dann")
    args = p.parse_args(argv)
    from edgetl.benchmarking.environment import environment
    from edgetl.modalities.corruptions import write_shifted
    from edgetl.workstation.datasets import write_photos
    from edgetl.workstation.evaluation import evaluate_run
    from edgetl.workstation.training import TrainConfig, train

    out: dict = {"environment": environment(sys.argv), "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = write_photos(root / "src", classes=CLASSES, per_class=20, size=96, seed=0)
        clean = write_photos(root / "tgt", classes=CLASSES, per_class=20, size=96, split="test", seed=0)
        tgt = write_shifted(clean, root / "tgt_shift", "contrast", 2, seed=1)
        run = train(src, root / "probe", TrainConfig(image_size=64, seed=0)).run_dir
        out["rows"]["source-only probe"] = {"target": evaluate_run(run, tgt)["accuracy"]}
        print(out["rows"], flush=True)
        for method in args.methods.split(","):
            row = {}
            for labelled in (False, True):
                cfg = TrainConfig(strategy="adapt", target_data=str(tgt), adapt_method=method,
                                  target_eval=str(tgt) if labelled else None, **SMALL)
                r = train(src, root / f"{method}{int(labelled)}", cfg)
                m = r.metrics
                key = "with --target-eval" if labelled else "without --target-eval"
                row[key] = {"target": evaluate_run(r.run_dir, tgt)["accuracy"], "kept": m.get("adapt_kept"),
                            "reason": m.get("adapt_reason"),
                            "source_val": [m.get("source_val_accuracy_before"), m.get("source_val_accuracy_after")]}
                if labelled:
                    row["as trained"] = m.get("target_accuracy_adapted")
            out["rows"][method] = row
            print(method, json.dumps(row), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
