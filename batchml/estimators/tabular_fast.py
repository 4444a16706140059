"""The tabular pipelines' preprocessing in numpy, without scikit-learn's per-call overhead.

batchml's tabular candidates (``tabular_logreg`` / ``tabular_rf`` / ``tabular_gb``) share one
preprocessing step, a ``ColumnTransformer`` of

* numbers: ``SimpleImputer(strategy="median")`` then ``StandardScaler()``;
* categories (strings, booleans): ``SimpleImputer(strategy="most_frequent")`` then
  ``OneHotEncoder(handle_unknown="ignore")``.

Through scikit-learn that step costs a few milliseconds per call whatever the rows (column
selection, validation, joblib, pandas round trips): most of an online one-row request.
:class:`TabularTransform` reads the fitted statistics (medians, means, scales, most frequent
values, categories) once and computes the same dense matrix with numpy; the classifier then
scores it as before. :func:`from_pipeline` returns None for any pipeline whose shape it does not
recognise, and the estimator keeps using scikit-learn for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class _Numbers:
    columns: list[str]
    medians: np.ndarray
    means: np.ndarray
    scales: np.ndarray


@dataclass(frozen=True)
class _Categories:
    columns: list[str]
    fills: list[Any]  # the most frequent value per column (what a missing value becomes)
    categories: list[pd.Index]  # per column, in the encoder's order


class TabularTransform:
    """The fitted ``ColumnTransformer`` of a tabular pipeline as arrays."""

    def __init__(self, numbers: _Numbers | None, categories: _Categories | None) -> None:
        self.numbers = numbers
        self.categories = categories
        self.width = (len(numbers.columns) if numbers else 0) + (
            sum(len(c) for c in categories.categories) if categories else 0)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The feature matrix scikit-learn's step would give ``frame`` (dense, float64)."""
        n = len(frame)
        out = np.zeros((n, self.width), dtype=np.float64)
        at = 0
        if self.numbers is not None:
            num = self.numbers
            for j, name in enumerate(num.columns):
                col = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
                col = np.where(np.isnan(col), num.medians[j], col)
                out[:, at + j] = (col - num.means[j]) / num.scales[j]
            at += len(num.columns)
        if self.categories is not None:
            cats = self.categories
            rows = np.arange(n)
            for name, fill, index in zip(cats.columns, cats.fills, cats.categories,
                                         strict=True):
                values = frame[name].astype(object)
                values = values.where(values.notna(), fill)
                codes = index.get_indexer(pd.Index(values))
                known = codes >= 0  # an unknown category is all zeros (handle_unknown)
                out[rows[known], at + codes[known]] = 1.0
                at += len(index)
        return out


def from_pipeline(pipeline: Any) -> TabularTransform | None:
    """The transform of a fitted tabular pipeline (``Pipeline([("prep", ColumnTransformer),
    ("clf", ...)])`` as batchml builds it), or None when its shape is not exactly that."""
    try:
        prep = pipeline[0]
        transformers = prep.transformers_
    except (AttributeError, IndexError, TypeError):
        return None
    numbers: _Numbers | None = None
    categories: _Categories | None = None
    for name, step, columns in transformers:
        if isinstance(step, str):
            if step == "drop":
                continue
            return None  # passthrough or anything else: not ours
        steps = getattr(step, "named_steps", {})
        if name == "num" and list(steps) == ["impute", "scale"] and numbers is None:
            imputer, scaler = steps["impute"], steps["scale"]
            if imputer.strategy != "median" or not (scaler.with_mean and scaler.with_std) \
                    or not _nan_marker(imputer):
                return None
            numbers = _Numbers([str(c) for c in columns],
                               np.asarray(imputer.statistics_, dtype=np.float64),
                               np.asarray(scaler.mean_, dtype=np.float64),
                               np.asarray(scaler.scale_, dtype=np.float64))
        elif name == "cat" and list(steps) == ["impute", "onehot"] and categories is None:
            imputer, onehot = steps["impute"], steps["onehot"]
            if imputer.strategy != "most_frequent" or onehot.handle_unknown != "ignore" \
                    or onehot.drop is not None or not _nan_marker(imputer) \
                    or getattr(onehot, "min_frequency", None) is not None \
                    or getattr(onehot, "max_categories", None) is not None:
                return None
            categories = _Categories([str(c) for c in columns], list(imputer.statistics_),
                                     [pd.Index(list(c), dtype=object)
                                      for c in onehot.categories_])
        else:
            return None
    order = [name for name, step, _ in transformers if not isinstance(step, str)]
    if order not in (["num"], ["cat"], ["num", "cat"]):
        return None  # the output's column order would differ
    return TabularTransform(numbers, categories)


def _nan_marker(imputer: Any) -> bool:
    marker = imputer.missing_values
    return isinstance(marker, float) and np.isnan(marker)
