"""Estimators: one interface (:class:`Estimator`), several flavors, and the candidates the
train flow tries.

==================  =========  ==============================================================
candidate           flavor     model
==================  =========  ==============================================================
``baseline``        baseline   majority class / training class frequencies (text or tabular)
``keras_nbow``      keras      TextVectorization counts -> Dense(1, sigmoid); binary text
``sklearn_text``    sklearn    TF-IDF 1-2 grams -> LogisticRegression; text, multi-class
``sklearn_text_nb`` sklearn    word counts 1-2 grams -> MultinomialNB; text, multi-class
``tabular_logreg``  sklearn    impute + scale / one-hot -> LogisticRegression
``tabular_rf``      sklearn    impute + scale / one-hot -> RandomForestClassifier
``tabular_gb``      sklearn    impute + scale / one-hot -> HistGradientBoostingClassifier
==================  =========  ==============================================================

``make_estimator(name, ...)`` builds a candidate, ``est.to_bytes()`` saves it, and
``load_estimator(est.flavor, data)`` loads it again. TensorFlow and scikit-learn are imported
only when a model of theirs is built or loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, ModelError
from .base import Estimator
from .baseline import BaselineEstimator
from .keras_text import KerasTextEstimator
from .sklearn_models import ALLOWED_TYPES, SklearnEstimator

__all__ = [
    "ALLOWED_TYPES", "CANDIDATES", "FLAVORS", "BaselineEstimator", "Estimator",
    "KerasTextEstimator", "SklearnEstimator", "candidate_names", "load_estimator",
    "make_estimator",
]

FLAVORS: dict[str, type[Estimator]] = {
    cls.flavor: cls for cls in (BaselineEstimator, KerasTextEstimator, SklearnEstimator)
}
"""Flavor name -> estimator class that loads it."""

CANDIDATES: dict[str, type[Estimator]] = {
    name: cls for cls in FLAVORS.values() for name in cls.candidates
}
"""Candidate name -> estimator class that builds it."""

_TEXT_CANDIDATES = ["baseline", "keras_nbow", "sklearn_text", "sklearn_text_nb"]
_TABULAR_CANDIDATES = ["baseline", "tabular_logreg", "tabular_rf", "tabular_gb"]


def candidate_names(text: bool, *, n_classes: int | None = None) -> list[str]:
    """The default candidates for text data (one text column) or tabular data, baseline first.

    With ``n_classes`` > 2 the binary-only ``keras_nbow`` is left out.
    """
    names = list(_TEXT_CANDIDATES if text else _TABULAR_CANDIDATES)
    if n_classes is not None and n_classes > 2:
        names = [n for n in names if n != "keras_nbow"]
    return names


def make_estimator(name: str, *, text_column: str | None = None,
                   feature_columns: Sequence[str] | None = None, seed: int = 0,
                   **params: Any) -> Estimator:
    """A new, unfitted estimator for candidate ``name``.

    Text candidates need ``text_column``; tabular ones read ``feature_columns`` (all columns
    of the training frame if None); ``baseline`` takes either. ``params`` override the
    candidate's defaults (``threshold`` for binary models, ``epochs`` for keras ...); an
    unknown name or parameter raises :class:`~batchml.errors.ConfigError`.
    """
    cls = CANDIDATES.get(name)
    if cls is None:
        raise ConfigError(f"Unknown candidate {name!r}.",
                          hint=f"Use one of {', '.join(CANDIDATES)}.")
    if text_column is not None and name.startswith("tabular_"):
        raise ConfigError(f"Candidate {name!r} reads feature columns, not a text column.",
                          hint="Pass feature_columns=[...], or use a text candidate "
                               f"({', '.join(n for n in _TEXT_CANDIDATES if n != 'baseline')}).")
    return cls(name, text_column=text_column, feature_columns=feature_columns, seed=seed,
               params=params)


def load_estimator(flavor: str, data: bytes) -> Estimator:
    """The estimator of ``flavor`` saved as ``data`` by :meth:`Estimator.to_bytes`.

    Raises :class:`~batchml.errors.ModelError` for an unknown flavor, bytes that are not a
    model of that flavor, or a model holding types outside the flavor's allowlist.
    """
    cls = FLAVORS.get(flavor)
    if cls is None:
        raise ModelError(f"Unknown model flavor {flavor!r}.",
                         hint=f"This batchml loads: {', '.join(FLAVORS)}.")
    return cls.from_bytes(data)
