"""Two versions of a registered model side by side (``batchml models compare``): the metrics
each one's training run recorded, and both scored on the same labelled data (by default the
validation file), with each one's confusion matrix and the share of rows on which the two
predict the same label::

    result = compare_versions(catalog, "reviews", 1, 2, frame, label="labels")
    result.agreement                  # share of rows with the same predicted label
    result.a.confusion                # rows: true label, columns: predicted (result.labels)

Nothing here assumes a domain: the label column is named by the caller (default: the one the
version's run trained with), and the inputs are read the way training read its validation
data (:func:`batchml.datasets.prepare_training_frame`: a text column cleaned, feature columns
as they are), as recorded in each version's run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .datasets import prepare_training_frame
from .errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from .catalog import Catalog
    from .catalog.registry import ModelVersion
    from .estimators import Estimator
    from .settings import Settings

KEY_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1", "f1_macro", "log_loss")
"""The metrics ``batchml models show`` puts in its versions table (those a run has)."""


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The metrics of ``version``'s own model, as its training run recorded them: the
    ``<model>.<metric>`` entries (a run records every candidate's), or, for a run that logged
    plain metrics only, those without a dot."""
    metrics = version.metrics
    prefix = f"{version.model_name}."
    own = {k.removeprefix(prefix): float(v) for k, v in metrics.items() if k.startswith(prefix)}
    return own or {k: float(v) for k, v in metrics.items() if "." not in k}


@dataclass(frozen=True)
class VersionScores:
    """One version scored on the comparison data."""

    version: int
    ref: str
    run_id: str
    model: str
    recorded: dict[str, float]
    """The metrics its training run recorded (:func:`version_metrics`)."""
    predictions: np.ndarray
    """The label it predicts for each row (its saved decision threshold applied)."""
    confusion: list[list[int]]
    """Counts: row ``i`` true label ``labels[i]``, column ``j`` predicted ``labels[j]``."""
    accuracy: float
    """Share of rows it labels right on the comparison data."""
    balanced_accuracy: float
    """Mean recall over the true labels present in the comparison data."""


@dataclass(frozen=True)
class VersionComparison:
    """What :func:`compare_versions` returns."""

    name: str
    label: str
    rows: int
    labels: list[Any]
    """The confusion matrices' order: every true and predicted label, sorted."""
    a: VersionScores
    b: VersionScores
    agreement: float
    """Share of rows on which both versions predict the same label."""
    cross: list[list[int]]
    """Counts: row ``i`` labelled ``labels[i]`` by ``a``, column ``j`` ``labels[j]`` by ``b``
    (its diagonal holds the rows they agree on)."""
    data_uri: str | None = None
    metrics: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    """Every recorded metric of either version: (metric, a's, b's), by name."""

    @property
    def disagreements(self) -> int:
        """Rows on which the versions predict different labels."""
        return self.rows - int(np.trace(np.asarray(self.cross, dtype=np.int64)))


def _sorted_labels(values: Sequence[Any]) -> list[Any]:
    plain = {v.item() if isinstance(v, np.generic) else v for v in values}
    return sorted(plain, key=lambda v: (isinstance(v, str), v))


def _prepared(version: ModelVersion, estimator: Estimator, frame: pd.DataFrame,
              label: str) -> tuple[pd.DataFrame, np.ndarray]:
    """``frame``'s inputs for ``version`` and the labels, read as training read validation."""
    params = version.run.params
    inputs = list(estimator.signature.input_names)
    text = params.get("text_column")
    features = params.get("feature_columns")
    if not text and not features:  # a run training did not record: ask the model
        text, features = (inputs[0], None) if estimator.is_text else (None, inputs)
    missing = [c for c in inputs if c not in frame.columns]
    if missing:
        raise DataError(f"The comparison data lacks column(s) {', '.join(map(repr, missing))} "
                        f"that {version.ref} reads; it has {', '.join(map(str, frame.columns))}.",
                        hint="Pass data with the model's input columns (--data).")
    x, y = prepare_training_frame(frame, label=label, text_column=text or None,
                                  feature_columns=None if text else features,
                                  what="comparison data")
    return x[inputs], np.asarray(y.tolist(), dtype=object)


def _matrix(rows: np.ndarray, cols: np.ndarray, labels: list[Any]) -> list[list[int]]:
    index = {v: i for i, v in enumerate(labels)}
    out = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(out, ([index[_plain(v)] for v in rows], [index[_plain(v)] for v in cols]), 1)
    return out.tolist()


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _scores(version: ModelVersion, pred: np.ndarray, y: np.ndarray,
            labels: list[Any]) -> VersionScores:
    confusion = _matrix(y, pred, labels)
    matrix = np.asarray(confusion, dtype=np.int64)
    present = matrix.sum(axis=1) > 0
    recalls = np.diag(matrix)[present] / matrix.sum(axis=1)[present]
    return VersionScores(
        version=version.version, ref=version.ref, run_id=version.run_id,
        model=version.model_name, recorded=version_metrics(version), predictions=pred,
        confusion=confusion, accuracy=float(np.trace(matrix) / max(1, len(y))),
        balanced_accuracy=float(recalls.mean()) if present.any() else float("nan"))


def _versions(catalog: Catalog, name: str, v1: int,
              v2: int) -> tuple[ModelVersion, ModelVersion]:
    """Versions ``v1`` and ``v2``; RegistryError naming the model or the missing version."""
    model = catalog.model(name)
    _ = model.aliases  # reads the model: an unknown one is named as such, not as a version
    return model.version(v1), model.version(v2)


def compare_versions(catalog: Catalog, name: str, v1: int, v2: int, frame: pd.DataFrame,
                     label: str, *, data_uri: str | None = None) -> VersionComparison:
    """Versions ``v1`` and ``v2`` of registered model ``name`` side by side: their recorded
    metrics, and both scored on ``frame`` (labelled by column ``label``): each one's confusion
    matrix, and the share of rows on which they predict the same label.

    Raises :class:`~batchml.errors.RegistryError` for an unknown model or version and
    :class:`~batchml.errors.DataError` for data that cannot be scored (no rows, no label
    column, unlabelled rows, a missing input column)."""
    versions = _versions(catalog, name, v1, v2)
    if len(frame) == 0:
        raise DataError("The comparison data has no rows.",
                        hint="Point --data at a labelled file with rows.")
    preds: list[np.ndarray] = []
    truth: np.ndarray | None = None
    for version in versions:
        estimator = version.load()
        x, y = _prepared(version, estimator, frame, label)
        truth = y if truth is None else truth
        preds.append(np.asarray(estimator.predict(x), dtype=object))
    assert truth is not None
    labels = _sorted_labels([*truth, *preds[0], *preds[1]])
    a, b = (_scores(v, p, truth, labels) for v, p in zip(versions, preds, strict=True))
    same = np.asarray([_plain(p) == _plain(q) for p, q in zip(*preds, strict=True)])
    names = sorted(set(a.recorded) | set(b.recorded))
    return VersionComparison(
        name=versions[0].name, label=label, rows=len(truth), labels=labels, a=a, b=b,
        agreement=float(same.mean()), cross=_matrix(preds[0], preds[1], labels),
        data_uri=data_uri,
        metrics=[(m, a.recorded.get(m), b.recorded.get(m)) for m in names])


def compare_from_settings(settings: Settings, name: str, v1: int, v2: int, *,
                          data: str | None = None,
                          label: str | None = None) -> VersionComparison:
    """:func:`compare_versions` on the data ``settings`` name: ``data`` (a parquet path or
    ``s3://`` URI), else the validation file (``BATCHML_VALID_URI``), else the validation
    file ``v2``'s (then ``v1``'s) training run read; labelled by ``label``, else the label
    column that run trained with, else ``BATCHML_LABEL_COLUMN``. The file is read within the
    settings' limits, as training reads it."""
    from .catalog import Catalog
    from .datasets import read_parquet
    from .limits import Limits

    catalog = Catalog.from_settings(settings)
    params = [v.run.params for v in reversed(_versions(catalog, name, v1, v2))]
    uri = data or settings.valid_uri or next(
        (p["valid_uri"] for p in params if p.get("valid_uri")), None)
    if not uri:
        raise DataError("There is no validation data to compare the versions on.",
                        hint="Pass --data PARQUET (with the input and label columns) or set "
                             "BATCHML_VALID_URI.")
    s3 = None
    if uri.startswith("s3://"):
        from .store import s3_client

        s3 = s3_client(settings.s3_endpoint_url, settings.s3_region)
    frame, _ = read_parquet(uri, s3=s3, limits=Limits.from_settings(settings))
    if label is None:
        recorded = [p["label"] for p in params if p.get("label") in frame.columns]
        label = recorded[0] if recorded else settings.label_column
    return compare_versions(catalog, name, v1, v2, frame, label, data_uri=uri)
