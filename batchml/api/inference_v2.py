"""The Open Inference Protocol v2 (KServe, Triton): health, model metadata and ``infer`` with
named input tensors (``BYTES`` for text), JSON or the binary tensor extension on input.

This module only turns tensors into Arrow tables and outputs into tensors; what a model accepts
is its signature's business (:mod:`batchml.online`).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import DataError

DATATYPES = {"string": "BYTES", "float64": "FP64", "int64": "INT64", "bool": "BOOL"}
_NUMPY = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32,
          "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "UINT16": np.uint16,
          "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_, "FP16": np.float16}
HEADER_LENGTH = "inference-header-content-length"


class BadTensor(DataError):
    """A request that is not a valid v2 inference request."""


def _bytes_elements(raw: bytes) -> list[str]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BadTensor("A BYTES tensor's binary data ends inside an element's length.")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise BadTensor("A BYTES tensor's binary data ends inside an element.")
        out.append(raw[i:i + n].decode("utf-8", errors="replace"))
        i += n
    return out


def parse_infer(body: bytes, header_length: int | None) -> tuple[pa.Table, dict[str, Any]]:
    """The rows (one column per input tensor) and the request object of an infer request."""
    head, binary = (body[:header_length], body[header_length:]) if header_length else \
        (body, b"")
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadTensor(f"The request is not valid JSON: {exc}.") from exc
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise BadTensor("The request needs 'inputs': a list of tensors "
                        "({name, shape, datatype, data}).")
    columns: dict[str, pa.Array] = {}
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadTensor("Each input tensor needs a 'name', 'shape', 'datatype' and 'data'.")
        name, datatype = tensor["name"], str(tensor.get("datatype", ""))
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadTensor(f"Input {name!r}: 'shape' must be a list of sizes.")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise BadTensor(f"Input {name!r} has shape {shape}; one value per row is "
                            "expected ([N] or [N, 1]).")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = binary[offset:offset + int(size)]
            offset += int(size)
            if datatype == "BYTES":
                values: Any = _bytes_elements(raw)
            elif datatype in _NUMPY:
                values = np.frombuffer(raw, dtype=np.dtype(_NUMPY[datatype]).newbyteorder("<"))
            else:
                raise BadTensor(f"Input {name!r}: datatype {datatype!r} is not supported.")
        else:
            values = tensor.get("data")
            if not isinstance(values, list):
                raise BadTensor(f"Input {name!r} needs 'data' (a list) or binary data.")
            values = _flatten(values)
        rows = shape[0] if shape else len(values)
        if len(values) != rows:
            raise BadTensor(f"Input {name!r} has shape {shape} but {len(values)} value(s).")
        try:
            if datatype == "BYTES":
                columns[name] = pa.array([v if isinstance(v, str) else str(v) for v in values],
                                         pa.string())
            elif datatype in _NUMPY:
                columns[name] = pa.array(np.asarray(values, dtype=_NUMPY[datatype]))
            else:
                raise BadTensor(f"Input {name!r}: datatype {datatype!r} is not supported; use "
                                f"one of BYTES, {', '.join(_NUMPY)}.")
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise BadTensor(f"Input {name!r}: its data is not {datatype}: {exc}.") from exc
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise BadTensor(f"The input tensors have different lengths ({sorted(lengths)}).")
    return pa.table(columns), request


def _flatten(values: list[Any]) -> list[Any]:
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]


def _datatype(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "BYTES"
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    if pa.types.is_integer(arrow_type):
        return "INT64"
    return "FP64"


def infer_response(model_name: str, version: str, outputs: pa.Table, request: dict[str, Any]
                   ) -> dict[str, Any]:
    """The response: one tensor per output column (those the request asked for, else all)."""
    wanted = [o.get("name") for o in request.get("outputs") or [] if isinstance(o, dict)]
    unknown = [w for w in wanted if w not in outputs.column_names]
    if unknown:
        raise BadTensor(f"Unknown output(s) {unknown}; the model gives "
                        f"{', '.join(outputs.column_names)}.")
    names = wanted or outputs.column_names
    tensors = []
    for name in names:
        column = outputs.column(name)
        datatype = _datatype(column.type)
        tensors.append({"name": name, "datatype": datatype, "shape": [len(column)],
                        "data": column.to_pylist()})
    body: dict[str, Any] = {"model_name": model_name, "model_version": version,
                            "outputs": tensors}
    if "id" in request:
        body["id"] = request["id"]
    return body


def metadata(model_name: str, versions: list[str], signature: Any,
             outputs: dict[str, pa.DataType]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: inputs and outputs as tensors of shape [-1]."""
    return {"name": model_name, "versions": versions, "platform": "batchml",
            "inputs": [{"name": s.name, "datatype": DATATYPES[s.type], "shape": [-1]}
                       for s in signature.inputs],
            "outputs": [{"name": n, "datatype": _datatype(t), "shape": [-1]}
                        for n, t in outputs.items()]}
