"""Text latency per sequence length and batch: the deployed bundle (ORT fp32 and int8, OpenVINO
f32) next to PyTorch eager, each row in a fresh process, interleaved over repeats.

    python benchmarks/text_bench.py                         # 16, 64, 128 tokens; batch 1 and 8
    python benchmarks/text_bench.py --lengths 16,128 --batches 1 --repeats 5

Builds a small text RUN first (linear probe on 300 real Rotten Tomatoes reviews with the
built-in all-MiniLM-L6-v2, exported, ORT dynamic int8), packages it for x86-ort-fp32,
x86-ort-int8 and x86-openvino-fp32, then for each sequence length L and batch B times:

- ``model``: ``Predictor.logits`` on token ids already made (tokenisation excluded), inputs
  of exactly L tokens ([CLS] + L-2 real word pieces + [SEP]);
- ``end to end``: ``Predictor.predict`` on the strings (tokenisation included): real
  reviews, joined until they reach L tokens and cut there;
- ``pytorch``: the RUN's model in eager mode (``torch.inference_mode``) on the same ids.

Two threads per process (the shipped x86 targets' setting). Prints a markdown table of
median latencies (ms) and speed-ups over PyTorch; writes benchmarks/results/text.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_WORKER = """
import json, sys, time
spec = json.loads(sys.argv[1])
if spec["kind"] != "pytorch":
    sys.modules["torch"] = None  # a device has no torch
import numpy as np
from edgetl.modalities.text import load_tokenizer, real_reviews, encode_batch
L, B = spec["length"], spec["batch"]
tok = load_tokenizer(spec["tokenizer"], L)
texts, buf = [], ""
for t, _ in real_reviews(600, seed=5):  # real reviews, joined until they reach L tokens
    buf = (buf + " " + t).strip()
    ids = tok.encode(buf).ids
    if len(ids) >= L:
        texts.append(tok.decode(ids[1:L - 1]))
        buf = ""
    if len(texts) >= 4 * B:
        break
batches = [texts[i * B:(i + 1) * B] for i in range(4)]
ids = [encode_batch(tok, b) for b in batches]
ids = [{k: v[:, :L] for k, v in x.items()} for x in ids]
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
    p = Predictor.from_bundle(spec["bundle"], threads=2)
    if spec["kind"] == "model":
        def run(i):
            p.logits(ids[i])
    else:
        def run(i):
            p.predict(batches[i], batch_size=B)
for i in range(5):
    run(i % 4)
lat, end, i = [], time.perf_counter() + spec["seconds"], 0
while time.perf_counter() < end or i < 10:
    t = time.perf_counter(); run(i % 4); lat.append((time.perf_counter() - t) * 1e3); i += 1
print("ROW " + json.dumps({"p50": float(np.median(lat)), "n": len(lat)}))
"""


def _run(spec: dict) -> float:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "EDGETL_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(spec)], env=env, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"benchmark row {spec['kind']} failed:\n{out.stderr[-2000:]}")
    return json.loads(line[4:])["p50"]


def build(root: Path) -> dict[str, Path]:
    import csv

    from edgetl.cli import _quiet_third_party
    from edgetl.modalities.text import real_reviews
    from edgetl.workstation.onnx_export import ExportConfig, export
    from edgetl.workstation.packaging import package
    from edgetl.workstation.quantization import QuantizeConfig, quantize
    from edgetl.workstation.training import TrainConfig, train

    _quiet_third_party()
    data = root / "reviews.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(real_reviews(150, seed=0))
    run = root / "run"
    train(data, run, TrainConfig(backbone="all_minilm_l6_v2", max_length=128))
    export(run, ExportConfig(exporter="torchscript", opset=17, samples=32))
    quantize(run, QuantizeConfig(engine="ort", max_drop=0.03, min_agreement=0.9))
    bundles = {t: package(run, t, root / t).bundle for t in ("x86-ort-fp32", "x86-ort-int8", "x86-openvino-fp32")}
    return {"run": run, "tokenizer": run / "tokenizer.json", **bundles}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="16,64,128")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
    from edgetl.benchmarking.environment import environment

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetl-text-bench-") as tmp:
        made = build(Path(tmp))
        configs = [("pytorch", None)] + [(k, t) for t in ("x86-ort-fp32", "x86-ort-int8", "x86-openvino-fp32")
                                         for k in ("model", "end to end")]
        for L in [int(x) for x in args.lengths.split(",")]:
            for B in [int(x) for x in args.batches.split(",")]:
                times: dict[str, list[float]] = {}
                for _ in range(args.repeats):  # interleaved: every configuration once per repeat
                    for kind, target in configs:
                        spec = {"kind": kind, "length": L, "batch": B, "seconds": args.seconds,
                                "tokenizer": str(made["tokenizer"]), "run": str(made["run"]),
                                "bundle": str(made[target]) if target else None}
                        name = "pytorch eager" if target is None else f"{target} {kind}"
                        times.setdefault(name, []).append(_run(spec))
                row = {"length": L, "batch": B, **{k: statistics.median(v) for k, v in times.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text.json").write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    keys = [k for k in rows[0] if k not in ("length", "batch")]
    print("\n| tokens | batch | " + " | ".join(keys) + " |")
    print("|---:|---:|" + "---:|" * len(keys))
    for r in rows:
        base = r["pytorch eager"]
        cells = [f"{r[k]:.2f}" + ("" if k == "pytorch eager" else f" ({base / r[k]:.1f}×)") for k in keys]
        print(f"| {r['length']} | {r['batch']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
