"""The NER metric equals seqeval (strict IOB2) on random and realistic tag sequences, and
spans score the same as their word tags."""

from __future__ import annotations

import random
import warnings

import pytest

from edgetl.errors import DataError
from edgetl.tasks.token_classification import metric as M
from edgetl.tasks.token_classification.tags import Span, strict_entities

seqeval_metrics = pytest.importorskip("seqeval.metrics")
from seqeval.scheme import IOB2, Tokens  # noqa: E402

TOL = 1e-9


def _seqeval(y_true, y_pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined ratios: seqeval warns and uses 0, as we do
        report = seqeval_metrics.classification_report(y_true, y_pred, mode="strict", scheme=IOB2,
                                                        output_dict=True)
        f1 = seqeval_metrics.f1_score(y_true, y_pred, mode="strict", scheme=IOB2)
        p = seqeval_metrics.precision_score(y_true, y_pred, mode="strict", scheme=IOB2)
        r = seqeval_metrics.recall_score(y_true, y_pred, mode="strict", scheme=IOB2)
    return report, f1, p, r


def _max_diff(y_true, y_pred) -> float:
    ours = M.entity_scores(y_true, y_pred)
    report, f1, p, r = _seqeval(y_true, y_pred)
    types = sorted(k for k in report if not k.endswith(" avg"))
    assert types == sorted(ours.per_type), (types, sorted(ours.per_type))
    diffs = [abs(ours.f1 - f1), abs(ours.precision - p), abs(ours.recall - r)]
    micro = report["micro avg"]
    diffs += [abs(ours.f1 - micro["f1-score"]), abs(ours.precision - micro["precision"]),
              abs(ours.recall - micro["recall"])]
    assert ours.n_true == micro["support"]
    for t in types:
        mine, ref = ours.per_type[t], report[t]
        assert mine["support"] == ref["support"]
        diffs += [abs(mine["precision"] - ref["precision"]), abs(mine["recall"] - ref["recall"]),
                  abs(mine["f1"] - ref["f1-score"])]
    return max(diffs)


def _random_tags(rng: random.Random, n: int, types: str, p_invalid: float) -> list[str]:
    tags = []
    while len(tags) < n:
        u = rng.random()
        if u < 0.5:
            tags.append("O")
        elif u < 0.5 + p_invalid:  # an I- that may continue nothing, or another type
            tags.append(f"I-{rng.choice(types)}")
        else:
            t = rng.choice(types)
            tags += [f"B-{t}"] + [f"I-{t}"] * rng.choice([0, 0, 1, 2])
    return tags[:n]


def test_strict_entities_equal_seqeval_tokens():
    rng = random.Random(0)
    for _ in range(2000):
        tags = _random_tags(rng, rng.randint(0, 12), "XYZ", 0.2)
        ref = [(e.tag, e.start, e.end) for e in Tokens(tags, IOB2).entities]
        assert strict_entities(tags) == ref, tags


def test_equals_seqeval_on_random_sequences():
    """Invalid I- starts, adjacent entities, empty sentences, types only in truth (Z) or only
    in predictions (W): per type and micro, |diff| <= 1e-9."""
    rng = random.Random(1)
    worst = 0.0
    for trial in range(300):
        lengths = [rng.choice([0, 1, 3, 8, 20]) for _ in range(rng.randint(1, 12))]
        y_true = [_random_tags(rng, n, "XYZ", 0.1) for n in lengths]
        if trial % 3 == 0:  # predictions: the truth with edits
            y_pred = []
            for seq in y_true:
                seq = list(seq)
                for i in range(len(seq)):
                    if rng.random() < 0.15:
                        seq[i] = rng.choice(["O", "B-X", "I-X", "B-Y", "I-Y", "B-W", "I-W"])
                y_pred.append(seq)
        else:
            y_pred = [_random_tags(rng, n, "XYW", 0.2) for n in lengths]
        worst = max(worst, _max_diff(y_true, y_pred))
    assert worst <= TOL, worst


def test_equals_seqeval_on_realistic_review_predictions():
    """Silver truth from the shipped reviews; predictions with the errors taggers make:
    boundary shifts, wrong types, misses, spurious entities, dangling I-."""
    from edgetl.tasks.token_classification.reviews import load_reviews_ner

    d = load_reviews_ner().subset(range(1500))
    rng = random.Random(2)
    y_true = [M.spans_to_tags(e.text, e.entities) for e in d.examples]
    y_pred = []
    for tags in y_true:
        tags = list(tags)
        for i, t in enumerate(tags):
            u = rng.random()
            if t.startswith("B-") and u < 0.05:
                tags[i] = "O"  # miss (its I- are left dangling)
            elif t.startswith("B-") and u < 0.10:
                tags[i] = "B-" + rng.choice(d.types)  # wrong type
            elif t.startswith("I-") and u < 0.05:
                tags[i] = "O"  # cut short
            elif t == "O" and u < 0.02:
                tags[i] = rng.choice(["B-", "I-"]) + rng.choice(d.types)  # spurious
        y_pred.append(tags)
    assert _max_diff(y_true, y_pred) <= TOL
    ours = M.entity_scores(y_true, y_pred)
    assert 0.5 < ours.f1 < 1.0 and ours.n == 1500
    assert M.entity_scores(y_true, y_true).f1 == 1.0


def test_degenerate_cases_equal_seqeval():
    cases = [
        ([["O", "O"]], [["O", "O"]]),            # nothing anywhere
        ([["B-X"]], [["O"]]),                     # nothing predicted
        ([["O"]], [["B-X"]]),                     # nothing true
        ([[]], [[]]),                             # an empty sentence only
        ([["I-X", "I-X"]], [["B-X", "I-X"]]),     # truth is all dangling I-: no true entity
        ([["B-X", "B-X"]], [["B-X", "I-X"]]),     # adjacent entities vs one long one
    ]
    for y_true, y_pred in cases:
        _, f1, p, r = _seqeval(y_true, y_pred)
        ours = M.entity_scores(y_true, y_pred)
        assert max(abs(ours.f1 - f1), abs(ours.precision - p), abs(ours.recall - r)) <= TOL, (y_true, y_pred)
        if any(strict_entities(s) for s in y_true + y_pred):  # seqeval's report needs one entity
            assert _max_diff(y_true, y_pred) <= TOL, (y_true, y_pred)


def test_bad_input_is_one_line():
    for y_true, y_pred, match in [([["O"]], [["O"], ["O"]], "1 true tag sequences but 2"),
                                  ([["O", "O"]], [["O"]], "sequence 0: 2 true tags but 1"),
                                  ([["X-PER"]], [["O"]], "not IOB2"), ([["E-PER"]], [["O"]], "not IOB2"),
                                  ([["B-"]], [["O"]], "not IOB2"), ([[None]], [["O"]], "not IOB2")]:
        with pytest.raises(DataError, match=match):
            M.entity_scores(y_true, y_pred)


def test_spans_score_as_their_tags():
    text = "Tom Hanks met Meg Ryan in Paris, France."
    true = [Span(0, 9, "PER"), Span(14, 22, "PER"), Span(26, 31, "GPE"), Span(33, 39, "GPE")]
    pred = [{"start": 0, "end": 9, "label": "PER", "score": 0.9, "text": "Tom Hanks"},
            {"start": 14, "end": 17, "label": "PER"}, (26, 39, "GPE")]
    assert M.spans_to_tags(text, true) == ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-GPE", "O",
                                           "B-GPE", "O"]
    s = M.score_spans([text], [true], [pred])
    assert (s.n_true, s.n_pred, s.n_correct) == (4, 3, 1)
    assert s.to_dict()["per_type"]["PER"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2,
                                              "predicted": 2, "correct": 1}
    assert set(s.to_dict()) >= {"f1", "precision", "recall", "per_type", "n"}
    with pytest.raises(DataError, match="word boundaries"):
        M.spans_to_tags(text, [(0, 5, "PER")])
    with pytest.raises(DataError, match="overlaps"):
        M.spans_to_tags(text, [(0, 9, "PER"), (4, 9, "PER")])
    with pytest.raises(DataError, match="1 texts, 1 true and 2"):
        M.score_spans([text], [true], [pred, pred])
