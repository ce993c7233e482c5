"""Token classification (named-entity recognition): torch-free building blocks.

- :mod:`.words`   what a word is (BERT's basic tokenizer), shared by all of the below
- :mod:`.tags`    IOB2 tag sets, tag schemes, strict entity extraction
- :mod:`.data`    CoNLL and JSONL-with-spans readers -> :class:`NerData`
- :mod:`.align`   subword alignment (first subword carries the tag) and decoding to spans
- :mod:`.metric`  entity-level P/R/F1, strict IOB2 (= seqeval)
- :mod:`.reviews` silver-labelled Rotten Tomatoes sentences shipped with edgetl
"""

from edgetl.tasks.token_classification.align import (
    IGNORE, Encoding, decode, encode, encode_batch, pad_labels, stack, token_labels,
)
from edgetl.tasks.token_classification.data import NerData, NerExample, detect_format, read_ner_data, write_ner_jsonl
from edgetl.tasks.token_classification.metric import EntityScores, entity_scores, score_spans, spans_to_tags
from edgetl.tasks.token_classification.reviews import load_reviews_ner, reviews_ner_provenance
from edgetl.tasks.token_classification.tags import Span, strict_entities, tag_set
from edgetl.tasks.token_classification.words import split_words

__all__ = ["write_ner_jsonl", 
    "NerData", "NerExample", "Span", "read_ner_data", "detect_format",
    "Encoding", "encode", "encode_batch", "stack", "pad_labels", "token_labels", "decode", "IGNORE",
    "EntityScores", "entity_scores", "score_spans", "spans_to_tags",
    "load_reviews_ner", "reviews_ner_provenance",
    "tag_set", "strict_entities", "split_words",
]
