"""Property-based tests (hypothesis) for schema validation: ``Signature.check_schema`` and
``Signature.coerce`` (pandas and ``arrow=True``) on arbitrary Arrow data.

For any signature and any table (primitive, string-like, binary, temporal, decimal,
dictionary and nested types; missing, extra and renamed columns; nulls anywhere) the outcome is
one of two things, never anything else:

* accepted, and then every input column's type is one the contract calls safe (any integer or
  float to float64, integers other than uint64 to int64, any arrow string or dictionary of
  strings to string, bool to bool, an all-null column) and the values come back unchanged;
* a :class:`SchemaMismatch` / :class:`DataError` whose message names the offending column
  (``repr`` of its name) and, for a missing or mistyped column, the type the model expects.

The two defects these properties found (duplicate input columns raised KeyError; integers
beyond 2**53 where float64 is expected raised ArrowInvalid) are fixed; their tests are at the
bottom.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from batchml.errors import DataError, SchemaMismatch
from batchml.signature import TYPES, ColumnSpec, Signature

# 100 examples per property in the normal suite (~15 s for the file);
# BATCHML_HYPOTHESIS_EXAMPLES=2000 for a deeper run
EXAMPLES = int(os.environ.get("BATCHML_HYPOTHESIS_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAMES = st.sampled_from(["review", "x", "y", "a b", "naïve", "o'neil", "", "z\n"])
ROWS = st.integers(min_value=0, max_value=6)

# --- arrow types and values -------------------------------------------------------------------

INTS = {pa.int8(): 7, pa.int16(): 15, pa.int32(): 31, pa.int64(): 63}
UINTS = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32, pa.uint64(): 64}
# values at most 2**53 in magnitude: representable in float64, so every integer type is a
# safe cast to float64 for them (the larger values are a separate, pinned defect)
EXACT = 2**53

pytestmark = pytest.mark.reliability  # property-based (issue 7, item 8)


def _int_values(bits: int, signed: bool, exact: bool) -> st.SearchStrategy[int]:
    lo = -(2**bits) if signed else 0
    hi = 2**bits - 1
    if exact:
        lo, hi = max(lo, -EXACT), min(hi, EXACT)
    return st.integers(min_value=lo, max_value=hi)


@st.composite
def column(draw: st.DrawFn, n: int, *, exact: bool = True,
           depth: int = 0) -> tuple[pa.DataType, pa.Array]:
    """An arrow array of ``n`` rows of some type, with nulls sometimes."""
    kind = draw(st.sampled_from(
        ["null", "bool", "int", "uint", "float", "string", "large_string", "string_view",
         "binary", "date", "timestamp", "decimal", "dict_string", "dict_int"]
        + (["list", "struct"] if depth < 2 else [])))
    nullable = draw(st.booleans())

    def maybe_null(values: st.SearchStrategy[Any]) -> list[Any]:
        item = st.one_of(st.none(), values) if nullable else values
        return draw(st.lists(item, min_size=n, max_size=n))

    if kind == "null":
        return pa.null(), pa.nulls(n)
    if kind == "bool":
        return pa.bool_(), pa.array(maybe_null(st.booleans()), pa.bool_())
    if kind in ("int", "uint"):
        table = INTS if kind == "int" else UINTS
        t = draw(st.sampled_from(list(table)))
        return t, pa.array(maybe_null(_int_values(table[t], kind == "int", exact)), t)
    if kind == "float":
        t = draw(st.sampled_from([pa.float16(), pa.float32(), pa.float64()]))
        width = {pa.float16(): 16, pa.float32(): 32, pa.float64(): 64}[t]
        values = maybe_null(st.floats(width=width, allow_nan=True))
        np_type = {16: np.float16, 32: np.float32, 64: np.float64}[width]
        mask = np.array([v is None for v in values], dtype=bool)
        data = np.array([0.0 if v is None else v for v in values], dtype=np_type)
        return t, pa.array(data, mask=mask if mask.any() else None)
    if kind in ("string", "large_string", "string_view"):
        t = {"string": pa.string(), "large_string": pa.large_string(),
             "string_view": pa.string_view()}[kind]
        return t, pa.array(maybe_null(st.text(max_size=8)), t)
    if kind == "binary":
        return pa.binary(), pa.array(maybe_null(st.binary(max_size=8)), pa.binary())
    if kind == "date":
        return pa.date32(), pa.array(maybe_null(st.integers(0, 40000)), pa.int32()).cast(
            pa.date32())
    if kind == "timestamp":
        t = pa.timestamp("us", tz=draw(st.sampled_from([None, "UTC"])))
        return t, pa.array(maybe_null(st.integers(0, 2**40)), pa.int64()).cast(t)
    if kind == "decimal":
        t = pa.decimal128(9, 2)
        from decimal import Decimal

        values = maybe_null(st.integers(-10**8, 10**8).map(lambda v: Decimal(v) / 100))
        return t, pa.array(values, t)
    if kind == "dict_string":
        arr = pa.array(maybe_null(st.sampled_from(["a", "b", "ç"])), pa.string())
        arr = arr.dictionary_encode()
        return arr.type, arr
    if kind == "dict_int":
        arr = pa.array(maybe_null(st.integers(-100, 100)), pa.int64()).dictionary_encode()
        return arr.type, arr
    if kind == "list":
        inner_t, _ = draw(column(1, depth=depth + 1))
        inner = st.lists(st.integers(-5, 5), max_size=3) if pa.types.is_integer(inner_t) \
            else st.lists(st.none(), max_size=2)
        t = pa.list_(pa.int64() if pa.types.is_integer(inner_t) else pa.null())
        return t, pa.array(maybe_null(inner), t)
    # struct of one or two children
    children = [draw(column(n, depth=depth + 1)) for _ in range(draw(st.integers(1, 2)))]
    arr = pa.StructArray.from_arrays([c[1] for c in children],
                                     names=[f"f{i}" for i in range(len(children))])
    return arr.type, arr


@st.composite
def signatures(draw: st.DrawFn) -> Signature:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    return Signature(tuple(ColumnSpec(name, draw(st.sampled_from(TYPES)), draw(st.booleans()))
                           for name in names))


@st.composite
def tables(draw: st.DrawFn, sig: Signature, *, exact: bool = True) -> pa.Table:
    """Columns named after the signature's inputs (or not), extra columns, any types."""
    n = draw(ROWS)
    names: list[str] = []
    arrays: list[pa.Array] = []
    for spec in sig.inputs:
        if draw(st.integers(0, 5)) == 0:
            continue  # missing
        _, arr = draw(column(n, exact=exact))
        names.append(spec.name)
        arrays.append(arr)
    for _ in range(draw(st.integers(0, 2))):  # extra columns, never a duplicate name here
        name = draw(NAMES.filter(lambda v: v not in names))
        _, arr = draw(column(n, exact=exact))
        names.append(name)
        arrays.append(arr)
    order = draw(st.permutations(list(range(len(names)))))
    if not names:
        return pa.table({"__x": pa.nulls(n)}).drop_columns(["__x"])
    return pa.Table.from_arrays([arrays[i] for i in order], names=[names[i] for i in order])


# --- the contract's oracle --------------------------------------------------------------------


def safe(actual: pa.DataType, expected: str) -> bool:
    """The casts the contract calls safe (README / check_schema's docstring)."""
    if pa.types.is_dictionary(actual):
        return safe(actual.value_type, expected)
    if pa.types.is_null(actual):
        return True
    if expected == "string":
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) \
            or pa.types.is_string_view(actual)
    if expected == "float64":
        return pa.types.is_integer(actual) or pa.types.is_floating(actual)
    if expected == "int64":
        return pa.types.is_integer(actual) and not pa.types.is_uint64(actual)
    return pa.types.is_boolean(actual)


def expected_problems(sig: Signature, table: pa.Table) -> tuple[set[str], set[str]]:
    """(columns with a schema problem, columns with a null problem) per the contract."""
    schema_bad, null_bad = set(), set()
    for spec in sig.inputs:
        if spec.name not in table.column_names:
            if spec.required:
                schema_bad.add(spec.name)
            continue
        col = table.column(spec.name)
        if not safe(col.type, spec.type):
            schema_bad.add(spec.name)
        elif spec.required and col.null_count:
            null_bad.add(spec.name)
    return schema_bad, null_bad


def same(a: Any, b: Any) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return bool(a == b)


def check_outcome(sig: Signature, table: pa.Table | pa.RecordBatch, *, arrow: bool) -> str:
    schema_bad, null_bad = expected_problems(sig, table)
    try:
        out = sig.coerce(table, arrow=arrow)
    except (SchemaMismatch, DataError) as exc:
        message = str(exc)
        assert schema_bad or null_bad, f"refused a valid table: {message}"
        if schema_bad:
            for name in schema_bad:  # every schema problem is reported, with the type
                spec = next(s for s in sig.inputs if s.name == name)
                assert repr(name) in message, (name, message)
                assert spec.type in message, (name, spec.type, message)
        else:
            assert any(repr(name) in message for name in null_bad), (null_bad, message)
            assert "null" in message
        return "refused"
    assert not schema_bad and not null_bad, (schema_bad, null_bad, "accepted")
    for spec in sig.inputs:
        got = out.column(spec.name).to_pylist() if arrow else list(out[spec.name])
        assert len(got) == table.num_rows
        if spec.name not in table.column_names:
            assert all(same(None, v) for v in got)
            continue
        want = table.column(spec.name).to_pylist()
        if not arrow and spec.type == "float64":
            want = [None if v is None else float(v) for v in want]
        assert all(same(w, g) for w, g in zip(want, got, strict=True)), (spec, want, got)
        if not arrow and table.num_rows:
            if spec.type == "string":
                assert out[spec.name].dtype == object
            elif spec.type == "float64" or (spec.type == "int64"
                                            and table.column(spec.name).null_count):
                assert out[spec.name].dtype == np.float64
    return "accepted"


# --- the properties ---------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_check_schema_accepts_exactly_the_safe_casts(data: st.DataObject) -> None:
    sig = data.draw(signatures())
    table = data.draw(tables(sig))
    schema_bad, _ = expected_problems(sig, table)
    try:
        sig.check_schema(table.schema)
    except SchemaMismatch as exc:
        assert schema_bad, f"refused a valid schema: {exc}"
        for name in schema_bad:
            spec = next(s for s in sig.inputs if s.name == name)
            assert repr(name) in str(exc) and spec.type in str(exc), str(exc)
    else:
        assert not schema_bad, schema_bad


@SETTINGS
@given(data=st.data(), arrow=st.booleans())
def test_coerce_accepts_safely_or_names_the_column(data: st.DataObject, arrow: bool) -> None:
    sig = data.draw(signatures())
    table = data.draw(tables(sig))
    check_outcome(sig, table, arrow=arrow)


@SETTINGS
@given(data=st.data())
def test_coerce_record_batches_like_tables(data: st.DataObject) -> None:
    sig = data.draw(signatures())
    table = data.draw(tables(sig))
    batch = table.combine_chunks().to_batches()
    assume(len(batch) == 1)
    check_outcome(sig, batch[0], arrow=False)


# --- defects found by these properties, now fixed ----------------------------------------------


@SETTINGS
@given(data=st.data(), arrow=st.booleans())
def test_duplicate_input_columns_are_a_schema_mismatch(data: st.DataObject,
                                                       arrow: bool) -> None:
    sig = data.draw(signatures())
    name = sig.inputs[0].name
    n = data.draw(ROWS)
    _, a = data.draw(column(n))
    _, b = data.draw(column(n))
    table = pa.Table.from_arrays([a, b], names=[name, name])
    with pytest.raises(SchemaMismatch, match="duplicate|more than once|twice"):
        sig.check_schema(table.schema)
    with pytest.raises(SchemaMismatch):
        sig.coerce(table, arrow=arrow)


@settings(SETTINGS, suppress_health_check=[HealthCheck.filter_too_much,
                                           HealthCheck.too_slow])  # draws filtered by design
@given(data=st.data())
def test_integers_beyond_float64_precision_are_refused_by_name(data: st.DataObject) -> None:
    sig = data.draw(signatures())
    spec = sig.inputs[0]
    assume(spec.type == "float64" or (spec.type == "int64" and not spec.required))
    sig = dataclasses.replace(sig, inputs=(spec,))  # the other inputs would be missing
    t = data.draw(st.sampled_from([pa.int64(), pa.uint64()] if spec.type == "float64"
                                  else [pa.int64()]))
    big = data.draw(st.integers(EXACT + 1, 2**63 - 1))
    values = [big, None] if spec.type == "int64" else [big]
    table = pa.table({spec.name: pa.array(values, t)})
    try:
        out = sig.coerce(table)
        outcome = "exact" if [int(v) for v in out[spec.name].dropna()] == [big] else "rounded"
    except SchemaMismatch as exc:
        outcome = "refused by name" if repr(spec.name) in str(exc) else f"refused: {exc}"
    except Exception as exc:  # noqa: BLE001 - the property: nothing else escapes
        outcome = f"{type(exc).__name__}"
    assert outcome in ("exact", "refused by name"), outcome
