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
only when a model of theirs is built or loaded (a text model's linear export needs neither),
and the keras flavor's module only when it is first used (``FLAVORS``, ``CANDIDATES``,
``KerasTextEstimator``, a keras model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModelError
from .base import Estimator
from .baseline import BaselineEstimator
from .sklearn_models import ALLOWED_TYPES, SklearnEstimator

if TYPE_CHECKING:
    from .keras_text import KerasTextEstimator

__all__ = [
    "ALLOWED_TYPES", "CANDIDATES", "FLAVORS", "BaselineEstimator", "Estimator",
    "KerasTextEstimator", "SklearnEstimator", "candidate_names", "load_estimator",
    "make_estimator",
]

_EAGER: dict[str, type[Estimator]] = {
    cls.flavor: cls for cls in (BaselineEstimator, SklearnEstimator)}


def _flavors() -> dict[str, type[Estimator]]:
    from .keras_text import KerasTextEstimator

    return {cls.flavor: cls for cls in (BaselineEstimator, KerasTextEstimator, SklearnEstimator)}


def __getattr__(name: str) -> Any:
    # FLAVORS: flavor name -> estimator class that loads it; CANDIDATES: candidate name ->
    # estimator class that builds it. Built on first use: they import the keras flavor.
    if name == "FLAVORS":
        value: Any = _flavors()
    elif name == "CANDIDATES":
        value = {n: cls for cls in _flavors().values() for n in cls.candidates}
    elif name == "KerasTextEstimator":
        value = _flavors()["keras"]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _registry(name: str) -> Any:
    return globals()[name] if name in globals() else __getattr__(name)

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
    candidates: dict[str, type[Estimator]] = _registry("CANDIDATES")
    cls = candidates.get(name)
    if cls is None:
        raise ConfigError(f"Unknown candidate {name!r}.",
                          hint=f"Use one of {', '.join(candidates)}.")
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
    cls = _EAGER.get(flavor)
    if cls is None:
        flavors: dict[str, type[Estimator]] = _registry("FLAVORS")
        cls = flavors.get(flavor)
        if cls is None:
            raise ModelError(f"Unknown model flavor {flavor!r}.",
                             hint=f"This batchml loads: {', '.join(flavors)}.")
    return cls.from_bytes(data)
