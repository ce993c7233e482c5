"""The token-classification task's torch-free parts (fast): registration, inference from the
data, head labels and rows, the split by group, the guard's entity agreement. The real pipeline
is tests/test_ner_pipeline.py."""

from __future__ import annotations

import json

import numpy as np
import pytest



def test_task_registered_and_inferred(tmp_path):
    from edgetl.tasks import get_task, infer_task

    task = get_task("token-classification")
    assert task.modalities == ("text",) and task.pooled is False
    spans = tmp_path / "spans.jsonl"
    spans.write_text(json.dumps({"text": "Tom Hanks is great", "entities": [{"start": 0, "end": 9, "label": "PER"}]})
                     + "\n")
    conll = tmp_path / "train.conll"
    conll.write_text("Tom B-PER\nHanks I-PER\nshines O\n\nParis B-LOC\n")
    table = tmp_path / "reviews.jsonl"
    table.write_text(json.dumps({"text": "a triumph", "label": "fresh"}) + "\n")
    assert infer_task(spans, "text") == "token-classification"
    assert infer_task(conll, "text") == "token-classification"
    assert infer_task(table, "text") == "classification"
    assert infer_task(spans, "image") == "classification"  # a task only for its modalities


def test_head_labels_rows_and_tags():
    from edgetl.tasks import get_task
    from edgetl.tasks.token_classification.task import tags_of, types_of

    task = get_task("token-classification")
    assert task.head_labels(["PER", "LOC"]) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert task.head_labels(["O", "B-PER", "I-PER"]) == ["O", "B-PER", "I-PER"]  # a tag set stays
    assert types_of(["O", "B-PER", "I-PER", "B-X", "I-X"]) == ("PER", "X")
    assert tags_of(["PER"]) == ("O", "B-PER", "I-PER")
    z = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    rows = task.rows(z, {"attention_mask": np.ones((2, 3), np.int64)})
    assert rows.shape == (6, 4) and np.array_equal(rows[4], z[1, 1])


def test_split_by_group_keeps_movies_apart():
    from edgetl.tasks.token_classification import load_reviews_ner
    from edgetl.workstation.token_classification.train import split_examples

    examples = load_reviews_ner().examples[:600]
    train, val, how = split_examples(examples, 0.2, seed=0)
    assert how == "group"
    assert not {examples[i].group for i in train} & {examples[i].group for i in val}
    assert 0.15 < len(val) / len(examples) < 0.3
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(examples)))
    again = split_examples(examples, 0.2, seed=0)
    assert np.array_equal(again[1], val)


def test_entity_agreement_is_symmetric_and_exact():
    from edgetl.workstation.token_classification.guard import entity_agreement

    a = [[{"start": 0, "end": 3, "label": "X"}, {"start": 5, "end": 9, "label": "Y"}], []]
    assert entity_agreement(a, a) == 1.0
    b = [[{"start": 0, "end": 3, "label": "X"}], [{"start": 1, "end": 2, "label": "X"}]]
    assert entity_agreement(a, b) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert entity_agreement([[]], [[]]) == 1.0


def test_extend_tags_appends_new_types_at_the_end():
    from edgetl.tasks.token_classification.task import extend_tags

    old = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    assert extend_tags(old, ["NORP"]) == old + ("B-NORP", "I-NORP")
    assert extend_tags(["PER", "LOC"], ["LOC", "X", "X"]) == old + ("B-X", "I-X")
