"""Workstation cost at scale: linear-probe wall time and peak memory next to the raw runtime
loop on the same images, in the same run.

    python benchmarks/scale_bench.py                    # 1,000 and 5,000 images at 224 px
    python benchmarks/scale_bench.py --sizes 1000,5000,20000
    python benchmarks/scale_bench.py --memory --sizes 1000,20000 --image-size 64   # peak memory alone

Images are real digits (scikit-learn) resized to 224 px and written as distinct PNG files
(copies beyond the 1,797 originals get one pixel changed, so every file has its own bytes).
Each row runs in a fresh process, which reports its wall time and peak RSS (VmHWM):

- ``probe torch``: ``edgetl train`` linear probe with ``--embed-with torch --no-cache``
  (PyTorch eager, as before the runtime path existed);
- ``probe onnxruntime``: the default, ``--no-cache`` (backbone exported to ONNX Runtime,
  decoding in worker threads);
- ``probe cached``: the default run again on the same files (every embedding from the cache);
  the cache's gain is the ratio of the two processes' whole wall times (``process_s``: start-up
  and imports included, as a user's two commands), since a cached run's imports are a large
  part of it;
- ``raw ORT loop``: a plain loop that decodes each image, applies the same preprocessing and
  runs the same backbone exported to ONNX Runtime (batch 32, every core): the runtime's limit;
  with ``--raw-no-spin`` also the same loop with ONNX Runtime's spinning off (as the probe's
  session runs, since its decoding threads share the cores): like for like;
- ``finetune 1 / 2 processes`` (with ``--finetune``): one epoch of fine-tuning the last block,
  in one process and with ``--nproc-per-node 2`` (gloo), the epoch's own seconds;
- ``predict``: the probe RUN exported and packaged for x86-ort-fp32, ``Predictor.predict``
  over the folder's first 1,000 images (as ``edgetl predict`` runs it: the target's batch,
  each thread loading and running its own images on single-threaded sessions), next to the
  bundle's backbone alone in sessions of its own fed preprocessed batches of 32 and of the
  predictor's batch, spinning (ONNX Runtime's default) and not: the fastest is the runtime's
  own throughput; in brackets, the predictor's previous path (loading threads feeding the
  target's two-thread sessions).
  ``--predict-rounds`` interleaved rounds, the best of each; ``--predict-only`` runs this row
  alone (after the probe that makes its RUN).

With ``--memory`` only the ``probe onnxruntime`` row runs (no raw loop, cache, predict):
the embedding + solver stage's wall time and peak RSS per size, to show that memory stays
flat as the data grows (rows stream into a memory-mapped store; the solver reads it in
chunks). A smaller ``--image-size`` makes that affordable at 20k images on a small machine:
the embedding width (1,280) and so the rows' bytes do not depend on it.

Writes benchmarks/results/scale.json (scale_memory.json with ``--memory``) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_PEAK = """
def _peak_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
"""

_PROBE = _PEAK + """
import json, sys, time
from edgetl.cli import _quiet_third_party
_quiet_third_party()
from edgetl.workstation.training import TrainConfig, train
data, out, engine, cache, cache_dir, size = sys.argv[1:7]
t0 = time.perf_counter()
r = train(data, out, TrainConfig(image_size=int(size), embed_with=engine, embed_cache=cache == "1",
                                 cache_dir=cache_dir), overwrite=True)
print(json.dumps({"wall_s": time.perf_counter() - t0, "peak_mb": _peak_mb(), "val_accuracy": r.val_accuracy,
                  "embedding": r.metrics["embedding"]}))
"""

_RAW = _PEAK + """
import json, os, sys, time, glob, warnings
import numpy as np
from edgetl.cli import _quiet_third_party
_quiet_third_party()
import torch, onnxruntime as ort
from edgetl.workstation.backbones import create_backbone
from edgetl.modalities.image import preprocess
data, tmp, size, spin = sys.argv[1:5]
size = int(size)
t0 = time.perf_counter()
bb = create_backbone("efficientnet_lite0")
spec = bb.preprocess.with_input_size(size)
with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter("ignore")
    torch.onnx.export(bb.module.eval(), (torch.zeros(2, 3, size, size),), tmp, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["z"], dynamic_axes={"x": {0: "b"}, "z": {0: "b"}})
opts = ort.SessionOptions(); opts.intra_op_num_threads = os.cpu_count()
if spin == "0":  # as the probe's own session: workers sleep between ops
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
sess = ort.InferenceSession(tmp, opts, providers=["CPUExecutionProvider"])
paths = sorted(glob.glob(os.path.join(data, "*", "*.png")))
t1 = time.perf_counter()
out = []
for i in range(0, len(paths), 32):
    x = np.stack([preprocess(p, spec) for p in paths[i:i + 32]])
    out.append(sess.run(None, {"x": x})[0])
loop = time.perf_counter() - t1
print(json.dumps({"wall_s": time.perf_counter() - t0, "loop_s": loop, "peak_mb": _peak_mb(),
                  "images_per_s": len(paths) / loop}))
"""


_PREDICT = _PEAK + """
import json, sys, time
import numpy as np
from edgetl.cli import _quiet_third_party
_quiet_third_party()
from edgetl.workstation.onnx_export import export, ExportConfig
from edgetl.workstation.packaging import package
from edgetl.device.predictor import Predictor
from edgetl.modalities.image import find_images, preprocess_batch
from edgetl.runtimes import load_session
run, out = sys.argv[1:3]
export(run, ExportConfig(exporter="torchscript", opset=17))
bundle = package(run, "x86-ort-fp32", out).bundle
p = Predictor.from_bundle(bundle)  # as `edgetl predict` opens it
from pathlib import Path
paths = find_images(Path(sys.argv[3]))[:1000]  # the first 1,000 images of the folder, whatever its size
name = p.modality.inputs(p.spec)[0].name
# the runtime's own throughput: the bundle's backbone alone, fed preprocessed batches (of 32,
# and of the predictor's batch), in sessions of its own with the target's threads, spinning
# (ONNX Runtime's default) and not; the fastest of these is the reference
sizes = sorted({32, p.batch_size})
whole = preprocess_batch(paths, p.spec)
x = {n: [whole[i:i + n] for i in range(0, len(paths), n)] for n in sizes}  # views, contiguous
sessions = {spin: load_session(p.backbone.path, "onnxruntime", threads=p.backbone.threads, spinning=spin)
            for spin in (True, False)}
def shared_sessions():  # as before the threads ran side by side: loading threads feed the target's sessions
    for indices, b, _ in p.batches(paths):
        p.logits(b)
folder, folder_spinning, model = [], [], {(spin, n): [] for spin in sessions for n in sizes}
for _ in range(int(sys.argv[4])):  # interleaved rounds: the machine's load drifts between them
    for (spin, n), times in model.items():
        t = time.perf_counter()
        for b in x[n]:
            sessions[spin].run({name: b})
        times.append(time.perf_counter() - t)
    t = time.perf_counter(); p.predict(paths); folder.append(time.perf_counter() - t)
    t = time.perf_counter(); shared_sessions(); folder_spinning.append(time.perf_counter() - t)
best = lambda v: len(paths) / min(v)  # noqa: E731
print(json.dumps({"predict_images_per_s": best(folder), "predict_shared_images_per_s": best(folder_spinning),
                  "runtime_images_per_s": max(best(v) for v in model.values()),
                  "runtime_spinning_images_per_s": max(best(v) for (spin, _), v in model.items() if spin),
                  "runtime_no_spin_images_per_s": max(best(v) for (spin, _), v in model.items() if not spin),
                  "runtime": {f"batch {n}, {'spinning' if spin else 'no spin'}": best(v) for (spin, n), v in model.items()},
                  "batch_size": p.batch_size, "images": len(paths), "rounds": len(folder), "peak_mb": _peak_mb()}))
"""


def write_images(root: Path, n: int, size: int = 224) -> Path:
    """``n`` distinct ``size``-px PNGs of real digits, one folder per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        j = i % len(digits.images)
        pixels = (255 - digits.images[j] * (255 / 16)).astype("uint8")
        if i >= len(digits.images):
            pixels = pixels.copy()
            pixels.flat[(i // len(digits.images)) % 64] ^= 1  # another file, another digest
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(root / str(digits.target[j]) / f"{i:06d}.png")
    return root


def _run(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "EDGETL_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - t0  # the whole process, as a user's command: start-up and imports too
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stderr[-2000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": process_s}


def _finetune(data: Path, out: Path, nproc: int) -> float:
    argv = [sys.executable, "-m", "edgetl.cli", "train", str(data), "--out", str(out), "--strategy", "finetune",
            "--unfreeze", "1", "--epochs", "1", "--image-size", "224", "--no-lp-ft"]
    if nproc > 1:
        argv += ["--nproc-per-node", str(nproc)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "EDGETL_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fine-tuning ({nproc} process(es)) failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "run.json").read_text())["metrics"]["train_seconds"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000", help="numbers of images (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="pixels per side (default: %(default)s)")
    p.add_argument("--skip-torch", action="store_true", help="leave out the PyTorch-eager probe rows")
    p.add_argument("--raw-no-spin", action="store_true",
                   help="add the raw loop with ONNX Runtime's spinning off, as the probe's session runs")
    p.add_argument("--memory", action="store_true",
                   help="only the probe (embedding + solver) per size: wall time and peak RSS")
    p.add_argument("--finetune", action="store_true", help="add fine-tuning epoch time, 1 vs 2 processes")
    p.add_argument("--predict-only", action="store_true",
                   help="only the predict row (after the linear probe that makes its RUN)")
    p.add_argument("--predict-rounds", type=int, default=2,
                   help="interleaved rounds of predict and the runtime alone; the best of each (default: %(default)s)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the images and RUNs (default: a temporary folder, removed after)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from edgetl.benchmarking.environment import environment

    size, rows = str(args.image_size), []
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="edgetl-scale-", dir=args.work) as tmp:
            data = write_images(Path(tmp) / "data", n, args.image_size)
            cache = str(Path(tmp) / "cache")
            row: dict = {"images": n, "image_size": args.image_size}
            if args.memory:
                row["onnxruntime"] = _run(_PROBE, str(data), str(Path(tmp) / "run_o"), "auto", "0", cache, size)
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            if args.predict_only:
                _run(_PROBE, str(data), str(Path(tmp) / "run_c"), "auto", "0", cache, size)
                row["predict"] = _run(_PREDICT, str(Path(tmp) / "run_c"), str(Path(tmp) / "bundle"), str(data),
                                      str(args.predict_rounds))
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            row["raw"] = _run(_RAW, str(data), str(Path(tmp) / "raw.onnx"), size, "1")
            if args.raw_no_spin:
                row["raw_no_spin"] = _run(_RAW, str(data), str(Path(tmp) / "raw.onnx"), size, "0")
            if not args.skip_torch:
                row["torch"] = _run(_PROBE, str(data), str(Path(tmp) / "run_t"), "torch", "0", cache, size)
            row["onnxruntime"] = _run(_PROBE, str(data), str(Path(tmp) / "run_o"), "auto", "1", cache, size)
            row["cached"] = _run(_PROBE, str(data), str(Path(tmp) / "run_c"), "auto", "1", cache, size)
            row["predict"] = _run(_PREDICT, str(Path(tmp) / "run_c"), str(Path(tmp) / "bundle"), str(data),
                                  str(args.predict_rounds))
            if args.finetune:
                row["finetune"] = {k: _finetune(data, Path(tmp) / f"ft{k}", k) for k in (1, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "scale_memory.json" if args.memory else "scale_predict.json" if args.predict_only else "scale.json"
    (args.out / name).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    if args.memory:
        print(f"\n| images ({args.image_size} px) | probe wall | embedding | images/s | peak RSS |")
        print("|---:|---:|---:|---:|---:|")
        for r in rows:
            o = r["onnxruntime"]
            print(f"| {r['images']} | {o['wall_s']:.1f} s | {o['embedding']['seconds']:.1f} s | "
                  f"{o['embedding']['images_per_s']:.0f} | {o['peak_mb']:.0f} MB |")
        return 0
    if args.predict_only:
        _predict_table(rows)
        return 0
    print("\n| images | raw ORT loop | probe onnxruntime | probe / raw | probe cached | first / cached process "
          "| probe torch | peak MB (raw / ort / cached / torch) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "raw_no_spin" in r:
            print(f"| {r['images']} | raw loop, spinning off: {r['raw_no_spin']['wall_s']:.1f} s "
                  f"(probe / that: {r['onnxruntime']['wall_s'] / r['raw_no_spin']['wall_s']:.2f}x) |")
        t, o = r.get("torch", {}), r["onnxruntime"]
        print(f"| {r['images']} | {r['raw']['wall_s']:.1f} s | {o['wall_s']:.1f} s | "
              f"{o['wall_s'] / r['raw']['wall_s']:.2f}x | {r['cached']['wall_s']:.1f} s | "
              f"{o['process_s']:.1f} / {r['cached']['process_s']:.1f} s = "
              f"{o['process_s'] / r['cached']['process_s']:.1f}x | {t.get('wall_s', float('nan')):.1f} s | {r['raw']['peak_mb']:.0f} / {o['peak_mb']:.0f} / "
              f"{r['cached']['peak_mb']:.0f} / {t.get('peak_mb', float('nan')):.0f} |")
    _predict_table(rows)
    return 0


def _predict_table(rows: list[dict]) -> None:
    print("\n| images | predict over the folder (shared sessions) | the runtime alone (spinning / not) "
          "| predict / runtime | fine-tune epoch, 1 process | 2 processes |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ft, pr = r.get("finetune", {}), r["predict"]
        print(f"| {r['images']} | {pr['predict_images_per_s']:.1f} images/s "
              f"({pr.get('predict_shared_images_per_s', float('nan')):.1f}) | "
              f"{pr['runtime_spinning_images_per_s']:.1f} / {pr['runtime_no_spin_images_per_s']:.1f} images/s | "
              f"{pr['predict_images_per_s'] / pr['runtime_images_per_s']:.0%} | {ft.get(1, float('nan')):.1f} s | "
              f"{ft.get(2, float('nan')):.1f} s |")


if __name__ == "__main__":
    sys.exit(main())
