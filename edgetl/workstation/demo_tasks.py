"""The demo's other tasks (``edgetl demo``, steps 6 and 7), on data that ship in packages:

6. object detection: deepforest's annotated aerial photos of tree crowns (one whole scene held
   out), a frozen EfficientNet-Lite0 cut at stride 8 under a per-location head -> int8 bundle,
   benchmarked with its decoding and NMS next to PyTorch eager; mAP@.5 of the RUN and of the
   bundle on the held-out scene, and the bundle's boxes drawn on a held-out tile
   (``detections.png``);
7. named-entity recognition: Rotten Tomatoes sentences with spaCy en_core_web_sm's entities
   (silver labels that ship with edgetl: figures are agreement with that model), a per-token
   head on the frozen all-MiniLM-L6-v2 -> dynamic int8 bundle; on the device (no torch, no
   transformers) retrain learns an entity type the workstation never saw annotated (GPE) from
   100 newly annotated sentences.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core import ui as _ui
from edgetl.errors import EdgeTLError

__all__ = ["detection_part", "ner_part", "device_process", "bench_config", "write_bench"]

NER_NEW_TYPE = "GPE"


def device_process(args: list[str]) -> dict[str, Any]:
    """Run ``edgetl ARGS --json`` in a fresh process where ``import torch`` (and
    ``transformers``) fails, as on a device with only ``pip install edgetl``."""
    with tempfile.TemporaryDirectory() as block:
        Path(block, "sitecustomize.py").write_text(
            "import sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([block, *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.run([sys.executable, "-m", "edgetl.cli", *args, "--json"], capture_output=True, text=True,
                              env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeTLError(f"device step 'edgetl {args[0]}' failed: {last}")
    return json.loads(proc.stdout)


def bench_config(cfg: Any) -> Any:
    from edgetl.benchmarking import BenchConfig

    return BenchConfig(duration=cfg.bench_seconds, repeats=cfg.bench_repeats, warmup=5) if cfg.bench else None


def write_bench(report: Any, out: Path, name: str, title: str) -> list[str]:
    """``name``.json and, where matplotlib draws it, ``name``.png; the plots written."""
    if report is None:
        return []
    report.write_json(out / f"{name}.json")
    return [str(out / f"{name}.png")] if report.write_plot(out / f"{name}.png", title=title) else []


def _build(data: Path, out: Path, name: str, cfg: Any, train: Any, **extra: Any):
    from edgetl.workstation.pipeline import BuildConfig, build, summary_rows

    result = build(data, cfg.target, out / f"{name}_bundle", BuildConfig(
        run_dir=out / f"{name}_run", train=train, bench=bench_config(cfg), run_bench=cfg.bench, **extra))
    _ui.print_table(f"build: {name}", ["", "value"], summary_rows(result.summary))
    return result


def detection_part(out: Path, cfg: Any) -> dict[str, Any]:
    from edgetl.device import Predictor
    from edgetl.device.evaluation import evaluate_bundle
    from edgetl.tasks.detection.data import read_detection_data
    from edgetl.tasks.detection.draw import draw_detections
    from edgetl.workstation.detection_data import write_deepforest_split
    from edgetl.workstation.evaluation import evaluate_run
    from edgetl.workstation.training import TrainConfig

    _ui.info("== 6. detection: deepforest's aerial photos of tree crowns, efficientnet_lite0 at stride 8 -> int8 bundle")
    split = write_deepforest_split(out / "data" / "trees")
    result = _build(split.train, out, "detection", cfg,
                    TrainConfig(task="detection", backbone="efficientnet_lite0", image_size=cfg.detection_size,
                                seed=cfg.seed))
    bundle = out / "detection_bundle"
    run_map = evaluate_run(out / "detection_run", split.test).to_dict()
    deployed = evaluate_bundle(bundle, split.test).to_dict()
    _ui.print_table(f"held-out scene {split.test_scene} ({deployed['n']} tiles)", ["", "mAP@.5", "mAP@[.5:.95]"],
                    [("RUN, PyTorch fp32", run_map["map50"], run_map["map"]),
                     ("bundle, as deployed", deployed["map50"], deployed["map"])])
    tile = read_detection_data(split.test).items[0].path
    found = Predictor.from_bundle(bundle).predict([tile])[0]
    draw_detections(tile, [d.to_dict() for d in found.detections], out / "detections.png")
    plots = [str(out / "detections.png")]
    plots += write_bench(result.bench, out, "detection_bench", "deployed int8 detector (decoding and NMS included) "
                                                                "vs PyTorch eager")
    return {"bundle": str(bundle), "build": result.to_dict(), "test_scene": split.test_scene,
            "map50": {"run": run_map["map50"], "bundle": deployed["map50"]},
            "map": {"run": run_map["map"], "bundle": deployed["map"]},
            "drawn": {"file": str(tile), "detections": len(found.detections)}, "plots": plots}


def split_ner(root: Path, cfg: Any) -> dict[str, Path]:
    """Training sentences without the new type annotated, newly annotated sentences for the
    device (three in four holding it), held-out sentences of other movies (seeded)."""
    from edgetl.tasks.token_classification import load_reviews_ner
    from edgetl.tasks.token_classification import write_ner_jsonl as _write_jsonl

    examples = load_reviews_ner().examples
    groups = sorted({e.group for e in examples})
    order = np.random.default_rng(cfg.seed).permutation(len(groups))
    held = {groups[i] for i in order[: len(groups) // 4]}
    rest = [e for e in examples if e.group not in held]
    train, later = rest[:cfg.ner_train], rest[cfg.ner_train:]
    without = [replace(e, entities=tuple(s for s in e.entities if s.label != NER_NEW_TYPE)) for e in train]
    has = [e for e in later if any(s.label == NER_NEW_TYPE for s in e.entities)]
    lacks = [e for e in later if not any(s.label == NER_NEW_TYPE for s in e.entities)]
    annotated = has[:75] + lacks[:25]
    test = [e for e in examples if e.group in held][:cfg.ner_test]
    return {"train": _write_jsonl(root / "train.jsonl", without), "device": _write_jsonl(root / "annotated.jsonl", annotated),
            "test": _write_jsonl(root / "test.jsonl", test)}


def ner_part(out: Path, cfg: Any) -> dict[str, Any]:
    from edgetl.device.evaluation import evaluate_bundle
    from edgetl.workstation.onnx_export import ExportConfig
    from edgetl.workstation.training import TrainConfig

    _ui.info("== 7. named entities: review sentences (en_core_web_sm's entities), all-MiniLM-L6-v2 per-token head "
             "-> int8 bundle")
    data = split_ner(out / "data" / "entities", cfg)
    result = _build(data["train"], out, "ner", cfg,
                    TrainConfig(task="token-classification", backbone="all_minilm_l6_v2", max_length=64,
                                seed=cfg.seed),
                    export=ExportConfig(exporter="torchscript", opset=17, samples=32))
    bundle = out / "ner_bundle"
    before = evaluate_bundle(bundle, data["test"]).to_dict()
    _ui.info(f"   on the device (no torch, no transformers): retrain learns {NER_NEW_TYPE} from 100 annotated sentences")
    retrain = device_process(["retrain", str(bundle), str(data["device"])])
    after = evaluate_bundle(bundle, data["test"]).to_dict()

    def f1(report: dict, label: str | None) -> float | None:
        if label is None:
            return report.get("f1")
        return (report.get("per_type") or {}).get(label, {}).get("f1")

    old = sorted(t for t in (before.get("per_type") or {}) if t != NER_NEW_TYPE)
    _ui.print_table(f"held-out sentences ({before.get('n')}), entity F1 (agreement with en_core_web_sm)",
                    ["entities", "before retrain", "after retrain"],
                    [(f"new: {NER_NEW_TYPE}", f1(before, NER_NEW_TYPE), f1(after, NER_NEW_TYPE)),
                     *[(t, f1(before, t), f1(after, t)) for t in old],
                     ("all", f1(before, None), f1(after, None))])
    plots = write_bench(result.bench, out, "ner_bench", "deployed int8 entity tagger vs PyTorch eager")
    return {"bundle": str(bundle), "build": result.to_dict(), "retrain": retrain,
            "f1": {"before_retrain": before, "after_retrain": after}, "plots": plots}
