"""The head of an int8 bundle solved on the int8 backbone's features, next to the fp32 head.

``edgetl package`` solves a linear-probe RUN's head again on what the deployed int8 backbone
computes (``PackageConfig.deployed_head``). This measures why, on two real data sets (600
scikit-learn digits, 540 scikit-image photo crops; efficientnet_lite0 at 128 px, ORT static
QDQ int8): the probe solved on fp32 or on int8 embeddings of the training split (C chosen on
validation, no refit, so validation stays held out), each scored on fp32 and int8 validation
embeddings, and the relative difference between the two embeddings.

    python benchmarks/deployed_head_bench.py [--work DIR]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetl.modalities.image import PreprocessSpec, preprocess_batch, write_digits  # noqa: E402
from edgetl.workstation.datasets import write_photos  # noqa: E402
from edgetl.workstation.onnx_export import export  # noqa: E402
from edgetl.workstation.probe_solver import solve_probe  # noqa: E402
from edgetl.workstation.quantization import QuantizeConfig, quantize  # noqa: E402
from edgetl.workstation.training import TrainConfig, train  # noqa: E402
import onnxruntime as ort  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--work", default="runs/deployed_head", help="data and RUNs (kept between runs)")
root = Path(p.parse_args().work)
results = {}


def _run(name: str) -> Path:
    run = root / f"run_{name}"
    if not (run / "onnx" / "backbone.int8.onnx").exists():
        train(root / name, run, TrainConfig(image_size=128), overwrite=True)
        export(run)
        quantize(run, QuantizeConfig(engine="ort", max_drop=0.05))
    return run


def _embed(model: Path, paths: list[Path], spec: PreprocessSpec) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: preprocess_batch(paths[i:i + 32], spec)})[0] for i in range(0, len(paths), 32)]
    return np.concatenate(out).reshape(len(paths), -1)


if not (root / "digits").exists():
    write_digits(root / "digits", per_class=60, seed=0)
    write_photos(root / "photos", per_class=30, seed=0)
for name in ("digits", "photos"):
    run = _run(name)
    info = json.loads((run / "run.json").read_text())
    spec, labels = PreprocessSpec.from_dict(info["preprocess"]), info["labels"]
    split = {part: [Path(info["data_root"]) / rel for rel in info["split"][part]] for part in ("train", "val")}
    y = {part: np.array([labels.index(p.parent.name) for p in paths]) for part, paths in split.items()}
    feats = {prec: {part: _embed(run / "onnx" / f, paths, spec) for part, paths in split.items()}
             for prec, f in (("fp32", "backbone.onnx"), ("int8", "backbone.int8.onnx"))}
    row = {}
    for fit_on in ("fp32", "int8"):
        sol = solve_probe(feats[fit_on]["train"], y["train"], feats[fit_on]["val"], y["val"], len(labels), refit=False)
        for on in ("fp32", "int8"):
            row[f"fit {fit_on} -> eval {on}"] = float(((feats[on]["val"] @ sol.W.T + sol.b).argmax(1) == y["val"]).mean())
    diff = np.linalg.norm(feats["int8"]["val"] - feats["fp32"]["val"]) / np.linalg.norm(feats["fp32"]["val"])
    results[name] = dict(row, n_train=len(y["train"]), n_val=len(y["val"]), relative_feature_difference=float(diff))
    print(name, json.dumps(results[name]), flush=True)
out = Path(__file__).resolve().parent / "results" / "deployed_head.json"
out.write_text(json.dumps(results, indent=2) + "\n")
print(f"wrote {out}")
