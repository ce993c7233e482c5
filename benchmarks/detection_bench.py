"""Object detection on real aerial photos, end to end: deepforest's annotated tree-crown scenes
(they ship in its wheel; one whole scene held out, edgetl.workstation.detection_data), a frozen
EfficientNet-Lite0 cut at stride 8 under the per-location head, exported, quantized to int8 for
this CPU class (ONNX Runtime and NNCF/OpenVINO), packaged for the x86 targets that fit this CPU;
mAP@.5 and mAP@[.5:.95] of the fp32 RUN (PyTorch) and of each deployed bundle on the held-out
scene, each bundle's conformance check here, and one `edgetl bench` run of the bundles side by
side with PyTorch eager (decoding and NMS included on both sides, preprocessing excluded).

    python benchmarks/detection_bench.py [--work DIR] [--out benchmarks/results/detection_<isa>.json]
    python benchmarks/detection_bench.py --strategy finetune   # -> detection_finetune_<isa>.json

``--strategy finetune`` trains the last ``--unfreeze`` stages with the heads for ``--epochs``
(edgetl.workstation.detection.finetune) instead of only solving the heads on frozen features.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("x86-ort-fp32", "x86-ort-int8", "x86-openvino-int8", "x86-openvino-fp32")


def _edgetl(*argv: str) -> str:
    result = subprocess.run([sys.executable, "-m", "edgetl.cli", *map(str, argv)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"edgetl {' '.join(map(str, argv))}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _decode_ms(bundle: Path, test: Path) -> dict:
    """Decoding and NMS alone (numpy), per held-out tile, from the bundle's own head outputs."""
    import statistics
    import time

    from edgetl.device.predictor import Predictor
    from edgetl.tasks.detection.data import read_detection_data
    from edgetl.tasks.detection.task import SCORE_THRESHOLD, decode

    predictor = Predictor.from_bundle(bundle)
    times = []
    for indices, out, _ in predictor.run_chunks([it.path for it in read_detection_data(test).items], 1):
        for row in range(len(indices)):
            for _ in range(20):
                t = time.perf_counter()
                decode(out["logits"][row], out["boxes"][row], out["grid"], predictor.spec.input_size,
                       out["image_size"][row], score_threshold=SCORE_THRESHOLD)
                times.append((time.perf_counter() - t) * 1e3)
    return {"median": statistics.median(times), "p90": sorted(times)[int(0.9 * len(times))], "n": len(times)}


def main() -> int:
    from edgetl.core.isa import this_cpu
    from edgetl.core.isa import cpu_class
    from edgetl.core.targets import load_target
    from edgetl.workstation.detection_data import write_deepforest_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="keep the RUN and bundles here")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--strategy", choices=("linear-probe", "finetune"), default="linear-probe")
    parser.add_argument("--unfreeze", type=int, default=2, help="finetune: the last N stages train")
    parser.add_argument("--epochs", type=int, default=8, help="finetune: epochs")
    args = parser.parse_args()
    tuning = ["--unfreeze", args.unfreeze, "--epochs", args.epochs] if args.strategy == "finetune" else []
    cpu = this_cpu()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-detection-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    split = write_deepforest_split(work / "deepforest")
    run = work / "run"
    if not (run / "onnx" / "backbone.int8.onnx").is_file():
        _edgetl("train", split.train, "--task", "detection", "--out", run, "--backbone", "efficientnet_lite0",
                "--image-size", args.image_size, "--strategy", args.strategy, *tuning, "--force")
        _edgetl("export", run)
        _edgetl("quantize", run, "--engine", "both")  # calibrated on the RUN's own training images
    run_info = json.loads((run / "run.json").read_text())
    doc = {"cpu": cpu.to_dict(), "data": split.to_dict(), "image_size": args.image_size, "strategy": args.strategy,
           "train": {k: run_info["metrics"].get(k) for k in ("val_map50", "val_map", "train_seconds", "probe", "finetune")},
           "construction": "deepforest 2.1.0's four annotated scenes; the held-out scene is "
                           f"{split.test_scene} (its annotations are partial: not every crown is boxed)",
           "run": json.loads(_edgetl("evaluate", run, split.test, "--json")), "bundles": {}}
    bundles = []
    for name in TARGETS:
        target = load_target(name)
        if not target.fits(cpu):
            doc["bundles"][name] = {"skipped": f"the target is for {target.isa.value if target.isa else '?'} CPUs"}
            continue
        bundle = work / f"bundle-{name}"
        if not bundle.is_dir():
            _edgetl("package", run, "--target", name, "--out", bundle)
        report = json.loads(_edgetl("evaluate", bundle, split.test, "--json"))
        doctor = json.loads(_edgetl("doctor", bundle, "--json"))
        doc["bundles"][name] = {"map50": report["map50"], "map": report["map"],
                                "map50_drop_vs_run": doc["run"]["map50"] - report["map50"],
                                "conformance": doctor.get("conformance", doctor)}
        bundles.append(bundle)
    doc["decode_ms"] = _decode_ms(work / "bundle-x86-ort-fp32" if (work / "bundle-x86-ort-fp32").is_dir() else bundles[0],
                                  split.test)
    bench_json = work / "bench.json"
    _edgetl("bench", *bundles, "--run", run, "--json", bench_json, "--plot", work / "bench.png", "--repeats", "3")
    doc["bench"] = json.loads(bench_json.read_text())
    kind = "detection" if args.strategy == "linear-probe" else "detection_finetune"
    out = args.out or ROOT / "benchmarks" / "results" / f"{kind}_{cpu_class(cpu)}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"RUN (PyTorch fp32) mAP@.5 {doc['run']['map50']:.3f}")
    for name, row in doc["bundles"].items():
        print(name, {k: row[k] for k in row if k != "conformance"})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
