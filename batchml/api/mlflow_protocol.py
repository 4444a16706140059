"""MLflow's scoring protocol (``mlflow models serve``), so MLflow clients and scripts work
unchanged: ``POST /invocations`` with JSON in each of its shapes or CSV, ``GET /ping``,
``/health``, ``/version``; answers ``{"predictions": [...]}``; errors as
``{"error_code": "BAD_REQUEST", "message": ...}``.

This module only turns payloads into Arrow tables and outputs into JSON; the rules of what a
model accepts are the signature's (:mod:`batchml.online`).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ..errors import DataError

JSON_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CONTENT_TYPES = ("application/json", "text/csv")


class BadRequest(DataError):
    """A payload that is not one of the protocol's shapes."""


def _column(name: str, values: list[Any]) -> pa.Array:
    """One column from JSON values. A NaN is a missing value, as in the pandas DataFrame
    MLflow's server builds: MLflow's client (``dump_input_data``) writes a missing value of a
    pandas column, numeric or text, as the bare ``NaN`` token."""
    try:
        return pa.array(values, from_pandas=True)
    except OverflowError as exc:
        raise BadRequest(f"column {name!r}: a value is out of range ({exc}).",
                         hint="Integers must fit in 64 bits.") from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadRequest(f"column {name!r}: its values are not of one type ({exc}).",
                         hint=f"Send {name!r} as all numbers or all strings.") from exc


def _from_columns(columns: dict[str, Any]) -> pa.Table:
    lengths = {len(v) if isinstance(v, list) else 1 for v in columns.values()}
    if len(lengths) > 1:
        raise BadRequest("The columns of 'inputs' have different lengths "
                         f"({sorted(lengths)}).", hint="Send one value per row in each column.")
    return pa.table({str(k): _column(str(k), v if isinstance(v, list) else [v])
                     for k, v in columns.items()})


def _from_records(records: list[Any], what: str) -> pa.Table:
    if not all(isinstance(r, dict) for r in records):
        raise BadRequest(f"'{what}' must be a list of objects (one per row, column -> value).",
                         hint='e.g. [{"review": "fits well"}]')
    names: list[str] = []
    for r in records:
        names += [k for k in r if k not in names]
    return pa.table({n: _column(n, [r.get(n) for r in records]) for n in names})


def _from_values(values: list[Any], input_names: list[str], what: str) -> pa.Table:
    """A list of bare values (or rows as lists) for the model's inputs, in signature order."""
    if values and all(isinstance(v, list) for v in values):
        if any(len(v) != len(input_names) for v in values):
            raise BadRequest(f"Each row of '{what}' must hold {len(input_names)} value(s), one "
                             f"per input ({', '.join(input_names)}).")
        return pa.table({n: _column(n, [v[i] for v in values])
                         for i, n in enumerate(input_names)})
    if len(input_names) != 1:
        raise BadRequest(f"'{what}' holds bare values but the model has "
                         f"{len(input_names)} inputs ({', '.join(input_names)}).",
                         hint="Send objects naming each input, or use dataframe_split.")
    return pa.table({input_names[0]: _column(input_names[0], values)})


def parse_json(body: bytes, input_names: list[str]) -> tuple[pa.Table, dict[str, Any]]:
    """The rows and ``params`` of a JSON request in any of the protocol's shapes."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from exc
    if not isinstance(payload, dict):
        raise BadRequest("The body must be a JSON object with one of the keys "
                         f"{', '.join(JSON_KEYS)}.")
    keys = [k for k in JSON_KEYS if k in payload]
    extra = set(payload) - set(JSON_KEYS) - {"params"}
    if len(keys) != 1 or extra:
        raise BadRequest(f"The body must have exactly one of the keys {', '.join(JSON_KEYS)} "
                         f"(and optionally 'params'); got {sorted(payload)}.",
                         hint='e.g. {"dataframe_split": {"columns": ["review"], '
                              '"data": [["fits well"]]}}')
    params = payload.get("params")
    if params is None:  # absent or null, as MLflow's server takes it
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("'params' must be an object (name -> value).")
    key, data = keys[0], payload[keys[0]]
    if key == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise BadRequest("'dataframe_split' must be an object with 'columns' and 'data' "
                             "(a list of rows).")
        columns = data.get("columns", input_names)
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise BadRequest("'dataframe_split.columns' must be a list of column names.")
        rows = data["data"]
        if any(not isinstance(r, list) or len(r) != len(columns) for r in rows):
            raise BadRequest(f"Each row of dataframe_split.data must hold {len(columns)} "
                             f"value(s), one per column ({', '.join(map(str, columns))}).")
        return pa.table({str(c): _column(str(c), [r[i] for r in rows])
                         for i, c in enumerate(columns)}), params
    if key == "dataframe_records":
        if not isinstance(data, list):
            raise BadRequest("'dataframe_records' must be a list of objects.")
        return _from_records(data, key), params
    if isinstance(data, dict):  # columnar: {"review": [...]}
        return _from_columns(data), params
    if not isinstance(data, list):
        raise BadRequest(f"'{key}' must be a list of rows or an object of columns.")
    if data and all(isinstance(r, dict) for r in data):
        return _from_records(data, key), params
    return _from_values(data, input_names, key), params


def parse_csv(body: bytes, types: dict[str, pa.DataType]) -> pa.Table:
    """The rows of a CSV body with a header row; the model's inputs read as their types."""
    import pyarrow.csv as pacsv

    try:
        return pacsv.read_csv(pa.py_buffer(body), convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadRequest(f"The CSV body could not be read: {exc}.",
                         hint="Send UTF-8 CSV with a header row naming the columns.") from exc


def predictions(outputs: pa.Table) -> dict[str, Any]:
    """The response body: one record per row of the model's output columns."""
    return {"predictions": outputs.to_pylist()}


def error(message: str, code: str = "BAD_REQUEST") -> dict[str, str]:
    """An error body in MLflow's shape."""
    return {"error_code": code, "message": message}


# --- OpenAPI: what the routes declare --------------------------------------------------------

_ROWS: dict[str, Any] = {"type": "array", "minItems": 1}
_SHAPES = ("dataframe_split", "dataframe_records", "instances", "inputs")
REQUEST_SCHEMA: dict[str, Any] = {
    "title": "MLflow scoring request",
    "description": "Exactly one of dataframe_split, dataframe_records, instances, inputs, and "
                   "optionally params: the model's inference parameters (name -> value; an "
                   "unknown name, a wrong type or a value out of range is a 400). The rows must "
                   "hold the model's input columns (see the example); a column the model "
                   "cannot read is a 400 naming it.",
    "type": "object",
    "properties": {
        "dataframe_split": {
            "type": "object", "required": ["data"],
            "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                           "data": {**_ROWS, "items": {"type": "array"}},
                           "index": {"description": "ignored (pandas writes it)"}}},
        "dataframe_records": {**_ROWS, "items": {"type": "object"}},
        "instances": {"anyOf": [_ROWS, {"type": "object", "minProperties": 1}]},
        "inputs": {"anyOf": [_ROWS, {"type": "object", "minProperties": 1}]},
        "params": {"type": ["object", "null"]},
    },
    "additionalProperties": False,
    "oneOf": [{"required": [k]} for k in _SHAPES],
}
CSV_SCHEMA: dict[str, Any] = {"type": "string",
                              "description": "UTF-8 CSV with a header row naming the columns"}
PREDICTIONS_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["predictions"],
    "properties": {"predictions": {
        "type": "array", "description": "one object per input row: the model's output columns",
        "items": {"type": "object"}}}}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error_code", "message"],
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}}}

EXAMPLE_VALUES: dict[str, Any] = {"string": "fits well, lovely fabric", "float64": 1.5,
                                  "int64": 1, "bool": True}


def example(signature: Any) -> dict[str, Any]:
    """A request for ``signature``'s inputs, one row (the OpenAPI example)."""
    return {"dataframe_split": {"columns": signature.input_names,
                                "data": [[EXAMPLE_VALUES[s.type] for s in signature.inputs]]}}
