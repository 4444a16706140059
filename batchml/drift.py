"""Drift per batch: how far a batch's inputs and scores are from the model's training data.

Three parts, numpy and pyarrow only:

- **The reference** (:func:`build_reference`), made once at training time for the run's
  winner and stored as the run's artifact :data:`REFERENCE_ARTIFACT`: numeric features by
  :data:`BINS` quantile bins of the training data; categorical ones (strings, bools) by
  their :data:`MAX_CATEGORIES` most frequent values; a text column by its length in quantile
  bins, a vocabulary of the :data:`VOCABULARY` most frequent training tokens (the project's
  word tokens, :mod:`batchml.estimators.tokenizer`) with its top :data:`TOP_TOKENS`, and the
  out-of-vocabulary rate of the validation text; the score by bins of each class's
  probability on validation (binary: the positive class only). Every distribution keeps a
  bin for missing values.
- **Counts** (:class:`DriftAccumulator`, :class:`DriftCounts`): while a file is scored, each
  record batch is binned once (``np.searchsorted`` / ``np.bincount`` over Arrow buffers), on
  at most :data:`SAMPLE_ROWS` evenly spaced rows of it (text tokens on :data:`TOKEN_ROWS`). Counts merge by addition, so a batch's
  files (scored here or in the scorer process) add up to one count, without a second pass.
- **Metrics** (:func:`drift_rows`): PSI for binned distributions, Jensen-Shannon distance
  (base 2, in [0, 1]) for categories and top tokens, the OOV rate against the reference's;
  each with its threshold (:class:`DriftThresholds`, from settings) and a note when a column
  is all missing or constant, or the batch too small to judge.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import pandas as pd

    from .settings import Settings

FORMAT = "batchml-drift-reference"
VERSION = 1
REFERENCE_ARTIFACT = "drift_reference.json"
BINS = 10
MAX_CATEGORIES = 50
VOCABULARY = 20_000
TOP_TOKENS = 50
SAMPLE_ROWS = 8_192
"""Rows of each record batch that are binned (evenly spaced; all rows of smaller batches):
bounds the cost per batch, while a file's distribution still rests on thousands of rows."""
TOKEN_ROWS = 1_024
"""Rows of each record batch whose tokens are counted (evenly spaced): bounds the cost."""
EPS = 1e-4
"""Proportions below this count as this in PSI (an empty bin would be infinite)."""


@dataclass
class FeatureReference:
    """The training distribution of one feature (or of the score)."""

    name: str
    kind: str  # numeric | categorical | text | score
    expected: list[float] = field(default_factory=list)  # per bin, the missing bin last
    edges: list[float] = field(default_factory=list)  # numeric, score; text: length
    categories: list[str] = field(default_factory=list)  # categorical: then other, missing
    vocabulary: list[str] = field(default_factory=list)  # text: most frequent first
    top: int = 0  # text: the first ``top`` of the vocabulary are the top tokens
    top_expected: list[float] = field(default_factory=list)  # top tokens, then the rest
    oov_rate: float = 0.0  # text: of the validation tokens
    column: int = 0  # score: the probability column
    note: str | None = None


@dataclass
class DriftReference:
    """A model's reference: its features and its score (:func:`build_reference`)."""

    model: str
    classes: list[Any]
    rows: int
    features: list[FeatureReference]

    def to_json(self) -> bytes:
        """The artifact's bytes."""
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)},
                          indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DriftReference:
        """Read :meth:`to_json`'s bytes; ``ValueError`` when they are not a reference."""
        raw = json.loads(data)
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} document")
        return cls(raw["model"], raw["classes"], int(raw["rows"]),
                   [FeatureReference(**f) for f in raw["features"]])


# --- counting ---------------------------------------------------------------------------------


@dataclass
class DriftCounts:
    """Binned counts of some rows, per feature; :meth:`merge` adds another's."""

    rows: int = 0
    files: int = 0
    counts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def merge(self, other: DriftCounts) -> DriftCounts:
        """Add ``other``'s counts to these (in place) and return self."""
        self.rows += other.rows
        self.files += other.files
        for name, parts in other.counts.items():
            mine = self.counts.setdefault(name, {})
            for key, value in parts.items():
                if key not in mine:
                    mine[key] = value.copy()
                elif key == "range":
                    mine[key] = np.array([np.fmin(mine[key][0], value[0]),
                                          np.fmax(mine[key][1], value[1])])
                else:
                    mine[key] = mine[key] + value
        return self


def _floats(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    from .estimators._arrays import to_numpy

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_float64(column.type):
        column = pc.cast(column, pa.float64())
    return to_numpy(column, null=np.nan)


def _binned(values: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Counts per bin (missing last) and the (min, max) of the present values."""
    missing = np.isnan(values)
    index = np.searchsorted(edges, values, side="right")
    index[missing] = len(edges) + 1
    counts = np.bincount(index, minlength=len(edges) + 2).astype(np.int64)
    # fmin / fmax skip NaN (all NaN: NaN)
    return {"bins": counts, "range": np.array([np.fmin.reduce(values) if len(values) else np.nan,
                                               np.fmax.reduce(values) if len(values) else np.nan])}


def _categorical(column: pa.Array, categories: pa.Array) -> dict[str, np.ndarray]:
    from .estimators._arrays import to_numpy

    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    k = len(categories)
    index = to_numpy(pc.index_in(column, value_set=categories), null=-1).astype(np.int64)
    index[index < 0] = k
    index[to_numpy(pc.is_null(column))] = k + 1
    return {"bins": np.bincount(index, minlength=k + 2).astype(np.int64)}


class DriftAccumulator:
    """Counts record batches against a :class:`DriftReference` (one file, or training data
    when the reference is built); :attr:`counts` is the result."""

    def __init__(self, reference: DriftReference, *, token_rows: int | None = TOKEN_ROWS,
                 sample_rows: int | None = SAMPLE_ROWS) -> None:
        from .estimators._arrays import strings

        self.reference = reference
        self.token_rows = token_rows
        self.sample_rows = sample_rows
        self.counts = DriftCounts(files=1)
        self._edges = {f.name: np.asarray(f.edges, dtype=np.float64)
                       for f in reference.features}
        self._values = {f.name: strings(f.categories or f.vocabulary)
                        for f in reference.features if f.kind in ("categorical", "text")}

    def update(self, batch: pa.RecordBatch | pa.Table, proba: np.ndarray | None) -> None:
        """Count one record batch (and its probabilities, for the score)."""
        from .estimators._arrays import from_numpy

        n = batch.num_rows
        self.counts.rows += n
        names = set(batch.schema.names)
        rows: np.ndarray | None = None  # the rows counted: evenly spaced, or all
        if self.sample_rows is not None and n > self.sample_rows:
            rows = (np.arange(self.sample_rows) * (n / self.sample_rows)).astype(np.int64)
            taken = from_numpy(rows)
        for ref in self.reference.features:
            if ref.kind == "score":
                if proba is None:
                    continue
                scores = proba[:, ref.column] if rows is None else proba[rows, ref.column]
                part = _binned(np.asarray(scores, np.float64), self._edges[ref.name])
            else:
                column = batch.column(ref.name) if ref.name in names else \
                    pa.nulls(n, pa.string() if ref.kind != "numeric" else pa.float64())
                if isinstance(column, pa.ChunkedArray):
                    column = column.combine_chunks()
                if rows is not None:
                    column = column.take(taken)
                if ref.kind == "numeric":
                    part = _binned(_floats(column), self._edges[ref.name])
                elif ref.kind == "categorical":
                    part = _categorical(column, self._values[ref.name])
                else:
                    part = self._text(ref, column)
            self.counts.merge(DriftCounts(counts={ref.name: part}))

    def _text(self, ref: FeatureReference, column: pa.Array) -> dict[str, np.ndarray]:
        from .estimators._arrays import from_numpy, to_numpy
        from .estimators.tokenizer import tokens

        if not pa.types.is_string(column.type):
            column = pc.cast(column, pa.string())
        lengths = to_numpy(pc.utf8_length(column), null=-1).astype(np.float64)
        lengths[lengths < 0] = np.nan
        part = _binned(lengths, self._edges[ref.name])
        present = pc.drop_null(column)
        rows = len(present) if self.token_rows is None else min(len(present), self.token_rows)
        # take() also makes the array compact: the tokenizer's Arrow lowercasing misreads a
        # slice whose offsets do not start at zero
        present = present.take(from_numpy(
            (np.arange(rows) * (len(present) / max(1, rows))).astype(np.int64)))
        _, found = tokens(present)
        index = to_numpy(pc.index_in(found, value_set=self._values[ref.name]),
                         null=-1).astype(np.int64)
        top = np.bincount(index[(index >= 0) & (index < ref.top)], minlength=ref.top)
        part["tokens"] = np.append(top, len(index) - top.sum()).astype(np.int64)
        part["oov"] = np.array([int((index < 0).sum()), len(index)], dtype=np.int64)
        return part


# --- the reference ----------------------------------------------------------------------------


def _quantile_edges(values: np.ndarray) -> list[float]:
    present = values[~np.isnan(values)]
    if not len(present):
        return []
    cuts = np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1])
    # a cut at the minimum would leave the first bin empty
    return [float(c) for c in np.unique(cuts) if c > present.min()]


def build_reference(model: str, train_x: pd.DataFrame, *, text_column: str | None,
                    classes: list[Any], valid_x: pd.DataFrame | None = None,
                    valid_proba: np.ndarray | None = None) -> DriftReference:
    """The reference of a model trained on ``train_x`` (its input columns; ``text_column``
    names the text input of a text model), with its score's distribution from
    ``valid_proba`` (rows of ``valid_x``) when given."""
    table = pa.Table.from_pandas(train_x, preserve_index=False)
    features: list[FeatureReference] = []
    for name in table.schema.names:
        column = table.column(name).combine_chunks()
        if name == text_column:
            features.append(_text_reference(name, column, valid_x))
        elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            features.append(_with_note(FeatureReference(
                name, "numeric", edges=_quantile_edges(_floats(column)))))
        else:
            text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
            counts = pc.value_counts(pc.drop_null(text))
            order = np.argsort(-np.asarray(counts.field("counts")), kind="stable")
            top = [counts.field("values")[int(i)].as_py() for i in order[:MAX_CATEGORIES]]
            features.append(FeatureReference(name, "categorical", categories=top))
    if valid_proba is not None and len(valid_proba):
        columns = [1] if valid_proba.shape[1] == 2 else range(valid_proba.shape[1])
        for c in columns:
            features.append(FeatureReference(
                f"score:{classes[c]}", "score", column=int(c),
                edges=_quantile_edges(np.asarray(valid_proba[:, c], np.float64))))
    reference = DriftReference(model, list(classes), table.num_rows, features)
    # the expected proportions: the training rows (the score: validation) counted as a batch
    acc = DriftAccumulator(reference, token_rows=None, sample_rows=None)
    acc.update(table, None)
    scores = [f for f in features if f.kind == "score"]
    if scores and valid_proba is not None:
        score = DriftAccumulator(DriftReference(model, list(classes), 0, scores),
                                 sample_rows=None)
        score.update(pa.table({"_": pa.nulls(len(valid_proba))}), valid_proba)
        acc.counts.counts.update(score.counts.counts)
    for ref in features:
        part = acc.counts.counts.get(ref.name, {})
        bins = part.get("bins")
        if bins is not None:
            ref.expected = [float(v) for v in bins / max(1, bins.sum())]
        if ref.kind == "text":
            tok = part["tokens"]
            ref.top_expected = [float(v) for v in tok / max(1, tok.sum())]
            ref.expected = [float(v) for v in part["bins"] / max(1, part["bins"].sum())]
        _with_note(ref, part)
    return reference


def _text_reference(name: str, column: pa.Array, valid_x: pd.DataFrame | None
                    ) -> FeatureReference:
    from .estimators.tokenizer import tokens

    column = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    lengths = _floats(pc.utf8_length(column))
    _, found = tokens(pc.drop_null(column))
    ref = FeatureReference(name, "text", edges=_quantile_edges(lengths))
    if len(found):
        counts = pc.value_counts(found)
        order = np.argsort(-np.asarray(counts.field("counts")), kind="stable")[:VOCABULARY]
        ref.vocabulary = counts.field("values").take(pa.array(order)).to_pylist()
    ref.top = min(TOP_TOKENS, len(ref.vocabulary))
    if valid_x is not None and name in valid_x.columns and ref.vocabulary:
        valid = pa.Array.from_pandas(valid_x[name])
        _, vt = tokens(pc.drop_null(pc.cast(valid, pa.string())))
        if len(vt):
            hit = pc.is_in(vt, value_set=pa.array(ref.vocabulary, pa.string()))
            ref.oov_rate = 1.0 - pc.sum(hit).as_py() / len(vt)
    return ref


def _with_note(ref: FeatureReference, part: dict[str, np.ndarray] | None = None
               ) -> FeatureReference:
    """Note what makes a reference degenerate (all missing, constant, no tokens)."""
    if part is None:
        return ref
    bins = part.get("bins")
    if bins is not None and bins.sum() and bins[-1] == bins.sum():
        ref.note = "all values missing in the training data"
    elif ref.kind in ("numeric", "score", "text") and not ref.edges and bins is not None:
        ref.note = "constant in the training data: one bin"
    elif ref.kind == "categorical" and len(ref.categories) == 1:
        ref.note = "one value in the training data"
    elif ref.kind == "text" and not ref.vocabulary:
        ref.note = "no tokens in the training data"
    return ref


# --- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    """When a metric alerts (``BATCHML_DRIFT_*``): PSI above ``psi``, a Jensen-Shannon
    distance above ``js``, an OOV rate more than ``oov`` above the reference's; batches of
    fewer than ``min_rows`` rows are measured but never alert."""

    psi: float = 0.2
    js: float = 0.1
    oov: float = 0.1
    min_rows: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftThresholds:
        """The thresholds ``settings`` hold."""
        return cls(settings.drift_psi_alert, settings.drift_js_alert,
                   settings.drift_oov_alert, settings.drift_min_rows)


@dataclass
class DriftRow:
    """One metric of one feature for one batch (a ``batch_drift`` row, without the batch)."""

    feature: str
    kind: str
    metric: str
    value: float
    threshold: float
    alert: bool
    note: str | None = None


def _proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def psi(expected: np.ndarray | list[float], actual: np.ndarray | list[float]) -> float:
    """Population stability index of two distributions over the same bins (proportions
    below :data:`EPS` count as :data:`EPS`)."""
    e = np.maximum(np.asarray(expected, np.float64), EPS)
    a = np.maximum(np.asarray(actual, np.float64), EPS)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: np.ndarray | list[float], q: np.ndarray | list[float]) -> float:
    """Jensen-Shannon distance (base 2: 0 same, 1 disjoint) of two distributions."""
    a, b = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if not a.sum() or not b.sum():
        return 0.0 if a.sum() == b.sum() else 1.0
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(a) + kl(b)) / 2)))


def _batch_note(ref: FeatureReference, part: dict[str, np.ndarray]) -> str | None:
    bins = part["bins"]
    if bins.sum() and bins[-1] == bins.sum():
        return "all values missing in this batch"
    lo_hi = part.get("range")
    if lo_hi is not None and bins.sum() > 1 and lo_hi[0] == lo_hi[1]:
        return f"constant in this batch ({lo_hi[0]:g})"
    if ref.kind == "categorical" and bins[:-1].sum() > 1 and not bins[-2] \
            and np.count_nonzero(bins[:-2]) == 1:
        return "one value in this batch"
    return None


def drift_rows(reference: DriftReference, counts: DriftCounts,
               thresholds: DriftThresholds | None = None) -> list[DriftRow]:
    """The metrics of ``counts`` (a batch) against ``reference``, with their alerts."""
    limits = thresholds or DriftThresholds()
    small = counts.rows < limits.min_rows
    rows: list[DriftRow] = []

    def add(ref: FeatureReference, metric: str, value: float, threshold: float,
            *notes: str | None) -> None:
        said = [n for n in (*notes, ref.note and f"reference: {ref.note}") if n]
        if small:
            said.append(f"only {counts.rows} rows: not judged (BATCHML_DRIFT_MIN_ROWS="
                        f"{limits.min_rows})")
        rows.append(DriftRow(ref.name, ref.kind, metric, round(value, 6), threshold,
                             bool(value > threshold and not small),
                             "; ".join(said) or None))

    for ref in reference.features:
        part = counts.counts.get(ref.name)
        if part is None:
            continue  # the score of a file scored without probabilities
        note = _batch_note(ref, part)
        actual = _proportions(part["bins"])
        if ref.kind == "categorical":
            add(ref, "js", js_distance(ref.expected, actual), limits.js, note)
        elif ref.kind != "text":
            add(ref, "psi", psi(ref.expected, actual), limits.psi, note)
        else:
            add(ref, "length_psi", psi(ref.expected, actual), limits.psi, note)
            oov, total = (int(v) for v in part["oov"])
            empty = None if total else "no tokens in this batch"
            add(ref, "oov_rate", oov / total if total else 0.0,
                round(ref.oov_rate + limits.oov, 6), note, empty)
            add(ref, "token_js", js_distance(ref.top_expected, part["tokens"]) if total else 0.0,
                limits.js, note, empty)
    return rows

