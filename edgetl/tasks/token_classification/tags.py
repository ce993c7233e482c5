"""Tags and spans: IOB2 tag sets, reading the tag schemes of CoNLL files (IOB1, IOB2, BIOES,
BILOU), word-level IOB2 tags from character spans, and strict IOB2 entity extraction.

Strict IOB2 (the rule ``seqeval`` applies with ``mode="strict", scheme=IOB2``, and the one the
metric and the argmax decoder use): an entity is a ``B-X`` followed by any number of ``I-X``
of the same type; an ``I-X`` that does not continue a ``B-X``/``I-X`` of type X belongs to no
entity. Reading *files* is lenient instead (an annotator's ``I-X`` after ``O`` starts an
entity, as IOB1 defines it), and every such repair is counted.
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple, Sequence

from edgetl.errors import DataError

__all__ = ["Span", "tag_set", "check_type", "parse_tag", "read_scheme_tags", "detect_scheme",
           "strict_entities", "spans_to_word_tags", "SCHEMES", "MAX_TYPE_CHARS"]

MAX_TYPE_CHARS = 64
SCHEMES = ("IOB1", "IOB2", "BIOES", "BILOU")
_TYPE_RE = re.compile(r"[^\s\-](?:[^\s]*[^\s\-])?")
_PREFIXES = frozenset("BIESLU")


class Span(NamedTuple):
    """An entity: characters ``text[start:end]`` are of type ``label``."""

    start: int
    end: int
    label: str


def check_type(label: object) -> str | None:
    """Why ``label`` cannot be an entity type, or None when it can: 1-64 characters, no
    whitespace or control characters, not ``O``, not starting or ending with ``-``."""
    if not isinstance(label, str):
        return f"entity label is a {type(label).__name__}, not a string"
    if not label:
        return "entity label is empty"
    if len(label) > MAX_TYPE_CHARS:
        return f"entity label is longer than {MAX_TYPE_CHARS} characters"
    if label == "O":
        return "entity label 'O' means outside any entity"
    if not _TYPE_RE.fullmatch(label) or not label.isprintable():
        return f"entity label {label!r} has whitespace, control characters or a leading/trailing '-'"
    return None


def tag_set(types: Iterable[str]) -> tuple[str, ...]:
    """``("O", "B-T1", "I-T1", "B-T2", "I-T2", ...)`` in the order of ``types`` (so types
    appended later keep the earlier tags' indices)."""
    out = ["O"]
    for t in types:
        why = check_type(t)
        if why:
            raise DataError(why)
        if f"B-{t}" in out:
            raise DataError(f"entity type {t!r} is listed twice")
        out += [f"B-{t}", f"I-{t}"]
    return tuple(out)


def parse_tag(tag: str) -> tuple[str, str | None] | None:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", None)``; None when it is neither
    ``O`` nor ``P-TYPE`` with P one of B, I, E, S, L, U and TYPE a valid type."""
    if tag == "O":
        return "O", None
    if len(tag) < 3 or tag[1] != "-" or tag[0] not in _PREFIXES or check_type(tag[2:]):
        return None
    return tag[0], tag[2:]


def read_scheme_tags(tags: Sequence[tuple[str, str | None]]) -> tuple[list[tuple[str, int, int]], int, int]:
    """Parsed tags of one sentence in any of IOB1, IOB2, BIOES, BILOU -> entities
    ``(type, first, last + 1)`` in token indices, the number of ``I-X`` that start an entity
    (normal in IOB1), and the number of BIOES breaks (an entity opened by ``B-``/``I-`` and
    not closed by ``E-``, an ``E-`` that continues nothing). Lenient on purpose: an ``I-X``
    or ``E-X`` that continues nothing starts an entity; an open entity ends where the next
    tag does not continue it. On well-formed input this is each scheme's own reading (IOB1's
    ``B-X`` only separates two adjacent X entities, which starting a new one already does)."""
    entities: list[tuple[str, int, int]] = []
    i_starts = breaks = 0
    cur: str | None = None  # type of the open entity
    start = 0
    for i, (prefix, typ) in enumerate(tags):
        if cur is not None and typ == cur and prefix in ("I", "E", "L"):
            if prefix != "I":
                entities.append((cur, start, i + 1))
                cur = None
            continue
        if cur is not None:  # the open entity ends here without an E-/L-
            entities.append((cur, start, i))
            cur = None
            breaks += 1
        if prefix == "O":
            continue
        if prefix == "I":
            i_starts += 1
        elif prefix in ("E", "L"):
            breaks += 1
        if prefix in ("S", "U", "E", "L"):
            entities.append((typ, i, i + 1))  # type: ignore[arg-type]
        else:
            cur, start = typ, i
    if cur is not None:
        entities.append((cur, start, len(tags)))
        breaks += 1
    return entities, i_starts, breaks


def detect_scheme(prefix_seen: set[str], i_starts: bool) -> str:
    """The scheme a file is written in, from the prefixes it uses and whether any ``I-X``
    starts an entity: BIOES/BILOU when E/S (L/U) appear, IOB1 when an I- starts one, else IOB2."""
    if prefix_seen & {"L", "U"}:
        return "BILOU"
    if prefix_seen & {"E", "S"}:
        return "BIOES"
    return "IOB1" if i_starts else "IOB2"


def strict_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities ``(type, first, last + 1)`` of an IOB2 tag sequence, strictly: ``B-X I-X*``;
    an ``I-X`` that continues no ``B-X``/``I-X`` is in no entity. Raises DataError on a tag
    that is not ``O``, ``B-TYPE`` or ``I-TYPE``."""
    out: list[tuple[str, int, int]] = []
    cur: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        parsed = parse_tag(tag) if isinstance(tag, str) else None
        if parsed is None or parsed[0] not in ("O", "B", "I"):
            raise DataError(f"tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        prefix, typ = parsed
        if prefix == "I" and cur is not None and typ == cur:
            continue
        if cur is not None:
            out.append((cur, start, i))
            cur = None
        if prefix == "B":
            cur, start = typ, i
    if cur is not None:
        out.append((cur, start, len(tags)))
    return out


def spans_to_word_tags(words: Sequence[tuple[int, int]], spans: Iterable[tuple[int, int, str]]) -> list[str]:
    """IOB2 tags of ``words`` (``(start, end)`` offsets, in order) for character ``spans``,
    which must start at a word's start, end at a word's end and not overlap (the reader
    guarantees it; anything else raises DataError)."""
    tags = ["O"] * len(words)
    by_start = {s: i for i, (s, _) in enumerate(words)}
    by_end = {e: i for i, (_, e) in enumerate(words)}
    for start, end, label in sorted(spans):
        first, last = by_start.get(start), by_end.get(end)
        if first is None or last is None or last < first:
            raise DataError(f"span {start}-{end} ({label}) does not start and end on word boundaries")
        if any(t != "O" for t in tags[first:last + 1]):
            raise DataError(f"span {start}-{end} ({label}) overlaps another span")
        tags[first] = f"B-{label}"
        for k in range(first + 1, last + 1):
            tags[k] = f"I-{label}"
    return tags
