"""Object detection end to end, on real objects pasted at known boxes onto real photos
(edgetl.workstation.detection_data.write_composite_scenes: scikit-image's photo crops and
scikit-learn's digit scans on scikit-image's scenes): train on the workstation, export, quantize
to int8 under the guard, package, then on the device with torch blocked: predict, evaluate
(equal to pycocotools on the very same predictions), retrain with a new object class, rollback.

One module fixture builds the RUN and the bundle once (about a minute and a half on two cores).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.workstation.detection_data import write_composite_scenes

pytestmark = pytest.mark.slow

OLD = ["face", "cat", "shuttle"]
NEW = ["coffee"]
HAS_PYCOCOTOOLS = importlib.util.find_spec("pycocotools") is not None


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_composite_scenes(root / "old", OLD, per_class=24, seed=0, size=256)
    write_composite_scenes(root / "new", NEW, per_class=24, seed=1, size=256)
    write_composite_scenes(root / "test_old", OLD, per_class=10, seed=2, size=256, split="test")
    write_composite_scenes(root / "test", OLD + NEW, per_class=10, seed=3, size=256, split="test")
    return root


@pytest.fixture(scope="module")
def bundle(scenes) -> Path:
    """old classes -> RUN (exact probe on frozen EfficientNet-Lite0 locations) -> ONNX -> int8
    (ONNX Runtime, this CPU class's) -> bundle for x86-ort-int8 or the target that fits this CPU."""
    from edgetl.core.isa import this_cpu
    from edgetl.core.targets import targets_for

    run = scenes / "run"
    _ok(_cli(["train", "old", "--task", "detection", "--out", run, "--backbone", "efficientnet_lite0",
              "--image-size", "256"], scenes))
    _ok(_cli(["export", run], scenes))
    _ok(_cli(["quantize", run, "--engine", "ort", "--calib", "old"], scenes))  # calibration in the task's format
    fitting = [t.name for t in targets_for(this_cpu()) if t.runtime == "onnxruntime" and t.precision == "int8"]
    assert fitting, "no shipped ONNX Runtime int8 target fits this CPU"
    _ok(_cli(["package", run, "--target", fitting[0], "--out", scenes / "bundle"], scenes))
    return scenes / "bundle"


def test_run_json_and_bundle_record_the_task(scenes, bundle):
    run_json = json.loads((scenes / "run" / "run.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert run_json["task"] == "detection" and manifest["task"] == "detection"
    assert manifest["conformance"]["items"] > 0


def test_predict_json_and_draw_without_torch(scenes, bundle, blocked_env):
    images = sorted((scenes / "test" / "images").iterdir())[:3]
    out = _ok(_cli(["predict", bundle, *images, "--json", "--draw", scenes / "drawn"], scenes, blocked_env))
    doc = json.loads(out.stdout)
    assert [Path(d["file"]).name for d in doc] == [p.name for p in images]
    found = [det for d in doc for det in d["detections"]]
    assert found, "no object found in three scenes that hold some"
    for det in found:
        x1, y1, x2, y2 = det["box"]
        assert det["label"] in OLD and 0 < det["score"] <= 1 and 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
    drawn = sorted(p.name for p in (scenes / "drawn").iterdir())  # numbered: two inputs may share a name
    assert len(drawn) == len(images) and all(d.endswith(p.name) for d, p in zip(drawn, images)), drawn


@pytest.mark.skipif(not HAS_PYCOCOTOOLS, reason="pycocotools is the reference (pip install pycocotools)")
def test_bundle_evaluation_equals_pycocotools_on_the_same_predictions(scenes, bundle):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from edgetl.device.predictor import Predictor
    from edgetl.tasks import get_task
    from edgetl.tasks.detection.task import EVAL_THRESHOLD

    predictor = Predictor.from_bundle(bundle)
    task = get_task("detection")
    ours = task.evaluate(predictor, scenes / "test_old")
    truth = json.loads((scenes / "test_old" / "annotations.json").read_text())
    files = {im["id"]: scenes / "test_old" / "images" / Path(im["file_name"]).name for im in truth["images"]}
    by_name = {c["name"]: c["id"] for c in truth["categories"]}
    ids = sorted(files)
    predictions = task.predict(predictor, [files[i] for i in ids], score_threshold=EVAL_THRESHOLD)
    dets = [{"image_id": i, "category_id": by_name[d.label], "score": float(d.score),
             "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]}
            for i, p in zip(ids, predictions) for d in p.detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = truth
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert abs(ours.map - ev.stats[0]) <= 1e-6 and abs(ours.map50 - ev.stats[1]) <= 1e-6, (ours.map50, ev.stats[1])
    assert ours.map50 > 0.3, "the detector finds the objects it was trained on"


def test_bundle_agrees_with_the_run(scenes, bundle):
    run = json.loads(_ok(_cli(["evaluate", "run", "test_old", "--json"], scenes)).stdout)
    deployed = json.loads(_ok(_cli(["evaluate", bundle, "test_old", "--json"], scenes)).stdout)
    assert set(deployed["per_class"]) == set(OLD)
    assert deployed["map50"] >= run["map50"] - 0.05, (deployed["map50"], run["map50"])


def test_the_device_learns_a_new_object_class_and_rolls_back(scenes, bundle, blocked_env, tmp_path):
    import shutil

    device = tmp_path / "bundle"
    shutil.copytree(bundle, device)
    before = json.loads(_ok(_cli(["evaluate", device, "test_old", "--json"], scenes, blocked_env)).stdout)
    report = json.loads(_ok(_cli(["retrain", device, "new", "--json"], scenes, blocked_env)).stdout)
    assert report["switched"] and report["new_classes"] == NEW and report["metric"] == "map50"
    assert report["learner"]["name"] == "exact" and report["conformance"]["passed"]
    # judged on held-out scenes, then solved again on all of them for the version that goes live
    assert report["n_holdout"] > 0 and report["learner"]["refit"] == "train and held-out items"
    after_old = json.loads(_ok(_cli(["evaluate", device, "test_old", "--json"], scenes, blocked_env)).stdout)
    after = json.loads(_ok(_cli(["evaluate", device, "test", "--json"], scenes, blocked_env)).stdout)
    assert after["per_class"]["coffee"]["map50"] > 0.3, after["per_class"]
    assert after_old["map50"] >= 0.85 * before["map50"], (after_old["map50"], before["map50"])
    listed = json.loads(_ok(_cli(["predict", device, *sorted((scenes / "new" / "images").iterdir())[:2], "--json"],
                                 scenes, blocked_env)).stdout)
    assert any(d["label"] == "coffee" for item in listed for d in item["detections"])
    _ok(_cli(["rollback", device], scenes, blocked_env))
    rolled = json.loads(_ok(_cli(["evaluate", device, "test_old", "--json"], scenes, blocked_env)).stdout)
    assert rolled["map50"] == before["map50"]


def test_finetune_moves_only_the_unfrozen_stages_and_keeps_the_best_epoch(scenes, bundle, tmp_path):
    """--strategy finetune starts from the probe's exact heads (epoch 0 of its history), trains the
    last --unfreeze stages with them, keeps the epoch with the best validation mAP@.5, and the
    RUN exports with its validation passing."""
    import torch

    run = tmp_path / "finetuned"
    # six steps in all: at the default 1e-3 the probe (epoch 0) can stay the best and nothing moves
    _ok(_cli(["train", "old", "--task", "detection", "--strategy", "finetune", "--unfreeze", "1", "--epochs", "2",
              "--lr", "3e-4", "--out", run, "--backbone", "efficientnet_lite0", "--image-size", "256"], scenes))
    metrics = json.loads((run / "run.json").read_text())["metrics"]
    ft = metrics["finetune"]
    history = ft["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2] and ft["trainable_stages"] == 1 and ft["cached"]
    assert ft["views"] == {"per_image": 3, "kinds": ["image", "mirror", "zoomed crop"]}  # --augment's default
    assert ft["best_epoch"] > 0, history  # else the probe is kept, and the check below has nothing to check
    assert metrics["val_map50"] == pytest.approx(history[ft["best_epoch"]]["val_map50"], abs=1e-9)
    assert metrics["val_map50"] >= max(h["val_map50"] for h in history) - 1e-9
    tuned = torch.load(run / "model.pt", weights_only=True)
    probe = torch.load(scenes / "run" / "model.pt", weights_only=True)
    last = max(int(k.split(".")[2]) for k in tuned if k.startswith("backbone.late."))
    moved = {k for k in tuned if not torch.equal(tuned[k], probe[k])}
    assert moved and all(k.startswith(f"backbone.late.{last}.") or k.startswith(("head.", "box_head.")) for k in moved), moved
    _ok(_cli(["export", run, "--exporter", "torchscript"], scenes))  # fails on a mismatch with PyTorch


def test_bench_times_the_bundle_and_pytorch_with_decoding(scenes, bundle, tmp_path):
    """`edgetl bench` on a detection bundle: the deployed row and PyTorch eager's, each with the
    same numpy decoding and NMS after the network."""
    out = tmp_path / "bench.json"
    _ok(_cli(["bench", bundle, "--run", "run", "--duration", "0.1", "--warmup", "1", "--repeats", "1",
              "--json", out], scenes))
    rows = json.loads(out.read_text())["results"]
    ok = {r["runtime"] for r in rows if r["status"] == "ok" and r["p50_ms"] > 0}
    assert {"torch", "onnxruntime"} <= ok, [(r["runtime"], r["status"], r["reason"]) for r in rows]


def test_a_detection_bundle_given_images_in_class_folders_is_one_line(scenes, bundle, digits_dir):
    result = _cli(["evaluate", bundle, digits_dir], scenes)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_classifier_bundle_given_annotated_scenes_is_one_line(scenes, quantized_run, tmp_path):
    _ok(_cli(["package", quantized_run, "--target", "x86-ort-fp32", "--out", tmp_path / "cls"], scenes))
    for command in (["evaluate", tmp_path / "cls", "test_old"], ["retrain", tmp_path / "cls", "new"]):
        result = _cli(command, scenes)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
