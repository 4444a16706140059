"""scikit-learn's default word tokenizer, vectorised with Arrow and numpy.

One home for the tokens both fast text paths use: :mod:`.linear_text` (the linear export that
scores text models without scikit-learn) and :mod:`.text_features` (the vectorised
``CountVectorizer.transform``). Neither imports the other; both import this module, which
imports only numpy and pyarrow.

Tokens follow the vectorizer's defaults (lowercase, ``(?u)\\b\\w\\w+\\b``): ASCII rows are
tokenised on their bytes with a numpy lookup table, the other rows with Python's ``str.lower``
and ``re`` (exactly scikit-learn's tokens). :func:`supported` says which fitted vectorizers
tokenise this way.
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._arrays import from_numpy, strings, to_numpy

_DEFAULT_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's default token_pattern
_TOKEN = re.compile(_DEFAULT_PATTERN)

_LOWER_WORD = np.zeros(256, dtype=np.uint8)
"""Byte -> its lowercase when it is a word byte ([A-Za-z0-9_]), else 0 (one table lookup both
lowercases and classifies; zero bytes are then dropped in one ``bytes.translate``)."""
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789_":
    _LOWER_WORD[_c] = _c
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _LOWER_WORD[_c] = _c + 32


def supported(vectorizer: Any) -> bool:
    """True when ``vectorizer`` (a fitted Count/TfidfVectorizer) tokenises as :func:`tokens`
    does, so :func:`.text_features.transform` reproduces its ``transform`` exactly and
    :func:`.linear_text.from_pipeline` can export it."""
    return (getattr(vectorizer, "analyzer", None) == "word"
            and vectorizer.token_pattern == _DEFAULT_PATTERN
            and vectorizer.tokenizer is None and vectorizer.preprocessor is None
            and vectorizer.lowercase and vectorizer.strip_accents is None
            and vectorizer.stop_words is None and not vectorizer.binary
            and tuple(vectorizer.ngram_range) in ((1, 1), (1, 2))
            and hasattr(vectorizer, "vocabulary_"))


def tokens(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Every token of ``arr`` (a string array without nulls) as scikit-learn's default
    analyzer finds them (lowercased, ``(?u)\\b\\w\\w+\\b``): their rows (nondecreasing)
    and the tokens, in order."""
    mask = to_numpy(pc.string_is_ascii(arr))
    if mask.all():
        return ascii_tokens(arr)
    if not mask.any():
        return unicode_tokens(arr)
    index = np.arange(len(arr), dtype=np.int64)
    r1, t1 = ascii_tokens(arr.filter(from_numpy(mask)))
    r2, t2 = unicode_tokens(arr.filter(from_numpy(~mask)))
    rows = np.concatenate([index[mask][r1], index[~mask][r2]])
    order = np.argsort(rows, kind="stable")
    return rows[order], pa.concat_arrays([t1, t2]).take(from_numpy(order))


def ascii_tokens(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Maximal runs of [A-Za-z0-9_] of length >= 2, lowercased, found on the bytes (one table
    lookup per byte, no per-row Python)."""
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset:arr.offset + n + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi == lo or data_buf is None:
        return np.empty(0, np.int64), pa.nulls(0, pa.string())
    raw = np.frombuffer(data_buf, dtype=np.uint8)[lo:hi]
    starts = (offsets[:-1] - lo).astype(np.int64)
    starts = starts[starts < len(raw)]
    low = np.take(_LOWER_WORD, raw)  # lowercase word bytes, 0 elsewhere (exact for ASCII)
    word = low != 0
    before = np.empty_like(word)  # a word byte continues from the previous byte
    before[0] = False
    before[1:] = word[:-1]
    before[starts] = False
    after = np.empty_like(word)  # a word byte is followed by another of the same string
    after[-1] = False
    after[:-1] = word[1:]
    ends = starts[1:] - 1
    after[ends[ends >= 0]] = False
    first = np.flatnonzero(word & ~before)
    length = np.flatnonzero(word & ~after) - first + 1
    short = length < 2
    if short.any():
        low[first[short]] = 0  # one-character tokens: dropped
        keep = ~short
        first, length = first[keep], length[keep]
    # the tokens' bytes back to back: C's translate drops the zeros faster than a boolean mask
    data = low.tobytes().translate(None, b"\x00")
    tok_offsets = np.empty(len(first) + 1, dtype=np.int32)
    tok_offsets[0] = 0
    np.cumsum(length, out=tok_offsets[1:])
    tokens = pa.StringArray.from_buffers(len(first), pa.py_buffer(tok_offsets),
                                         pa.py_buffer(data))
    # tokens per row: where each row's first byte falls among the token starts
    per_row = np.diff(np.searchsorted(first, offsets - lo))
    rows = np.repeat(np.arange(n, dtype=np.int64), per_row)
    return rows, tokens


def unicode_tokens(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """The same tokens for any text, with Python's own ``str.lower`` and ``re``: exactly
    scikit-learn's (Arrow's lowercasing differs on a few letters, e.g. ``İ`` and final
    sigma). Only rows with non-ASCII characters come here."""
    per_row = [_TOKEN.findall(text.lower()) for text in arr.to_pylist()]
    lengths = np.fromiter(map(len, per_row), dtype=np.int64, count=len(per_row))
    rows = np.repeat(np.arange(len(arr), dtype=np.int64), lengths)
    return rows, strings(list(chain.from_iterable(per_row)))
