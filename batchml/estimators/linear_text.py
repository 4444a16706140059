"""Bag-of-words linear text models scored with Arrow compute and numpy alone.

batchml's scikit-learn text candidates are linear models over word and word-pair counts:

* ``sklearn_text``: TfidfVectorizer (sublinear tf, idf, l2 norm) -> LogisticRegression;
* ``sklearn_text_nb``: CountVectorizer -> MultinomialNB.

:class:`LinearTextModel` holds such a fitted pipeline as plain arrays (the vocabulary in
feature order, idf, the class weights and intercepts) and computes the same probabilities as
the pipeline's ``predict_proba`` without importing scikit-learn, scipy or pandas. It is saved
as one Arrow IPC file (data only: reading it never runs code) inside the model artifact, next
to the skops payload, so loading a model for scoring skips skops altogether.

Tokenising follows the vectorizer's defaults (lowercase, ``(?u)\\b\\w\\w+\\b``, 1-2 grams;
:mod:`.tokenizer`): ASCII rows are tokenised on their bytes with numpy lookup tables, the other
rows with Python's ``str.lower`` and ``re`` (exactly scikit-learn's tokens). Word pairs are
looked up as integer keys (``first_word_id * n_words + second_word_id``) in a sorted key array
instead of as strings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ModelError
from ._arrays import to_numpy
from .base import Contributions
from .tokenizer import ascii_tokens, supported, unicode_tokens

FORMAT = "batchml-linear-text"
VERSION = 1
MEMBER = "batchml_linear_text.arrow"
"""Name of the export inside the model artifact (a skops zip)."""

VERIFY_TEXTS = ("Café crème, naïve ÉTÉ test__x 12 a b", "", "x", "ÄÖÜ straße Straße STRASSE",
                "tabs\tand\nnewlines  double  space", "emoji 😀 word_with_underscore",
                "數字 123 ４５ ٣٤", "a-b c.d e'f it&#039;s <br />", "İstanbul ǅemal Ǆ ΣΑΣ",
                "ﬁne ligature, Ⅻ roman, x²", "combining e\u0301 accent", "zero\u200bwidth")
"""Odd text the export is checked on before it is saved (next to training texts)."""

SLICE_ROWS = 8_192
"""Rows featurised at a time: bounds the intermediates (~25 MB per slice of reviews; 16k-row
slices cost the same CPU and ~40 MB more peak memory with two threads)."""


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


@dataclass
class _Tokens:
    rows: np.ndarray  # int64, the row of each token (nondecreasing)
    words: np.ndarray  # int32/int64, word id of each token, -1 when not a vocabulary word


class LinearTextModel:
    """A fitted TF-IDF/counts + linear classifier as arrays (see the module docstring).

    ``kind`` is ``"logistic"`` (probabilities: sigmoid of the one decision for two classes,
    softmax otherwise) or ``"multinomial_nb"`` (softmax of the joint log likelihood).
    ``weights`` has one row per decision (1 for binary logistic regression, else one per
    class) and one column per feature; ``idf`` is None for raw counts. ``mean``: each
    feature's mean value on the training texts (what per-row contributions are centred on;
    None for models saved before it was recorded).
    """

    def __init__(self, *, kind: str, terms: pa.Array, weights: np.ndarray,
                 intercept: np.ndarray, n_classes: int, ngram_max: int,
                 idf: np.ndarray | None = None, sublinear_tf: bool = False,
                 norm: str | None = None, mean: np.ndarray | None = None) -> None:
        if kind not in ("logistic", "multinomial_nb"):
            raise ModelError(f"Unknown linear text model kind {kind!r}.",
                             hint="Re-train and log the model again.")
        if norm not in (None, "l2"):
            raise ModelError(f"Unsupported norm {norm!r} in the linear text model.",
                             hint="Re-train and log the model again.")
        n_features = len(terms)
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        intercept = np.ascontiguousarray(intercept, dtype=np.float64).reshape(-1)
        expected_rows = 1 if (kind == "logistic" and n_classes == 2) else n_classes
        if weights.shape != (expected_rows, n_features) or intercept.shape != (expected_rows,) \
                or (idf is not None and np.shape(idf) != (n_features,)) \
                or (mean is not None and np.shape(mean) != (n_features,)) \
                or ngram_max not in (1, 2) or n_classes < 2:
            raise ModelError("The linear text model's arrays do not fit together (weights "
                             f"{weights.shape}, intercept {intercept.shape}, {n_features} terms, "
                             f"{n_classes} classes).", hint="Re-train and log the model again.")
        self.kind = kind
        self.terms = terms.cast(pa.string()) if terms.type != pa.string() else terms
        self.weights = weights
        self.intercept = intercept
        self.n_classes = int(n_classes)
        self.ngram_max = int(ngram_max)
        self.idf = None if idf is None else np.ascontiguousarray(idf, dtype=np.float64)
        self.sublinear_tf = bool(sublinear_tf)
        self.norm = norm
        self.n_features = n_features
        self.mean = None if mean is None else np.ascontiguousarray(mean, dtype=np.float64)
        self._build_lookup()

    # --- the vocabulary as word ids and integer word-pair keys --------------------------------

    def _build_lookup(self) -> None:
        parts = pc.split_pattern(self.terms, pattern=" ")
        lengths = to_numpy(pc.list_value_length(parts))
        if lengths.size and (lengths.min() < 1 or lengths.max() > self.ngram_max):
            raise ModelError("The linear text model's vocabulary holds terms of more words "
                             "than its n-gram range.", hint="Re-train and log the model again.")
        flat = pc.list_flatten(parts)
        words = pc.unique(flat)
        self.words = words
        self.n_words = len(words)
        ids = to_numpy(pc.index_in(flat, value_set=words)).astype(np.int64)
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        feature = np.arange(self.n_features, dtype=np.int64)
        uni = lengths == 1
        # word id -> unigram feature (-1: the word only occurs inside pairs); one extra slot
        # at the end answers -1 for tokens outside the vocabulary (word id -1).
        self.unigram = np.full(self.n_words + 1, -1, dtype=np.int64)
        self.unigram[ids[first[uni]]] = feature[uni]
        bi = ~uni
        keys = ids[first[bi]] * self.n_words + ids[first[bi] + 1]
        self.pairs = _IntHash(keys, feature[bi])

    # --- scoring ------------------------------------------------------------------------------

    def predict_proba(self, column: pa.Array | pa.ChunkedArray | Any) -> np.ndarray:
        """Class probabilities for a string column, shape (n_rows, n_classes)."""
        arr = _as_string_array(column)
        n = len(arr)
        out = np.empty((n, self.n_classes), dtype=np.float64)
        if n == 0:
            return out
        starts = list(range(0, n, SLICE_ROWS))
        workers = min(_workers(), len(starts))

        def run(start: int) -> None:
            piece = arr.slice(start, SLICE_ROWS)
            out[start:start + len(piece)] = self._proba(piece)

        if workers < 2:
            for start in starts:
                run(start)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(run, starts):
                    pass
        return out

    def decision(self, arr: pa.Array) -> np.ndarray:
        """Decision values (before the link function), shape (n_rows, len(weights))."""
        n = len(arr)
        pieces = self._occurrences(arr)
        if self.idf is None and self.norm is None and not self.sublinear_tf:
            # raw counts: linear in the occurrences, no need to count them first
            dec = np.zeros((len(self.weights), n), dtype=np.float64)
            for rows, features in pieces:
                for k, w in enumerate(self.weights):
                    dec[k] += np.bincount(rows, weights=w[features], minlength=n)
            return dec.T + self.intercept
        rows, features, counts = _count(pieces, n, self.n_features)
        tf = counts.astype(np.float64)
        if self.sublinear_tf:
            tf = np.log(tf, out=tf)
            tf += 1.0
        if self.idf is not None:
            tf *= self.idf[features]
        dec = np.empty((len(self.weights), n), dtype=np.float64)
        for k, w in enumerate(self.weights):
            dec[k] = np.bincount(rows, weights=tf * w[features], minlength=n)
        if self.norm == "l2":
            norms = np.sqrt(np.bincount(rows, weights=tf * tf, minlength=n))
            norms[norms == 0.0] = 1.0
            dec /= norms
        return dec.T + self.intercept

    # --- explaining ---------------------------------------------------------------------------

    def feature_values(self, column: pa.Array | pa.ChunkedArray | Any
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The vectorizer's output for a string column as (row, feature, value) of its
        non-zero entries: counts, or sublinear tf x idf, l2-normalised per row."""
        arr = _as_string_array(column)
        n = len(arr)
        if n == 0:
            empty = np.empty(0, np.int64)
            return empty, empty, np.empty(0, np.float64)
        rows, features, counts = _count(self._occurrences(arr), n, self.n_features)
        x = counts.astype(np.float64)
        if self.sublinear_tf:
            x = np.log(x) + 1.0
        if self.idf is not None:
            x *= self.idf[features]
        if self.norm == "l2":
            norms = np.sqrt(np.bincount(rows, weights=x * x, minlength=n))
            norms[norms == 0.0] = 1.0
            x /= norms[rows]
        return rows, features, x

    def set_mean(self, column: pa.Array | pa.ChunkedArray | Any) -> None:
        """Record each feature's mean value over the texts of ``column`` (the training
        texts), read :data:`SLICE_ROWS` at a time."""
        arr = _as_string_array(column)
        total = np.zeros(self.n_features, dtype=np.float64)
        for start in range(0, len(arr), SLICE_ROWS):
            _, features, x = self.feature_values(arr.slice(start, SLICE_ROWS))
            total += np.bincount(features, weights=x, minlength=self.n_features)
        self.mean = total / max(1, len(arr))

    def decision_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights, intercept) of the decision values the classes are told apart by: one
        per class, or for two classes one, the positive class's logit (naive Bayes: the
        difference of the two classes' joint log likelihoods)."""
        if self.kind == "multinomial_nb" and self.n_classes == 2:
            return (self.weights[1:] - self.weights[:1],
                    self.intercept[1:] - self.intercept[:1])
        return self.weights, self.intercept

    def contributions(self, column: pa.Array | pa.ChunkedArray | Any,
                      classes: Sequence[Any]) -> Contributions:
        """Exact per-row contributions of every term to the decision values (see
        :class:`~.base.Contributions`); needs :attr:`mean`."""
        if self.mean is None:
            raise ModelError("The linear text model has no feature means.",
                             hint="Train it again to explain single rows.")
        weights, intercept = self.decision_weights()
        decisions = classes[1:] if len(weights) == 1 else classes
        rows, features, x = self.feature_values(column)
        return Contributions.linear(self.terms, decisions, weights, intercept, self.mean,
                                    rows, features, x, len(column))

    def _proba(self, arr: pa.Array) -> np.ndarray:
        dec = self.decision(arr)
        if self.kind == "logistic" and self.n_classes == 2:
            p = 1.0 / (1.0 + np.exp(-dec[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        # softmax; for naive Bayes this is exp(jll - logsumexp(jll))
        dec -= dec.max(axis=1, keepdims=True)
        np.exp(dec, out=dec)
        dec /= dec.sum(axis=1, keepdims=True)
        return dec

    def _occurrences(self, arr: pa.Array) -> list[tuple[np.ndarray, np.ndarray]]:
        """(row, feature) of every vocabulary term occurrence in ``arr``: the single words',
        then the word pairs' (each piece's rows nondecreasing)."""
        tok = _tokenize(arr, self.words)
        rows, wid = tok.rows, tok.words
        uni = self.unigram[wid]
        keep = uni >= 0
        out_rows, out_feats = [rows[keep]], [uni[keep]]
        if self.ngram_max == 2 and len(wid) > 1 and len(self.pairs):
            a, b = wid[:-1], wid[1:]
            ok = (rows[1:] == rows[:-1]) & (a >= 0) & (b >= 0)
            found = self.pairs.get(a[ok] * self.n_words + b[ok])
            hit = found >= 0
            out_rows.append(rows[:-1][ok][hit])
            out_feats.append(found[hit])
        return list(zip(out_rows, out_feats, strict=True))

    # --- saving -------------------------------------------------------------------------------

    def to_ipc(self, meta: dict[str, Any] | None = None) -> bytes:
        """The model as an Arrow IPC file; ``meta`` (JSON-safe) travels in its metadata."""
        cols: dict[str, Any] = {"term": self.terms}
        if self.idf is not None:
            cols["idf"] = pa.array(self.idf)
        for k, w in enumerate(self.weights):
            cols[f"w{k}"] = pa.array(w)
        if self.mean is not None:
            cols["mean"] = pa.array(self.mean)
        info = {"format": FORMAT, "version": VERSION, "kind": self.kind,
                "n_classes": self.n_classes, "ngram_max": self.ngram_max,
                "sublinear_tf": self.sublinear_tf, "norm": self.norm,
                "intercept": [float(v) for v in self.intercept], "n_weights": len(self.weights)}
        table = pa.table(cols).replace_schema_metadata({
            b"batchml.linear": json.dumps(info).encode(),
            b"batchml.meta": json.dumps(meta or {}).encode()})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema,
                             options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue())

    @classmethod
    def from_ipc(cls, data: bytes) -> tuple[LinearTextModel, dict[str, Any]]:
        """The model and the ``meta`` saved by :meth:`to_ipc`; :class:`ModelError` otherwise."""
        try:
            table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
            md = table.schema.metadata or {}
            info = json.loads(md[b"batchml.linear"])
            meta = json.loads(md.get(b"batchml.meta", b"{}"))
            if info.get("format") != FORMAT:
                raise ValueError("not a linear text export")
            if int(info.get("version", 0)) > VERSION:
                raise ModelError(f"The linear text export has format {info.get('version')}; "
                                 f"this batchml reads up to {VERSION}.",
                                 hint="Upgrade batchml to load this model.")
            # (combine_chunks first: ChunkedArray.to_numpy would import pandas)
            weights = np.vstack([_floats(table.column(f"w{k}"))
                                 for k in range(int(info["n_weights"]))])
            idf = _floats(table.column("idf")) if "idf" in table.column_names else None
            mean = _floats(table.column("mean")) if "mean" in table.column_names else None
            model = cls(kind=str(info["kind"]), terms=table.column("term").combine_chunks(),
                        weights=weights, intercept=np.asarray(info["intercept"], np.float64),
                        n_classes=int(info["n_classes"]), ngram_max=int(info["ngram_max"]),
                        idf=idf, sublinear_tf=bool(info["sublinear_tf"]), norm=info["norm"],
                        mean=mean)
        except ModelError:
            raise
        except (pa.ArrowException, KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelError(f"The linear text export in the model file is unreadable "
                             f"({type(exc).__name__}: {exc}).",
                             hint="Re-train and log the model again.") from exc
        if not isinstance(meta, dict):
            raise ModelError("The linear text export's metadata is malformed.",
                             hint="Re-train and log the model again.")
        return model, meta


def vocabulary_texts(model: LinearTextModel, *, n_terms: int = 2_000) -> list[str]:
    """Test texts made of the model's own terms (every ``step``-th of them, in groups, in
    several spellings), so a check of the export touches many of its weights."""
    terms = model.terms.to_pylist()
    picked = terms[:: max(1, len(terms) // n_terms)]
    texts = []
    for i in range(0, len(picked), 16):
        group = picked[i:i + 16]
        texts.append(" ".join(group))
        texts.append(", ".join(t.upper() for t in group) + "!")
        texts.append(" ".join(group + group[:3]))
    return texts


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    if arr.null_count or not pa.types.is_float64(arr.type):
        raise ValueError(f"column of {arr.type} with {arr.null_count} nulls, expected float64")
    return to_numpy(arr)


# --- exporting a fitted scikit-learn pipeline ------------------------------------------------


def from_pipeline(pipeline: Any) -> LinearTextModel | None:
    """The pipeline as a :class:`LinearTextModel`, or None when it is not one this module
    reproduces exactly (other tokenising settings, other classifiers ...)."""
    try:
        steps = list(pipeline.steps)
    except AttributeError:
        return None
    if len(steps) != 2:
        return None
    vec, clf = steps[0][1], steps[1][1]
    if not supported(vec) or np.dtype(getattr(vec, "dtype", np.float64)) not in (
            np.dtype(np.float64), np.dtype(np.int64)):
        return None
    vocab = vec.vocabulary_
    n_features = len(vocab)
    terms_list: list[str] = [""] * n_features
    for term, j in vocab.items():
        terms_list[int(j)] = term
    terms = pa.array(terms_list, pa.string())
    ngram_max = int(vec.ngram_range[1])
    tfidf = getattr(vec, "_tfidf", None)
    idf, sublinear, norm = None, False, None
    if tfidf is not None:  # TfidfVectorizer
        idf = np.asarray(vec.idf_, dtype=np.float64) if tfidf.use_idf else None
        sublinear, norm = bool(tfidf.sublinear_tf), tfidf.norm
        if norm not in (None, "l2"):
            return None
    classes = getattr(clf, "classes_", None)
    if classes is None:
        return None
    n_classes = len(classes)
    name = type(clf).__name__
    if name == "LogisticRegression":
        if n_classes > 2 and getattr(clf, "solver", "lbfgs") == "liblinear":
            return None  # one-vs-rest probabilities: not reproduced here
        weights, intercept, kind = clf.coef_, np.broadcast_to(
            np.asarray(clf.intercept_, np.float64), (len(clf.coef_),)), "logistic"
    elif name == "MultinomialNB" and tfidf is None:
        weights, intercept, kind = clf.feature_log_prob_, clf.class_log_prior_, \
            "multinomial_nb"
    else:
        return None
    if np.shape(weights)[1] != n_features:
        return None
    return LinearTextModel(kind=kind, terms=terms, weights=np.asarray(weights),
                           intercept=np.asarray(intercept), n_classes=n_classes,
                           ngram_max=ngram_max, idf=idf, sublinear_tf=bool(sublinear),
                           norm=norm)


class _IntHash:
    """A read-only hash map of non-negative int64 keys to int64 values, probed with numpy:
    open addressing with linear probing in a table 4-8x the number of keys, so almost every
    lookup is settled by its first slot (one gather and one compare per key; the few others
    go on to the next slot, round by round). ~1.4x faster than the earlier bucket-sorted map
    and ~4x faster than a binary search over the sorted keys for word-pair lookups."""

    _EMPTY = -1
    _SPARE = 64  # slots past the end, so a probe never wraps around

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64)
        self.n = len(keys)
        bits = max(4, int(np.ceil(np.log2(max(1, self.n)))) + 2)
        self.shift = np.uint64(64 - bits)
        size = (1 << bits) + self._SPARE
        self.keys = np.full(size, self._EMPTY, dtype=np.int64)
        self.values = np.full(size, -1, dtype=np.int64)
        keys, first = np.unique(keys, return_index=True)
        values = values[first]
        slot = self._hash(keys)
        todo = np.arange(len(keys))
        while len(todo):  # insert round by round: the first claimant of a free slot wins
            at = slot[todo]
            free = self.keys[at] == self._EMPTY
            taken, winner = np.unique(at[free], return_index=True)
            won = todo[free][winner]
            self.keys[taken] = keys[won]
            self.values[taken] = values[won]
            placed = np.zeros(len(keys), dtype=np.bool_)
            placed[won] = True
            todo = todo[~placed[todo]]
            slot[todo] += 1
            if len(todo) and slot[todo].max() >= size:
                raise ModelError("The word-pair table overflowed.",
                                 hint="Re-train and log the model again.")

    def __len__(self) -> int:
        return self.n

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        mixed = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return (mixed >> self.shift).astype(np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 for keys not in the map."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(keys) or not self.n:
            return np.full(len(keys), -1, dtype=np.int64)
        slot = self._hash(keys)
        held = self.keys[slot]
        hit = held == keys
        out = np.where(hit, self.values[slot], -1)
        todo = np.flatnonzero(~hit & (held != self._EMPTY))
        while len(todo):
            at = slot[todo] + 1
            slot[todo] = at
            held = self.keys[at]
            hit = held == keys[todo]
            out[todo[hit]] = self.values[at[hit]]
            todo = todo[~hit & (held != self._EMPTY)]
        return out


# --- tokenising ---------------------------------------------------------------------------------


def _as_string_array(column: Any) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    elif not isinstance(column, pa.Array):
        column = pa.array(column, pa.string())  # a list of str (imports pandas, not scoring)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not pa.types.is_string(column.type):
        column = column.cast(pa.string())
        # the cast of a slice (a large_string batch cut in pieces) keeps the slice's byte
        # offsets, which Arrow's string kernels misread (ascii_lower returns zero bytes):
        # a copy starts them at 0
        if len(column) and np.frombuffer(column.buffers()[1], np.int32)[column.offset] != 0:
            column = pa.concat_arrays([column])
    if column.null_count:
        column = column.fill_null("")
    return column


def _tokenize(arr: pa.Array, words: pa.Array) -> _Tokens:
    """Tokens of length >= 2 of ``arr`` (lowercased), as rows and vocabulary word ids."""
    n = len(arr)
    ascii_mask = pc.string_is_ascii(arr)
    mask = to_numpy(ascii_mask)
    n_ascii = int(mask.sum())
    if n_ascii == n:
        return _lookup(*ascii_tokens(arr), words)
    if n_ascii == 0:
        return _lookup(*unicode_tokens(arr), words)
    index = np.arange(n, dtype=np.int64)
    r1, t1 = ascii_tokens(arr.filter(ascii_mask))
    r2, t2 = unicode_tokens(arr.filter(pc.invert(ascii_mask)))
    a = _lookup(index[mask][r1], t1, words)
    b = _lookup(index[~mask][r2], t2, words)
    # rows must stay grouped (pairs are formed between neighbouring tokens of one row):
    # a stable sort by row keeps each row's tokens in order
    rows = np.concatenate([a.rows, b.rows])
    order = np.argsort(rows, kind="stable")
    return _Tokens(rows[order], np.concatenate([a.words, b.words])[order])


def _lookup(rows: np.ndarray, tokens: pa.Array, words: pa.Array) -> _Tokens:
    wid = to_numpy(pc.index_in(tokens, value_set=words), null=-1).astype(np.int64)
    return _Tokens(rows, wid)


def _count(pieces: list[tuple[np.ndarray, np.ndarray]], n_rows: int,
           n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, feature) pairs among the (rows, features) pieces and how often each
    occurs (as one sorted array of row * n_features + feature codes)."""
    total = sum(len(rows) for rows, _ in pieces)
    if total == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    dtype = np.dtype(np.uint32 if n_rows * n_features < 2**32 else np.uint64)
    code = np.empty(total, dtype=dtype)
    at = 0
    for rows, features in pieces:
        part = code[at:at + len(rows)]
        np.multiply(rows, n_features, out=part, casting="unsafe")
        part += features.astype(dtype)
        at += len(rows)
    code.sort(kind="stable")  # radix/timsort: ~2x faster than quicksort here
    new = np.empty(len(code), dtype=np.bool_)
    new[0] = True
    np.not_equal(code[1:], code[:-1], out=new[1:])
    first = np.flatnonzero(new)
    counts = np.diff(np.append(first, len(code)))
    unique = code[first]
    r = (unique // n_features).astype(np.int64)
    f = (unique % n_features).astype(np.int64)
    return r, f, counts
