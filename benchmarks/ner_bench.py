"""Named-entity recognition on a frozen all-MiniLM-L6-v2, measured on the shipped silver reviews
(agreement with spaCy's en_core_web_sm, not human labels): held-out entity F1 and latency.

    python benchmarks/ner_bench.py                       # 1,500 training sentences, 1,000 test
    python benchmarks/ner_bench.py --train 600 --test 400 --work /tmp/ner-bench   # keep the RUNs

Data: ``load_reviews_ner()`` split by movie (seed 0): the test sentences come from movies no
training sentence is from. Stages (each RUN and file kept under ``--work`` and reused):

1. two linear-probe RUNs through ``edgetl train`` (the task's own code): token features from the
   last layer and from the last four layers concatenated; each RUN's head (refit on train +
   validation) scored on the test sentences, decoded as the device decodes;
2. the reference: scikit-learn ``StandardScaler`` + ``LogisticRegression(C)`` (lbfgs, the C the
   RUN chose) on the same frozen token rows (train + validation first subwords), same decoding;
3. the default RUN exported and quantized (``ort-dynamic``: int8 weights, 7-bit for x86-avx2,
   under the guard); its int8 backbone through the fp32 head on the test sentences, computed as
   the reference computes it (no integer kernels) and by this CPU's kernels, through the
   device's :class:`~edgetl.device.predictor.Predictor` and the task's ``evaluate`` (= seqeval);
4. latency per sequence length (16, 64, 128 tokens), batch 1, 2 threads, each row a fresh
   process, interleaved over repeats: PyTorch eager (the RUN's model -> tag logits), ORT int8
   (backbone.int8 + head -> tag probabilities, tokenisation excluded), ORT int8 end to end
   (``Predictor.predict`` on strings: tokenisation, model, decoding to spans), ORT fp32 end to end.

Writes benchmarks/results/ner.json and prints a summary. CPU flags go with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_WORKER = """
import json, sys, time
spec = json.loads(sys.argv[1])
if spec["kind"] != "pytorch":
    sys.modules["torch"] = None  # a device has no torch
import numpy as np
from edgetl.modalities.text import load_tokenizer, encode_batch
from edgetl.tasks.token_classification import load_reviews_ner
L = spec["length"]
tok = load_tokenizer(spec["tokenizer"], L)
texts, buf = [], ""
for e in load_reviews_ner().examples[::7]:  # real sentences, joined until they reach L tokens
    buf = (buf + " " + e.text).strip()
    ids = tok.encode(buf).ids
    if len(ids) >= L:
        texts.append(tok.decode(ids[1:L - 1]))
        buf = ""
    if len(texts) >= 8:
        break
ids = [{k: v[:, :L] for k, v in encode_batch(tok, [t]).items()} for t in texts]
if spec["kind"] == "pytorch":
    import torch
    from edgetl.workstation.run import load_run
    torch.set_num_threads(2)
    model = load_run(spec["run"]).model.eval()
    def run(i):
        with torch.inference_mode():
            model(torch.from_numpy(ids[i]["input_ids"]), torch.from_numpy(ids[i]["attention_mask"]))
else:
    from edgetl.device.predictor import Predictor
    from edgetl.modalities.text import TextSpec
    p = Predictor.from_files(spec["backbone"], spec["head"], labels=spec["tags"], modality="text",
                             spec=TextSpec(L, tokenizer=spec["tokenizer"]), task="token-classification", threads=2)
    if spec["kind"] == "model":
        def run(i):
            z = p.backbone.run(ids[i])
            p.task.outputs(p, z, ids[i], p.head, {})
    else:
        def run(i):
            p.predict([texts[i]], batch_size=1)
for i in range(5):
    run(i % len(texts))
lat, end, i = [], time.perf_counter() + spec["seconds"], 0
while time.perf_counter() < end or i < 10:
    t = time.perf_counter(); run(i % len(texts)); lat.append((time.perf_counter() - t) * 1e3); i += 1
print("ROW " + json.dumps({"p50": float(np.median(lat)), "n": len(lat)}))
"""


def _write(path: Path, examples) -> Path:
    from edgetl.tasks.token_classification import write_ner_jsonl

    return write_ner_jsonl(path, examples)


def data(work: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    import numpy as np

    from edgetl.tasks.token_classification import load_reviews_ner

    train_file, test_file = work / "train.jsonl", work / "test.jsonl"
    if train_file.is_file() and test_file.is_file():
        return train_file, test_file
    examples = load_reviews_ner().examples
    groups = sorted({e.group for e in examples})
    order = np.random.default_rng(0).permutation(len(groups))
    test_groups = {groups[i] for i in order[: len(groups) // 4]}
    test = [e for e in examples if e.group in test_groups][:n_test]
    train = [e for e in examples if e.group not in test_groups][:n_train]
    return _write(train_file, train), _write(test_file, test)


def train_run(train_file: Path, out: Path, layers: int) -> Path:
    import torch

    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.token_classification.train import train_token_classification
    from edgetl.workstation.training import TrainConfig
    from edgetl.workstation.training.distributed import setup

    if (out / "run.json").is_file():
        return out
    cfg = TrainConfig(backbone="all_minilm_l6_v2", task="token-classification", device="cpu").resolved()
    dist, device = setup(torch.device("cpu"))
    t0 = time.perf_counter()
    train_token_classification(train_file, out, cfg, create_backbone(cfg.backbone), device, True, dist, layers=layers)
    info = json.loads((out / "run.json").read_text())
    info["metrics"]["bench_train_wall_s"] = time.perf_counter() - t0
    (out / "run.json").write_text(json.dumps(info, indent=1))
    return out


def features(work: Path, files: dict[str, Path]) -> dict:
    """First-subword rows of every sentence (last layer and last four), computed once."""
    import numpy as np
    import torch

    from edgetl.modalities.text import load_tokenizer
    from edgetl.tasks.token_classification import read_ner_data, tag_set
    from edgetl.workstation.text_encoder import load_minilm
    from edgetl.workstation.token_classification.model import TokenFeatures
    from edgetl.workstation.token_classification.rows import encode_examples, word_rows

    encoder = load_minilm()
    tok = load_tokenizer(encoder.tokenizer_path, 128)
    out = {}
    four = TokenFeatures(encoder, 4).eval()
    for name, path in files.items():
        found = read_ner_data(path)
        cache = work / f"rows-{name}.npz"
        encs = encode_examples(found.examples, tok, 128)
        index = {t: i for i, t in enumerate(tag_set(found.types))}
        if not cache.is_file():
            @torch.no_grad()
            def forward(x):
                return four(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])).numpy()

            rows = word_rows(found.examples, encs, index, forward, progress=f"features of {name}")
            np.savez(cache, *rows.rows)
        with np.load(cache) as f:
            arrays = [f[f"arr_{i}"] for i in range(len(found.examples))]
        out[name] = (found, encs, arrays)
    return out


def _scores(found, encs, rows, W, b, types, layers: int) -> dict:
    from edgetl.tasks.token_classification import tag_set
    from edgetl.workstation.token_classification.rows import WordRows, val_scores

    F = 384 * layers
    wr = WordRows(encs, [r[:, -F:] for r in rows], [])
    return val_scores(wr, W, b, found.examples, tag_set(types)).to_dict()


def accuracy(work: Path, runs: dict[int, Path], feats: dict) -> dict:
    import numpy as np
    import torch

    from edgetl.tasks.token_classification import tag_set
    from edgetl.tasks.token_classification.align import IGNORE
    from edgetl.workstation.token_classification.rows import word_labels

    cache = work / "accuracy.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    found_test, enc_test, rows_test = feats["test"]
    found_train, enc_train, rows_train = feats["train"]
    out: dict = {}
    for layers, run in runs.items():
        info = json.loads((run / "run.json").read_text())
        state = torch.load(run / "model.pt", weights_only=True)
        W, b = state["head.weight"].numpy(), state["head.bias"].numpy()
        types = info["labels"]
        tags = tag_set(types)
        fp32 = _scores(found_test, enc_test, rows_test, W, b, types, layers)
        # the reference: scikit-learn on the same rows the RUN's head was refit on (train + val)
        idx = info["split"]["train"] + info["split"]["val"]
        index = {t: i for i, t in enumerate(tags)}
        F = 384 * layers
        X = np.concatenate([rows_train[i][:, -F:] for i in idx])
        y = np.concatenate([word_labels(found_train.examples[i], enc_train[i], index) for i in idx])
        keep = y != IGNORE
        X, y = X[keep], y[keep]
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        C = info["metrics"]["probe"]["C"]
        t0 = time.perf_counter()
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, tol=1e-6)).fit(X, y)
        sk_seconds = time.perf_counter() - t0
        scaler, lr = ref[0], ref[1]
        Wr = np.zeros((len(tags), X.shape[1]))
        br = np.full(len(tags), -1e4)  # a tag never seen in training: never predicted
        Wr[lr.classes_] = lr.coef_ / scaler.scale_
        br[lr.classes_] = lr.intercept_ - (lr.coef_ / scaler.scale_) @ scaler.mean_
        sk = _scores(found_test, enc_test, rows_test, Wr, br, types, layers)
        out[f"layers_{layers}"] = {
            "features": F, "C": C, "rows": int(len(y)), "val_f1": info["metrics"]["val_f1"],
            "train_seconds": info["metrics"]["train_seconds"], "solve_seconds": info["metrics"]["probe"]["solve_seconds"],
            "sklearn_seconds": sk_seconds, "test_fp32": fp32, "test_sklearn": sk}
        print(f"layers {layers}: test F1 fp32 {fp32['f1']:.4f}, sklearn {sk['f1']:.4f} (C {C:.3g}, {len(y)} rows)",
              flush=True)
    cache.write_text(json.dumps(out))
    return out


def int8(work: Path, run: Path, test_file: Path) -> dict:
    from edgetl.device.predictor import Predictor
    from edgetl.runtimes import load_session
    from edgetl.tasks import get_task
    from edgetl.workstation.onnx_export import ExportConfig, export
    from edgetl.workstation.quantization import QuantizeConfig, quantize
    from edgetl.errors import QuantizationError

    info = json.loads((run / "run.json").read_text())
    if "export" not in info:
        export(run, ExportConfig())
    info = json.loads((run / "run.json").read_text())
    budget = {}
    if "quantize" not in info or not (run / "onnx" / "backbone.int8.onnx").is_file():
        try:
            quantize(run, QuantizeConfig(engine="ort"))
        except QuantizationError as exc:
            budget = {"default_budget": str(exc)}
            quantize(run, QuantizeConfig(engine="ort", max_drop=0.02, min_agreement=0.9))
            budget["budget"] = {"max_drop": 0.02, "min_agreement": 0.9}
    info = json.loads((run / "run.json").read_text())
    task = get_task("token-classification")
    spec = __import__("edgetl.workstation.run", fromlist=["load_run"]).Run(run, info, None).spec
    tags = task.head_labels(info["labels"])
    out = {"quantize": {k: info["quantize"][k] for k in ("report", "guard", "int8", "evaluation")}, **budget}
    for name, path, reference in (("fp32", "backbone.onnx", False), ("int8_reference", "backbone.int8.onnx", True),
                                  ("int8_this_cpu", "backbone.int8.onnx", False)):
        predictor = Predictor(load_session(run / "onnx" / path, "onnxruntime", threads=2, precision=None,
                                           reference=reference),
                              load_session(run / "onnx" / "head.onnx", "onnxruntime", threads=2, precision="fp32"),
                              tags, spec, modality="text", task="token-classification")
        t0 = time.perf_counter()
        report = task.evaluate(predictor, test_file, batch_size=16).to_dict()
        report["seconds"] = time.perf_counter() - t0
        out[name] = report
        print(f"{name}: test F1 {report['f1']:.4f} ({report['precision_executed']})", flush=True)
    return out


def latency(run: Path, lengths: list[int], repeats: int, seconds: float) -> list[dict]:
    info = json.loads((run / "run.json").read_text())
    from edgetl.tasks import get_task

    tags = get_task("token-classification").head_labels(info["labels"])
    configs = [("pytorch eager", "pytorch", None), ("onnxruntime int8 model", "model", "backbone.int8.onnx"),
               ("onnxruntime int8 end to end", "end", "backbone.int8.onnx"),
               ("onnxruntime fp32 end to end", "end", "backbone.onnx")]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "EDGETL_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    rows = []
    for L in lengths:
        times: dict[str, list[float]] = {}
        for _ in range(repeats):
            for name, kind, backbone in configs:
                spec = {"kind": kind, "length": L, "seconds": seconds, "tokenizer": str(run / "tokenizer.json"),
                        "run": str(run), "tags": tags, "head": str(run / "onnx" / "head.onnx"),
                        "backbone": str(run / "onnx" / backbone) if backbone else None}
                res = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(spec)], env=env, capture_output=True,
                                     text=True)
                line = next((ln for ln in res.stdout.splitlines() if ln.startswith("ROW ")), None)
                if res.returncode != 0 or line is None:
                    raise SystemExit(f"latency row {name} failed:\n{res.stderr[-2000:]}")
                times.setdefault(name, []).append(json.loads(line[4:])["p50"])
        row = {"length": L, "batch": 1, **{k: statistics.median(v) for k, v in times.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=1500, help="training sentences (validation is 20%% of them)")
    p.add_argument("--test", type=int, default=1000, help="test sentences (other movies)")
    p.add_argument("--work", type=Path, default=Path("/tmp/edgetl-ner-bench"), help="RUNs and rows, reused")
    p.add_argument("--lengths", default="16,64,128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results" / "ner.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
    from edgetl.benchmarking.environment import environment
    from edgetl.cli import _quiet_third_party
    from edgetl.workstation.token_classification.model import DEFAULT_LAYERS

    _quiet_third_party()
    args.work.mkdir(parents=True, exist_ok=True)
    train_file, test_file = data(args.work, args.train, args.test)
    runs = {layers: train_run(train_file, args.work / f"run-l{layers}", layers) for layers in (1, 4)}
    feats = features(args.work, {"train": train_file, "test": test_file})
    result: dict = {"data": {"train_sentences": args.train, "test_sentences": args.test, "split": "by movie, seed 0",
                             "labels": "silver: spaCy en_core_web_sm 3.8.0 (agreement with it, not human labels)"},
                    "default_layers": DEFAULT_LAYERS, "accuracy": accuracy(args.work, runs, feats)}
    result["int8"] = int8(args.work, runs[DEFAULT_LAYERS], test_file)
    if not args.skip_latency:
        result["latency"] = latency(runs[DEFAULT_LAYERS], [int(x) for x in args.lengths.split(",")], args.repeats,
                                    args.seconds)
    result["environment"] = environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
