"""The vectorised bag-of-words transform builds exactly scikit-learn's matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from batchml.estimators.text_features import supported, transform

REVIEWS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / \
    "womens_clothing_reviews"
ODD = ["Café crème, naïve ÉTÉ test__x 12 a b", "", "x", "ÄÖÜ straße Straße",
       "tabs\tand\nnewlines", "emoji 😀 word_with_underscore", "數字 123 ４５", "a-b c.d e'f",
       "İstanbul ǅemal Ǆ ΣΑΣ σας", "e\u0301 combining ﬁne Ⅻ x²"]


@pytest.mark.parametrize("vectorizer", [
    TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2),
    TfidfVectorizer(ngram_range=(1, 1)),
    CountVectorizer(ngram_range=(1, 2), min_df=2),
], ids=["tfidf-1-2", "tfidf-1", "counts-1-2"])
def test_same_matrix_as_scikit_learn(vectorizer) -> None:  # type: ignore[no-untyped-def]
    train = pd.read_parquet(REVIEWS / "train.parquet")["review"].astype(str).tolist()
    valid = pd.read_parquet(REVIEWS / "valid.parquet")["review"].astype(str).tolist()
    vectorizer.fit(train + ODD)
    assert supported(vectorizer)
    texts = valid + ODD
    expected, got = vectorizer.transform(texts), transform(vectorizer, texts)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert (expected != got).nnz == 0
    np.testing.assert_array_equal(got.indptr, expected.indptr)


def test_unsupported_settings_fall_back() -> None:
    vec = CountVectorizer(stop_words="english").fit(["the cat sat", "a dog ran"])
    assert not supported(vec)
    assert (transform(vec, ["the cat ran"]) != vec.transform(["the cat ran"])).nnz == 0
