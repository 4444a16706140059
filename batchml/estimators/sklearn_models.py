"""The ``sklearn`` flavor: scikit-learn pipelines for text and tabular data, saved with skops.

Bytes: one skops file (``skops.io.dumps``) holding a dict
``{"meta": "<JSON: signature, candidate, params ...>", "model": <fitted Pipeline>}``, so the
artifact is a plain ``.skops`` file. Never pickle: loading first lists the file's types with
``skops.io.get_untrusted_types`` and refuses the file unless each of them is in
:data:`ALLOWED_TYPES`, the sklearn/numpy types our pipelines are made of.

Text models (TF-IDF + logistic regression, counts + naive Bayes) also carry their fitted
weights as plain arrays: an Arrow IPC member :data:`~.linear_text.MEMBER` inside the same
zip (skops ignores it), written only when it reproduces the pipeline's probabilities within
1e-9 on the training texts. Loading such a file reads that member alone and scores with Arrow
and numpy (no scikit-learn, skops or pandas import); the pipeline itself is deserialised from
the skops part, with the allowlist check, only if something asks for :attr:`model`. Files
without the member (saved before it existed, tabular models) load through skops as before.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from ..errors import DataError, ModelError
from .base import Contributions, Estimator, FeatureScore, GlobalExplanation, linear_explanation

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from .linear_text import LinearTextModel
    from .tabular_fast import TabularTransform

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

    _model: Pipeline | None = None
    _skops: bytes | None = None  # the skops file, while the pipeline is not loaded yet
    linear: LinearTextModel | None = None
    """The text pipeline as arrays (see the module docstring); None for tabular models and
    pipelines it does not reproduce."""
    feature_means: np.ndarray | None = None
    """A linear tabular model's features (after imputing, scaling and one-hot encoding) as
    their means on the training data: what per-row contributions are centred on (saved in
    the metadata; None for other models and models saved before)."""

    @property
    def model(self) -> Pipeline | None:
        """The fitted scikit-learn pipeline (loaded from the skops part on first use when the
        estimator was loaded with its linear export)."""
        if self._model is None and self._skops is not None:
            self._model = _load_skops(self._skops)[1]
            self._skops = None
        return self._model

    @model.setter
    def model(self, value: Pipeline | None) -> None:
        self._model, self._skops = value, None

    # --- fitting -----------------------------------------------------------------------------

    def _fit(self, x: pd.DataFrame, y: np.ndarray,
             validation: tuple[pd.DataFrame, np.ndarray] | None) -> None:
        self.linear = None
        if self.is_text:
            texts = _texts(x, self.signature.input_names[0])
            self.model = self._fit_text(texts, y)
            self.linear = _verified_export(self.model,
                                           [str(t) for t in texts.iloc[:2_000]])
            if self.linear is not None:
                self.linear.set_mean(pa.array(texts.to_numpy(dtype=object), pa.string()))
        else:
            self.feature_means = None
            self.model = self._tabular_pipeline()
            frame = self._tabular(x)
            self.model.fit(frame, y)
            if hasattr(self.model[-1], "coef_"):  # linear: contributions are exact
                self.feature_means = np.asarray(
                    _dense(self.model[:-1].transform(frame)).mean(axis=0), dtype=np.float64)

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
        if self.is_text:
            texts = _texts(x, self.signature.input_names[0])
            return self._text_proba(pa.array(texts.to_numpy(dtype=object), pa.string()))
        model = self.model
        assert model is not None
        fast = self._fast_transform(model)
        if fast is None:
            return model.predict_proba(self._tabular(x))
        return model[-1].predict_proba(fast.transform(x))

    def _fast_transform(self, model: Pipeline) -> TabularTransform | None:
        """The pipeline's preprocessing in numpy (:mod:`.tabular_fast`), made once per fitted
        pipeline; None when its shape is not the one batchml builds."""
        from .tabular_fast import from_pipeline

        cached = self.__dict__.get("_fast")
        if cached is None or cached[0] is not model:
            cached = (model, from_pipeline(model))
            self.__dict__["_fast"] = cached
        return cached[1]

    def _predict_proba_arrow(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
        return self._text_proba(column)

    def _text_proba(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        if self.linear is not None:
            return self.linear.predict_proba(column)
        from .text_features import transform

        model = self.model
        assert model is not None
        # the vectorizer step, vectorised (same matrix as scikit-learn, ~3-4x faster)
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        arr = arr.cast(pa.string()).fill_null("")
        # in slices: the sparse intermediates of a whole batch made peak memory large
        step = 16_384
        return np.concatenate([model[1:].predict_proba(transform(model.steps[0][1],
                                                                 arr.slice(i, step)))
                               for i in range(0, len(arr), step)])

    # --- explaining ----------------------------------------------------------------------------

    def no_contributions_reason(self) -> str | None:
        if self.is_text:
            if self.linear is None:
                return "its text pipeline has no linear export"
            if self.linear.mean is None:
                return ("it was saved before batchml recorded its features' training means; "
                        "train it again")
            return None
        if self.feature_means is not None:
            return None
        assert self.model is not None
        if not hasattr(self.model[-1], "coef_"):
            return "it is not a linear model"
        return ("it was saved before batchml recorded its features' training means; train it "
                "again")

    def contributions(self, frame: Any) -> Contributions:
        if not self.explains_rows:
            raise self.cannot_explain_rows()
        if self.is_text:
            assert self.linear is not None
            column = self.signature.coerce(frame, arrow=True).column(0)
            return self.linear.contributions(column, self.classes_)
        assert self.model is not None and self.feature_means is not None
        x = _dense(self.model[:-1].transform(self._tabular(self.signature.coerce(frame))))
        clf = self.model[-1]
        rows, cols = np.nonzero(x)
        decisions = self.classes_[1:] if len(clf.coef_) == 1 else self.classes_
        return Contributions.linear(self._feature_names(), decisions, clf.coef_,
                                    clf.intercept_, self.feature_means, rows, cols,
                                    x[rows, cols], len(x))

    def global_explanation(self, x: pd.DataFrame, y: Any, *, top: int = 20,
                           seed: int = 0) -> GlobalExplanation | None:
        if self.is_text:
            if self.linear is None:
                return None
            weights, _ = self.linear.decision_weights()
            return linear_explanation(self.linear.terms.to_pylist(), weights, self.classes_,
                                      top=top)
        assert self.model is not None
        clf = self.model[-1]
        if hasattr(clf, "coef_"):
            return linear_explanation(self._feature_names(), clf.coef_, self.classes_, top=top,
                                      details={"features": "numbers scaled to unit variance, "
                                                           "categories one-hot"})
        return self._permutation_importance(x, y, top=top, seed=seed)

    def _feature_names(self) -> list[str]:
        """Names of the tabular pipeline's features: a numeric column's name, and
        ``column=category`` per one-hot category."""
        assert self.model is not None
        names: list[str] = []
        for _, transformer, columns in self.model[0].transformers_:
            if isinstance(transformer, str):  # "drop" / "passthrough" remainder: no columns
                names += [] if transformer == "drop" else [str(c) for c in columns]
                continue
            onehot = getattr(transformer, "named_steps", {}).get("onehot")
            if onehot is None:
                names += [str(c) for c in columns]
            else:
                names += [f"{c}={v}" for c, values in zip(columns, onehot.categories_,
                                                          strict=True) for v in values]
        return names

    def _permutation_importance(self, x: pd.DataFrame, y: Any, *, top: int,
                                seed: int) -> GlobalExplanation:
        """How much the validation balanced accuracy drops when one input column is shuffled
        (scikit-learn's permutation importance, 5 repeats, at most 5,000 rows; labels by the
        model's own rule, its decision threshold included)."""
        from sklearn.inspection import permutation_importance
        from sklearn.metrics import balanced_accuracy_score

        from .base import _encode, _label_series

        frame = self._tabular(self.signature.coerce(x))
        codes = _encode(_label_series(y, len(frame)), self.classes_)

        def score(model: Any, data: Any, target: Any) -> float:
            predicted = self.label_index(np.asarray(model.predict_proba(data)))
            return float(balanced_accuracy_score(target, predicted))

        rows = min(len(frame), 5_000)
        repeats = 5
        found = permutation_importance(self.model, frame, codes, scoring=score,
                                       n_repeats=repeats, random_state=seed, n_jobs=1,
                                       max_samples=rows)
        names = [str(c) for c in frame.columns]
        best = np.argsort(-found.importances_mean, kind="stable")[:top]
        return GlobalExplanation(
            "permutation_importance", "drop of the validation balanced accuracy when the "
            "column is shuffled", {"all": [FeatureScore(names[j], float(found.importances_mean[j]),
                                                        float(found.importances_std[j]))
                                           for j in best]},
            {"n_repeats": repeats, "rows": rows, "n_features": len(names),
             "balanced_accuracy": score(self.model, frame, codes)})

    # --- saving ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The model as one skops file, with the linear export of a text model (see the
        module docstring)."""
        import skops.io as sio

        meta = self._meta()  # raises ModelError when not fitted
        if self.feature_means is not None:
            meta["feature_means"] = [float(v) for v in self.feature_means]
        data = sio.dumps({"meta": json.dumps(meta), "model": self.model},
                         compression=zipfile.ZIP_DEFLATED)
        if self.linear is None:
            return data
        from .linear_text import MEMBER

        buffer = io.BytesIO(data)
        with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MEMBER, self.linear.to_ipc(meta))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SklearnEstimator:
        """The estimator saved by :meth:`to_bytes`, refusing types outside
        :data:`ALLOWED_TYPES`. A text model with a linear export loads from the export alone
        (the pipeline is read, with the same checks, when :attr:`model` is first used)."""
        linear = _linear_member(data)
        if linear is not None:
            from .linear_text import LinearTextModel

            model, meta = LinearTextModel.from_ipc(linear)
            estimator = cls._from_meta(meta)
            if not estimator.is_text or model.n_classes != len(estimator.classes_):
                raise ModelError("The sklearn model's linear export does not match its "
                                 "metadata.", hint="Re-train and log the model again.")
            estimator.linear = model
            estimator._skops = data
            return estimator
        meta, pipeline = _load_skops(data)
        estimator = cls._from_meta(meta)
        estimator.model = pipeline
        means = meta.get("feature_means")
        if means is not None and not estimator.is_text:
            try:
                estimator.feature_means = np.asarray(means, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise ModelError("The sklearn model's feature means are malformed.",
                                 hint="Re-train and log the model again.") from exc
        if estimator.is_text:  # saved before the export existed: derive it, checked likewise
            estimator.linear = _verified_export(pipeline, [])
        return estimator


def _linear_member(data: bytes) -> bytes | None:
    """The linear export inside a model file, or None (not a zip, or no export)."""
    from .linear_text import MEMBER

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if MEMBER not in zf.namelist():
                return None
            return zf.read(MEMBER)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None


def _load_skops(data: bytes) -> tuple[Any, Pipeline]:
    """(metadata, pipeline) from a skops file, refusing types outside the allowlist."""
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
    return meta, payload["model"]


def _verified_export(pipeline: Pipeline, texts: list[str]) -> LinearTextModel | None:
    """The pipeline as a :class:`LinearTextModel` when it gives the pipeline's own
    ``predict_proba`` (scikit-learn's vectorizer, not ours) within 1e-9 on ``texts``, odd
    Unicode and text made of the vocabulary's terms; None otherwise (scoring then uses the
    pipeline)."""
    from .linear_text import VERIFY_TEXTS, from_pipeline, vocabulary_texts

    linear = from_pipeline(pipeline)
    if linear is None:
        return None
    sample = list(texts) + list(VERIFY_TEXTS) + vocabulary_texts(linear)
    expected = pipeline.predict_proba(sample)
    got = linear.predict_proba(pa.array(sample, pa.string()))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-9):
        return None
    return linear


def _texts(x: pd.DataFrame, column: str) -> pd.Series:
    return x[column].fillna("").astype(str)


def _dense(x: Any) -> np.ndarray:
    """A transformer's output as a dense float64 array (the one-hot part may be sparse)."""
    x = x.toarray() if hasattr(x, "toarray") else x
    return np.asarray(x, dtype=np.float64)
