"""The ``sklearn`` flavor: scikit-learn pipelines for text and tabular data, saved with skops.

Bytes: one skops file (``skops.io.dumps``) holding a dict
``{"meta": "<JSON: signature, candidate, params ...>", "model": <fitted Pipeline>}``, so the
artifact is a plain ``.skops`` file. Never pickle: loading first lists the file's types with
``skops.io.get_untrusted_types`` and refuses the file unless each of them is in
:data:`ALLOWED_TYPES`, the sklearn/numpy types our pipelines are made of.
"""

from __future__ import annotations

import json
import zipfile
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import DataError, ModelError
from .base import Estimator

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

ALLOWED_TYPES: frozenset[str] = frozenset({
    # Types that skops does not trust by default but our fitted pipelines contain (found with
    # get_untrusted_types on every candidate, binary and multi-class). Review any addition:
    # loading a model file can instantiate every type listed here.
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
})

TEXT_CANDIDATES = frozenset({"sklearn_text", "sklearn_text_nb"})


class SklearnEstimator(Estimator):
    """scikit-learn candidates.

    * ``sklearn_text``: TfidfVectorizer (sublinear tf, 1-2 grams, ``min_df``) +
      LogisticRegression.
    * ``sklearn_text_nb``: CountVectorizer (1-2 grams) + MultinomialNB.
    * ``tabular_logreg`` / ``tabular_rf`` / ``tabular_gb``: numeric columns median-imputed
      and scaled, string/bool columns mode-imputed and one-hot encoded (unknown categories
      ignored), then LogisticRegression / RandomForestClassifier /
      HistGradientBoostingClassifier.
    """

    flavor: ClassVar[str] = "sklearn"
    file_suffix: ClassVar[str] = ".skops"
    candidates: ClassVar[dict[str, dict[str, Any]]] = {
        "sklearn_text": {"min_df": 2, "ngram_range": (1, 2), "C": 1.0, "max_features": 100_000},
        "sklearn_text_nb": {"min_df": 2, "ngram_range": (1, 2), "alpha": 0.5,
                            "max_features": 100_000},
        "tabular_logreg": {"C": 1.0},
        "tabular_rf": {"n_estimators": 100, "max_depth": None, "min_samples_leaf": 1},
        "tabular_gb": {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 31},
    }
    text_candidates: ClassVar[frozenset[str]] = TEXT_CANDIDATES

    model: Pipeline | None = None

    # --- fitting -----------------------------------------------------------------------------

    def _fit(self, x: pd.DataFrame, y: np.ndarray,
             validation: tuple[pd.DataFrame, np.ndarray] | None) -> None:
        if self.is_text:
            self.model = self._fit_text(_texts(x, self.signature.input_names[0]), y)
        else:
            self.model = self._tabular_pipeline()
            self.model.fit(self._tabular(x), y)

    def _fit_text(self, texts: pd.Series, y: np.ndarray) -> Pipeline:
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.naive_bayes import MultinomialNB
        from sklearn.pipeline import Pipeline

        p = self.params
        # min_df=2 drops one-off words; on a handful of documents it can drop them all.
        min_dfs = [p["min_df"], 1] if p["min_df"] != 1 and len(texts) >= 10 else [1]
        for min_df in min_dfs:
            common = {"ngram_range": tuple(p["ngram_range"]), "min_df": min_df,
                      "max_features": p["max_features"]}
            if self.name == "sklearn_text":
                model = Pipeline([
                    ("tfidf", TfidfVectorizer(sublinear_tf=True, **common)),
                    ("clf", LogisticRegression(C=p["C"], max_iter=1000,
                                               random_state=self.seed)),
                ])
            else:
                model = Pipeline([("counts", CountVectorizer(**common)),
                                  ("clf", MultinomialNB(alpha=p["alpha"]))])
            try:
                model.fit(texts, y)
            except ValueError as exc:
                if "no terms remain" not in str(exc) and "empty vocabulary" not in str(exc):
                    raise
                continue
            vectorizer = model.steps[0][1]
            # numpy.int64 values make skops write one file per word (8.5k words: 3 s to
            # save, 1.7 s to load); plain ints go into its JSON schema.
            vectorizer.vocabulary_ = {w: int(i) for w, i in vectorizer.vocabulary_.items()}
            return model
        raise DataError(f"The text column {self.text_column!r} has no usable words (empty "
                        "vocabulary after tokenising).",
                        hint="Check that the column holds the text, not ids or empty strings.")

    def _tabular_pipeline(self) -> Pipeline:
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        numeric = [c.name for c in self.signature.inputs if c.type in ("float64", "int64")]
        categorical = [c.name for c in self.signature.inputs if c.type in ("string", "bool")]
        parts: list[tuple[str, Any, list[str]]] = []
        if numeric:
            parts.append(("num", Pipeline([("impute", SimpleImputer(strategy="median")),
                                           ("scale", StandardScaler())]), numeric))
        if categorical:
            parts.append(("cat", Pipeline([
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]), categorical))
        p = self.params
        clf: Any
        if self.name == "tabular_logreg":
            clf = LogisticRegression(C=p["C"], max_iter=1000, random_state=self.seed)
        elif self.name == "tabular_rf":
            clf = RandomForestClassifier(n_estimators=p["n_estimators"], max_depth=p["max_depth"],
                                         min_samples_leaf=p["min_samples_leaf"],
                                         random_state=self.seed, n_jobs=1)
        else:
            clf = HistGradientBoostingClassifier(max_iter=p["max_iter"],
                                                 learning_rate=p["learning_rate"],
                                                 max_leaf_nodes=p["max_leaf_nodes"],
                                                 random_state=self.seed)
        # HistGradientBoosting needs dense input; sparse_threshold=0 makes the one-hot dense.
        prep = ColumnTransformer(parts, sparse_threshold=0.0 if self.name == "tabular_gb"
                                 else 0.3)
        return Pipeline([("prep", prep), ("clf", clf)])

    def _tabular(self, x: pd.DataFrame) -> pd.DataFrame:
        # SimpleImputer rejects bool dtype; as objects, bools are ordinary categories.
        bools = [c.name for c in self.signature.inputs if c.type == "bool"]
        return x.astype(dict.fromkeys(bools, object)) if bools else x

    # --- predicting --------------------------------------------------------------------------

    def _predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        assert self.model is not None
        if self.is_text:
            from .text_features import transform

            # the vectorizer step, vectorised (same matrix as scikit-learn, ~3-4x faster)
            features = transform(self.model.steps[0][1],
                                 _texts(x, self.signature.input_names[0]))
            return self.model[1:].predict_proba(features)
        return self.model.predict_proba(self._tabular(x))

    # --- saving ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The model as one skops file (see the module docstring)."""
        import skops.io as sio

        meta = json.dumps(self._meta())  # raises ModelError when not fitted
        return sio.dumps({"meta": meta, "model": self.model},
                         compression=zipfile.ZIP_DEFLATED)

    @classmethod
    def from_bytes(cls, data: bytes) -> SklearnEstimator:
        """The estimator saved by :meth:`to_bytes`, refusing types outside
        :data:`ALLOWED_TYPES`."""
        import skops.io as sio
        from sklearn.pipeline import Pipeline

        try:
            untrusted = sio.get_untrusted_types(data=data)
        except Exception as exc:  # zipfile/json/key errors: anything but a skops file
            raise ModelError(f"These bytes are not a skops model file ({type(exc).__name__}: "
                             f"{exc}).", hint="Load it with the flavor recorded in the "
                             "catalog, or re-train the model.") from exc
        unexpected = sorted(set(untrusted) - ALLOWED_TYPES)
        if unexpected:
            raise ModelError(f"Refusing to load the sklearn model: it contains types outside "
                             f"the allowlist: {', '.join(unexpected)}.",
                             hint="Only load models trained by batchml. If this one was, "
                                  "review those types and add them to "
                                  "batchml.estimators.sklearn_models.ALLOWED_TYPES.")
        try:
            payload = sio.loads(data, trusted=untrusted)
        except Exception as exc:
            raise ModelError(f"The skops model file could not be read ({type(exc).__name__}: "
                             f"{exc}).", hint="Re-train and log the model again.") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("meta"), str) \
                or not isinstance(payload.get("model"), Pipeline):
            raise ModelError("The skops file is not a batchml sklearn model (expected "
                             "{'meta': JSON, 'model': Pipeline}).",
                             hint="Save models with Estimator.to_bytes().")
        try:
            meta = json.loads(payload["meta"])
        except json.JSONDecodeError as exc:
            raise ModelError(f"The sklearn model's metadata is not JSON ({exc}).",
                             hint="Re-train and log the model again.") from exc
        estimator = cls._from_meta(meta)
        estimator.model = payload["model"]
        return estimator


def _texts(x: pd.DataFrame, column: str) -> pd.Series:
    return x[column].fillna("").astype(str)
