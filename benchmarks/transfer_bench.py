"""Transfer benchmark: edgetl's learners next to scikit-learn on the same embeddings, on
real data, clean and under every corruption edgetl ships.

Data (all real, all shipped in packages): scikit-learn's handwritten digits (source: 30
per class, seed 0; target: 30 other draws per class, seed 1) and scikit-image's photos
(``edgetl.workstation.datasets.write_photos``: 18 classes, source 20 train crops per
class, target 15 test crops per class from regions no source crop touches). The target
is corrupted with ``edgetl.modalities.corruptions`` (each type at ``--severity``, and the
strong combined shift contrast+gaussian_noise+gaussian_blur at each ``--strong-severity``, 1 to 3
by default); it is both the unlabelled adaptation pool and, with its labels, the evaluation set (the
transductive setting of the CORAL and DANN papers). Embeddings: pretrained
efficientnet_lite0 at ``--image-size`` pixels, computed once per image set.

Columns (target accuracy):

- ``edgetl``: source-only probe (``probe_solver.solve_probe``, C by validation log-loss)
- ``sklearn``: ``StandardScaler + LogisticRegression`` (C = 1, lbfgs), same embeddings
- ``ws-adapt``: workstation ``--strategy adapt`` default (feature CORAL: the source
  features recoloured to the target, shrinkage ``DEFAULT_SHRINKAGE``, head re-solved)
- ``dev-adapt``: ``edgetl adapt`` default (refit mode: the source rows recoloured the same
  way, head trained by the device's numpy trainer, ``alignment.refit_head``)
- ``adabn``: BatchNorm statistics per domain (head solved under the source images',
  target embedded under the target pool's)
- ``ref-coral``: the reference: CORAL with scikit-learn's ``LedoitWolf`` covariances
  (scipy ``sqrtm``) + ``StandardScaler + LogisticRegression``
- ``dev-lw``: ``edgetl adapt --shrinkage lw`` (Ledoit-Wolf), for comparison

    python benchmarks/transfer_bench.py [--datasets digits,photos] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

STRONG = "contrast+gaussian_noise+gaussian_blur"
COLUMNS = ("edgetl", "sklearn", "ws-adapt", "dev-adapt", "adabn", "ref-coral", "dev-lw")


def _split(y: np.ndarray, n_val: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng, tr, va = np.random.default_rng(seed), [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        va += list(idx[:n_val])
        tr += list(idx[n_val:])
    return np.sort(tr), np.sort(va)


def _sklearn_lr(X, y, Xt):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)).fit(X, y).predict(Xt)


def _reference_coral(Xs, Xt):
    """Source rows recoloured to the target with scikit-learn's Ledoit-Wolf covariances."""
    from scipy.linalg import sqrtm
    from sklearn.covariance import LedoitWolf

    cs, ct = LedoitWolf().fit(Xs).covariance_, LedoitWolf().fit(Xt).covariance_
    return (Xs - Xs.mean(0)) @ np.linalg.inv(np.real(sqrtm(cs))) @ np.real(sqrtm(ct)) + Xt.mean(0)


class _Embedder:
    def __init__(self, image_size: int):
        import torch

        from edgetl.workstation.backbones import create_backbone

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.torch = torch
        bb = create_backbone("efficientnet_lite0", pretrained=True)
        self.module, self.spec = bb.module.eval(), bb.preprocess.with_input_size(image_size)
        self.initial = {k: v.clone() for k, v in self.module.state_dict().items()}

    def paths(self, folder: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
        items = [(p, i) for i, name in enumerate(labels) for p in sorted((folder / name).glob("*.png"))]
        return [p for p, _ in items], np.array([i for _, i in items])

    def embed(self, paths: list[Path]) -> np.ndarray:
        from edgetl.workstation.training.data import embed_images

        with self.torch.no_grad():
            return embed_images(self.module, paths, self.spec, self.torch.device("cpu")).double().numpy()

    def embed_adabn(self, stats_from: list[Path], paths: list[Path]) -> np.ndarray:
        """Embeddings of ``paths`` with BatchNorm statistics recomputed on ``stats_from``."""
        from edgetl.workstation.training.adapt import adabn

        model = types.SimpleNamespace(backbone=self.module, eval=self.module.eval)
        adabn(model, stats_from, self.spec, self.torch.device("cpu"))
        try:
            return self.embed(paths)
        finally:
            self.module.load_state_dict(self.initial)


def _datasets(root: Path, names: list[str]) -> dict[str, tuple[Path, Path, list[str]]]:
    from edgetl.modalities.image import write_digits
    from edgetl.workstation.datasets import write_photos

    out = {}
    if "digits" in names:
        out["digits"] = (write_digits(root / "digits_src", per_class=30, seed=0),
                         write_digits(root / "digits_tgt", per_class=30, seed=1), [str(d) for d in range(10)])
    if "photos" in names:
        src = write_photos(root / "photos_src", per_class=20, seed=0)
        out["photos"] = (src, write_photos(root / "photos_tgt", per_class=15, split="test", seed=0),
                         sorted(p.name for p in src.iterdir()))
    return out


def run(args) -> list[dict]:
    from edgetl.device.alignment import DEFAULT_SHRINKAGE, aligned_memory, refit_head
    from edgetl.modalities.corruptions import Corruption, write_shifted
    from edgetl.workstation.probe_solver import solve_probe

    shifts = ([(STRONG, s) for s in args.strong_severity] + [(c.value, args.severity) for c in Corruption]
              + [("clean", 0)])
    emb = _Embedder(args.image_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetl-transfer-") as tmp:
        for name, (src, tgt, labels) in _datasets(Path(tmp), args.datasets).items():
            src_paths, ys = emb.paths(src, labels)
            Xs = emb.embed(src_paths)
            K = len(labels)
            tr, va = _split(ys, 5)
            sol = solve_probe(Xs[tr], ys[tr], Xs[va], ys[va], K)
            W0, b0 = sol.W.astype(np.float64), sol.b.astype(np.float64)
            Xbn = emb.embed_adabn(src_paths, src_paths)  # AdaBN: the head under the source's BN statistics
            sbn = solve_probe(Xbn[tr], ys[tr], Xbn[va], ys[va], K)
            Wbn, bbn = sbn.W.astype(np.float64), sbn.b.astype(np.float64)
            for shift, severity in shifts:
                t0 = time.perf_counter()
                folder = tgt if shift == "clean" else write_shifted(tgt, Path(tmp) / f"{name}-{shift}-{severity}",
                                                                      shift, severity, seed=1)
                pool, yt = emb.paths(folder, labels)
                Xt = emb.embed(pool)

                def acc(W, b, X=Xt):
                    return float(((X @ np.asarray(W, np.float64).T + b).argmax(1) == yt).mean())

                r = {"dataset": name, "shift": shift, "severity": severity, "n_source": len(ys), "n_target": len(yt)}
                r["edgetl"] = acc(W0, b0)
                r["sklearn"] = float((_sklearn_lr(Xs, ys, Xt) == yt).mean())
                Xa = aligned_memory(Xs, Xt, shrinkage=DEFAULT_SHRINKAGE)
                s2 = solve_probe(Xa[tr], ys[tr], Xa[va], ys[va], K)
                r["ws-adapt"] = acc(s2.W, s2.b)
                dev = refit_head(W0.astype(np.float32), b0.astype(np.float32), labels, Xa, ys, trainer="numpy")
                r["dev-adapt"] = acc(dev.W, dev.b)
                r["adabn"] = acc(Wbn, bbn, emb.embed_adabn(pool, pool))
                r["ref-coral"] = float((_sklearn_lr(_reference_coral(Xs, Xt), ys, Xt) == yt).mean())
                lw = refit_head(W0.astype(np.float32), b0.astype(np.float32), labels,
                                aligned_memory(Xs, Xt, estimator="lw"), ys, trainer="numpy")
                r["dev-lw"] = acc(lw.W, lw.b)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(r)
                print(_line(r), flush=True)
    return rows


def _line(r: dict) -> str:
    shift = r["shift"] + (f"@{r['severity']}" if r["severity"] else "")
    return f"{r['dataset']:7s} {shift:42s} " + " ".join(f"{r[c]:>9.3f}" for c in COLUMNS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,photos", type=lambda s: s.split(","))
    p.add_argument("--severity", type=int, default=3, help="severity of each single corruption (default: 3)")
    p.add_argument("--strong-severity", default=[1, 2, 3], type=lambda s: [int(v) for v in s.split(",")],
                   help=f"severities of {STRONG}, comma-separated (default: 1,2,3)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    print(f"{'dataset':7s} {'shift':42s} " + " ".join(f"{c:>9s}" for c in COLUMNS))
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"image_size": args.image_size, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
