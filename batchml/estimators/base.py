"""The :class:`Estimator` interface shared by every model flavor."""

from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeAlias

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, DataError, ModelError
from ..params import ParamLayer, ParamSpec, builtin_params, merge_specs, resolve_params
from ..signature import Signature, infer_signature, normalise_classes

if TYPE_CHECKING:  # pandas is imported only where a DataFrame is built (not when scoring arrow)
    import pandas as pd

Labels: TypeAlias = "pd.Series | np.ndarray | Sequence[Any]"
Frame: TypeAlias = "pd.DataFrame | pa.Table | pa.RecordBatch"

_META_VERSION = 1


def n_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Contributions:
    """Exact additive contributions of a linear model's features to its decision values.

    A linear model's decision ``d`` (one per class; a binary model has one, the logit of its
    positive class) is ``intercept[d] + sum_j weight[d, j] * x[i, j]`` over its features ``x``
    (what its linear part reads: token weights or counts, scaled numbers, one-hot categories).
    With ``mean[j]`` the feature's mean on the training data, row ``i``'s contribution of
    feature ``j`` is ``weight[d, j] * (x[i, j] - mean[j])`` and ``base[d] = intercept[d] +
    weight[d] @ mean``, so ``base[d]`` plus the row's contributions is its decision exactly
    (:meth:`totals`).

    Stored sparse (a text model has many features, a row few of them): ``offset[d, j] =
    -weight[d, j] * mean[j]`` is the contribution of a feature that is 0 in the row, and each
    entry ``e`` (``rows[e]``, ``cols[e]``: one per row and feature whose value is not 0) adds
    ``values[e, d] = weight[d, j] * x[i, j]`` to it.
    """

    features: pa.Array | Sequence[str]
    """The feature names (a string array or a sequence of str), one per feature."""
    decisions: tuple[Any, ...]
    """The class each decision belongs to (binary: the positive class only)."""
    base: np.ndarray  # (n_decisions,)
    offset: np.ndarray  # (n_decisions, n_features)
    rows: np.ndarray  # (nnz,) int64
    cols: np.ndarray  # (nnz,) int64
    values: np.ndarray  # (nnz, n_decisions)
    n_rows: int

    @classmethod
    def linear(cls, features: pa.Array | Sequence[str], decisions: Sequence[Any],
               weights: np.ndarray, intercept: np.ndarray, mean: np.ndarray,
               rows: np.ndarray, cols: np.ndarray, x: np.ndarray,
               n_rows: int) -> Contributions:
        """The contributions of a linear model with ``weights`` (n_decisions, n_features)
        and ``intercept`` whose features in these rows are ``x`` at (``rows``, ``cols``) and 0
        elsewhere, centred on the features' training ``mean``."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        b = np.asarray(intercept, dtype=np.float64).reshape(-1)
        m = np.asarray(mean, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.int64)
        return cls(features, tuple(decisions), b + w @ m, -w * m,
                   np.asarray(rows, dtype=np.int64), cols,
                   np.asarray(x, dtype=np.float64)[:, None] * w[:, cols].T, int(n_rows))

    @property
    def n_features(self) -> int:
        return int(self.offset.shape[1])

    def dense(self, decision: int = 0) -> np.ndarray:
        """Every contribution to decision ``decision``, shape (n_rows, n_features)."""
        out = np.tile(self.offset[decision], (self.n_rows, 1))
        np.add.at(out, (self.rows, self.cols), self.values[:, decision])
        return out

    def totals(self) -> np.ndarray:
        """``base`` plus the sum of each row's contributions, shape (n_rows, n_decisions):
        the model's decision values."""
        out = np.empty((self.n_rows, len(self.decisions)), dtype=np.float64)
        for d in range(len(self.decisions)):
            out[:, d] = self.base[d] + self.offset[d].sum() + np.bincount(
                self.rows, weights=self.values[:, d], minlength=self.n_rows)
        return out


@dataclass(frozen=True)
class FeatureScore:
    """One feature's score in a global explanation (``spread``: its standard deviation over
    repeats, when the method repeats)."""

    feature: str
    score: float
    spread: float | None = None


@dataclass(frozen=True)
class GlobalExplanation:
    """What drives a model overall: ``groups`` maps a class label (or ``"all"``) to its
    features, highest score first; ``measure`` says what a score is."""

    method: str
    measure: str
    groups: dict[str, list[FeatureScore]]
    details: dict[str, Any] = field(default_factory=dict)


def linear_explanation(features: Sequence[str], weights: np.ndarray, classes: Sequence[Any], *,
                       top: int = 20, details: Mapping[str, Any] | None = None
                       ) -> GlobalExplanation:
    """The top features per class of a linear model from its ``weights`` (n_decisions,
    n_features). One decision (binary: the positive class's logit): the largest weights for
    the positive class, the most negative ones for the other. One per class: each class's
    weights minus their mean over the classes (what sets the class apart)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    per_class = np.vstack([-w[0], w[0]]) if len(w) == 1 else w - w.mean(axis=0)
    groups: dict[str, list[FeatureScore]] = {}
    for label, row in zip(classes, per_class, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        groups[str(label)] = [FeatureScore(str(features[j]), float(row[j])) for j in best]
    return GlobalExplanation("coefficients", "weight toward the class (per unit of feature)",
                             groups, {"n_features": int(w.shape[1]), **(details or {})})


class Estimator(ABC):
    """A classifier with a signature, saved as bytes in one file.

    Subclasses set ``flavor`` (how the bytes are loaded), ``file_suffix`` and ``candidates``
    (candidate name -> default hyper-parameters), and implement :meth:`_fit`,
    :meth:`_predict_proba`, :meth:`to_bytes` and :meth:`from_bytes`. Everything about labels,
    columns and signatures is handled here, so every flavor validates data the same way.

    ``predict_proba`` columns follow ``classes_`` (sorted labels); for a binary model the last
    class is the positive one and ``predict`` compares its probability with the ``threshold``
    inference parameter (default: the threshold chosen in training, else 0.5).

    Inference parameters (:mod:`batchml.params`): :meth:`inference_params` declares them (the
    built-ins plus ``flavor_params``), the signature carries them, and ``predict_proba``,
    ``predict`` and ``output_columns`` take the resolved dict as ``params=`` (None: defaults).
    """

    flavor: ClassVar[str]
    file_suffix: ClassVar[str]
    candidates: ClassVar[dict[str, dict[str, Any]]]
    text_candidates: ClassVar[frozenset[str]] = frozenset()
    """Candidates that read a single text column."""

    common_params: ClassVar[dict[str, Any]] = {"threshold": 0.5}

    flavor_params: ClassVar[tuple[ParamSpec, ...]] = ()
    """The flavor's own inference parameters, after the built-ins (``threshold`` for binary
    models, ``explain``, ``batch_size``); one with a built-in's name replaces it."""

    def __init__(self, name: str, *, text_column: str | None = None,
                 feature_columns: Sequence[str] | None = None, seed: int = 0,
                 params: Mapping[str, Any] | None = None) -> None:
        if name not in self.candidates:
            raise ConfigError(f"{type(self).__name__} has no candidate {name!r}.",
                              hint=f"Use one of {', '.join(self.candidates)}.")
        defaults = {**self.common_params, **self.candidates[name]}
        unknown = sorted(set(params or {}) - set(defaults))
        if unknown:
            raise ConfigError(f"Candidate {name!r} has no parameter {', '.join(unknown)}.",
                              hint=f"It takes: {', '.join(sorted(defaults))}.")
        if name in self.text_candidates:
            if not text_column:
                raise ConfigError(f"Candidate {name!r} reads a text column, and none was given.",
                                  hint="Pass text_column='<column>'.")
            if feature_columns:
                raise ConfigError(f"Candidate {name!r} reads only the text column "
                                  f"{text_column!r}, not feature columns.",
                                  hint="Use a tabular candidate for feature columns.")
        self.name = name
        self.text_column = text_column
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.seed = int(seed)
        self.params: dict[str, Any] = {**defaults, **(params or {})}
        self.classes_: list[Any] = []
        self.history: dict[str, list[float]] = {}
        """Per-epoch training curves (``loss``, ``val_loss`` ...) for flavors that have them."""
        self._signature: Signature | None = None

    def __repr__(self) -> str:
        state = f"classes={self.classes_}" if self._signature else "unfitted"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    @property
    def signature(self) -> Signature:
        """The signature learnt by :meth:`fit`; raises :class:`ModelError` before fitting."""
        if self._signature is None:
            raise ModelError(f"Estimator {self.name!r} is not fitted.",
                             hint="Call fit(frame, labels) first.")
        return self._signature

    @property
    def is_text(self) -> bool:
        """True when the estimator reads one text column."""
        return self.name in self.text_candidates

    # --- fitting -----------------------------------------------------------------------------

    def input_columns(self, frame: pd.DataFrame) -> list[str]:
        """The columns of ``frame`` this estimator reads (all of them if none were named)."""
        if self.is_text:
            return [str(self.text_column)]
        named = ([self.text_column] if self.text_column else []) + (self.feature_columns or [])
        return named or [str(c) for c in frame.columns]

    def fit(self, frame: pd.DataFrame, labels: Labels, *,
            validation: tuple[pd.DataFrame, Labels] | None = None) -> Self:
        """Fit on ``frame`` and ``labels`` and set :attr:`signature` and :attr:`classes_`.

        ``validation`` (frame, labels) is used by flavors that track a validation curve
        (keras); the others ignore it. Raises :class:`DataError` for a missing column,
        unusable labels, or a single class.
        """
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"fit() needs a pandas DataFrame, got {type(frame).__name__}.",
                            hint="Convert the data with .to_pandas().")
        if len(frame) == 0:
            raise DataError("The training data has no rows.",
                            hint="Check the training file and any filters applied to it.")
        columns = self.input_columns(frame)
        for column in columns:
            if column not in frame.columns:
                raise DataError(f"column {column!r} is missing from the training data.",
                                hint=f"It has: {', '.join(map(str, frame.columns))}.")
        labels_ = _label_series(labels, len(frame))
        classes = normalise_classes(labels_)
        if len(classes) < 2:
            raise DataError(f"training labels have a single class ({classes[0]!r}): need at "
                            "least two.",
                            hint="Train on data that contains every class to be predicted.")
        signature = infer_signature(frame, columns, classes)
        self._check_signature(signature)
        x = signature.coerce(frame)
        y = _encode(labels_, classes)
        valid = None
        if validation is not None:
            vframe, vlabels = validation
            valid = (signature.coerce(vframe),
                     _encode(_label_series(vlabels, len(vframe)), classes))
        self.classes_ = list(classes)
        self._signature = replace(signature, params=self.inference_params())
        self.history = {}
        try:
            self._fit(x, y, valid)
        except BaseException:
            self._signature = None
            raise
        return self

    def _check_signature(self, signature: Signature) -> None:
        """Reject input types the flavor cannot use (text flavors need a string column)."""
        if self.is_text:
            spec = signature.inputs[0]
            if spec.type != "string":
                raise DataError(f"column {spec.name!r} holds {spec.type} values, but candidate "
                                f"{self.name!r} reads text.",
                                hint="Pass the review/text column as text_column, or use a "
                                     "tabular candidate.")

    @abstractmethod
    def _fit(self, x: pd.DataFrame, y: np.ndarray,
             validation: tuple[pd.DataFrame, np.ndarray] | None) -> None:
        """Fit on coerced inputs ``x`` and class indices ``y`` (positions in ``classes_``)."""

    # --- predicting --------------------------------------------------------------------------

    # --- inference parameters ----------------------------------------------------------------

    def inference_params(self) -> tuple[ParamSpec, ...]:
        """The inference parameters this model accepts (:class:`~batchml.params.ParamSpec`):
        the built-ins (``threshold`` for a binary model, defaulting to its trained threshold;
        ``explain``; ``batch_size``) then :attr:`flavor_params`. Training stores them in the
        signature. A flavor may override this (call ``super()`` and add to it)."""
        binary = len(self.classes_) == 2
        return merge_specs(builtin_params(binary=binary,
                                          threshold=float(self.params.get("threshold", 0.5))),
                           self.flavor_params)

    def resolve_params(self, params: Mapping[str, Any] | None = None, *,
                       layer: str = "call") -> dict[str, Any]:
        """Every inference parameter of this model with its value: the signature's defaults
        overridden by ``params`` (checked; ``layer`` names them in messages). Raises
        :class:`~batchml.params.InvalidParams`."""
        return resolve_params(self.signature.params, [ParamLayer(layer, params)])

    # --- predicting --------------------------------------------------------------------------

    def predict_proba(self, frame: Frame, *,
                      params: Mapping[str, Any] | None = None) -> np.ndarray:
        """Class probabilities, shape (n_rows, n_classes), columns in ``classes_`` order.

        ``frame`` may be a DataFrame or arrow data; it is checked and coerced with the
        signature first, so a missing column or wrong type raises :class:`SchemaMismatch`.
        ``params`` are inference parameters (checked against the signature first: an unknown
        name or a bad value raises :class:`~batchml.params.InvalidParams`; None = defaults);
        ``batch_size`` > 0 calls the model on that many rows at a time.

        Arrow data for a text model goes to :meth:`_predict_proba_arrow` first (no pandas);
        the DataFrame hook :meth:`_predict_proba` serves when that returns None. Either hook
        receives the resolved parameters when it takes a ``params`` keyword.
        """
        resolved = self.resolve_params(params)
        step = int(resolved.get("batch_size") or 0)
        if self.is_text and isinstance(frame, pa.Table | pa.RecordBatch):
            table = self.signature.coerce(frame, arrow=True)
            if table.num_rows == 0:
                return np.zeros((0, len(self.classes_)), dtype=np.float64)
            hook = self._predict_proba_arrow
            kw = {"params": resolved} if _takes_params(type(self)._predict_proba_arrow) else {}
            parts = []
            for start in _starts(table.num_rows, step):
                part = table.slice(start, step) if step else table
                arrow_proba = hook(part.column(0), **kw)
                if arrow_proba is None:
                    break
                parts.append(self._checked(np.asarray(arrow_proba, dtype=np.float64),
                                           part.num_rows))
            else:
                return parts[0] if len(parts) == 1 else np.vstack(parts)
        x = self.signature.coerce(frame)
        if len(x) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float64)
        kw = {"params": resolved} if _takes_params(type(self)._predict_proba) else {}
        if not step or step >= len(x):
            return self._checked(np.asarray(self._predict_proba(x, **kw), dtype=np.float64),
                                 len(x))
        chunks = []
        for start in _starts(len(x), step):
            part = x.iloc[start:start + step].reset_index(drop=True)
            chunks.append(self._checked(np.asarray(self._predict_proba(part, **kw),
                                                   dtype=np.float64), len(part)))
        return np.vstack(chunks)

    def _checked(self, proba: np.ndarray, rows: int) -> np.ndarray:
        if proba.shape != (rows, len(self.classes_)):
            raise ModelError(f"Model {self.name!r} returned probabilities of shape "
                             f"{proba.shape}, expected {(rows, len(self.classes_))}.",
                             hint="The model file does not match its signature; re-train it.")
        return proba

    @abstractmethod
    def _predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Probabilities for coerced inputs ``x`` (at least one row)."""

    def _predict_proba_arrow(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
        """Probabilities for the text column of arrow input (at least one row), or None to
        use :meth:`_predict_proba` on a DataFrame instead (the default).

        Called only for text estimators. ``column`` has passed the signature's checks: it is
        a string, large string, string view or dictionary-of-strings column, and holds nulls
        only when the input is optional (score a null as the empty string).
        """
        return None

    def predict(self, frame: Frame, *, threshold: float | None = None,
                params: Mapping[str, Any] | None = None) -> np.ndarray:
        """Predicted labels. Binary: positive class when its probability >= ``threshold``
        (default: the ``threshold`` inference parameter of ``params``, else the signature's);
        otherwise the most probable class, ties going to the later (larger) label.
        ``params``: inference parameters, as for :meth:`predict_proba`."""
        resolved = self.resolve_params(params)
        if threshold is None and "threshold" in resolved:
            threshold = float(resolved["threshold"])
        return self.labels_from_proba(self.predict_proba(frame, params=resolved),
                                      threshold=threshold)

    def labels_from_proba(self, proba: np.ndarray, *,
                          threshold: float | None = None) -> np.ndarray:
        """The labels :meth:`predict` returns for probabilities from :meth:`predict_proba`."""
        classes = np.array(self.classes_, dtype=object if isinstance(self.classes_[0], str)
                           else None)
        return classes[self.label_index(proba, threshold=threshold)]

    @property
    def threshold(self) -> float | None:
        """The binary decision threshold saved with the model (None for multi-class)."""
        if len(self.classes_) != 2:
            return None
        spec = self.signature.param("threshold")
        return float(spec.default) if spec is not None else float(
            self.params.get("threshold", 0.5))

    def set_threshold(self, threshold: float) -> None:
        """Record the binary decision threshold in the signature, so it is saved with the model
        and :meth:`predict` / :meth:`label_index` use it (training picks it on validation)."""
        if len(self.classes_) != 2:
            raise ModelError(f"Model {self.name!r} has {len(self.classes_)} classes; only a "
                             "binary model has a decision threshold.",
                             hint="Multi-class models predict the most probable class.")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"A decision threshold must lie in [0, 1], got {threshold!r}.",
                              hint="Pass a probability.")
        self.params["threshold"] = float(threshold)
        signature = self.signature
        if signature.param("threshold") is None:
            signature = replace(signature, params=merge_specs(
                builtin_params(binary=True, threshold=float(threshold)), signature.params))
        self._signature = signature.with_param_default("threshold", float(threshold))

    def label_index(self, proba: np.ndarray, *, threshold: float | None = None,
                    params: Mapping[str, Any] | None = None) -> np.ndarray:
        """Positions in ``classes_`` of the labels :meth:`labels_from_proba` returns
        (binary: at ``threshold``, else the ``threshold`` of resolved ``params``, else the
        model's)."""
        k = len(self.classes_)
        if k == 2:
            if threshold is None and params is not None and "threshold" in params:
                threshold = float(params["threshold"])
            if threshold is None:
                threshold = self.threshold
            return (proba[:, 1] >= threshold).astype(np.intp)
        return k - 1 - np.argmax(proba[:, ::-1], axis=1)

    # --- prediction outputs ------------------------------------------------------------------

    def output_columns(self, batch: pa.RecordBatch | pa.Table, proba: np.ndarray,
                       index: np.ndarray, *, params: Mapping[str, Any] | None = None
                       ) -> dict[str, pa.Array]:
        """The columns this model adds to a prediction output for one ``batch`` of input, in
        order: by default ``label`` (the class at ``index``), for a binary model ``proba``
        (the positive class's probability), then ``proba_<class>`` per class.

        ``proba`` comes from :meth:`predict_proba` and ``index`` from :meth:`label_index`
        (which also counts the positives); ``batch`` is the raw input (text values already
        held to the limits), for a flavor that derives a column from it. Scoring puts these
        after ``row_index`` and the carried-through columns and before the lineage columns; a
        flavor may override this to add or replace columns (one value per row each). Build
        arrays with :mod:`batchml.estimators._arrays` to keep pandas out of the scoring path.
        ``params`` are the resolved inference parameters of the batch (None: the defaults);
        an override written before parameters existed (no ``params`` keyword) still works:
        scoring calls it through :func:`call_output_columns`.
        """
        from ._arrays import class_values, from_numpy

        cols: dict[str, pa.Array] = {
            "label": class_values(self.classes_).take(from_numpy(index.astype(np.int64)))}
        by_class = np.ascontiguousarray(proba.T, dtype=np.float64)
        if len(self.classes_) == 2:
            cols["proba"] = from_numpy(by_class[1])
        for i, c in enumerate(self.classes_):
            cols[f"proba_{c}"] = from_numpy(by_class[i])
        return cols

    # --- explanations --------------------------------------------------------------------------

    def no_contributions_reason(self) -> str | None:
        """Why this model has no exact per-row contributions, or None when it has them (a
        flavor whose model is linear and knows its features' training means). The default:
        the flavor has none."""
        return "its flavor has no per-row contributions"

    @property
    def explains_rows(self) -> bool:
        """True when :meth:`contributions` works for this model."""
        return self.no_contributions_reason() is None

    def contributions(self, frame: Frame) -> Contributions:
        """Each feature's exact contribution to the model's decision values for every row of
        ``frame`` (see :class:`Contributions`), when :attr:`explains_rows`; otherwise raises
        :meth:`cannot_explain_rows` (the default)."""
        raise self.cannot_explain_rows()

    def cannot_explain_rows(self) -> ConfigError:
        """The error for asking per-row contributions of a model that has none: it names the
        model, its flavor, the reason and what to do."""
        why = self.no_contributions_reason() or "it has no per-row contributions"
        return ConfigError(f"Model {self.name!r} (flavor {self.flavor!r}) cannot explain single "
                           f"rows: {why}.",
                           hint="Score without --explain (the model's training run keeps "
                                "its global explanation: explanation.json, explanation.png), or "
                                "train a linear candidate, whose per-row contributions are "
                                "exact.")

    def global_explanation(self, x: pd.DataFrame, y: Labels, *, top: int = 20,
                           seed: int = 0) -> GlobalExplanation | None:
        """What drives the model overall (the top ``top`` features, per class where that
        means something), measured on validation data ``x`` and ``y`` where the method needs
        data; None when the flavor has no explanation (the default)."""
        return None

    # --- saving ------------------------------------------------------------------------------

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The fitted estimator as bytes that :meth:`from_bytes` (and ``load_estimator``)
        read."""

    @classmethod
    @abstractmethod
    def from_bytes(cls, data: bytes) -> Estimator:
        """The estimator saved by :meth:`to_bytes`; raises :class:`ModelError` for bytes of
        another flavor, corrupt bytes, or content that is not allowed."""

    def _meta(self) -> dict[str, Any]:
        """JSON-safe description of everything but the fitted model itself."""
        return {
            "format": "batchml", "version": _META_VERSION, "flavor": self.flavor,
            "name": self.name, "text_column": self.text_column,
            "feature_columns": self.feature_columns, "seed": self.seed,
            "params": _json_params(self.params), "classes": self.signature.to_dict()["classes"],
            "signature": self.signature.to_dict(), "history": self.history,
        }

    @classmethod
    def _from_meta(cls, meta: Any) -> Self:
        """A fitted shell (no model yet) from :meth:`_meta`'s output."""
        if not isinstance(meta, dict) or meta.get("format") != "batchml":
            raise ModelError(f"These bytes are not a batchml {cls.flavor} model (no batchml "
                             "metadata).", hint="Load it with the flavor it was saved with.")
        if meta.get("flavor") != cls.flavor:
            raise ModelError(f"This is a {meta.get('flavor')!r} model, not {cls.flavor!r}.",
                             hint="Load it with the flavor recorded in the catalog.")
        if int(meta.get("version", 0)) > _META_VERSION:
            raise ModelError(f"The model was saved by a newer batchml (format "
                             f"{meta.get('version')}).", hint="Upgrade batchml to load it.")
        try:
            params = {k: v for k, v in meta["params"].items()
                      if k in cls.common_params or k in cls.candidates.get(meta["name"], {})}
            estimator = cls(meta["name"], text_column=meta.get("text_column"),
                            feature_columns=meta.get("feature_columns"),
                            seed=int(meta.get("seed", 0)), params=params)
            signature = Signature.from_dict(meta["signature"])
            estimator.classes_ = list(signature.classes)
            # Saved specs win; built-ins a model saved before them lacks are filled in.
            estimator._signature = replace(signature, params=merge_specs(
                estimator.inference_params(), signature.params))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ModelError(f"The {cls.flavor} model's metadata is malformed ({exc}).",
                             hint="Re-train and log the model again.") from exc
        estimator.history = {str(k): [float(v) for v in vals]
                             for k, vals in (meta.get("history") or {}).items()}
        return estimator


def call_output_columns(estimator: Estimator, batch: pa.RecordBatch | pa.Table,
                        proba: np.ndarray, index: np.ndarray,
                        params: Mapping[str, Any] | None) -> dict[str, pa.Array]:
    """``estimator.output_columns(batch, proba, index, params=params)``, without ``params``
    for a flavor whose override predates inference parameters."""
    if _takes_params(type(estimator).output_columns):
        return estimator.output_columns(batch, proba, index, params=params)
    return estimator.output_columns(batch, proba, index)


def _takes_params(func: Any) -> bool:
    """True when ``func`` accepts a ``params`` keyword (or ``**kwargs``); about 10 µs."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    return any(p.name == "params" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
               or p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _starts(rows: int, step: int) -> range:
    return range(0, rows, step) if step else range(0, 1)


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _label_series(labels: Labels, n_rows: int) -> pd.Series:
    import pandas as pd

    series = labels.reset_index(drop=True) if isinstance(labels, pd.Series) \
        else pd.Series(np.asarray(labels))
    if len(series) != n_rows:
        raise DataError(f"There are {len(series)} labels for {n_rows} rows.",
                        hint="Pass one label per row.")
    nulls = int(series.isna().sum())
    if nulls:
        first = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise DataError(f"{nulls} labels are missing (first at row {first}).",
                        hint="Drop unlabelled rows before training.")
    return series


def _encode(labels: pd.Series, classes: Sequence[Any]) -> np.ndarray:
    """Positions of ``labels`` in ``classes``; raises for labels outside them."""
    import pandas as pd

    if pd.api.types.is_float_dtype(labels.dtype):
        if not (labels == labels.round()).all():
            raise DataError("labels hold fractional values; labels are classes.",
                            hint="Use string, integer or boolean labels.")
        labels = labels.astype("int64")
    values = labels.astype(object)
    codes = pd.Index(list(classes), dtype=object).get_indexer(values)
    if (codes < 0).any():
        unknown = values[codes < 0].iloc[0]
        raise DataError(f"label {unknown!r} is not one of the training classes {list(classes)}.",
                        hint="Validation labels must come from the training classes.")
    return codes.astype(np.int64)
