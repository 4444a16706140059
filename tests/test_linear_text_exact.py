"""Issue 21 item 2: the fast linear text paths (TF-IDF + logistic regression, counts +
multinomial NB) give scikit-learn's own ``predict_proba`` to <= 1e-6 on 100,000 real-looking
reviews: the real reviews, synthetic ones, and rows with unicode, punctuation, nothing, nulls
and very long text, mixed in the same slices (ASCII and non-ASCII rows are tokenised apart
and put back together)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchml.estimators import make_estimator
from batchml.synthetic import synthetic_reviews

REVIEWS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "womens_clothing_reviews"
N_ROWS = 100_000
ODD = ["Café crème, naïve ÉTÉ — très «chic»!", "ÄÖÜ straße Straße STRASSE", "數字 123 ４５ ٣٤",
       "İstanbul ǅemal Ǆ ΣΑΣ σας", "ﬁne Ⅻ x² ½", "e\u0301 combining", "zero\u200bwidth",
       "nbsp\u00a0space emoji 😀 love it", "it&#039;s <br /> <br />great!!!", "a-b c.d e'f",
       "...,,,;;;!!!???", "   ", "\t\n\r", "x", "__ _a a_ 1 22 333", "fit:perfect/size=small",
       "LOVE LOVE love Love lOvE", "dress(es) [top] {skirt} <pants>", "$50 #1 @shop 100%",
       "the dress the dress the dress", "naïve café dress love", "ok ok. OK! ok?"]


def _reviews() -> tuple[pd.DataFrame, np.ndarray, list[str | None]]:
    real = pd.read_parquet(REVIEWS / "train.parquet")
    synth = synthetic_reviews(6_000, seed=11)
    train = pd.concat([real[["review"]], synth[["review"]]], ignore_index=True)
    labels = np.concatenate([real["labels"].to_numpy(), synth["labels"].to_numpy()])
    score_real = pd.concat([pd.read_parquet(REVIEWS / f)["review"]
                            for f in ("valid.parquet", "predict.parquet")]).astype(str).tolist()
    rng = np.random.default_rng(21)
    texts: list[str | None] = synthetic_reviews(N_ROWS, seed=12)["review"].tolist()
    # every 7th row a real review, every 13th an odd one, some long, empty and null rows
    for i in range(0, N_ROWS, 7):
        texts[i] = score_real[(i // 7) % len(score_real)]
    for i in range(3, N_ROWS, 13):
        texts[i] = ODD[(i // 13) % len(ODD)] + " " + (texts[i] or "")
    long_rows = rng.choice(N_ROWS, 40, replace=False)
    for j, i in enumerate(long_rows):
        texts[i] = " ".join(score_real[j:j + 60]) * (1 + j % 3)  # ~10-40 kB of text
    for i in rng.choice(N_ROWS, 200, replace=False):
        texts[i] = "" if i % 2 else None
    return train, labels, texts


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray, list[str | None]]:
    return _reviews()


@pytest.mark.parametrize("name", ["sklearn_text", "sklearn_text_nb"])
def test_fast_path_matches_scikit_learn_on_100k_reviews(
        data: tuple[pd.DataFrame, np.ndarray, list[str | None]], name: str) -> None:
    train, labels, texts = data
    assert len(texts) == N_ROWS and any(t is None for t in texts)
    assert sum(len(t or "") > 10_000 for t in texts) >= 20
    assert sum(not (t or "").isascii() for t in texts) > 1_000
    est = make_estimator(name, text_column="review").fit(train, labels)
    linear = est.linear  # type: ignore[attr-defined]
    assert linear is not None
    # scikit-learn's pipeline end to end (a null row is scored as the empty text)
    filled = ["" if t is None else t for t in texts]
    expected = est.model.predict_proba(filled)  # type: ignore[attr-defined]
    got = linear.predict_proba(pa.array(texts, pa.string()))
    assert got.shape == expected.shape == (N_ROWS, 2)
    diff = np.abs(got - expected).max()
    assert diff <= 1e-6, f"max abs probability difference {diff:.3g}"
    # the table the service scores takes the same path (the estimator refuses null rows)
    table = pa.table({"review": pa.array(filled, pa.string())})
    assert np.abs(est.predict_proba(table) - expected).max() <= 1e-6
