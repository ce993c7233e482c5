"""Does ``edgetl select``'s cheap estimate rank backbones as full training does?

On two real data sets (scikit-learn's handwritten digits; crops of scikit-image's photos),
for each built-in candidate at its native input size:

- select's estimate: 5-fold exact-probe accuracy on a stratified sample (default 300
  images) and LogME on the same embeddings, plus the deployed p90 on the target;
- full training: ``edgetl train`` (linear probe, the build default) on the whole data set,
  its held-out validation accuracy (20 %, never seen by the head's fit or its C).

Reports Spearman's and Kendall's rank correlation between each estimate and the full
training accuracy, and select's cost (cold cache, then warm). Resumable: each finished
step is kept in benchmarks/results/select.json.

    python benchmarks/select_bench.py                    # digits (1,797) and photos, 3 candidates
    python benchmarks/select_bench.py --sample 200 --photos-per-class 30
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
OUT = HERE / "results" / "select.json"
CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _save(results: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2, default=str) + "\n")


def _datasets(root: Path, photos_per_class: int) -> dict[str, Path]:
    from edgetl.modalities.image import write_digits
    from edgetl.workstation.datasets import write_photos

    out = {}
    if not (root / "digits").is_dir():
        write_digits(root / "digits", seed=0)
    out["digits"] = root / "digits"
    if not (root / "photos").is_dir():
        write_photos(root / "photos", per_class=photos_per_class, seed=0)
    out["photos"] = root / "photos"
    return out


def _ranks(est: list[float], full: list[float]) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    return {"spearman": float(spearmanr(est, full).statistic), "kendall": float(kendalltau(est, full).statistic)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", type=int, default=300)
    p.add_argument("--photos-per-class", type=int, default=40)
    p.add_argument("--target", default="x86-ort-int8")
    p.add_argument("--work", default="/tmp/edgetl-select-bench")
    p.add_argument("--fresh", action="store_true", help="forget earlier results and caches")
    p.add_argument("--no-warm", action="store_true", help="skip the second (warm-cache) select run")
    p.add_argument("--reselect", action="store_true",
                   help="run select again on the warm caches (new estimates, same full-training results)")
    args = p.parse_args(argv)

    from edgetl.workstation.selection import SelectConfig, select
    from edgetl.workstation.training import TrainConfig, train

    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
        OUT.unlink(missing_ok=True)
    results = json.loads(OUT.read_text()) if OUT.is_file() else {"datasets": {}}
    results["settings"] = {"sample": args.sample, "target": args.target, "candidates": CANDIDATES,
                           "photos_per_class": args.photos_per_class}
    data = _datasets(work / "data", args.photos_per_class)
    for name, folder in data.items():
        entry = results["datasets"].setdefault(name, {})
        if args.reselect and "select" in entry:
            cfg = SelectConfig(backbones=CANDIDATES, sample=args.sample, work_dir=work / f"cache-{name}")
            t0 = time.perf_counter()
            report = select(folder, args.target, cfg, plot=HERE / "results" / f"select_{name}.png")
            entry["select"] = {**report.to_dict(), "cold_seconds": entry["select"]["cold_seconds"],
                               "warm_seconds": time.perf_counter() - t0}
            _save(results)
        if "select" not in entry:
            cache = work / f"cache-{name}"
            shutil.rmtree(cache, ignore_errors=True)
            cfg = SelectConfig(backbones=CANDIDATES, sample=args.sample, work_dir=cache)
            t0 = time.perf_counter()
            report = select(folder, args.target, cfg, plot=HERE / "results" / f"select_{name}.png")
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            if not args.no_warm:
                select(folder, args.target, cfg)
            warm = None if args.no_warm else time.perf_counter() - t0
            entry["select"] = {**report.to_dict(), "cold_seconds": cold, "warm_seconds": warm}
            entry["settings"] = {"sample": args.sample, "images": len(report.candidates) and report.sample["of"]}
            _save(results)
        full = entry.setdefault("full", {})
        for backbone in CANDIDATES:
            if backbone in full:
                continue
            t0 = time.perf_counter()
            r = train(folder, work / "runs" / f"{name}-{backbone}", TrainConfig(backbone=backbone), overwrite=True)
            full[backbone] = {"val_accuracy": r.val_accuracy, "n_train": r.metrics["n_train"],
                              "n_val": r.metrics["n_val"], "seconds": time.perf_counter() - t0}
            _save(results)
        cands = {c["backbone"]: c for c in entry["select"]["candidates"]}
        full_acc = [full[b]["val_accuracy"] for b in CANDIDATES]
        entry["rank_correlation"] = {
            "probe": _ranks([cands[b]["probe_accuracy"] for b in CANDIDATES], full_acc),
            "logme": _ranks([cands[b]["logme"] for b in CANDIDATES], full_acc),
            "probe_log_loss": _ranks([-cands[b]["probe_log_loss"] for b in CANDIDATES], full_acc)
            if all("probe_log_loss" in cands[b] for b in CANDIDATES) else None,
        }
        _save(results)

    print(f"| data | backbone | px | probe (5-fold, sample) | LogME | p90 ms ({args.target}) | "
          "full-train val acc |")
    print("|---|---|---|---|---|---|---|")
    for name, entry in results["datasets"].items():
        cands = {c["backbone"]: c for c in entry["select"]["candidates"]}
        for b in CANDIDATES:
            c = cands[b]
            print(f"| {name} | {b} | {c['input_size']} | {c['probe_accuracy']:.3f} | {c['logme']:.3f} | "
                  f"{c['p90_ms']:.2f} | {entry['full'][b]['val_accuracy']:.3f} |")
    for name, entry in results["datasets"].items():
        rc = entry["rank_correlation"]
        print(f"{name}: select recommends {entry['select']['recommended']}; Spearman probe {rc['probe']['spearman']:.2f}"
              f" (Kendall {rc['probe']['kendall']:.2f}), probe log-loss "
              f"{(rc.get('probe_log_loss') or {}).get('spearman', float('nan')):.2f}, LogME {rc['logme']['spearman']:.2f}; select cost "
              f"{entry['select']['cold_seconds']:.0f} s cold, {entry['select']['warm_seconds'] or float('nan'):.0f} s warm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
