"""Vectorised bag-of-words features for fitted scikit-learn vectorizers.

``CountVectorizer.transform`` / ``TfidfVectorizer.transform`` tokenise in a Python loop (~10k
rows/s with bigrams on these machines, the whole cost of scoring). For the settings batchml's
text candidates use (lowercase, the default word pattern, 1-2 grams, no stop words or accent
stripping) :func:`transform` builds the same sparse matrix with the tokenizer of
:mod:`.tokenizer` (shared with :mod:`.linear_text`), Arrow compute kernels and one sparse
COO->CSR pass. (Scoring normally uses :mod:`.linear_text` itself; this serves pipelines without
a linear export.) Anything else falls back to scikit-learn. Fidelity against scikit-learn is
tested on real reviews.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .tokenizer import supported, tokens


class _Vocabulary:
    def __init__(self, vocabulary: dict[str, int]) -> None:
        terms = list(vocabulary)
        self.terms = pa.array(terms, pa.string())
        self.index = np.fromiter((vocabulary[t] for t in terms), dtype=np.int64,
                                 count=len(terms))
        self.size = len(terms)


# Kept beside the vectorizer, not on it, so saving the model never sees it.
_VOCABS: weakref.WeakKeyDictionary[Any, _Vocabulary] = weakref.WeakKeyDictionary()


def _vocab(vectorizer: Any) -> _Vocabulary:
    cached = _VOCABS.get(vectorizer)
    if cached is None or cached.size != len(vectorizer.vocabulary_):
        cached = _VOCABS[vectorizer] = _Vocabulary(vectorizer.vocabulary_)
    return cached


def counts(vectorizer: Any, texts: pa.Array | list[str]) -> Any:
    """The term-count matrix ``CountVectorizer.transform`` would return (CSR, int64)."""
    from scipy import sparse

    arr = pa.array(texts, pa.string()) if not isinstance(texts, pa.Array) else texts
    n = len(arr)
    vocab = _vocab(vectorizer)
    # scikit-learn's exact tokens (Python's lowercasing for non-ASCII rows: Arrow's differs
    # on a few letters such as "İ" and the final sigma)
    rows, flat = tokens(arr.cast(pa.string()).fill_null(""))
    feats = [(rows, pc.index_in(flat, value_set=vocab.terms))]
    if tuple(vectorizer.ngram_range) == (1, 2) and len(flat) > 1:
        same = rows[1:] == rows[:-1]
        bigrams = pc.binary_join_element_wise(flat[:-1], flat[1:], " ")
        feats.append((rows[:-1][same], pc.filter(bigrams, pa.array(same))))
        feats[-1] = (feats[-1][0], pc.index_in(feats[-1][1], value_set=vocab.terms))
    all_rows, all_cols = [], []
    for r, found in feats:
        mask = found.is_valid().to_numpy(zero_copy_only=False)
        all_rows.append(r[mask])
        all_cols.append(vocab.index[found.drop_null().to_numpy(zero_copy_only=False)])
    row_idx = np.concatenate(all_rows) if all_rows else np.empty(0, np.int64)
    col_idx = np.concatenate(all_cols) if all_cols else np.empty(0, np.int64)
    matrix = sparse.csr_matrix((np.ones(len(row_idx), dtype=np.int64), (row_idx, col_idx)),
                               shape=(n, len(vectorizer.vocabulary_)))
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def transform(vectorizer: Any, texts: pa.Array | list[str]) -> Any:
    """``vectorizer.transform(texts)``, vectorised when :func:`supported`, else scikit-learn."""
    if not supported(vectorizer):
        return vectorizer.transform(texts.to_pylist() if isinstance(texts, pa.Array)
                                    else texts)
    x = _parallel_counts(vectorizer, texts)
    if hasattr(vectorizer, "_tfidf"):  # TfidfVectorizer: sublinear tf, idf, normalisation
        return vectorizer._tfidf.transform(x.astype(vectorizer.dtype), copy=False)
    return x.astype(vectorizer.dtype)


def _parallel_counts(vectorizer: Any, texts: pa.Array | list[str]) -> Any:
    """:func:`counts` over slices in threads (Arrow kernels release the GIL): both cores."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from scipy import sparse

    arr = pa.array(texts, pa.string()) if not isinstance(texts, pa.Array) else texts
    workers = min(os.cpu_count() or 1, 4)
    if workers < 2 or len(arr) < 20_000:
        return counts(vectorizer, arr)
    step = -(-len(arr) // workers)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda i: counts(vectorizer, arr.slice(i, step)),
                              range(0, len(arr), step)))
    return sparse.vstack(parts, format="csr")
