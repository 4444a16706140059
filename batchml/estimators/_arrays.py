"""numpy <-> Arrow for plain columns, through the buffers.

``pa.array``, ``Array.to_numpy`` and ``pa.scalar`` import pandas the first time they run
(pyarrow's pandas shim checks for it), which costs a fresh ``batchml predict`` ~0.5 s. The
scoring path uses these instead, so it never imports pandas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_NUMPY_TYPES: dict[np.dtype, pa.DataType] = {np.dtype(np.float64): pa.float64(), np.dtype(np.float32): pa.float32(),
                np.dtype(np.int64): pa.int64(), np.dtype(np.int32): pa.int32(),
                np.dtype(np.uint32): pa.uint32(), np.dtype(np.uint64): pa.uint64(),
                np.dtype(np.int8): pa.int8(), np.dtype(np.uint8): pa.uint8()}
_ARROW_TYPES: dict[pa.DataType, np.dtype] = {t: d for d, t in _NUMPY_TYPES.items()}


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-d numeric or bool numpy array as an Arrow array without nulls."""
    values = np.asarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(_NUMPY_TYPES[values.dtype], len(values),
                                 [None, pa.py_buffer(values)])


def to_numpy(arr: pa.Array | pa.ChunkedArray, *, null: float | int | bool | None = None
             ) -> np.ndarray:
    """A numeric or bool Arrow array as numpy; nulls become ``null`` (required when the
    array has nulls)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n, offset = len(arr), arr.offset
    validity, data = arr.buffers()[:2]
    if pa.types.is_boolean(arr.type):
        values = _bits(data, offset, n)
    else:
        dtype = _ARROW_TYPES[arr.type]
        values = np.frombuffer(data, dtype=dtype)[offset:offset + n] if n else \
            np.empty(0, dtype)
    if arr.null_count:
        if null is None:
            raise ValueError("the array has nulls and no replacement was given")
        valid = _bits(validity, offset, n)
        values = np.where(valid, values, null).astype(values.dtype)
    return values


def strings(values: Sequence[str]) -> pa.Array:
    """Python strings as an Arrow string array (no nulls)."""
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _bits(buffer: pa.Buffer, offset: int, n: int) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=np.uint8)
    first, skip = divmod(offset, 8)
    return np.unpackbits(raw[first:first + (skip + n + 7) // 8],
                         bitorder="little")[skip:skip + n].astype(np.bool_)


def constant(value: str | None, n: int) -> pa.Array:
    """``n`` copies of one string (or null) as a dictionary array: one value, n indices."""
    dictionary = strings([value]) if value is not None else pa.nulls(1, pa.string())
    return pa.DictionaryArray.from_arrays(from_numpy(np.zeros(n, dtype=np.int32)), dictionary)


def class_values(classes: Sequence[str | int]) -> pa.Array:
    """A model's classes as an Arrow array (string, bool or int64)."""
    if classes and all(isinstance(c, str) for c in classes):
        return strings([str(c) for c in classes])
    if classes and all(isinstance(c, bool | np.bool_) for c in classes):
        return from_numpy(np.array(classes, dtype=np.bool_))
    return from_numpy(np.array(classes, dtype=np.int64))
