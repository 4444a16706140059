"""The tabular pipelines' preprocessing in numpy (`batchml.estimators.tabular_fast`) gives the
same probabilities as scikit-learn's own pipeline: every tabular candidate, binary and
multi-class, with missing numbers and categories, unseen categories, booleans and integers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchml.estimators.sklearn_models import SklearnEstimator
from batchml.estimators.tabular_fast import from_pipeline
from batchml.synthetic import synthetic_tabular


def _frame(n: int, seed: int, classes: int) -> tuple[pd.DataFrame, pd.Series]:
    df = synthetic_tabular(n, seed=seed, classes=classes)
    rng = np.random.default_rng(seed)
    df["flag"] = rng.random(n) < 0.3  # a boolean column: a category
    return df.drop(columns=["segment", "customer_id"]), df["segment"]


def _odd_rows(x: pd.DataFrame) -> pd.DataFrame:
    """Rows training never saw: unseen categories, every value missing, extremes."""
    odd = x.iloc[:4].copy()
    odd.loc[odd.index[0], "plan"] = "enterprise"  # unseen: all zeros in its one-hot block
    odd.loc[odd.index[1], ["tenure_months", "monthly_charges"]] = np.nan
    odd.loc[odd.index[1], "region"] = None
    odd.loc[odd.index[2], "monthly_charges"] = 1e9
    odd.loc[odd.index[3], "region"] = "atlantis"
    return odd


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("name", ["tabular_logreg", "tabular_rf", "tabular_gb"])
def test_fast_preprocessing_matches_the_pipeline(name: str, classes: int) -> None:
    x, y = _frame(600, seed=classes, classes=classes)
    est = SklearnEstimator(name)
    est.fit(x, y)
    model = est.model
    assert model is not None
    fast = from_pipeline(model)
    assert fast is not None
    test, _ = _frame(800, seed=99, classes=classes)
    test = pd.concat([test, _odd_rows(test)], ignore_index=True)
    frame = est._tabular(est.signature.coerce(pa.Table.from_pandas(test, preserve_index=False)))
    expected_x = model[0].transform(frame)
    expected_x = expected_x.toarray() if hasattr(expected_x, "toarray") else expected_x
    np.testing.assert_allclose(fast.transform(frame), expected_x, rtol=0, atol=1e-12)
    got = est.predict_proba(pa.Table.from_pandas(test, preserve_index=False))
    want = model.predict_proba(frame)
    assert np.abs(got - want).max() <= 1e-9
    # one row at a time, as online requests come
    for i in (0, len(test) - 3, len(test) - 1):
        one = pa.Table.from_pandas(test.iloc[[i]], preserve_index=False)
        assert np.abs(est.predict_proba(one) - want[[i]]).max() <= 1e-9


def test_a_pipeline_of_another_shape_keeps_scikit_learn() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler

    x, y = _frame(300, seed=1, classes=2)
    cols = ["tenure_months", "support_calls"]
    pipe = Pipeline([("prep", ColumnTransformer([("num", MinMaxScaler(), cols)])),
                     ("clf", LogisticRegression())]).fit(x[cols].fillna(0), y)
    assert from_pipeline(pipe) is None
