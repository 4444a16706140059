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
``encoder_minilm``  encoder    all-MiniLM-L6-v2 embeddings -> LogisticRegression; text, opt-in
                               (extra ``batchml[transformers]``)
==================  =========  ==============================================================

``make_estimator(name, ...)`` builds a candidate, ``est.to_bytes()`` saves it, and
``load_estimator(est.flavor, data)`` loads it again. Which class serves a flavor or a candidate
is the :class:`~batchml.estimators.registry.FlavorRegistry`'s business: the built-in flavors
above, and third-party flavors declared in the entry point group ``batchml.flavors``
(``docs/flavors.md``). TensorFlow and scikit-learn are imported only when a model of theirs is
built or loaded (a text model's linear export needs neither), the keras flavor's module only
when it is first used, and a third-party flavor's module only when its flavor is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Estimator
from .baseline import BaselineEstimator
from .registry import ENTRY_POINT_GROUP, FlavorRegistry, builtin_registry, default_registry
from .sklearn_models import ALLOWED_TYPES, SklearnEstimator

if TYPE_CHECKING:
    from .keras_text import KerasTextEstimator

__all__ = [
    "ALLOWED_TYPES", "CANDIDATES", "ENTRY_POINT_GROUP", "FLAVORS", "BaselineEstimator",
    "Estimator", "FlavorRegistry", "KerasTextEstimator", "SklearnEstimator", "builtin_registry",
    "candidate_names", "default_registry", "load_estimator", "make_estimator",
]


def __getattr__(name: str) -> Any:
    # Read-only views kept for older callers, computed on each access (nothing is cached in
    # the module): FLAVORS (flavor -> class) and CANDIDATES (candidate -> class) of a fresh
    # default registry, which imports the keras flavor's module; KerasTextEstimator likewise.
    if name == "FLAVORS":
        return default_registry().flavors()
    if name == "CANDIDATES":
        return default_registry().candidates()
    if name == "KerasTextEstimator":
        return builtin_registry().get("keras")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
                   registry: FlavorRegistry | None = None, **params: Any) -> Estimator:
    """A new, unfitted estimator for candidate ``name``.

    Text candidates need ``text_column``; tabular ones read ``feature_columns`` (all columns
    of the training frame if None); ``baseline`` takes either. ``params`` override the
    candidate's defaults (``threshold`` for binary models, ``epochs`` for keras ...); an
    unknown name or parameter raises :class:`~batchml.errors.ConfigError`. ``registry``
    defaults to a new :func:`default_registry` (built-ins, then the installed entry points).
    """
    cls = (registry or default_registry()).candidate(name)
    if text_column is not None and name.startswith("tabular_"):
        raise ConfigError(f"Candidate {name!r} reads feature columns, not a text column.",
                          hint="Pass feature_columns=[...], or use a text candidate "
                               f"({', '.join(n for n in _TEXT_CANDIDATES if n != 'baseline')}).")
    return cls(name, text_column=text_column, feature_columns=feature_columns, seed=seed,
               params=params)


def load_estimator(flavor: str, data: bytes, *,
                   registry: FlavorRegistry | None = None) -> Estimator:
    """The estimator of ``flavor`` saved as ``data`` by :meth:`Estimator.to_bytes`.

    Raises :class:`~batchml.errors.ModelError` for an unknown flavor (or one whose package
    could not be loaded: the error names its entry point), bytes that are not a model of that
    flavor, or a model holding types outside the flavor's allowlist.

    ``registry`` defaults to a new :func:`default_registry`: a few dicts for a built-in flavor
    (the installed packages' entry points are read only for a name that is not built in), so
    there is no process-wide registry to keep in step; callers that load models in a loop
    may pass one.
    """
    return (registry or default_registry()).load(flavor, data)
