"""Tests for batchml.synthetic: the SYNTHETIC demo / benchmark data."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from batchml.synthetic import (
    BLOCK_ROWS,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    REVIEW_SCHEMA,
    demo_dataset,
    iter_review_batches,
    synthetic_reviews,
    synthetic_tabular,
    vocabulary,
    write_reviews,
)


def _clean(reviews: pd.Series) -> pd.Series:
    return reviews.str.replace(r"<[^>]+>", " ", regex=True).map(html.unescape).str.lower()


def _count(words: pd.Series, vocab: tuple[str, ...]) -> np.ndarray:
    return np.array([sum(w in vocab for w in ws) for ws in words])


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    return synthetic_reviews(20_000, seed=3)


def test_vocabulary_is_fixed_made_up_and_disjoint_from_sentiment_words():
    vocab = vocabulary()
    assert len(vocab) == len(set(vocab)) == 5000
    assert vocab == vocabulary()
    assert all(re.fullmatch(r"[a-z]{2,12}", w) for w in vocab)
    assert not set(vocab) & (set(POSITIVE_WORDS) | set(NEGATIVE_WORDS))


def test_reviews_schema_and_ids(reviews):
    assert list(reviews.columns) == ["review_id", "review", "labels"]
    assert reviews["review_id"].dtype == np.int64
    assert reviews["labels"].dtype == np.int64
    assert reviews["review_id"].tolist() == list(range(len(reviews)))
    assert set(reviews["labels"].unique()) == {0, 1}
    assert synthetic_reviews(0).shape == (0, 3)


def test_reviews_are_deterministic_per_seed():
    a = synthetic_reviews(3000, seed=11)
    pd.testing.assert_frame_equal(a, synthetic_reviews(3000, seed=11))
    b = synthetic_reviews(3000, seed=12)
    assert (a["review"] != b["review"]).mean() > 0.99
    assert not a["labels"].equals(b["labels"])


def test_review_lengths_html_and_label_balance(reviews):
    text = reviews["review"]
    words = _clean(text).str.split()
    lengths = words.str.len()
    assert lengths.min() == 20 and lengths.max() == 60
    assert 35 < lengths.mean() < 45
    assert 0.6 <= reviews["labels"].mean() <= 0.8
    has_html = text.str.contains("<br />", regex=False) | text.str.contains("&#039;", regex=False)
    assert 0.05 < has_html.mean() < 0.3
    assert not text.str.startswith("<").any()
    assert not (text.str.contains("  ", regex=False) | (text != text.str.strip())).any()
    assert text.str[0].str.isupper().all()


def test_sentiment_majority_decides_label_and_noise_flips_a_fraction():
    clean = synthetic_reviews(5000, seed=5, noise=0.0)
    noisy = synthetic_reviews(5000, seed=5, noise=0.1)
    pd.testing.assert_series_equal(clean["review"], noisy["review"])  # noise only touches labels
    words = _clean(clean["review"]).str.split()
    pos, neg = _count(words, POSITIVE_WORDS), _count(words, NEGATIVE_WORDS)
    assert (pos + neg >= 1).all() and (pos != neg).all()
    np.testing.assert_array_equal(clean["labels"].to_numpy(), (pos > neg).astype(np.int64))
    assert 0.07 < (clean["labels"] != noisy["labels"]).mean() < 0.13
    with pytest.raises(ValueError):
        synthetic_reviews(10, noise=1.5)


def test_tfidf_logistic_regression_learns_it_well_but_not_perfectly():
    train, test = synthetic_reviews(4000, seed=1), synthetic_reviews(2000, seed=2)
    vec = TfidfVectorizer()
    model = LogisticRegression(max_iter=1000, C=10.0).fit(vec.fit_transform(train["review"]),
                                                          train["labels"])
    accuracy = (model.predict(vec.transform(test["review"])) == test["labels"]).mean()
    # Measured ~0.89; with 5% flipped labels ~0.95 is the ceiling.
    assert 0.8 < accuracy < 0.97


def test_batches_match_the_frame_whatever_the_batch_size():
    n = BLOCK_ROWS + 12_345
    expected = synthetic_reviews(n, seed=4)
    batches = list(iter_review_batches(n, 50_000, seed=4))
    assert [b.num_rows for b in batches] == [50_000, n - 50_000]
    assert all(b.schema == REVIEW_SCHEMA for b in batches)
    got = pa.Table.from_batches(batches).to_pandas()
    pd.testing.assert_frame_equal(got, expected)
    assert list(iter_review_batches(0, 10)) == []


def test_write_reviews_large_n_streams_row_groups(tmp_path):
    n = 300_000
    path = write_reviews(tmp_path / "big" / "reviews.parquet", n, seed=9, row_group_size=70_000)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == n
    assert meta.num_row_groups == 5
    assert [meta.row_group(i).num_rows for i in range(5)] == [70_000] * 4 + [20_000]
    assert pq.read_schema(path) == REVIEW_SCHEMA
    back = pq.read_table(path, columns=["review_id", "labels"]).to_pandas()
    assert back["review_id"].tolist() == list(range(n))
    head = pq.read_table(path).slice(0, 1000).to_pandas()
    pd.testing.assert_frame_equal(head, synthetic_reviews(n, seed=9).head(1000))
    assert [p.name for p in path.parent.iterdir()] == ["reviews.parquet"]  # no temp file left


def test_tabular_classes_missing_values_and_determinism():
    for classes in (2, 3, 5):
        df = synthetic_tabular(3000, seed=1, classes=classes)
        assert sorted(df["segment"].unique()) == list(range(classes))
        assert df["segment"].value_counts(normalize=True).min() > 0.5 / classes
    df = synthetic_tabular(3000, seed=1)
    assert {"tenure_months", "monthly_charges", "support_calls", "plan", "region"} <= set(df.columns)
    assert set(df["plan"]) == {"basic", "plus", "pro"}
    for col in ("tenure_months", "monthly_charges", "region"):
        assert 0.01 < df[col].isna().mean() < 0.1
    pd.testing.assert_frame_equal(df, synthetic_tabular(3000, seed=1))
    assert not df.equals(synthetic_tabular(3000, seed=2))
    with pytest.raises(ValueError):
        synthetic_tabular(10, classes=1)


def test_tabular_random_forest_beats_majority_class():
    train, test = synthetic_tabular(4000, seed=1), synthetic_tabular(2000, seed=2)

    def features(df: pd.DataFrame) -> pd.DataFrame:
        x = pd.get_dummies(df.drop(columns=["customer_id", "segment"]), columns=["plan", "region"])
        return x.astype(float).fillna(-1.0)

    x_train = features(train)
    x_test = features(test).reindex(columns=x_train.columns, fill_value=0.0)
    model = RandomForestClassifier(n_estimators=100, min_samples_leaf=3, random_state=0)
    accuracy = (model.fit(x_train, train["segment"]).predict(x_test) == test["segment"]).mean()
    majority = test["segment"].value_counts(normalize=True).max()
    assert accuracy > majority + 0.25  # measured ~0.78 vs ~0.34


def test_demo_dataset(tmp_path):
    paths = demo_dataset(tmp_path / "demo", n_train=300, n_valid=100, n_predict_files=2,
                         rows_per_file=50)
    assert set(paths) == {"train", "valid", "predict_000", "predict_001"}
    assert all(p.exists() for p in paths.values())
    train, valid = pd.read_parquet(paths["train"]), pd.read_parquet(paths["valid"])
    assert (len(train), len(valid)) == (300, 100)
    assert list(train.columns) == ["review_id", "review", "labels"]
    predict = [pd.read_parquet(paths[k]) for k in ("predict_000", "predict_001")]
    assert all(list(p.columns) == ["review_id", "review"] and len(p) == 50 for p in predict)
    ids = pd.concat([train["review_id"], valid["review_id"], *(p["review_id"] for p in predict)])
    assert ids.is_unique and len(ids) == 500
