"""Real text with entity labels, offline: Rotten Tomatoes sentences labelled by spaCy's
``en_core_web_sm`` (silver labels), shipped with edgetl. Made by ``scripts/make_ner_data.py``;
provenance, counts and the file's sha256 in ``data/reviews_ner.meta.json`` and
``data/README.md``. Every figure measured on it is agreement with ``en_core_web_sm`` (entity
F1 0.84 on OntoNotes), not accuracy against human labels.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgetl.errors import DataError
from edgetl.tasks.token_classification.data import NerData, read_ner_data

__all__ = ["load_reviews_ner", "reviews_ner_path", "reviews_ner_provenance"]

_DATA = Path(__file__).resolve().parent / "data"
_NAME = "reviews_ner"


def reviews_ner_path() -> Path:
    """The shipped ``reviews_ner.jsonl.gz`` (checked against its recorded sha256)."""
    path = _DATA / f"{_NAME}.jsonl.gz"
    meta = reviews_ner_provenance()
    if not path.is_file():
        raise DataError(f"{path}: the shipped NER data is missing; reinstall edgetl")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != meta.get("sha256"):
        raise DataError(f"{path}: sha256 {digest[:12]}... is not the recorded {str(meta.get('sha256'))[:12]}...; "
                        "the file was changed: reinstall edgetl or rerun scripts/make_ner_data.py")
    return path


@lru_cache(maxsize=1)
def reviews_ner_provenance() -> dict[str, Any]:
    """Corpus, spaCy and model versions, command, date, counts per type, sha256."""
    path = _DATA / f"{_NAME}.meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); reinstall edgetl") from None


def load_reviews_ner() -> NerData:
    """The shipped silver NER sentences (``strict``: the file is clean). Each example's
    ``group`` is its movie: split by group, reviews of one movie share names."""
    return read_ner_data(reviews_ner_path(), strict=True)
