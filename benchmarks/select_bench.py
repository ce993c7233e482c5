"""Does ``edgetl select``'s cheap estimate rank backbones as full training does?

On two real data sets (scikit-learn's handwritten digits; crops of scikit-image's photos),
for each built-in candidate at its native input size:

- select's estimate: 5-fold exact-probe accuracy on a stratified sample (default 300
  images) and LogME on the same embeddings, plus the deployed p90 on the target;
- full training: ``edgetl train`` (linear probe, the build default) on the whole data set,
  its held-out validation accuracy (20 %, never seen by the head's fit or its C).

Reports Spearman's and Kendall's rank correlation between each estimate and the full
training accuracy, and select's cost (cold cache, then warm); then whether that ranking is
real at all (paired bootstrap over items, single split and repeated 5-fold, see
``agreement``) and whether larger samples or repeated k-fold estimates rank better. Resumable: each finished
step is kept in benchmarks/results/select.json.

    python benchmarks/select_bench.py                    # digits (1,797) and photos, 3 candidates
    python benchmarks/select_bench.py --sample 200 --photos-per-class 30
    python benchmarks/select_bench.py --resolution --sample 200   # Lite0 at 64-224 px, Lite2 at 260
    python benchmarks/select_bench.py --text-lengths              # MiniLM at 8-128 tokens, real reviews
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


# ----------------------------------------------------------------------------- agreement
#
# Is the ranking that select's estimate is scored against itself real? The full-training
# accuracies of the three candidates lie within ~1 point of each other. Here, on the whole
# data set's embeddings (the same frozen features full training uses):
# - ground truth, twice: the single split that `edgetl train` makes (replicated: the same
#   split, C chosen as train chooses it, the head fit on the training part), and repeated
#   stratified 5-fold over all items (every item scored, REPEATS times) at the same C;
# - a paired bootstrap over items (the same resampled items for every candidate): a 95 %
#   interval for each accuracy and for each pairwise difference (significant when it
#   excludes 0), how often a resample keeps the observed order, and the spread of the
#   Spearman correlation a re-drawn ground truth would give the estimate;
# - the estimate at several sample sizes and draws (plain 5-fold, and repeated 3 x 5-fold),
#   each correlated with the lower-noise repeated-k-fold ground truth.

REPEATS = 3
BOOTSTRAP = 2000


def _full_embeddings(folder: Path, candidates=CANDIDATES) -> tuple[dict, "np.ndarray"]:
    """Every item's embedding per candidate (NAME or NAME@SIZE: at that input size), through
    the shared embedding cache that select's sample and ``edgetl train`` read too."""
    import numpy as np
    import torch

    from edgetl.modalities.image import scan_folder
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.embedding import embed_paths
    from edgetl.workstation.selection import parse_candidate

    if folder.is_file():  # texts (a CSV of reviews): NAME@N is max_length N
        return _text_embeddings(folder, candidates)
    f = scan_folder(folder)
    Z = {}
    for b in candidates:
        name, size = parse_candidate(b)
        bb = create_backbone(name)
        spec = bb.preprocess if size is None else bb.preprocess.with_input_size(size)
        Z[b] = embed_paths(bb.module, f.paths, spec, torch.device("cpu"), description=f"embedding {b}")[0]
        Z[b] = Z[b].astype(np.float64)
    return Z, f.targets


def _text_embeddings(path: Path, candidates) -> tuple[dict, "np.ndarray"]:
    """Every text's embedding per candidate NAME@N, at max_length N (texts are not cached:
    embedded here once, as select and train embed them)."""
    from dataclasses import replace

    import numpy as np
    import torch

    from edgetl.modalities import get_modality
    from edgetl.modalities.text import TOKENIZER, TextSpec
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.selection import parse_candidate
    from edgetl.workstation.training.data import embed_items

    found = get_modality("text").scan(path)
    Z = {}
    for b in candidates:
        name, length = parse_candidate(b)
        bb = create_backbone(name)
        spec = replace(bb.preprocess if length is None else TextSpec(length), tokenizer=str(bb.files[TOKENIZER]))
        with torch.inference_mode():
            Z[b] = embed_items(bb.module, list(found.items), spec, torch.device("cpu"),
                               description=f"embedding {b}").numpy().astype(np.float64)
    return Z, np.asarray(found.targets)


def _single_split(X, y, n_classes: int, val: float = 0.2):
    """Per-item correctness of `edgetl train`'s linear probe on its own validation split
    (or, when train pools a small split into k-fold, out-of-fold over all items), its C."""
    import numpy as np

    from edgetl.core.data import stratified_split
    from edgetl.workstation.probe_solver import _stratified_folds, fit_logreg, solve_probe

    tr, va = stratified_split(y, val, 0)
    sol = solve_probe(X[tr], y[tr], X[va], y[va], n_classes, refit=False, seed=0)
    if sol.selection == "holdout":
        return (X[va] @ sol.W.T.astype(np.float64) + sol.b).argmax(1) == y[va], sol.C, sol.val_accuracy, "holdout"
    Xa, ya = np.vstack([X[tr], X[va]]), np.concatenate([y[tr], y[va]])
    k = int(sol.selection.split("-")[0])
    fold = _stratified_folds(ya, k, 0)
    correct = np.zeros(len(ya), bool)
    for f in range(k):
        W, b = fit_logreg(Xa[fold != f], ya[fold != f], n_classes, sol.C)
        correct[fold == f] = (Xa[fold == f] @ W.T + b).argmax(1) == ya[fold == f]
    return correct, sol.C, sol.val_accuracy, sol.selection


def _repeated_kfold(X, y, n_classes: int, C: float, repeats: int = REPEATS, folds: int = 5):
    """Per-item fraction correct over ``repeats`` stratified k-fold partitions at C."""
    import numpy as np

    from edgetl.workstation.probe_solver import _stratified_folds, fit_logreg

    out = np.zeros(len(y))
    for r in range(repeats):
        fold = _stratified_folds(y, folds, 1000 + r)
        for f in range(folds):
            W, b = fit_logreg(X[fold != f], y[fold != f], n_classes, C)
            out[fold == f] += (X[fold == f] @ W.T + b).argmax(1) == y[fold == f]
    return out / repeats


def _paired_bootstrap(correct: dict, estimate: dict | None, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    names = list(correct)
    M = np.stack([np.asarray(correct[b], float) for b in names])  # [m, n]
    n = M.shape[1]
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # [B, n]
    accs = M @ w.T / n  # [m, B]
    acc = M.mean(1)
    order = tuple(np.argsort(-acc, kind="stable"))
    out = {"n_items": n, "accuracy": {b: float(a) for b, a in zip(names, acc)},
           "ci95": {b: [float(np.percentile(accs[i], 2.5)), float(np.percentile(accs[i], 97.5))]
                    for i, b in enumerate(names)}, "pairs": {}}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            d = accs[i] - accs[j]
            lo, hi = float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))
            out["pairs"][f"{names[i]} - {names[j]}"] = {"diff": float(acc[i] - acc[j]), "ci95": [lo, hi],
                                                       "significant": bool(lo > 0 or hi < 0)}
    out["order_kept"] = float(np.mean([tuple(np.argsort(-accs[:, k], kind="stable")) == order
                                       for k in range(n_boot)]))
    out["any_significant"] = any(p["significant"] for p in out["pairs"].values())
    if estimate is not None and len(set(estimate[b] for b in names)) > 1:
        est = [estimate[b] for b in names]
        rho = [spearmanr(est, accs[:, k]).statistic for k in range(n_boot)]
        rho = np.asarray([r for r in rho if np.isfinite(r)])
        out["spearman_vs_resampled_truth"] = {"mean": float(rho.mean()) if rho.size else None,
                                              "ci95": [float(np.percentile(rho, 2.5)), float(np.percentile(rho, 97.5))]
                                              if rho.size else None, "finite": int(rho.size)}
    return out


def _estimates(Z: dict, y, n_classes: int, sizes: list[int], draws: int, candidates=CANDIDATES,
               repeats: int = 3) -> dict:
    """select's probe estimate per sample size and draw: 5-fold (as select) and repeated
    ``repeats`` x 5-fold."""
    from edgetl.workstation.probe_solver import cross_validate_C
    from edgetl.workstation.selection import _stratified_sample

    out = {}
    for size in sizes:
        rows = []
        for d in range(draws if size < len(y) else 1):
            idx = _stratified_sample(y, size, d)
            row = {"draw": d, "n": int(len(idx)), "kfold": {}, "repeated": {}}
            for b in candidates:
                accs = []
                for r in range(repeats):
                    C, table = cross_validate_C(Z[b][idx], y[idx], n_classes, folds=5, seed=d * 10 + r)
                    accs.append(next(a for c, _, a in table if c == C))
                row["kfold"][b], row["repeated"][b] = accs[0], sum(accs) / len(accs)
            rows.append(row)
            print(f"  estimate n={len(idx)} draw {d}: " + ", ".join(f"{b[-5:]} {row['kfold'][b]:.3f}/"
                                                                   f"{row['repeated'][b]:.3f}" for b in candidates),
                  flush=True)
        out[str(size)] = rows
    return out


def agreement(folder: Path, estimate: dict, sizes: list[int], draws: int) -> dict:
    import numpy as np

    from scipy.stats import spearmanr

    t0 = time.perf_counter()
    Z, y = _full_embeddings(folder)
    n_classes = int(y.max()) + 1
    single, repeated, Cs, recorded = {}, {}, {}, {}
    for b in CANDIDATES:
        single[b], Cs[b], recorded[b], how = _single_split(Z[b], y, n_classes)
        repeated[b] = _repeated_kfold(Z[b], y, n_classes, Cs[b])
    truth = {b: float(np.mean(repeated[b])) for b in CANDIDATES}
    est = _estimates(Z, y, n_classes, [s for s in sizes if s < len(y)] + [len(y)], draws)
    summary = {}
    for size, rows in est.items():
        per = {}
        for kind in ("kfold", "repeated"):
            rhos = [spearmanr([r[kind][b] for b in CANDIDATES], [truth[b] for b in CANDIDATES]).statistic
                    for r in rows]
            top = [max(CANDIDATES, key=lambda b: r[kind][b]) == max(CANDIDATES, key=truth.get) for r in rows]
            per[kind] = {"spearman": [None if not np.isfinite(x) else float(x) for x in rhos],
                         "top1_agrees": float(np.mean(top)),
                         "sd_over_draws": {b: float(np.std([r[kind][b] for r in rows])) for b in CANDIDATES}}
        summary[size] = per
    return {"single_split": {"how": how, "C": Cs, "replicated": recorded,
                             "bootstrap": _paired_bootstrap(single, estimate)},
            "repeated_kfold": {"repeats": REPEATS, "folds": 5,
                               "bootstrap": _paired_bootstrap(repeated, estimate)},
            "estimates": est, "estimate_vs_repeated_truth": summary, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- resolution
#
# The three built-in backbones at their native sizes are statistical ties on both data sets
# (every paired-bootstrap interval of their differences contains 0): no ranking among them
# is there to agree with. The input resolution is a choice with a real spread, in accuracy
# and in latency on the device: one backbone at several sizes (select's NAME@SIZE), here
# estimated by select exactly as a user runs it and scored against full training.

RES_OUT = HERE / "results" / "select_resolution.json"
RESOLUTIONS = ("efficientnet_lite0@64", "efficientnet_lite0@96", "efficientnet_lite0@128",
               "efficientnet_lite0@160", "efficientnet_lite0@224", "efficientnet_lite2@260")


def _res_datasets(root: Path, digits_per_class: int, photos_per_class: int) -> dict[str, Path]:
    """Digits and photos with ten classes each (the exported candidates, cached per class
    count, are then timed once for both)."""
    from edgetl.modalities.image import write_digits
    from edgetl.workstation.datasets import PHOTOS, write_photos

    out = {"digits": root / f"digits-{digits_per_class or 'all'}", "photos": root / f"photos10-{photos_per_class}"}
    if not out["digits"].is_dir():
        write_digits(out["digits"], per_class=digits_per_class or None, seed=0)
    if not out["photos"].is_dir():
        write_photos(out["photos"], classes=list(PHOTOS)[:10], per_class=photos_per_class, seed=0)
    return out


# The same study on text: one encoder (all-MiniLM-L6-v2) at several token budgets
# (max_length, select's NAME@N for a text backbone) on real Rotten Tomatoes reviews
# (fresh vs rotten); full training is `edgetl train` with val_split held out.

TEXT_OUT = HERE / "results" / "select_text.json"
TEXT_ENCODER = "all_minilm_l6_v2"


def _text_dataset(root: Path, per_class: int) -> Path:
    from edgetl.modalities.text import write_reviews_csv

    path = root / f"reviews-{per_class}.csv"
    if not path.is_file():
        write_reviews_csv(path, per_class, seed=0)
    return path


def resolution(args) -> int:
    """select's estimate over candidates that differ for real (input sizes) against full
    training, with the paired-bootstrap significance of the ground truth's differences."""

    from edgetl.workstation.selection import SelectConfig, parse_candidate, select
    from edgetl.workstation.training import TrainConfig, train

    text = bool(args.text_lengths)
    if text:  # one text encoder at several token budgets, on real reviews
        cands = tuple(f"{TEXT_ENCODER}@{n}" for n in args.text_lengths.split(","))
        work, out_file, val = Path(args.work) / "text", TEXT_OUT, args.text_val
        datasets = {"reviews": _text_dataset(work / "data", args.reviews_per_class)}
    else:
        cands = tuple(args.res_candidates.split(","))
        work, out_file, val = Path(args.work) / "resolution", RES_OUT, 0.2
        datasets = _res_datasets(work / "data", args.digits_per_class, args.photos_per_class)
    results = json.loads(out_file.read_text()) if out_file.is_file() and not args.fresh else {"datasets": {}}
    results["settings"] = {"sample": args.sample, "target": args.target, "candidates": cands}
    results["settings"].update({"reviews_per_class": args.reviews_per_class, "val_split": val} if text else
                               {"digits_per_class": args.digits_per_class, "photos_per_class": args.photos_per_class})

    def save():
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=2, default=str) + "\n")

    for name, folder in datasets.items():
        entry = results["datasets"].setdefault(name, {})
        Z = y = None
        if "significance" not in entry or "by_sample_size" not in entry:
            t0 = time.perf_counter()
            Z, y = _full_embeddings(folder, cands)  # fills the shared cache select and train read
            entry["embed_all_seconds"] = entry.get("embed_all_seconds") or time.perf_counter() - t0
        if "select" not in entry or args.reselect:  # --reselect: new timings on the warm caches
            cfg = SelectConfig(backbones=cands, sample=args.sample, work_dir=work / "cache", bench_duration=2.0)
            t0 = time.perf_counter()
            report = select(folder, args.target, cfg, plot=HERE / "results" /
                            f"select_{'text' if text else 'resolution'}_{name}.png")
            first = entry.get("select", {}).get("first_run_seconds") or entry.get("select", {}).get("cost", {}).get(
                "seconds")
            entry["select"] = {**report.to_dict(), "seconds_embeddings_cached": time.perf_counter() - t0,
                               "first_run_seconds": first or report.cost["seconds"]}
            save()
        full = entry.setdefault("full", {})
        for c in cands:
            if c not in full:
                b, size = parse_candidate(c)
                t0 = time.perf_counter()
                tcfg = (TrainConfig(backbone=b, max_length=size, val_split=val, device="cpu") if text
                        else TrainConfig(backbone=b, image_size=size))
                r = train(folder, work / "runs" / f"{name}-{c.replace('@', '-')}", tcfg, overwrite=True)
                full[c] = {"val_accuracy": r.val_accuracy, "n_train": r.metrics["n_train"],
                           "n_val": r.metrics["n_val"], "seconds": time.perf_counter() - t0}
                save()
        rows = {c["candidate"]: c for c in entry["select"]["candidates"]}
        est = {c: rows[c]["probe_accuracy"] for c in cands}
        if "significance" not in entry:
            n_classes = int(y.max()) + 1
            single, repeated, Cs = {}, {}, {}
            for c in cands:
                single[c], Cs[c], replicated, how = _single_split(Z[c], y, n_classes, val)
                entry.setdefault("single_split_replicates_train", {})[c] = {"replicated": replicated,
                                                                            "train": full[c]["val_accuracy"]}
                repeated[c] = _repeated_kfold(Z[c], y, n_classes, Cs[c])
            entry["significance"] = {"single_split": {"how": how, "C": Cs,
                                                      "bootstrap": _paired_bootstrap(single, est)},
                                     "repeated_kfold": {"repeats": REPEATS, "folds": 5,
                                                        "bootstrap": _paired_bootstrap(repeated, est)}}
        truth = entry["significance"]["repeated_kfold"]["bootstrap"]["accuracy"]  # per item, mean over repeats
        entry["rank_correlation"] = {
            "probe_vs_full_train": _ranks([est[c] for c in cands], [full[c]["val_accuracy"] for c in cands]),
            "probe_vs_repeated_kfold": _ranks([est[c] for c in cands], [truth[c] for c in cands]),
            "logme_vs_full_train": _ranks([rows[c]["logme"] for c in cands], [full[c]["val_accuracy"] for c in cands]),
            "p90_vs_full_train": _ranks([rows[c]["p90_ms"] for c in cands], [full[c]["val_accuracy"] for c in cands]),
        }
        save()
        if "by_sample_size" not in entry:  # does a larger sample (or repeated k-fold) rank better?
            print(f"{name}: the estimate at other sample sizes", flush=True)
            n_classes = int(y.max()) + 1
            sizes = [int(x) for x in args.res_sizes.split(",") if int(x) < len(y)]
            by = _estimates(Z, y, n_classes, sizes, args.res_draws, cands, repeats=1)
            fulls = [full[c]["val_accuracy"] for c in cands]
            entry["by_sample_size"] = {
                n: {kind: {"spearman_vs_repeated_kfold": [_ranks([r[kind][c] for c in cands],
                                                                 [truth[c] for c in cands])["spearman"] for r in draws],
                           "spearman_vs_full_train": [_ranks([r[kind][c] for c in cands], fulls)["spearman"]
                                                      for r in draws]}
                    for kind in ("kfold",)} | {"rows": draws}
                for n, draws in by.items()}
            save()

    print(f"| data | candidate | probe (5-fold, sample of {args.sample}) | LogME | p90 ms ({args.target}) | "
          "full-train val acc | all items, repeated 5-fold [95 % CI] |")
    print("|---|---|---|---|---|---|---|")
    for name, entry in results["datasets"].items():
        if "full" in entry:
            f0 = next(iter(entry["full"].values()))
            print(f"<!-- {name}: full training on {f0['n_train']}, held out {f0['n_val']} -->")
    for name, entry in results["datasets"].items():
        rows = {c["candidate"]: c for c in entry["select"]["candidates"]}
        bs = entry["significance"]["repeated_kfold"]["bootstrap"]
        for c in cands:
            r = rows[c]
            print(f"| {name} | {c} | {r['probe_accuracy']:.3f} | {r['logme']:.3f} | {r['p90_ms']:.2f} | "
                  f"{entry['full'][c]['val_accuracy']:.3f} | {bs['accuracy'][c]:.3f} "
                  f"[{bs['ci95'][c][0]:.3f}, {bs['ci95'][c][1]:.3f}] |")
    for name, entry in results["datasets"].items():
        rc = entry["rank_correlation"]
        sel = entry["select"]
        print(f"{name}: select recommends {sel['recommended']} ({sel['cost']['seconds']:.0f} s with the embeddings "
              f"cached, {entry['embed_all_seconds']:.0f} s to embed all {sel['sample']['of']} "
              f"{sel['sample'].get('noun', 'image')}s at all sizes); "
              f"Spearman / Kendall of select's probe vs full training {rc['probe_vs_full_train']['spearman']:.2f} / "
              f"{rc['probe_vs_full_train']['kendall']:.2f}, vs repeated 5-fold over all items "
              f"{rc['probe_vs_repeated_kfold']['spearman']:.2f} / {rc['probe_vs_repeated_kfold']['kendall']:.2f}; "
              f"LogME vs full training {rc['logme_vs_full_train']['spearman']:.2f}")
        for kind in ("single_split", "repeated_kfold"):
            bs = entry["significance"][kind]["bootstrap"]
            sig = [k for k, v in bs["pairs"].items() if v["significant"]]
            rho = bs.get("spearman_vs_resampled_truth") or {}
            print(f"  {kind.replace('_', ' ')} ({bs['n_items']} items): {len(sig)} of {len(bs['pairs'])} pairwise "
                  f"differences significant; order kept in {bs['order_kept'] * 100:.0f} % of resamples"
                  + (f"; estimate's Spearman vs resampled truth {rho['mean']:.2f} [{rho['ci95'][0]:.2f}, "
                     f"{rho['ci95'][1]:.2f}]" if rho.get("mean") is not None else ""))
            for k, v in bs["pairs"].items():
                print(f"    {k.replace('efficientnet_', '').replace(TEXT_ENCODER, '')}: {v['diff'] * 100:+.1f} pt "
                      f"[{v['ci95'][0] * 100:+.1f}, {v['ci95'][1] * 100:+.1f}]{' *' if v['significant'] else ''}")
        for n, per in entry.get("by_sample_size", {}).items():
            fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
            print(f"  select's 5-fold estimate on {n} sampled items ({len(per['rows'])} draws): Spearman vs "
                  f"repeated 5-fold over all items [{fmt(per['kfold']['spearman_vs_repeated_kfold'])}], "
                  f"vs full training [{fmt(per['kfold']['spearman_vs_full_train'])}]")
    return 0


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
    p.add_argument("--no-agreement", action="store_true", help="skip the significance / sample-size study")
    p.add_argument("--reagree", action="store_true", help="redo the significance / sample-size study")
    p.add_argument("--sizes", default="150,300,600", help="estimate sample sizes of the study (and all items)")
    p.add_argument("--draws", type=int, default=5, help="sample draws per size in the study")
    p.add_argument("--resolution", action="store_true",
                   help="the input-resolution study instead (results/select_resolution.json)")
    p.add_argument("--res-candidates", default=",".join(RESOLUTIONS), help="its candidates, NAME@SIZE")
    p.add_argument("--digits-per-class", type=int, default=0, help="resolution study: digits per class (0: all)")
    p.add_argument("--res-sizes", default="200,600", help="resolution study: estimate sample sizes")
    p.add_argument("--res-draws", type=int, default=3, help="resolution study: sample draws per size")
    p.add_argument("--text-lengths", metavar="N,N,...",
                   help="the token-budget study instead: all_minilm_l6_v2 at these max_lengths on real reviews "
                        "(results/select_text.json), e.g. 8,16,32,64,128")
    p.add_argument("--reviews-per-class", type=int, default=1500, help="token-budget study: reviews per class")
    p.add_argument("--text-val", type=float, default=1 / 3, help="token-budget study: full training's held-out part")
    args = p.parse_args(argv)
    if args.resolution or args.text_lengths:
        return resolution(args)

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
        if not args.no_agreement and ("agreement" not in entry or args.reagree):
            print(f"{name}: significance and sample-size study", flush=True)
            est = {b: cands[b]["probe_accuracy"] for b in CANDIDATES}
            entry["agreement"] = agreement(folder, est, [int(x) for x in args.sizes.split(",")], args.draws)
            entry["agreement"]["single_split"]["recorded"] = {b: full[b]["val_accuracy"] for b in CANDIDATES}
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
    for name, entry in results["datasets"].items():
        ag = entry.get("agreement")
        if not ag:
            continue
        for kind in ("single_split", "repeated_kfold"):
            bs = ag[kind]["bootstrap"]
            cis = ", ".join(f"{b[-5:]} {bs['accuracy'][b]:.3f} [{bs['ci95'][b][0]:.3f}, {bs['ci95'][b][1]:.3f}]"
                            for b in CANDIDATES)
            pairs = "; ".join(f"{k.replace('efficientnet_', '')}: {v['diff'] * 100:+.1f} pt "
                              f"[{v['ci95'][0] * 100:+.1f}, {v['ci95'][1] * 100:+.1f}]{' *' if v['significant'] else ''}"
                              for k, v in bs["pairs"].items())
            rho = bs.get("spearman_vs_resampled_truth")
            print(f"{name} ground truth ({kind.replace('_', ' ')}, {bs['n_items']} items): {cis}; pairs {pairs}; "
                  f"order kept in {bs['order_kept'] * 100:.0f} % of resamples"
                  + (f"; estimate's Spearman vs resampled truth {rho['mean']:.2f} "
                     f"[{rho['ci95'][0]:.2f}, {rho['ci95'][1]:.2f}]" if rho and rho["mean"] is not None else ""))
        sig = [sum(v["significant"] for v in ag[k]["bootstrap"]["pairs"].values()) for k in ("single_split",
                                                                                              "repeated_kfold")]
        rc = entry["rank_correlation"]["probe"]["spearman"]
        print(f"{name}: Spearman(select's probe, full training) = {'tie' if rc != rc else f'{rc:.2f}'}, against a "
              f"ground truth with {sig[0]} of 3 pairwise differences significant (single split; {sig[1]} of 3 "
              "under repeated 5-fold): " + ("the ranking to agree with is itself within noise" if not any(sig)
                                             else "part of the ranking is real"))
        for size, per in ag["estimate_vs_repeated_truth"].items():
            fmt = lambda xs: ",".join("tie" if x is None else f"{x:.2f}" for x in xs)  # noqa: E731
            print(f"{name} estimate n={size}: Spearman vs repeated-k-fold truth 5-fold [{fmt(per['kfold']['spearman'])}]"
                  f" repeated 3x5 [{fmt(per['repeated']['spearman'])}]; top-1 agrees "
                  f"{per['kfold']['top1_agrees'] * 100:.0f} % / {per['repeated']['top1_agrees'] * 100:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
