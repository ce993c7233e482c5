"""Subwords and words: tokenise a text keeping character offsets, put each word's IOB2 tag on
its FIRST subword (the others, [CLS], [SEP] and padding get -100, ignored by the loss), and
decode per-token tag probabilities back to entity spans in the original text.

Words are :func:`.words.split_words`'s (the reader checks spans against the same words); a
token belongs to the word its first character falls in, by the tokeniser's offsets, which
point into the original text (accents, emoji, repeated spaces included). For
all-MiniLM-L6-v2's tokeniser these are exactly its own ``word_ids`` (tested on the corpus).

Long texts are truncated at ``max_length`` tokens, not split into windows: the frozen encoder
runs once per text at a cost bounded by ``max_length`` (what the device budgets and the bench
measures), the reviews and sentences this serves fit (reviews: 78 tokens at most), and
windows would need overlap merging in the device's decoder. Words past the cut get no label
and no prediction; :attr:`Encoding.words_cut` counts them so callers can report it (raise
``max_length`` up to the encoder's 512 where texts are longer).

Decoding: a word's tag probabilities are those of its first subword. By default
(``constrained=True``) the tag sequence is the most probable one that is valid IOB2 (Viterbi:
an ``I-X`` only after ``B-X``/``I-X``), so no ``I-X`` is ever left dangling. With
``constrained=False`` each word takes its most probable tag and entities are read strictly
(``B-X I-X*``; an ``I-X`` that continues nothing is dropped), which is what ``seqeval``'s
strict IOB2 mode and :mod:`.metric` do with such a tag. Either way, what decode returns scores
the same under the strict metric as the tags it chose. An entity's ``score`` is the mean over
its words of the chosen tag's probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import tokenizers

from edgetl.errors import ConfigError, DataError
from edgetl.modalities.text import MAX_TEXT_CHARS
from edgetl.tasks.token_classification.data import NerExample
from edgetl.tasks.token_classification.tags import parse_tag, spans_to_word_tags, strict_entities
from edgetl.tasks.token_classification.words import split_words

__all__ = ["Encoding", "encode", "encode_batch", "stack", "pad_labels", "token_labels", "decode", "IGNORE"]

IGNORE = -100  # the label the loss skips (PyTorch's CrossEntropyLoss ignore_index default)


@dataclass(frozen=True, eq=False)
class Encoding:
    """One tokenised text (no padding). ``offsets[t]``: the characters of token ``t`` in
    ``text`` ((0, 0) for [CLS]/[SEP]); ``word_index[t]``: its word, -1 for special tokens;
    ``words``: every word's (start, end); ``first_token[w]``: the index of word ``w``'s first
    subword, -1 when it has none (cut by truncation, or made only of characters the tokeniser
    drops); ``words_cut``: words past ``max_length``."""

    text: str
    input_ids: np.ndarray
    attention_mask: np.ndarray
    offsets: np.ndarray
    word_index: np.ndarray
    words: tuple[tuple[int, int], ...]
    first_token: np.ndarray
    words_cut: int

    def __len__(self) -> int:
        return len(self.input_ids)


def _check_tokenizer(tokenizer: tokenizers.Tokenizer, max_length: int) -> None:
    trunc = tokenizer.truncation
    if not trunc or int(trunc.get("max_length", -1)) != max_length:
        have = trunc.get("max_length") if trunc else None
        raise ConfigError(f"the tokenizer truncates at {have}, not at max_length={max_length}; "
                          "load it with edgetl.modalities.text.load_tokenizer(path, max_length)")


def _encoding(text: str, enc: tokenizers.Encoding) -> Encoding:
    mask = np.asarray(enc.attention_mask, np.int64)
    n = int(mask.sum())  # padding (the tokeniser pads a batch to its longest) is at the end
    ids = np.asarray(enc.ids[:n], np.int64)
    special = np.asarray(enc.special_tokens_mask[:n], bool)
    offsets = np.asarray(enc.offsets[:n], np.int64).reshape(n, 2)
    offsets[special] = 0
    words = tuple(split_words(text))
    bounds = np.asarray(words, np.int64).reshape(-1, 2)
    word_index = np.full(n, -1, np.int64)
    first = np.full(len(words), -1, np.int64)
    tok = np.flatnonzero(~special)
    if len(words) and len(tok):
        s = offsets[tok, 0]
        w = np.searchsorted(bounds[:, 0], s, side="right") - 1  # the word the token starts in
        inside = (w >= 0) & (s < bounds[np.maximum(w, 0), 1])
        word_index[tok[inside]] = w[inside]
        ws, at = np.unique(w[inside], return_index=True)  # tokens are in order: first occurrence
        first[ws] = tok[inside][at]
    last_char = int(offsets[~special, 1].max()) if (~special).any() else 0
    cut = int(((first < 0) & (bounds[:, 0] >= last_char)).sum())
    return Encoding(text, ids, mask[:n].copy(), offsets, word_index, words, first, cut)


def encode(text: str, tokenizer: tokenizers.Tokenizer, max_length: int) -> Encoding:
    """Tokenise one text (at most ``max_length`` tokens, [CLS] and [SEP] included) keeping
    the offsets and the word of every token. ``tokenizer`` is set up as
    :func:`edgetl.modalities.text.load_tokenizer` does it for ``max_length``. Texts over
    100,000 characters are cut there first (as the text modality does)."""
    return encode_batch([text], tokenizer, max_length)[0]


def encode_batch(texts: Sequence[str], tokenizer: tokenizers.Tokenizer, max_length: int) -> list[Encoding]:
    """:func:`encode` for many texts at once (the tokeniser runs them in parallel); each
    result is unpadded -- :func:`stack` pads them into model inputs."""
    _check_tokenizer(tokenizer, max_length)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"a text to tokenise is a {type(bad).__name__}, not a string")
    cut = [t[:MAX_TEXT_CHARS] for t in texts]
    return [_encoding(t, e) for t, e in zip(cut, tokenizer.encode_batch(cut))] if cut else []


def stack(encodings: Sequence[Encoding], pad_id: int = 0) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask``, int64 ``[N, T]`` padded to the longest (token
    ``t`` of row ``i`` is token ``t`` of ``encodings[i]``)."""
    width = max((len(e) for e in encodings), default=0)
    ids = np.full((len(encodings), width), pad_id, np.int64)
    mask = np.zeros((len(encodings), width), np.int64)
    for i, e in enumerate(encodings):
        ids[i, :len(e)] = e.input_ids
        mask[i, :len(e)] = e.attention_mask
    return {"input_ids": ids, "attention_mask": mask}


def pad_labels(labels: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Rows of :func:`token_labels` as int64 ``[N, width]``, padding with -100."""
    width = max((len(r) for r in labels), default=0) if width is None else width
    out = np.full((len(labels), width), IGNORE, np.int64)
    for i, r in enumerate(labels):
        out[i, :len(r)] = r
    return out


def token_labels(example: NerExample, encoding: Encoding, tag_index: Mapping[str, int]) -> np.ndarray:
    """int64 ``[T]``: the IOB2 tag id of each word on its first subword, -100 on the other
    subwords, on [CLS]/[SEP] and on words inside the example's ``ignored`` ranges (labels
    unknown there). ``tag_index`` maps ``O``, ``B-X``, ``I-X`` to ids (see ``tag_set``)."""
    if example.text[:MAX_TEXT_CHARS] != encoding.text:
        raise ConfigError("token_labels: the encoding is of another text")
    tags = spans_to_word_tags(encoding.words, example.entities)
    missing = sorted({t for t in tags if t not in tag_index})
    if missing:
        raise DataError(f"{example.where or 'an example'}: tag(s) {', '.join(missing)} are not among the "
                        f"model's tags ({len(tag_index)}: {', '.join(list(tag_index)[:8])}...)")
    labels = np.full(len(encoding), IGNORE, np.int64)
    for w, t in enumerate(encoding.first_token):
        if t < 0:
            continue
        s, e = encoding.words[w]
        if tags[w] == "O" and any(s < ie and is_ < e for is_, ie in getattr(example, "ignored", ())):
            continue
        labels[t] = tag_index[tags[w]]
    return labels


@lru_cache(maxsize=32)
def _allowed(tags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """IOB2 transitions ``[from, to]`` and starts: ``I-X`` only after ``B-X`` or ``I-X``
    (cached: a model's tag set is the same for every text it decodes)."""
    parsed = []
    for t in tags:
        p = parse_tag(t) if isinstance(t, str) else None
        if p is None or p[0] not in ("O", "B", "I"):
            raise ConfigError(f"tag {t!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        parsed.append(p)
    k = len(parsed)
    trans = np.ones((k, k), bool)
    start = np.ones(k, bool)
    for j, (pj, tj) in enumerate(parsed):
        if pj == "I":
            start[j] = False
            for i, (pi, ti) in enumerate(parsed):
                trans[i, j] = pi in ("B", "I") and ti == tj
    pen = np.where(trans, 0.0, -np.inf)
    pen.flags.writeable = False  # shared by every call through the cache
    return pen, np.where(start, 0.0, -np.inf)


def _viterbi(logp: np.ndarray, pen: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The most probable tag path under the transition penalties (0 allowed, -inf not)."""
    n, k = logp.shape
    score = start + logp[0]
    back = np.zeros((n, k), np.int64)
    for i in range(1, n):
        cand = score[:, None] + pen  # [from, to]
        back[i] = cand.argmax(0)
        score = cand[back[i], np.arange(k)] + logp[i]
    path = np.zeros(n, np.int64)
    path[-1] = int(score.argmax())
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


def decode(text: str, encoding: Encoding, token_probs: np.ndarray, tags: Sequence[str], *,
           constrained: bool = True) -> list[dict[str, Any]]:
    """Entities of ``text`` from per-token tag probabilities ``[T, len(tags)]`` (rows past
    ``len(encoding)``, padding, are ignored): ``[{"start", "end", "label", "score", "text"}]``
    sorted by start, offsets into ``text``. See the module's docstring for the rule."""
    if text[:MAX_TEXT_CHARS] != encoding.text:
        raise ConfigError("decode: the encoding is of another text")
    probs = np.asarray(token_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < len(encoding) or probs.shape[1] != len(tags):
        raise ConfigError(f"decode: token_probs has shape {probs.shape}, expected [{len(encoding)}, {len(tags)}] "
                          "(one row per token, one column per tag)")
    probs = probs[:len(encoding)]
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1 + 1e-6).any():
        raise ConfigError("decode: token_probs must be probabilities (softmax the logits first)")
    pen, start = _allowed(tuple(tags))
    present = np.flatnonzero(encoding.first_token >= 0)  # words with a subword, in order
    if not len(present):
        return []
    word_p = probs[encoding.first_token[present]]  # [W', K]
    if constrained:
        path = _viterbi(np.log(np.maximum(word_p, 1e-30)), pen, start)
    else:
        path = word_p.argmax(1)
    chosen = word_p[np.arange(len(path)), path].tolist()
    out = []
    for label, a, b in strict_entities([tags[i] for i in path]):
        s = encoding.words[present[a]][0]
        e = encoding.words[present[b - 1]][1]
        out.append({"start": s, "end": e, "label": label, "score": sum(chosen[a:b]) / (b - a),
                    "text": text[s:e]})
    return out
