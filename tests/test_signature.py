"""Signature: schema checks before reading, coercion of batches, inference, JSON round trip."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchml.errors import DataError, ModelError, SchemaMismatch
from batchml.params import threshold_param
from batchml.signature import ColumnSpec, Signature, infer_signature


@pytest.fixture
def sig() -> Signature:
    return Signature(
        inputs=(ColumnSpec("review", "string"), ColumnSpec("age", "int64"),
                ColumnSpec("price", "float64"), ColumnSpec("member", "bool"),
                ColumnSpec("note", "string", required=False)),
        outputs=(ColumnSpec("label", "int64"), ColumnSpec("proba_0", "float64"),
                 ColumnSpec("proba_1", "float64"), ColumnSpec("proba", "float64")),
        classes=(0, 1),
        params=(threshold_param(0.5),),
    )


def good_columns() -> dict[str, pa.Array]:
    return {
        "review": pa.array(["great dress", "too small", "ok"]),
        "age": pa.array([31, 45, 27], pa.int64()),
        "price": pa.array([19.5, 40.0, 12.25]),
        "member": pa.array([True, False, True]),
        "note": pa.array(["x", None, "z"]),
    }


def table(**changes: pa.Array | None) -> pa.Table:
    columns = good_columns()
    for name, value in changes.items():
        if value is None:
            del columns[name]
        else:
            columns[name] = value
    return pa.table(columns)


@pytest.mark.parametrize(("changes", "fragments"), [
    pytest.param({"review": None},
                 ["column 'review' is missing; the model expects string.",
                  "Add the column or score with another model."], id="missing-column"),
    pytest.param({"review": pa.array([1, 2, 3])},
                 ["column 'review' has type int64", "expects string",
                  "cannot be safely cast"], id="int-where-string"),
    pytest.param({"age": pa.array([31.0, 45.0, 27.0])},
                 ["column 'age' has type float64", "expects int64"], id="float-where-int"),
    pytest.param({"age": pa.array([1, 2, 3], pa.uint64())},
                 ["column 'age' has type uint64", "expects int64"], id="uint64-where-int"),
    pytest.param({"member": pa.array([1, 0, 1])},
                 ["column 'member' has type int64", "expects bool"], id="int-where-bool"),
    pytest.param({"price": pa.array(["1.5", "2", "3"])},
                 ["column 'price' has type string", "expects float64"], id="string-where-float"),
    pytest.param({"review": None, "age": pa.array(["a", "b", "c"])},
                 ["column 'review' is missing", "column 'age' has type string"],
                 id="all-problems-at-once"),
])
def test_check_schema_rejects(sig: Signature, changes: dict[str, pa.Array | None],
                              fragments: list[str]) -> None:
    data = table(**changes)
    with pytest.raises(SchemaMismatch) as info:
        sig.check_schema(data.schema)
    for fragment in fragments:
        assert fragment in str(info.value)
    # coerce() checks the schema too, and SchemaMismatch is a DataError and a ValueError.
    with pytest.raises(DataError):
        sig.coerce(data)
    with pytest.raises(ValueError):
        sig.coerce(data)


@pytest.mark.parametrize(("column", "values", "fragments"), [
    pytest.param("review", pa.array(["a", None, None]),
                 ["column 'review' has 2 null values (first at row 1)",
                  "Fill or drop those rows"], id="string"),
    pytest.param("age", pa.array([None, 4, 5], pa.int64()),
                 ["column 'age' has 1 null value (first at row 0)"], id="int"),
    pytest.param("member", pa.array([True, False, None]),
                 ["column 'member' has 1 null value (first at row 2)"], id="bool"),
])
def test_nulls_in_required_column(sig: Signature, column: str, values: pa.Array,
                                  fragments: list[str]) -> None:
    data = table(**{column: values})
    sig.check_schema(data.schema)  # the schema is fine: only the rows are wrong
    with pytest.raises(SchemaMismatch) as info:
        sig.coerce(data)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_safe_casts_are_accepted(sig: Signature) -> None:
    data = table(
        review=pa.array(["a", "b", "c"], pa.large_string()),
        age=pa.array([1, 2, 3], pa.int32()),
        price=pa.array([1, 2, 3], pa.int32()),
        note=pa.array(["x", "y", "x"]).dictionary_encode(),
    )
    sig.check_schema(data.schema)
    frame = sig.coerce(data)
    assert list(frame.columns) == sig.input_names
    assert frame.dtypes.to_dict() == {"review": np.dtype(object), "age": np.dtype("int64"),
                                      "price": np.dtype("float64"), "member": np.dtype(bool),
                                      "note": np.dtype(object)}
    assert frame["review"].tolist() == ["a", "b", "c"]
    assert frame["note"].tolist() == ["x", "y", "x"]
    assert frame["price"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string(), pa.string_view(),
                                        pa.dictionary(pa.int8(), pa.string())])
def test_every_string_flavour_reads_as_str(arrow_type: pa.DataType) -> None:
    sig = Signature(inputs=(ColumnSpec("text", "string"),))
    values = pa.array(["alpha", "beta"]).cast(arrow_type)
    frame = sig.coerce(pa.table({"text": values}))
    assert frame["text"].dtype == object
    assert frame["text"].tolist() == ["alpha", "beta"]


def test_extra_columns_are_ignored_and_record_batches_work(sig: Signature) -> None:
    data = table(unused=pa.array([1, 2, 3]), another=pa.array(["p", "q", "r"]))
    batch = data.to_batches()[0]
    frame = sig.coerce(batch)
    assert list(frame.columns) == sig.input_names
    assert len(frame) == 3


def test_optional_column_may_be_missing_or_null(sig: Signature) -> None:
    frame = sig.coerce(table(note=None))
    assert frame["note"].isna().all()
    frame = sig.coerce(table())
    assert frame["note"].tolist()[0] == "x"
    assert pd.isna(frame["note"].iloc[1])


def test_coerce_accepts_dataframes(sig: Signature) -> None:
    frame = pd.DataFrame({
        "review": pd.array(["a", "b"], dtype="str"),
        "age": np.array([3, 4], dtype=np.int16),
        "price": [1.5, 2.5], "member": [True, False], "note": ["n", None], "other": [0, 1],
    }, index=[10, 11])
    out = sig.coerce(frame)
    assert list(out.columns) == sig.input_names
    assert out["review"].dtype == object and out["age"].dtype == np.int64
    assert list(out.index) == [0, 1]
    # A frame that is already coerced comes back unchanged.
    pd.testing.assert_frame_equal(sig.coerce(out), out)
    with pytest.raises(SchemaMismatch, match="column 'age' has 1 null value"):
        sig.coerce(frame.assign(age=pd.array([None, 4], dtype="Int64")))


def test_round_trip_through_json(sig: Signature) -> None:
    data = json.loads(json.dumps(sig.to_dict()))
    assert Signature.from_dict(data) == sig
    assert data["inputs"][0] == {"name": "review", "type": "string", "required": True}


def test_numpy_values_become_plain_json() -> None:
    # Labels straight from a numpy array, against the annotation: to_dict() must cope.
    numpy_classes: tuple[Any, ...] = (np.int64(0), np.int64(1))
    sig = Signature(inputs=(ColumnSpec("x", "float64"),), classes=numpy_classes,
                    params=(threshold_param(np.float64(0.25)),))
    data = json.loads(json.dumps(sig.to_dict()))
    assert data["classes"] == [0, 1]
    assert [(p["name"], p["default"]) for p in data["params"]] == [("threshold", 0.25)]


def test_signatures_stored_before_params_load() -> None:
    # before inference parameters the signature held name -> value (or nothing)
    base = {"inputs": [{"name": "x", "type": "float64"}], "classes": [0, 1]}
    assert Signature.from_dict(base).params == ()
    old = Signature.from_dict({**base, "params": {"threshold": 0.3}})
    assert old.param_defaults == {"threshold": 0.3}
    assert old.params[0].maximum == 1.0
    assert Signature.from_dict(old.to_dict()) == old


@pytest.mark.parametrize("bad", [{}, {"inputs": [{"type": "string"}]},
                                 {"inputs": [{"name": "x", "type": "decimal"}]},
                                 {"inputs": [], "version": 99}])
def test_malformed_signature_dicts(bad: dict[str, object]) -> None:
    with pytest.raises(ModelError):
        Signature.from_dict(bad)


def test_infer_signature_from_pandas_dtypes() -> None:
    frame = pd.DataFrame({
        "text": pd.Series(["a", "b", "c"], dtype="str"),
        "obj": pd.Series(["a", "b", "c"], dtype=object),
        "cat": pd.Categorical(["u", "v", "u"]),
        "f32": np.array([1.0, 2.0, np.nan], dtype=np.float32),
        "i16": np.array([1, 2, 3], dtype=np.int16),
        "nullable": pd.array([1, None, 3], dtype="Int64"),
        "flag": [True, False, True],
    })
    sig = infer_signature(frame, list(frame.columns), ["neg", "pos"], [threshold_param(0.5)])
    types = {c.name: (c.type, c.required) for c in sig.inputs}
    assert types == {"text": ("string", True), "obj": ("string", True),
                     "cat": ("string", True), "f32": ("float64", False),
                     "i16": ("int64", True), "nullable": ("int64", False),
                     "flag": ("bool", True)}
    assert sig.output_names == ["label", "proba_neg", "proba_pos", "proba"]
    assert sig.outputs[0].type == "string"
    assert sig.param_defaults == {"threshold": 0.5}
    # The inferred signature accepts its own training frame.
    assert sig.coerce(frame).shape == (3, 7)


def test_infer_signature_multiclass_outputs() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    sig = infer_signature(frame, ["x"], [np.int64(2), np.int64(0), np.int64(1), np.int64(0)])
    assert sig.classes == (0, 1, 2)
    assert sig.output_names == ["label", "proba_0", "proba_1", "proba_2"]
    assert sig.outputs[0].type == "int64"


def test_infer_signature_rejects_unusable_columns() -> None:
    with pytest.raises(DataError, match="column 'nope' is missing"):
        infer_signature(pd.DataFrame({"x": [1]}), ["nope"], [0, 1])
    with pytest.raises(DataError, match="column 'when'"):
        infer_signature(pd.DataFrame({"when": pd.to_datetime(["2024-01-01"])}), ["when"],
                        [0, 1])
    with pytest.raises(DataError, match="column 'mixed'"):
        infer_signature(pd.DataFrame({"mixed": pd.Series(["a", 1], dtype=object)}),
                        ["mixed"], [0, 1])


def test_column_spec_rejects_unknown_types() -> None:
    with pytest.raises(ValueError, match="use one of string, float64, int64, bool"):
        ColumnSpec("x", "float32")
