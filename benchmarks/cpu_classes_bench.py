"""int8 on this CPU class, end to end: the digits at 224 px with EfficientNet-Lite0, packaged for
every x86 target, each bundle's conformance check here, its agreement with fp32 on held-out
digits, and one `edgetl bench` run of all bundles side by side with PyTorch eager.

    python benchmarks/cpu_classes_bench.py [--work DIR] [--out benchmarks/results/cpu_classes_<isa>.json]

Writes a JSON with the environment (CPU model and flags), per bundle: target, CPU class,
conformance here (agreement with the bundle's reference, verdict), top-1 agreement with the
fp32 RUN on the held-out split and accuracy (measured even where the bundle does not conform,
with --allow-nonconforming), batch-1 p50 and the ratio to PyTorch eager from the one bench run;
the fastest conforming bundle; and the target order `edgetl doctor` gives here. It prints the
``measured_ms`` line each target file takes for this CPU class.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("x86-ort-fp32", "x86-openvino-fp32", "x86-openvino-bf16", "x86-ort-int8", "x86-openvino-int8",
           "x86-vnni-ort-int8")


def _edgetl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *argv], capture_output=True, text=True)


def _prepare(work: Path, size: int) -> tuple[Path, Path, Path]:
    """The digits, a linear-probe RUN exported and quantized for x86-avx2 (both engines), and a
    copy quantized for x86-vnni (ONNX Runtime)."""
    from edgetl.modalities.image import write_digits
    from edgetl.workstation.onnx_export import export
    from edgetl.workstation.quantization import QuantizeConfig, quantize
    from edgetl.workstation.training import TrainConfig, train

    data = work / "digits"
    run = work / "run"
    if not (run / "onnx" / "backbone.int8.onnx").is_file():
        write_digits(data, seed=0)
        train(data, run, TrainConfig(image_size=size))
        export(run)
        quantize(run, QuantizeConfig(isa="x86-avx2"))
    vnni = work / "run-vnni"
    if not (vnni / "onnx" / "backbone.int8.onnx").is_file():
        shutil.copytree(run, vnni, dirs_exist_ok=True)
        quantize(vnni, QuantizeConfig(engine="ort", isa="x86-vnni"))
    return data, run, vnni


def _val_folder(run: Path, out: Path) -> Path:
    info = json.loads((run / "run.json").read_text())
    for rel in info["split"]["val"]:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(info["data_root"]) / rel, dest)
    return out


def main(argv: list[str] | None = None) -> int:
    from edgetl.core.isa import cpu_class, this_cpu
    from edgetl.core.targets import load_target, targets_for
    from edgetl.device.conformance import check
    from edgetl.device.predictor import Predictor
    from edgetl.modalities.image import scan_folder
    from edgetl.workstation.packaging import package

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-cpu-classes")
    p.add_argument("--out", type=Path)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    cpu = this_cpu()
    cls = cpu_class(cpu)
    out = args.out or ROOT / "benchmarks" / "results" / f"cpu_classes_{cls}.json"
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, run, vnni = _prepare(args.work, args.size)
    val = _val_folder(run, args.work / "val")
    folder = scan_folder(val)
    files = [str(f) for f in folder.paths]
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(run / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    from edgetl.modalities.image import preprocess_batch
    from edgetl.modalities import get_modality

    spec = get_modality("image").spec_from_dict(json.loads((run / "run.json").read_text())["preprocess"])
    x = preprocess_batch(files, spec)
    labels = json.loads((run / "run.json").read_text())["labels"]
    fp32_pred = np.concatenate([fp32.run(None, {"images": x[i:i + 64]})[0] for i in range(0, len(x), 64)]).argmax(1)
    truth = np.array([labels.index(folder.labels[t]) for t in folder.targets])

    bundles, rows = [], []
    for name in TARGETS:
        target = load_target(name)
        src = vnni if name == "x86-vnni-ort-int8" else run
        bundle = args.work / f"b-{name}"
        package(src, name, bundle, _package_config(overwrite=True))
        predictor = Predictor.from_bundle(bundle, conformance="off")
        report = check(predictor, use_cache=False)
        pred = np.array([p.index for p in predictor.predict(files)])
        rows.append({"target": name, "isa": target.isa.value if target.isa else None, "fits_this_cpu": target.fits(cpu),
                     "precision_executed": predictor.precision_executed,
                     "conformance": {"agreement": report.agreement, "passed": report.passed,
                                     "max_logit_error": report.max_logit_error, "items": report.n_items},
                     "agreement_with_fp32": float((pred == fp32_pred).mean()),
                     "accuracy": float((pred == truth).mean()), "n": len(files)})
        bundles.append(str(bundle))
        print(f"{name}: conforms {report.passed} ({report.agreement:.3f}), agreement with fp32 "
              f"{rows[-1]['agreement_with_fp32']:.4f}, accuracy {rows[-1]['accuracy']:.4f}", flush=True)
    bench_json = args.work / "bench.json"
    proc = _edgetl("bench", *bundles, "--run", str(run), "--batch", "1", "--threads", "2", "--no-direct",
                   "--repeats", str(args.repeats), "--json", str(bench_json), "--plot", str(out.with_suffix(".png")))
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    bench = json.loads(bench_json.read_text())
    torch_row = next(r for r in bench["results"] if r["runtime"] == "torch" and r["status"] == "ok")
    by_target = {r["source"]: r for r in bench["results"] if r["runtime"] != "torch" and r["status"] == "ok"}
    for row in rows:
        b = by_target.get(row["target"])
        row.update(p50_ms=b["p50_ms"] if b else None, p90_ms=b["p90_ms"] if b else None,
                   speedup_vs_torch=b["speedup_vs_torch"] if b else None,
                   bench_conformance=b.get("conformance") if b else None)
    conforming = [r for r in rows if r["conformance"]["passed"] and r["p50_ms"] is not None]
    fastest = min(conforming, key=lambda r: r["p50_ms"]) if conforming else None
    result = {
        "script": "benchmarks/cpu_classes_bench.py", "environment": bench["environment"],
        "cpu_class": cls, "data": f"scikit-learn digits (1,797), {args.size} px, linear probe on EfficientNet-Lite0; "
                                  f"held out: the RUN's validation split ({len(files)} images)",
        "torch_eager_p50_ms": torch_row["p50_ms"], "bundles": rows,
        "fastest_conforming": fastest["target"] if fastest else None,
        "fastest_conforming_speedup": fastest["speedup_vs_torch"] if fastest else None,
        "doctor_order": [t.name for t in targets_for(cpu)], "seconds": round(time.perf_counter() - t0),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("environment", "bundles")}, indent=2))
    print(f"wrote {out}")
    print("measured_ms for the target files (this CPU class):")
    for r in rows:
        if r["p50_ms"] is not None and r["fits_this_cpu"] and r["conformance"]["passed"]:
            print(f"  {r['target']}: {cls} = {r['p50_ms']:.1f}")
    return 0


def _package_config(**kwargs):
    from edgetl.workstation.packaging import PackageConfig

    return PackageConfig(**kwargs)


if __name__ == "__main__":
    sys.exit(main())
