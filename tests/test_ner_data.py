"""NER data: CoNLL (IOB1, IOB2, BIOES, BILOU) and JSONL-with-spans readers, the word
definition spans are checked against, every way a file can be bad (one line each), format
detection that never claims classification data, and the shipped silver review data."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.errors import DataError
from edgetl.tasks.token_classification import data as D
from edgetl.tasks.token_classification import reviews as R
from edgetl.tasks.token_classification.tags import Span, read_scheme_tags, tag_set
from edgetl.tasks.token_classification.words import _split_words_loop, split_words

CONLL_IOB2 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

Tom B-PER
Hanks I-PER
Meg B-PER
Ryan I-PER
"""
# the same sentences in the other schemes (IOB1 separates adjacent same-type entities with B-)
CONLL_IOB1 = CONLL_IOB2.replace("B-ORG", "I-ORG").replace("B-MISC", "I-MISC").replace(
    "NP B-PER\nBlackburn", "NP I-PER\nBlackburn").replace("Tom B-PER", "Tom I-PER")
CONLL_BIOES = (CONLL_IOB2.replace("B-ORG", "S-ORG").replace("B-MISC", "S-MISC")
               .replace("Blackburn NNP I-NP I-PER", "Blackburn NNP I-NP E-PER")
               .replace("Hanks I-PER", "Hanks E-PER").replace("Ryan I-PER", "Ryan E-PER"))
CONLL_BILOU = CONLL_BIOES.replace("S-", "U-").replace("E-PER", "L-PER")
EXPECTED = [
    ("EU rejects German call .", [(0, 2, "ORG"), (11, 17, "MISC")]),
    ("Peter Blackburn", [(0, 15, "PER")]),
    ("Tom Hanks Meg Ryan", [(0, 9, "PER"), (10, 18, "PER")]),
]


def _write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _jsonl(path: Path, records) -> Path:
    return _write(path, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


def _refuse(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def _simple(d: D.NerData):
    return [(e.text, [tuple(s) for s in e.entities]) for e in d.examples]


@pytest.mark.parametrize("scheme,text", [("IOB2", CONLL_IOB2), ("IOB1", CONLL_IOB1), ("BIOES", CONLL_BIOES),
                                         ("BILOU", CONLL_BILOU)])
def test_conll_schemes_read_to_the_same_spans(tmp_path, scheme, text):
    d = D.read_ner_data(_write(tmp_path / "x.conll", text))
    assert (d.format, d.scheme, d.repaired) == ("conll", scheme, 0)
    assert _simple(d) == EXPECTED
    assert d.types == ("MISC", "ORG", "PER") and d.counts == {"MISC": 1, "ORG": 1, "PER": 3}
    assert [e.where for e in d.examples] == ["x.conll:3", "x.conll:9", "x.conll:12"]
    assert D.detect_format(tmp_path / "x.conll") == "conll"


def test_conll_tabs_crlf_gzip_and_repairs(tmp_path):
    text = CONLL_IOB2.replace(" ", "\t").replace("\n", "\r\n")
    with gzip.open(tmp_path / "x.conll.gz", "wt") as f:
        f.write(text)
    d = D.read_ner_data(tmp_path / "x.conll.gz")
    assert _simple(d) == EXPECTED and d.scheme == "IOB2"
    # a broken BIOES file is read leniently and the repairs are counted
    broken = "A B-PER\nB I-PER\nC O\n\nD E-PER\n\nE S-LOC\n"
    d = D.read_ner_data(_write(tmp_path / "b.conll", broken))
    assert d.scheme == "BIOES" and d.repaired == 2
    assert _simple(d) == [("A B C", [(0, 3, "PER")]), ("D", [(0, 1, "PER")]), ("E", [(0, 1, "LOC")])]


def test_scheme_reader_on_random_sequences_equals_iob2_reading():
    """For IOB2 written sequences the lenient reader finds exactly the strict entities; a
    BIOES rewrite of them reads back to the same entities."""
    from edgetl.tasks.token_classification.tags import parse_tag, strict_entities

    rng = random.Random(0)
    for _ in range(500):
        ents, tags, i = [], [], 0
        while i < 12:
            if rng.random() < 0.4:
                n, t = rng.randint(1, 3), rng.choice("XY")
                ents.append((t, len(tags), len(tags) + n))
                tags += [f"B-{t}"] + [f"I-{t}"] * (n - 1)
                i += n
            else:
                tags.append("O")
                i += 1
        assert strict_entities(tags) == ents
        assert read_scheme_tags([parse_tag(t) for t in tags])[0] == ents
        bioes = list(tags)
        for t, a, b in ents:
            if b - a == 1:
                bioes[a] = f"S-{t}"
            else:
                bioes[b - 1] = f"E-{t}"
        got, _, breaks = read_scheme_tags([parse_tag(t) for t in bioes])
        assert got == ents and breaks == 0


def test_conll_malformed_sentences_are_skipped_or_refused(tmp_path):
    text = ("Good O\nline B-PER\n\nno_tag_column\nrest O\n\nbad NNP X-PER\n\n"
            "ok O\n").encode() + b"caf\xe9 O\n\nlast B-LOC\n"
    p = _write(tmp_path / "m.conll", text)
    d = D.read_ner_data(p)
    assert [e.text for e in d.examples] == ["Good line", "last"]
    where = [w for w, _ in d.skipped]
    assert where == ["m.conll:4", "m.conll:7", "m.conll:10"]
    reasons = " | ".join(r for _, r in d.skipped)
    assert "one column" in reasons and "'X-PER' is not O" in reasons and "not valid UTF-8 (byte 4" in reasons
    msg = _refuse("m.conll:4: one column", D.read_ner_data, p, strict=True)
    assert str(tmp_path) in msg
    _refuse("no usable CONLL examples .*first: e.conll:1", D.read_ner_data, _write(tmp_path / "e.conll", "a\nb\n"))


def test_jsonl_spans_and_every_bad_span(tmp_path):
    text = "Spielberg's film with Tom Hanks, in  São Paulo."
    recs = [
        {"text": text, "group": "jaws", "entities": [
            {"start": 0, "end": 9, "label": "PERSON"},        # ok: ends before "'"
            [22, 31, "PERSON"],                                # ok: triple form
            {"start": 37, "end": 46, "label": "GPE"},          # ok: accents, two spaces before
            {"start": 0, "end": 5, "label": "PERSON"},         # crosses a word
            {"start": 0, "end": 9, "label": "PERSON"},         # duplicate
            {"start": 17, "end": 25, "label": "ORG"},          # "with Tom": overlaps Tom Hanks (shorter)
            {"start": 5, "end": 5, "label": "X"},              # empty
            {"start": 40, "end": 99, "label": "X"},            # outside
            {"start": 9, "end": 3, "label": "X"},              # backwards
            {"start": True, "end": 3, "label": "X"},           # bool is not an int
            {"start": 0, "end": 4.0, "label": "X"},            # float
            {"start": 12, "end": 16, "label": "B AD"},         # label with a space
            {"start": 12, "end": 16, "label": "O"},            # label O
            {"start": 11, "end": 17, "label": "WORK"},         # " film " trimmed to "film"
        ]},
        {"text": "ok", "entities": []},
    ]
    d = D.read_ner_data(_jsonl(tmp_path / "x.jsonl", recs))
    ex = d.examples[0]
    assert ex.entities == (Span(0, 9, "PERSON"), Span(12, 16, "WORK"), Span(22, 31, "PERSON"), Span(37, 46, "GPE"))
    assert text[37:46] == "São Paulo" and ex.group == "jaws" and d.repaired == 1
    reasons = [r.split(" (")[0] for _, r in d.skipped]
    assert sorted(reasons) == sorted([
        "span crosses a word boundary", "duplicate span", "span overlaps another", "empty span",
        "span outside the text", "span ends before it starts", "span start/end are not integers",
        "span start/end are not integers", "bad entity label", "bad entity label"])
    assert all(w == "x.jsonl:1" for w, _ in d.skipped)
    # labels are unknown where a span was skipped (crossing, overlapping, bad label)
    assert (0, 5) in ex.ignored and (17, 25) in ex.ignored and (12, 16) in ex.ignored
    assert d.summary()["skipped"]["span start/end are not integers"] == 2
    _refuse(r"x.jsonl:1: span crosses a word boundary \(0-5 'Spiel', PERSON\)", D.read_ner_data,
            tmp_path / "x.jsonl", strict=True)


def test_jsonl_bad_lines_hostile_input_and_first_record(tmp_path):
    recs = [{"text": "Tom", "entities": [[0, 3, "PER"]]}, "{not json", "[1, 2]", "[" * 100_000 + "]" * 100_000,
            {"text": 5, "entities": []}, {"text": "  ", "entities": []}, {"text": "a", "entities": {"a": 1}},
            {"text": "a", "entities": [[0, 1]]}, {"text": "a", "entities": [{"start": 0}]},
            '{"text": "\\ud800", "entities": []}', '{"text": "a", "entities": [[0, 1, "X"]], "start": ' + "9" * 5000 + "}"]
    p = _jsonl(tmp_path / "h.jsonl", recs)
    _write(p, p.read_bytes() + b'{"text": "\xff", "entities": []}\n')
    d = D.read_ner_data(p)
    assert len(d) == 1
    reasons = [r for _, r in d.skipped]
    assert [w for w, _ in d.skipped] == [f"h.jsonl:{n}" for n in range(2, 13)]
    for want, got in zip(["not valid JSON", "not a JSON object", "JSON nested too deeply", "no 'text' string",
                          "empty text", "'entities' is a JSON dict", "an entity is neither",
                          "an entity has no 'end', 'label'", "lone surrogate", "not valid JSON",
                          "not valid UTF-8"], reasons):
        assert want in got, (want, got)
    _refuse("h.jsonl:2: not valid JSON", D.read_ner_data, p, strict=True)
    msg = _refuse("needs 'text' and 'entities' keys", D.read_ner_data,
                  _jsonl(tmp_path / "c.jsonl", [{"text": "great", "label": "pos"}]))
    assert "text-classification" in msg


def test_bounds_on_file_size_line_length_and_decompressed_size(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_LINE_BYTES", 100)
    p = _jsonl(tmp_path / "l.jsonl", [{"text": "Tom", "entities": [[0, 3, "PER"]]},
                                      {"text": "x" * 500, "entities": []}, {"text": "Ann", "entities": [[0, 3, "PER"]]}])
    d = D.read_ner_data(p)
    assert [e.text for e in d.examples] == ["Tom", "Ann"] and d.skipped == (("l.jsonl:2", "line longer than 100 bytes"),)
    monkeypatch.setattr(D, "MAX_FILE_BYTES", 1000)
    _refuse("over the 0 MB limit", D.read_ner_data, _write(tmp_path / "big.conll", "a O\n" * 300))
    with gzip.open(tmp_path / "bomb.conll.gz", "wt") as f:  # 1.2 kB compressed to ~40 bytes
        f.write("a O\n" * 300)
    _refuse("over 0 MB once decompressed", D.read_ner_data, tmp_path / "bomb.conll.gz")
    _refuse("cannot be read .*gzip", D.read_ner_data, _write(tmp_path / "fake.jsonl.gz", b"not gzip at all"))


def test_missing_folder_empty_and_too_few_types(tmp_path):
    _refuse("no such file", D.read_ner_data, tmp_path / "nope.conll")
    _refuse("is a folder", D.read_ner_data, tmp_path)
    _refuse("no usable", D.read_ner_data, _write(tmp_path / "empty.conll", "\n\n"))
    p = _jsonl(tmp_path / "o.jsonl", [{"text": "nothing here", "entities": []}])
    _refuse("0 entity type", D.read_ner_data, p)
    assert len(D.read_ner_data(p, min_types=0)) == 1


def test_detect_format_claims_only_ner_files(tmp_path):
    import csv

    assert D.detect_format(_write(tmp_path / "a.conll", CONLL_IOB2)) == "conll"
    assert D.detect_format(_write(tmp_path / "a.txt", "Tom\tB-PER\nran\tO\n")) == "conll"
    assert D.detect_format(_jsonl(tmp_path / "a.jsonl", [{"text": "t", "entities": []}])) == "jsonl"
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "t", "entities": [[0, 1, "X"]]}) + "\n")
    assert D.detect_format(tmp_path / "a.jsonl.gz") == "jsonl"
    assert D.detect_format(_write(tmp_path / "brace.conll", "{ O\nx B-SYM\n} I-SYM\n")) == "conll"
    assert _simple(D.read_ner_data(tmp_path / "brace.conll")) == [("{ x }", [(2, 5, "SYM")])]
    # text-classification data in every form text.py reads, with labels that look like tags
    with open(tmp_path / "c.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], ["a fine film", "O"], ["bad", "B-X"]])
    _write(tmp_path / "c.tsv", "text\tlabel\nfine film\tpos\n")
    _write(tmp_path / "d.tsv", "fine film\tpos\nbad one\tneg\n")
    _jsonl(tmp_path / "c.jsonl", [{"text": "fine", "label": "pos"}])
    (tmp_path / "folder" / "pos").mkdir(parents=True)
    _write(tmp_path / "folder" / "pos" / "a.txt", "fine O")
    _write(tmp_path / "mixed.conll", "Tom B-PER\nsome text without tag\n")
    for name in ("c.csv", "c.tsv", "d.tsv", "c.jsonl", "folder", "missing.conll", "mixed.conll"):
        assert D.detect_format(tmp_path / name) is None, name
    assert D.detect_format(_write(tmp_path / "empty.conll", "")) is None
    assert D.detect_format(_write(tmp_path / "bad.jsonl.gz", b"nope")) is None


def test_subset_without_types_and_summary(tmp_path):
    d = D.read_ner_data(_write(tmp_path / "x.conll", CONLL_IOB2))
    s = d.subset([2, 0])
    assert [e.text for e in s.examples] == ["Tom Hanks Meg Ryan", "EU rejects German call ."]
    assert s.types == d.types and s.counts == {"MISC": 1, "ORG": 1, "PER": 2}
    w = d.without_types(["PER"])
    assert w.types == ("MISC", "ORG") and w.examples[1].entities == () and w.texts == d.texts
    _refuse("unknown entity type", d.without_types, ["LOC"])
    assert d.summary() == {"format": "conll", "scheme": "IOB2", "examples": 3, "entities": 5,
                           "per_type": {"MISC": 1, "ORG": 1, "PER": 3}, "skipped": {}, "repaired": 0}
    assert tag_set(["PER", "LOC"]) == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    _refuse("listed twice", tag_set, ["PER", "PER"])


# --------------------------------------------------------------------------- words

def test_words_split_punctuation_and_keep_accents_emoji_cjk():
    def words(t):
        return [t[a:b] for a, b in split_words(t)]

    assert words("Spielberg's  (Tom Hanks), U.S.-made") == \
        ["Spielberg", "'", "s", "(", "Tom", "Hanks", ")", ",", "U", ".", "S", ".", "-", "made"]
    assert words("São Paulo naïve café") == ["São", "Paulo", "naïve", "café"]
    assert words("great😀 film\t\u00a0ok\u2028x") == ["great😀", "film", "ok", "x"]
    assert words("東京 is Tokyo") == ["東", "京", "is", "Tokyo"]
    # combining marks and zero-width characters are transparent: inside a word, never one alone
    assert words("Beyonce\u0301 \u200b x\u200by \u0301") == ["Beyonce\u0301", "x\u200by"]
    assert words("a\u2014b \u201cq\u201d") == ["a", "\u2014", "b", "\u201c", "q", "\u201d"]
    assert split_words("") == [] and split_words("   ") == []


def test_ascii_fast_path_equals_the_general_rule():
    rng = random.Random(1)
    alphabet = [chr(c) for c in range(128)]
    for _ in range(3000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert split_words(t) == _split_words_loop(t), repr(t)


# --------------------------------------------------------------------------- the shipped data

def test_shipped_review_data_is_clean_and_matches_its_provenance():
    d = R.load_reviews_ner()
    meta = R.reviews_ner_provenance()
    assert (d.format, d.skipped, d.repaired) == ("jsonl", (), 0)
    assert len(d) == meta["sentences"] and d.counts == meta["entities_per_type"]
    assert list(d.types) == meta["types"] and "PERSON" in d.types and len(d.types) >= 6
    assert R.reviews_ner_path().stat().st_size < 2 * 2**20
    assert all(e.group for e in d.examples)
    # a mid-frequency type to hold out: a few hundred sentences hold it
    per_sentence = {t: sum(any(s.label == t for s in e.entities) for e in d.examples) for t in d.types}
    assert any(200 <= n <= 1000 for n in per_sentence.values()), per_sentence
    assert "agreement with" in (R._DATA / "README.md").read_text()


def test_token_classification_package_is_torch_free():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import edgetl.tasks.token_classification as t; from edgetl.tasks.token_classification import reviews; "
            "d = reviews.load_reviews_ner(); print(len(d))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 1000
