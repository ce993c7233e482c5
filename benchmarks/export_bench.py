"""Export time per model and exporter: the dynamo exporter (torch.export, maintained)
against the TorchScript one (deprecated, much faster to run), for the backbone, the head,
the fused model and the OpenVINO conversion, read from ``run.json["export"]["seconds"]``.

    python benchmarks/export_bench.py
    python benchmarks/export_bench.py --backbones efficientnet_lite0,timm:mobilenetv3_large_100

Backbones other than efficientnet_lite0 are built without pretrained weights (nothing is
downloaded): export time does not depend on the weights' values. Writes
benchmarks/results/export.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
PARTS = ("backbone", "head", "model", "openvino")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="efficientnet_lite0")
    p.add_argument("--exporters", default="dynamo,torchscript")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("EDGETL_NO_PROGRESS", "1")
    from edgetl.benchmarking.environment import environment, machine_name
    from edgetl.cli import _quiet_third_party
    from edgetl.modalities.image import write_digits
    from edgetl.workstation.onnx_export import ExportConfig, export
    from edgetl.core.run import read_run_json
    from edgetl.workstation.training import TrainConfig, train

    _quiet_third_party()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgetl-export-bench-") as tmp:
        data = write_digits(Path(tmp) / "digits", per_class=10, seed=0)
        for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            base = Path(tmp) / backbone.replace(":", "_").replace("/", "_")
            train(data, base, TrainConfig(backbone=backbone, pretrained=backbone == "efficientnet_lite0", epochs=1,
                                          image_size=args.image_size))
            for exporter in [e.strip() for e in args.exporters.split(",") if e.strip()]:
                run = base.with_name(base.name + "-" + exporter)
                shutil.copytree(base, run)
                export(run, ExportConfig(exporter=exporter))  # validated, as by default; validation is not timed
                seconds = read_run_json(run)["export"]["seconds"]
                results.append({"backbone": backbone, "exporter": exporter, "seconds": seconds,
                                "total_s": sum(seconds.values())})
    env = environment()
    print(f"Export time (s) at {args.image_size} px on {machine_name(env)}, from run.json['export']['seconds']:\n")
    print("| backbone | exporter | " + " | ".join(PARTS) + " | total |\n|---|---|" + "---:|" * (len(PARTS) + 1))
    for r in results:
        print(f"| {r['backbone']} | {r['exporter']} | "
              + " | ".join(f"{r['seconds'].get(k, float('nan')):.2f}" for k in PARTS) + f" | {r['total_s']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export.json").write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
