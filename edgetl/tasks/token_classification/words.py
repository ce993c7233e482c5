"""What a *word* is for named-entity recognition: the one definition the data reader (spans
must start and end on word boundaries), the aligner (the first subword of each word carries
its tag) and the metric (spans become word-level IOB2 tags) share.

A word is what BERT's basic tokenizer makes of a text -- the ``BertNormalizer`` +
``BertPreTokenizer`` of all-MiniLM-L6-v2's ``tokenizer.json``:

- whitespace (space, tab, CR, LF, Unicode Zs/Zl/Zp) separates words;
- every punctuation character (ASCII ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~`` and Unicode P*)
  and every CJK ideograph is a word of its own;
- control and format characters (Cc, Cf), private-use characters (Co), U+0000, U+FFFD and
  combining marks (Mn, which the normaliser strips with the accents) are *transparent*: they
  neither start nor end a word, but belong to the word they sit in;
- any other run of characters is one word.

Why not whitespace-delimited words: most entities in running text touch punctuation
("Spielberg's", "(Tom Hanks)", "Paris,"), and whitespace words would cut every one of them
off the entity; BERT's words give each its own boundary, and they are exactly the units the
encoder's tokeniser splits into subwords. ``tests/test_ner_align.py`` checks that these words
are the tokeniser's (its ``word_ids``) on the review corpus and on tricky texts. Known
differences: about 500 of the 1.1M code points, all added in Unicode 11-14 (the tokeniser's
Rust tables are older than Python's ``unicodedata``), classify differently.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["split_words", "char_class", "SPACE", "ISOLATED", "TRANSPARENT", "LETTER"]

SPACE, ISOLATED, TRANSPARENT, LETTER = "space", "isolated", "transparent", "letter"

# Ranges of BERT's _is_chinese_char as the Rust tokenizers crate has them: its fifth range
# starts at 0x2B920, not the 0x2B820 of Google's BERT (measured: U+2B820..U+2B91F stay letters).
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _base_class(ch: str) -> str:
    cp = ord(ch)
    cat = unicodedata.category(ch)
    if ch in " \t\n\r" or cat in ("Zs", "Zl", "Zp"):
        return SPACE
    if cp in (0, 0xFFFD) or cat in ("Cc", "Cf", "Co", "Mn"):
        return TRANSPARENT
    if (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or cat.startswith("P")
            or any(lo <= cp <= hi for lo, hi in _CJK)):
        return ISOLATED
    return LETTER


@lru_cache(maxsize=65536)
def char_class(ch: str) -> str:
    """``space``, ``isolated`` (a word by itself), ``transparent`` or ``letter``."""
    base = _base_class(ch)
    if base != LETTER:
        return base
    # The normaliser decomposes (NFD) and drops the marks before splitting: U+2260 (not equal)
    # becomes "=" and is then punctuation.
    parts = [c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn"]
    if not parts:
        return TRANSPARENT
    return ISOLATED if any(_base_class(c) == ISOLATED for c in parts) else LETTER


# The same rule for ASCII text, as one regex (most text is ASCII; 5x faster than the loop):
# letters and digits with any ASCII control characters (transparent) after them, or one
# punctuation character.
_ASCII_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*|[!-/:-@\[-`{-~]")


def split_words(text: str) -> list[tuple[int, int]]:
    """The words of ``text`` as ``(start, end)`` character offsets, in order."""
    if text.isascii():
        return [m.span() for m in _ASCII_WORDS.finditer(text)]
    return _split_words_loop(text)


def _split_words_loop(text: str) -> list[tuple[int, int]]:
    words: list[tuple[int, int]] = []
    start = -1  # start of the open word, -1 when none is open
    end = -1
    for i, ch in enumerate(text):
        if ch.isascii() and ch.isalnum():  # the common case, without the table look-up
            kind = LETTER
        else:
            kind = char_class(ch)
        if kind == LETTER:
            if start < 0:
                start = i
            end = i + 1
        elif kind == TRANSPARENT:
            if start >= 0:
                end = i + 1
        else:
            if start >= 0:
                words.append((start, end))
                start = -1
            if kind == ISOLATED:
                words.append((i, i + 1))
    if start >= 0:
        words.append((start, end))
    return words
