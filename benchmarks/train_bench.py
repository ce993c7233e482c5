"""Training time per epoch on the workstation: linear probe (the first epoch includes
embedding every image once through the frozen backbone; later epochs train the head on
cached embeddings) against fine-tuning (every epoch runs the backbone forward and
backward).

    python benchmarks/train_bench.py                      # digits, 50 per class, 224 px
    python benchmarks/train_bench.py --per-class 100 --finetune-epochs 3

Times come from edgetl.train itself: ``history[i]["seconds"]`` per epoch, and the
embedding time as the strategy's total (``metrics["train_seconds"]``) minus its epochs.
Writes benchmarks/results/train.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _train(data: Path, out: Path, **kw) -> dict:
    from edgetl.workstation.training import TrainConfig, train

    epochs = kw["epochs"]
    result = train(data, out, TrainConfig(patience=epochs + 1, **kw), overwrite=True)  # no early stop: time every epoch
    seconds = [row["seconds"] for row in result.history]
    total = result.metrics["train_seconds"]
    return {"epochs": seconds, "outside_epochs_s": total - sum(seconds), "total_s": total,
            "val_accuracy": result.val_accuracy, "n_train": result.metrics["n_train"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--probe-epochs", type=int, default=10)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--unfreeze", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
    from edgetl.benchmarking.environment import environment, machine_name
    from edgetl.cli import _quiet_third_party
    from edgetl.modalities.image import write_digits

    _quiet_third_party()
    with tempfile.TemporaryDirectory(prefix="edgetl-train-bench-") as tmp:
        data = write_digits(Path(tmp) / "digits", per_class=args.per_class, seed=0)
        probe = _train(data, Path(tmp) / "probe", epochs=args.probe_epochs, image_size=args.image_size)
        fine = _train(data, Path(tmp) / "finetune", strategy="finetune", epochs=args.finetune_epochs,
                      unfreeze=args.unfreeze, image_size=args.image_size)
    env = environment()
    embed = probe["outside_epochs_s"]
    rows = [
        ("linear probe, first epoch (embeds every image once)", embed + probe["epochs"][0]),
        ("linear probe, each later epoch (cached embeddings)", statistics.median(probe["epochs"][1:] or [float("nan")])),
        (f"fine-tune (last {args.unfreeze} blocks), each epoch", statistics.median(fine["epochs"])),
    ]
    print(f"Training time per epoch, efficientnet_lite0 at {args.image_size} px, {probe['n_train']} training images "
          f"(digits), on {machine_name(env)}:\n")
    print("| strategy / epoch | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3g} |")
    print(f"\nembedding pass alone: {embed:.1f} s; linear probe total {probe['total_s']:.1f} s for "
          f"{len(probe['epochs'])} epochs (val acc {probe['val_accuracy']:.3f}); fine-tune total {fine['total_s']:.1f} s "
          f"for {len(fine['epochs'])} epochs (val acc {fine['val_accuracy']:.3f})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(
        {"environment": env, "settings": vars(args) | {"out": str(args.out)}, "linear_probe": probe, "finetune": fine,
         "table": [{"row": n, "seconds": s} for n, s in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
