"""Model signatures: which input columns a model reads, what it returns, and how to check data.

A :class:`Signature` is stored in the catalog next to every model. Scoring checks a file's
parquet schema against it *before* reading any rows (:meth:`Signature.check_schema`), then
turns each batch into exactly the frame the model was trained on (:meth:`Signature.coerce`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError, ModelError, SchemaMismatch
from .params import EXPLAIN, ParamSpec, specs_from_json, specs_to_list

if TYPE_CHECKING:  # imported where used: scoring arrow data needs no pandas
    import pandas as pd

TYPES: tuple[str, ...] = ("string", "float64", "int64", "bool")
"""The column types a signature can name for inputs (and plain outputs)."""

EXPLANATION_COLUMN = "explanation"
"""The output column ``batchml predict --explain K`` adds: per row, the K features with the
largest absolute contributions to the model's decision value, largest first."""
EXPLANATION_TYPE = "list<struct<feature: string, contribution: float64>>"
"""The signature type of :data:`EXPLANATION_COLUMN` (an output only)."""
EXPLANATION_ARROW_TYPE = pa.list_(pa.struct([pa.field("feature", pa.string()),
                                             pa.field("contribution", pa.float64())]))
"""Its Arrow type in the prediction parquet."""
OUTPUT_TYPES: tuple[str, ...] = (*TYPES, EXPLANATION_TYPE)
"""The column types an output may have."""

_ARROW_TYPES = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
                "bool": pa.bool_()}
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a signature: its name, its type (one of :data:`TYPES`) and whether every
    row needs a value."""

    name: str
    type: str
    required: bool = True

    def __post_init__(self) -> None:
        if self.type not in OUTPUT_TYPES:
            raise ValueError(f"Column {self.name!r} has type {self.type!r}; "
                             f"use one of {', '.join(TYPES)} (outputs also "
                             f"{EXPLANATION_TYPE}).")

    def to_dict(self) -> dict[str, Any]:
        """The column as a JSON-safe dict."""
        return {"name": self.name, "type": self.type, "required": self.required}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnSpec:
        """The column described by :meth:`to_dict`'s output."""
        return cls(str(data["name"]), str(data["type"]), bool(data.get("required", True)))


def _safe_cast(actual: pa.DataType, expected: str) -> bool:
    """True when a column of arrow type ``actual`` converts to ``expected`` without loss."""
    if pa.types.is_dictionary(actual):
        return _safe_cast(actual.value_type, expected)
    if pa.types.is_null(actual):
        return True  # all-null column: the null check in coerce() reports it if required
    if expected == "string":
        return (pa.types.is_string(actual) or pa.types.is_large_string(actual)
                or pa.types.is_string_view(actual))
    if expected == "float64":
        return pa.types.is_integer(actual) or pa.types.is_floating(actual)
    if expected == "int64":
        # uint64 can exceed int64's range, so it is not a safe cast.
        return pa.types.is_integer(actual) and not pa.types.is_uint64(actual)
    return pa.types.is_boolean(actual)


def _type_name(arrow_type: pa.DataType) -> str:
    """Arrow's type name, with the float names this project uses ("double" is float64)."""
    name = str(arrow_type)
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(name, name)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can hold."""
    return value.item() if isinstance(value, np.generic) else value


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    value = _plain(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ModelError(f"Signature parameter value {value!r} ({type(value).__name__}) cannot be "
                     "stored as JSON.", hint="Use str, int, float, bool, lists or dicts.")


@dataclass(frozen=True)
class Signature:
    """What a model reads and returns.

    ``inputs`` are the columns it reads (extra columns in the data are ignored), ``outputs``
    the columns scoring writes, ``classes`` the labels in the order of ``predict_proba``'s
    columns (the last one is the positive class of a binary model), and ``params`` the
    inference parameters the model accepts (:class:`~batchml.params.ParamSpec`, with their
    defaults: ``threshold`` for a binary model, ``explain``, ``batch_size`` and the flavor's
    own; see :mod:`batchml.params`).
    """

    inputs: tuple[ColumnSpec, ...]
    outputs: tuple[ColumnSpec, ...] = ()
    classes: tuple[str | int, ...] = ()
    params: tuple[ParamSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        for param in self.params:
            if not isinstance(param, ParamSpec):
                raise ValueError(f"Signature params are ParamSpec values, got {param!r}.")
        for spec in self.inputs:
            if spec.type not in TYPES:
                raise ValueError(f"Input column {spec.name!r} has type {spec.type!r}; inputs "
                                 f"are one of {', '.join(TYPES)}.")

    @property
    def input_names(self) -> list[str]:
        """Names of the input columns, in order."""
        return [c.name for c in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Names of the output columns, in order."""
        return [c.name for c in self.outputs]

    @property
    def param_defaults(self) -> dict[str, Any]:
        """Each inference parameter's default, by name."""
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> ParamSpec | None:
        """The inference parameter ``name``, or None when the model has none of that name."""
        return next((p for p in self.params if p.name == name), None)

    def with_param_default(self, name: str, default: Any) -> Signature:
        """This signature with parameter ``name``'s default set to ``default`` (checked
        against the spec; raises ``InvalidParams``); a parameter it lacks is added from the
        built-ins (``explain``) or raises ``KeyError``."""
        spec = self.param(name)
        if spec is None:
            if name != EXPLAIN.name:
                raise KeyError(name)
            spec = EXPLAIN
        new = replace(spec, default=spec.check(default, layer="default"))
        if self.param(name) is None:
            return replace(self, params=(*self.params, new))
        return replace(self, params=tuple(new if p.name == name else p for p in self.params))

    def with_explanation(self, k: int) -> Signature:
        """This signature as scoring with ``explain=k`` uses it: the output column
        :data:`EXPLANATION_COLUMN` (:data:`EXPLANATION_TYPE`, ``k`` entries per row, fewer
        only when the model has fewer features) after the others, and the inference parameter
        ``explain`` defaulting to ``k``. ``k`` = 0 returns the signature unchanged."""
        if k < 0:
            raise ValueError(f"explain must be 0 or more, got {k}.")
        if k == 0:
            return self
        outputs = tuple(c for c in self.outputs if c.name != EXPLANATION_COLUMN)
        return replace(self, outputs=(*outputs, ColumnSpec(EXPLANATION_COLUMN,
                                                           EXPLANATION_TYPE))
                       ).with_param_default("explain", int(k))

    # --- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The signature as a JSON-safe dict; :meth:`from_dict` reverses it."""
        return {
            "version": _FORMAT_VERSION,
            "inputs": [c.to_dict() for c in self.inputs],
            "outputs": [c.to_dict() for c in self.outputs],
            "classes": [_plain(c) for c in self.classes],
            "params": _json_safe(specs_to_list(self.params)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """The signature described by ``data`` (from :meth:`to_dict`)."""
        try:
            version = int(data.get("version", 1))
            if version > _FORMAT_VERSION:
                raise ModelError(f"The model's signature has format version {version}; this "
                                 f"batchml reads up to {_FORMAT_VERSION}.",
                                 hint="Upgrade batchml to load this model.")
            return cls(
                inputs=tuple(ColumnSpec.from_dict(c) for c in data["inputs"]),
                outputs=tuple(ColumnSpec.from_dict(c) for c in data.get("outputs", ())),
                classes=tuple(data.get("classes", ())),
                params=specs_from_json(data.get("params")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"The model's signature is malformed ({exc!r}).",
                             hint="Re-train and log the model again.") from exc

    # --- checking data -----------------------------------------------------------------------

    def check_schema(self, schema: pa.Schema) -> None:
        """Raise :class:`SchemaMismatch` unless data with ``schema`` can be scored.

        Every required input must be present and safely castable to its expected type
        (integers to float64, narrower integers to int64, any arrow string or dictionary of
        strings to string). Extra columns are fine. All problems are reported at once.
        """
        problems: list[str] = []
        hints: list[str] = []
        names = set(schema.names)
        for spec in self.inputs:
            if (count := schema.names.count(spec.name)) > 1:
                problems.append(f"column {spec.name!r} appears more than once ({count} times); "
                                f"the model expects one {spec.type} column of that name.")
                hints.append(f"Keep one column named {spec.name!r}.")
                continue
            if spec.name not in names:
                if spec.required:
                    problems.append(f"column {spec.name!r} is missing; the model expects "
                                    f"{spec.type}.")
                    hints.append("Add the column or score with another model.")
                continue
            arrow_type = schema.field(spec.name).type
            if not _safe_cast(arrow_type, spec.type):
                actual = _type_name(arrow_type)
                problems.append(f"column {spec.name!r} has type {actual} but the model expects "
                                f"{spec.type}, and {actual} cannot be safely cast to "
                                f"{spec.type}.")
                hints.append(f"Write {spec.name!r} as {spec.type} or score with another "
                             "model.")
        if problems:
            raise SchemaMismatch(" ".join(problems), hint=" ".join(dict.fromkeys(hints)))

    @overload
    def coerce(self, batch: pa.RecordBatch | pa.Table | pd.DataFrame, *,
               arrow: Literal[False] = False) -> pd.DataFrame: ...

    @overload
    def coerce(self, batch: pa.RecordBatch | pa.Table | pd.DataFrame, *,
               arrow: Literal[True]) -> pa.Table: ...

    def coerce(self, batch: pa.RecordBatch | pa.Table | pd.DataFrame, *,
               arrow: bool = False) -> pd.DataFrame | pa.Table:
        """The input columns of ``batch`` as a DataFrame with the expected types.

        String columns come back as object dtype holding ``str``; a missing value of an
        optional column is NaN. Raises :class:`SchemaMismatch` when the schema does not fit
        (see :meth:`check_schema`) or a required column holds nulls.

        With ``arrow=True`` the same checks run but the input columns come back as an arrow
        table, as they are (no conversion: a string column may be string, large string,
        string view or dictionary; an absent optional column is all nulls), without pandas.
        """
        if not isinstance(batch, pa.RecordBatch | pa.Table):
            import pandas as pd

            if isinstance(batch, pd.DataFrame):
                ready = None if arrow else self._already_coerced(batch)
                if ready is not None:
                    return ready
                batch = _arrow_from_pandas(batch, self.input_names)
        self.check_schema(batch.schema)
        if arrow:
            return self._coerce_arrow(batch)
        out: dict[str, Any] = {}
        problems: list[str] = []
        for spec in self.inputs:
            if spec.name not in batch.schema.names:  # optional and absent
                out[spec.name] = _empty(spec.type, batch.num_rows)
                continue
            column = batch.column(spec.name)
            nulls = column.null_count
            if nulls and spec.required:
                problems.append(_null_problem(spec.name, column))
                continue
            try:
                out[spec.name] = _to_numpy(column, spec.type, has_nulls=bool(nulls))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                # e.g. an integer beyond 2**53 where float64 is expected: not exactly castable
                problems.append(f"column {spec.name!r} holds values that cannot be converted to "
                                f"{spec.type} exactly ({exc}).")
        if problems:
            raise SchemaMismatch(" ".join(problems),
                                 hint="Fill or drop those rows before scoring.")
        import pandas as pd

        index = pd.RangeIndex(batch.num_rows)
        # Explicit Series: pandas 3 would otherwise turn object arrays of str into "str" dtype.
        return pd.DataFrame({name: pd.Series(values, index=index, dtype=values.dtype, copy=False)
                             for name, values in out.items()}, index=index)

    def _coerce_arrow(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """coerce(arrow=True) after the schema check: the null check, same messages."""
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        problems: list[str] = []
        for spec in self.inputs:
            if spec.name not in batch.schema.names:  # optional and absent
                columns[spec.name] = pa.nulls(batch.num_rows, _ARROW_TYPES[spec.type])
                continue
            column = batch.column(spec.name)
            nulls = column.null_count
            if nulls and spec.required:
                problems.append(_null_problem(spec.name, column))
                continue
            columns[spec.name] = column
        if problems:
            raise SchemaMismatch(" ".join(problems),
                                 hint="Fill or drop those rows before scoring.")
        if not columns:
            return pa.table({"__rows__": pa.nulls(batch.num_rows)}).drop_columns(["__rows__"])
        return pa.table(columns)

    def _already_coerced(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        """``frame``'s inputs if they already have coerce()'s dtypes, else None.

        Scoring coerces each arrow batch and hands the frame to the estimator, which coerces
        again; this makes the second call cheap instead of a round trip through arrow.
        """
        import pandas as pd

        for spec in self.inputs:
            if spec.name not in frame.columns:
                return None
            column = frame[spec.name]
            if spec.type == "string":
                ok = (column.dtype == object and not column.isna().any()
                      and pd.api.types.infer_dtype(column, skipna=False) in ("string", "empty"))
            elif spec.type == "bool":
                ok = column.dtype == np.bool_
            else:
                ok = column.dtype == np.dtype(spec.type) and not (
                    spec.required and column.isna().any())
            if not ok:
                return None
        out = frame[self.input_names]
        if not out.index.equals(pd.RangeIndex(len(out))):
            out = out.reset_index(drop=True)
        return out


def _null_problem(name: str, column: pa.ChunkedArray | pa.Array) -> str:
    nulls = column.null_count
    first = pc.index(pc.is_null(column), True).as_py()
    return (f"column {name!r} has {nulls} null value{'s' if nulls != 1 else ''} (first at row "
            f"{first}) but the model needs a value in every row.")


def _arrow_from_pandas(frame: pd.DataFrame, names: Sequence[str]) -> pa.Table:
    present = [n for n in names if n in frame.columns]
    columns = {}
    for name in present:
        try:
            columns[name] = pa.array(frame[name], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaMismatch(f"column {name!r} mixes value types and cannot be read as "
                                 f"one column ({exc}).",
                                 hint="Give the column a single type.") from exc
    if not columns:
        return pa.table({"__rows__": pa.nulls(len(frame))}).drop_columns(["__rows__"])
    return pa.table(columns)


def _empty(kind: str, n: int) -> np.ndarray:
    if kind in ("string", "bool"):
        return np.full(n, np.nan, dtype=object)
    return np.full(n, np.nan, dtype=np.float64)


def _to_numpy(column: pa.ChunkedArray | pa.Array, kind: str, *, has_nulls: bool) -> np.ndarray:
    if pa.types.is_dictionary(column.type) or pa.types.is_string_view(column.type):
        column = column.cast(_ARROW_TYPES[kind] if kind == "string"
                             else column.type.value_type)
    if pa.types.is_null(column.type):
        return _empty(kind, len(column))
    if kind == "string":
        values = column.to_numpy(zero_copy_only=False)
        values = values if values.dtype == object else values.astype(object)
    elif kind == "float64":
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    elif kind == "int64":
        # With nulls the values become float64 and NaN: int64 cannot hold a missing value.
        values = (column.cast(pa.float64()) if has_nulls else column.cast(pa.int64())
                  ).to_numpy(zero_copy_only=False)
    else:
        values = column.to_numpy(zero_copy_only=False)
    if has_nulls and values.dtype == object:
        import pandas as pd

        values = np.where(pd.isna(values), np.nan, values).astype(object)
    return values


# --- inference ---------------------------------------------------------------------------------


def column_type(series: pd.Series) -> str:
    """The signature type of a pandas column; raises :class:`DataError` for other dtypes."""
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return column_type(pd.Series(dtype.categories))
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int64"
    if pd.api.types.is_float_dtype(dtype):
        return "float64"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        kind = pd.api.types.infer_dtype(series, skipna=True)
        if kind in ("string", "empty"):
            return "string"
        if kind == "boolean":
            return "bool"
        raise DataError(f"column {series.name!r} holds {kind} values in an object column; "
                        "batchml reads string, float64, int64 or bool columns.",
                        hint="Convert the column to one of those types.")
    raise DataError(f"column {series.name!r} has dtype {dtype}; batchml reads string, "
                    "float64, int64 or bool columns.",
                    hint="Convert the column to one of those types.")


def normalise_classes(labels: Iterable[Any]) -> tuple[str | int, ...]:
    """Sorted distinct labels as plain Python values (integral floats become ints)."""
    import pandas as pd

    values = [_plain(v) for v in pd.unique(pd.Series(list(labels)).dropna())]
    out: list[Any] = []
    for v in values:
        if isinstance(v, float):
            if not math.isfinite(v) or v != int(v):
                raise DataError(f"label {v!r} is not a class label.",
                                hint="Use string, integer or boolean labels.")
            v = int(v)
        if not isinstance(v, str | int):
            raise DataError(f"label {v!r} ({type(v).__name__}) is not a class label.",
                            hint="Use string, integer or boolean labels.")
        out.append(v)
    if len({type(v) is str for v in out}) > 1:
        raise DataError("labels mix strings and numbers.",
                        hint="Use one type for all labels.")
    return tuple(sorted(set(out)))


def _label_type(classes: Sequence[str | int]) -> str:
    if classes and all(isinstance(c, bool) for c in classes):
        return "bool"
    if classes and all(isinstance(c, int) for c in classes):
        return "int64"
    return "string"


def infer_signature(frame: pd.DataFrame, input_columns: Sequence[str],
                    classes: Iterable[Any], params: Iterable[ParamSpec] = ()
                    ) -> Signature:
    """The signature of a model trained on ``frame[input_columns]`` to predict ``classes``.

    ``classes`` may be the training labels themselves (duplicates and numpy values are fine).
    Input types come from the pandas dtypes; a column with missing values in ``frame`` is
    optional (the model learned to impute it). Outputs are ``label``, ``proba_<class>`` per
    class and, for a binary model, ``proba`` (the probability of the last, positive class).
    """
    missing = [c for c in input_columns if c not in frame.columns]
    if missing:
        raise DataError(f"column {missing[0]!r} is missing from the training data.",
                        hint=f"It has: {', '.join(map(str, frame.columns))}.")
    inputs = tuple(ColumnSpec(str(c), column_type(frame[c]), not bool(frame[c].isna().any()))
                   for c in input_columns)
    distinct = normalise_classes(classes)
    outputs = [ColumnSpec("label", _label_type(distinct))]
    outputs += [ColumnSpec(f"proba_{c}", "float64") for c in distinct]
    if len(distinct) == 2:
        outputs.append(ColumnSpec("proba", "float64"))
    return Signature(inputs=inputs, outputs=tuple(outputs), classes=distinct,
                     params=tuple(params))
