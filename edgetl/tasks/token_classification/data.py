"""Reading NER data: CoNLL-style token files and JSONL with character spans, into one
form -- texts with sorted, non-overlapping, word-aligned entity spans (characters).

CoNLL: one token per line, whitespace-separated columns, the tag in the LAST column, a blank
line between sentences, ``-DOCSTART-`` lines skipped; tags in IOB1, IOB2, BIOES or BILOU (the
scheme is detected per file and reported). A sentence's text is its tokens joined by single
spaces. JSONL: one object per line, ``{"text": ..., "entities": [{"start", "end", "label"},
...]}`` (``[start, end, label]`` triples are read too; an optional string ``"group"`` names
what the example belongs to, for splits that must not leak). Offsets are Python string
indices (Unicode code points), as spaCy writes them; tools that count UTF-16 units disagree
after an emoji.

A span must start at a word's start and end at a word's end (words are defined once, in
:mod:`.words`). Whitespace at a span's edges is trimmed (counted in ``repaired``). A span that
crosses a word boundary, is empty, falls outside its text, has a bad label, duplicates or
overlaps another (the longest is kept, the earliest on ties, as spaCy's ``filter_spans`` does)
is skipped and listed in ``skipped``; its characters go to the example's ``ignored`` ranges,
where labels are unknown (training should not call them ``O``). With ``strict=True`` the first
such problem refuses the file in one line naming file and line.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from edgetl.errors import DataError
from edgetl.modalities.text import MAX_FILE_BYTES, MAX_TEXT_CHARS
from edgetl.tasks.token_classification.tags import (
    Span, check_type, detect_scheme, parse_tag, read_scheme_tags,
)
from edgetl.tasks.token_classification.words import SPACE, char_class, split_words

__all__ = ["NerExample", "NerData", "read_ner_data", "write_ner_jsonl", "detect_format", "FORMATS", "MAX_LINE_BYTES"]

FORMATS = ("conll", "jsonl")
MAX_LINE_BYTES = 1_000_000  # one JSONL record or CoNLL line; longer lines are skipped unread
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_SNIFF_LINES = 200


@dataclass(frozen=True)
class NerExample:
    """A text and its entities (sorted ``Span`` s). ``ignored``: character ranges of skipped
    spans, where the labels are unknown. ``where``: ``file:line``. ``group``: what the text
    belongs to (a movie, a document), when the data says."""

    text: str
    entities: tuple[Span, ...]
    where: str = ""
    ignored: tuple[tuple[int, int], ...] = ()
    group: str | None = None


@dataclass(frozen=True)
class NerData:
    """Examples with entity spans. ``types``: the sorted entity types found; ``counts``:
    entities per type; ``skipped``: ``(where, reason)`` for every example or span left out;
    ``scheme``: the CoNLL tag scheme read (IOB1, IOB2, BIOES, BILOU) or ``spans`` for JSONL;
    ``repaired``: tags read leniently (BIOES breaks) or span edges trimmed of whitespace."""

    root: Path
    format: str
    scheme: str
    types: tuple[str, ...]
    examples: tuple[NerExample, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    repaired: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(e.text for e in self.examples)

    @property
    def labels(self) -> tuple[str, ...]:
        """The entity types (the class names, as other tasks' data name them)."""
        return self.types

    @property
    def items(self) -> tuple[NerExample, ...]:
        """The examples (the annotated items, as other tasks' data name them)."""
        return self.examples

    def subset(self, indices: Sequence[int]) -> "NerData":
        """These examples, in this order; ``types`` stay (a split keeps the label space)."""
        ex = tuple(self.examples[int(i)] for i in indices)
        return replace(self, examples=ex, counts=_counts(ex, self.types))

    def without_types(self, types: Iterable[str]) -> "NerData":
        """The same texts with every entity of ``types`` removed (its words become ``O``,
        as for a model that has not learnt the type yet)."""
        drop = set(types)
        unknown = sorted(drop - set(self.types))
        if unknown:
            raise DataError(f"unknown entity type(s) {', '.join(unknown)}; the data has {', '.join(self.types)}")
        ex = tuple(replace(e, entities=tuple(s for s in e.entities if s.label not in drop)) for e in self.examples)
        kept = tuple(t for t in self.types if t not in drop)
        return replace(self, examples=ex, types=kept, counts=_counts(ex, kept))

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: examples, entities, per type, skipped by reason."""
        reasons = Counter(reason.split(" (")[0] for _, reason in self.skipped)
        return {"format": self.format, "scheme": self.scheme, "examples": len(self.examples),
                "entities": sum(self.counts.values()), "per_type": dict(self.counts),
                "skipped": dict(sorted(reasons.items())), "repaired": self.repaired}


def _counts(examples: Iterable[NerExample], types: Sequence[str]) -> dict[str, int]:
    c = Counter(s.label for e in examples for s in e.entities)
    return {t: c.get(t, 0) for t in types}


# --------------------------------------------------------------------------- bounded lines

def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _lines(path: Path, *, max_lines: int | None = None) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` or ``(line number, None, problem)`` for each line, with
    the file (decompressed) bounded by MAX_FILE_BYTES and each line by MAX_LINE_BYTES."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size / 2**20:,.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit; "
                        "split it into smaller files")
    total = 0
    try:
        with _open(path) as f:
            for n in range(1, (max_lines or 1 << 62) + 1):
                raw = f.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                total += len(raw)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):  # skip the rest, a bounded chunk at a time
                        raw = f.readline(MAX_LINE_BYTES)
                        total += len(raw)
                        if total > MAX_FILE_BYTES:
                            break
                    if total <= MAX_FILE_BYTES:
                        yield n, None, f"line longer than {MAX_LINE_BYTES:,} bytes"
                        continue
                if total > MAX_FILE_BYTES:
                    raise DataError(f"{path}: over {MAX_FILE_BYTES // 2**20} MB once decompressed; "
                                    "split it into smaller files")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield n, None, f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8"
                    continue
                if n == 1:
                    text = text.removeprefix("\ufeff")
                yield n, text.rstrip("\r\n"), None
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({exc}); "
                        + ("is it really gzip-compressed?" if path.name.lower().endswith(".gz") else "check the file"))\
            from None


# --------------------------------------------------------------------------- spans

class _Problems:
    """Collects skipped items; with strict, the first one raises."""

    def __init__(self, path: Path, strict: bool):
        self.path, self.strict = path, strict
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, reason: str) -> None:
        if self.strict:
            raise DataError(f"{self.path.parent / where}: {reason} (fix it, or read without strict to skip it)")
        self.items.append((where, reason))


def _check_spans(text: str, raw: Sequence[tuple[Any, Any, Any]], where: str,
                 problems: _Problems) -> tuple[tuple[Span, ...], tuple[tuple[int, int], ...], int]:
    """Validate raw ``(start, end, label)`` spans of ``text``: kept spans (sorted), ignored
    character ranges, and how many span edges were trimmed of whitespace."""
    words = split_words(text)
    starts = {s for s, _ in words}
    ends = {e for _, e in words}
    good: list[Span] = []
    ignored: list[tuple[int, int]] = []
    trimmed = 0
    for start, end, label in raw:
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
        if not ints:
            problems.add(where, f"span start/end are not integers ({start!r}, {end!r})")
            continue
        if start > end:
            problems.add(where, f"span ends before it starts ({start}-{end})")
            continue
        if not 0 <= start <= end <= len(text):
            problems.add(where, f"span outside the text ({start}-{end}, the text has {len(text)} characters)")
            continue
        what = f"{start}-{end} {text[start:end][:40]!r}"
        why = check_type(label)
        if why:
            problems.add(where, f"bad entity label ({why}, span {what})")
            ignored.append((start, end))
            continue
        s, e = start, end
        while s < e and char_class(text[s]) == SPACE:
            s += 1
        while e > s and char_class(text[e - 1]) == SPACE:
            e -= 1
        if s == e:
            problems.add(where, f"empty span ({what}, {label})")
            continue
        trimmed += (s, e) != (start, end)
        if s not in starts or e not in ends:
            problems.add(where, f"span crosses a word boundary ({what}, {label})")
            ignored.append((s, e))
            continue
        good.append(Span(s, e, label))
    # duplicates, then overlaps: keep the longest, the earliest on ties (spaCy's filter_spans)
    kept: list[Span] = []
    taken: set[int] = set()
    seen: set[Span] = set()
    for sp in sorted(good, key=lambda x: (x.start - x.end, x.start)):  # stable: input order on ties
        what = f"{sp.start}-{sp.end} {text[sp.start:sp.end][:40]!r}, {sp.label}"
        if sp in seen:
            problems.add(where, f"duplicate span ({what})")
            continue
        seen.add(sp)
        chars = range(sp.start, sp.end)
        if any(c in taken for c in chars):
            problems.add(where, f"span overlaps another ({what})")
            ignored.append((sp.start, sp.end))
            continue
        taken.update(chars)
        kept.append(sp)
    return tuple(sorted(kept)), tuple(sorted(set(ignored))), trimmed


# --------------------------------------------------------------------------- JSONL

def _raw_entities(value: Any) -> tuple[list[tuple[Any, Any, Any]] | None, str | None]:
    if not isinstance(value, list):
        return None, f"'entities' is a JSON {type(value).__name__}, not a list"
    out = []
    for item in value:
        if isinstance(item, dict):
            missing = [k for k in ("start", "end", "label") if k not in item]
            if missing:
                return None, f"an entity has no {', '.join(map(repr, missing))} (it needs start, end, label)"
            out.append((item["start"], item["end"], item["label"]))
        elif isinstance(item, list) and len(item) == 3:
            out.append(tuple(item))
        else:
            return None, "an entity is neither {\"start\", \"end\", \"label\"} nor [start, end, label]"
    return out, None


def _read_jsonl(path: Path, problems: _Problems):
    examples: list[NerExample] = []
    repaired = 0
    checked = False
    for n, line, problem in _lines(path):
        where = f"{path.name}:{n}"
        if problem:
            problems.add(where, problem)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            problems.add(where, "JSON nested too deeply")
            continue
        except ValueError as exc:
            problems.add(where, f"not valid JSON ({str(exc).splitlines()[0][:80]}; JSONL is one object per line)")
            continue
        if not isinstance(obj, dict):
            problems.add(where, f"not a JSON object (a {type(obj).__name__})")
            continue
        if not checked:
            checked = True
            if "text" not in obj or "entities" not in obj:
                hint = (" (it looks like text-classification data: use --task classification)"
                        if "label" in obj and "entities" not in obj else "")
                raise DataError(f"{where}: NER JSONL needs 'text' and 'entities' keys, found "
                                f"{', '.join(map(repr, obj)) or 'none'}{hint}")
        text = obj.get("text")
        if not isinstance(text, str):
            problems.add(where, "no 'text' string")
            continue
        if not text.strip():
            problems.add(where, "empty text")
            continue
        if len(text) > MAX_TEXT_CHARS:
            problems.add(where, f"text longer than {MAX_TEXT_CHARS:,} characters; split it")
            continue
        if any("\ud800" <= ch <= "\udfff" for ch in text):
            problems.add(where, "text holds a lone surrogate (not valid Unicode)")
            continue
        raw, why = _raw_entities(obj.get("entities"))
        if raw is None:
            problems.add(where, why or "bad entities")
            continue
        group = obj.get("group")
        spans, ignored, trimmed = _check_spans(text, raw, where, problems)
        repaired += trimmed
        examples.append(NerExample(text, spans, where, ignored, group if isinstance(group, str) else None))
    return examples, "spans", repaired


# --------------------------------------------------------------------------- CoNLL

def _conll_sentences(path: Path, problems: _Problems) -> Iterator[tuple[int, list[tuple[str, str, int]]]]:
    """``(first line, [(token, tag, line), ...])`` per well-formed sentence."""
    rows: list[tuple[str, str, int]] = []
    first, bad = 0, None

    def flush():
        nonlocal rows, bad
        out = (first, rows) if rows and bad is None else None
        if bad is not None:
            problems.add(*bad)
        rows, bad = [], None
        return out

    for n, line, problem in _lines(path):
        if problem:
            if bad is None:
                bad = (f"{path.name}:{n}", f"{problem} (sentence left out)")
            continue
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            done = flush()
            if done:
                yield done
            continue
        if not rows and bad is None:
            first = n
        if bad is not None:
            continue
        if len(fields) < 2:
            bad = (f"{path.name}:{n}", f"one column {line.strip()[:40]!r}; a CoNLL line is a token and its tag "
                   "(the tag in the last column)")
            continue
        if parse_tag(fields[-1]) is None:
            bad = (f"{path.name}:{n}", f"tag {fields[-1][:40]!r} is not O or B-/I-/E-/S-/L-/U-TYPE "
                   "(the tag must be in the last column)")
            continue
        rows.append((fields[0], fields[-1], n))
    done = flush()
    if done:
        yield done


def _read_conll(path: Path, problems: _Problems):
    examples: list[NerExample] = []
    prefixes: set[str] = set()
    i_starts = breaks = 0
    for first, rows in _conll_sentences(path, problems):
        where = f"{path.name}:{first}"
        text = " ".join(tok for tok, _, _ in rows)
        if len(text) > MAX_TEXT_CHARS:
            problems.add(where, f"sentence longer than {MAX_TEXT_CHARS:,} characters")
            continue
        offsets, pos = [], 0
        for tok, _, _ in rows:
            offsets.append((pos, pos + len(tok)))
            pos += len(tok) + 1
        parsed = [parse_tag(tag) for _, tag, _ in rows]
        prefixes.update(p for p, _ in parsed)  # type: ignore[misc]
        ents, i_s, br = read_scheme_tags(parsed)  # type: ignore[arg-type]
        i_starts += i_s
        breaks += br
        raw = [(offsets[a][0], offsets[b - 1][1], typ) for typ, a, b in ents]
        spans, ignored, _ = _check_spans(text, raw, where, problems)
        examples.append(NerExample(text, spans, where, ignored))
    scheme = detect_scheme(prefixes, i_starts > 0)
    repaired = breaks + i_starts if scheme in ("BIOES", "BILOU") else 0
    return examples, scheme, repaired


# --------------------------------------------------------------------------- entry points

def _stem_suffix(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return Path(name).suffix


def _first_lines(path: Path) -> list[str]:
    out = []
    for _, line, problem in _lines(path, max_lines=_SNIFF_LINES):
        if problem:
            return out if out else []
        if line is not None and line.strip():
            out.append(line)
    return out


def _json_object(line: str) -> dict | None:
    if not line.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def detect_format(data: str | Path) -> str | None:
    """``"conll"`` or ``"jsonl"`` when ``data`` is an NER file, else None (never raises).
    Ordinary text-classification files (a ``label`` column or key, no ``entities``) are not
    claimed: JSONL needs ``text`` and ``entities`` in its first record; CoNLL needs every one
    of its first lines (up to 200, ``-DOCSTART-`` aside) to end in a tag."""
    p = Path(data)
    try:
        if not p.is_file():
            return None
        lines = _first_lines(p)
    except (DataError, OSError):
        return None
    if not lines:
        return None
    obj = _json_object(lines[0])
    if obj is not None:
        ok = isinstance(obj.get("text"), str) and isinstance(obj.get("entities"), list)
        return "jsonl" if ok else None
    rows = [ln.split() for ln in lines]
    rows = [r for r in rows if r[0] != "-DOCSTART-"]
    if rows and all(len(r) >= 2 and parse_tag(r[-1]) is not None for r in rows):
        return "conll"
    return None


def read_ner_data(data: str | Path, *, strict: bool = False, min_types: int = 1) -> NerData:
    """Read a CoNLL-style file or a JSONL file of texts with character spans (either may be
    gzip-compressed, ``.gz``). The format: JSONL for ``.jsonl``/``.json``/``.ndjson`` or a
    first line that is a JSON object, CoNLL otherwise. Unusable examples and spans are skipped
    and listed; with ``strict`` the first one refuses the file. At least ``min_types`` entity
    types must remain."""
    path = Path(data)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; NER data is one file (CoNLL, or JSONL with text and entities)")
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a CoNLL file or a JSONL file with text and entities")
    problems = _Problems(path, strict)
    lines = _first_lines(path)
    if _stem_suffix(path) in _JSONL_SUFFIXES or (lines and _json_object(lines[0]) is not None):
        fmt, (examples, scheme, repaired) = "jsonl", _read_jsonl(path, problems)
    else:
        fmt, (examples, scheme, repaired) = "conll", _read_conll(path, problems)
    if not examples:
        first = f"; first: {problems.items[0][0]}: {problems.items[0][1]}" if problems.items else ""
        raise DataError(f"{path}: no usable {fmt.upper()} examples ({len(problems.items)} skipped{first})")
    types = tuple(sorted({s.label for e in examples for s in e.entities}))
    if len(types) < min_types:
        raise DataError(f"{path}: {len(types)} entity type(s) found in {len(examples)} examples; "
                        f"at least {min_types} needed")
    return NerData(path, fmt, scheme, types, tuple(examples), tuple(problems.items),
                   _counts(examples, types), repaired)


def write_ner_jsonl(path: str | Path, examples: Iterable[NerExample]) -> Path:
    """Write ``examples`` as the JSONL :func:`read_ner_data` reads (text, group, character spans)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "group": e.group,
                                "entities": [{"start": s.start, "end": s.end, "label": s.label} for s in e.entities]})
                    + "\n")
    return path
