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
    if "id" in request and not isinstance(request["id"], str):
        raise BadTensor("The request's 'id' must be a string.")
    _flag(_parameters(request, "The request"), "binary_data_output", "The request")
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise BadTensor("'outputs' must be a list of objects, each with a 'name'.")
    for o in outputs:
        what = f"Output {o['name']!r}"
        _flag(_parameters(o, what), "binary_data", what)
    columns: dict[str, pa.Array] = {}
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadTensor("Each input tensor needs a 'name', 'shape', 'datatype' and 'data'.")
        name, datatype = tensor["name"], str(tensor.get("datatype", ""))
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(_size(d) for d in shape):
            raise BadTensor(f"Input {name!r}: 'shape' must be a list of sizes.")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise BadTensor(f"Input {name!r} has shape {shape}; one value per row is "
                            "expected ([N] or [N, 1]).")
        size = _parameters(tensor, f"Input {name!r}").get("binary_data_size")
        if size is not None:
            if not _size(size):
                raise BadTensor(f"Input {name!r}: 'binary_data_size' must be a size in bytes.")
            raw = binary[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                values: Any = _bytes_elements(raw)
            elif datatype in _NUMPY:
                dtype = np.dtype(_NUMPY[datatype]).newbyteorder("<")
                if len(raw) % dtype.itemsize:
                    raise BadTensor(f"Input {name!r}: {len(raw)} bytes of binary data are not "
                                    f"a whole number of {datatype} values.")
                values = np.frombuffer(raw, dtype=dtype)
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
        except (ValueError, TypeError, OverflowError, pa.ArrowInvalid) as exc:
            raise BadTensor(f"Input {name!r}: its data is not {datatype}: {exc}.") from exc
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise BadTensor(f"The input tensors have different lengths ({sorted(lengths)}).")
    return pa.table(columns), request


def _size(value: Any) -> bool:
    """A size: a non-negative JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    """``obj``'s ``parameters`` object ({} when absent); 400 when it is not an object."""
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise BadTensor(f"{what}: 'parameters' must be an object.")
    return params


def _flag(params: dict[str, Any], key: str, what: str) -> None:
    if key in params and not isinstance(params[key], bool):
        raise BadTensor(f"{what}: parameter {key!r} must be true or false.")


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


def wants_binary(request: dict[str, Any], name: str) -> bool:
    """Does the request ask for output ``name`` in the binary tensor extension? An output's own
    ``parameters.binary_data`` decides; else the request's ``parameters.binary_data_output``
    (what ``tritonclient`` sends when no outputs are named)."""
    for o in request.get("outputs") or []:
        if isinstance(o, dict) and o.get("name") == name:
            own = o.get("parameters")
            if isinstance(own, dict) and "binary_data" in own:
                return own["binary_data"] is True
    params = request.get("parameters")
    return isinstance(params, dict) and params.get("binary_data_output") is True


def _primitive(arrow_type: pa.DataType) -> bool:
    t = pa.types
    return (t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_boolean(arrow_type)
            or t.is_integer(arrow_type) or t.is_floating(arrow_type))


def _binary(column: pa.ChunkedArray | pa.Array, datatype: str) -> bytes:
    """A tensor's raw bytes (little-endian; BYTES: a 4-byte length before each element)."""
    if datatype == "BYTES":
        parts = []
        for v in column.to_pylist():
            raw = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            parts += [struct.pack("<I", len(raw)), raw]
        return b"".join(parts)
    dtype = {"BOOL": np.dtype(np.bool_), "INT64": np.dtype("<i8"),
             "FP64": np.dtype("<f8")}[datatype]
    return np.asarray(column.to_numpy(zero_copy_only=False)).astype(dtype).tobytes()


def infer_response(model_name: str, version: str, outputs: pa.Table, request: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[bytes]]:
    """The response: one tensor per output column (those the request asked for, else all),
    and the raw bytes of those asked for in binary (see :func:`wants_binary`), in tensor order:
    such a tensor has ``parameters.binary_data_size`` instead of ``data``. A column holding
    nulls, or values that are not plain (e.g. an explanation's structs), is always sent as
    JSON."""
    wanted = [str(o.get("name")) for o in request.get("outputs") or [] if isinstance(o, dict)]
    unknown = [w for w in wanted if w not in outputs.column_names]
    if unknown:
        raise BadTensor(f"Unknown output(s) {unknown}; the model gives "
                        f"{', '.join(outputs.column_names)}.")
    names = wanted or outputs.column_names
    tensors: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for name in names:
        column = outputs.column(name)
        datatype = _datatype(column.type)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(column)]}
        if wants_binary(request, name) and column.null_count == 0 and _primitive(column.type):
            raw = _binary(column, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            tensor["data"] = column.to_pylist()
        tensors.append(tensor)
    body: dict[str, Any] = {"model_name": model_name, "model_version": version,
                            "outputs": tensors}
    if "id" in request:
        body["id"] = request["id"]
    return body, binary


def encode_response(body: dict[str, Any], binary: list[bytes]) -> tuple[bytes, int | None]:
    """The HTTP body of an infer response and, when some outputs are binary, the length of
    its JSON header (sent as ``Inference-Header-Content-Length``)."""
    head = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if not binary:
        return head, None
    return head + b"".join(binary), len(head)


def metadata(model_name: str, versions: list[str], signature: Any,
             outputs: dict[str, pa.DataType]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: inputs and outputs as tensors of shape [-1]; the model's
    inference parameters (name -> type, default, limits, description) under
    ``parameters.inference_parameters``."""
    out: dict[str, Any] = {
        "name": model_name, "versions": versions, "platform": "batchml",
        "inputs": [{"name": s.name, "datatype": DATATYPES[s.type], "shape": [-1]}
                   for s in signature.inputs],
        "outputs": [{"name": n, "datatype": _datatype(t), "shape": [-1]}
                    for n, t in outputs.items()]}
    if signature.params:
        out["parameters"] = {"inference_parameters": {
            p.name: {k: v for k, v in p.to_dict().items() if k != "name"}
            for p in signature.params}}
    return out


PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "sequence_id", "sequence_start",
                                 "sequence_end", "priority", "timeout", "headers"})
"""Request ``parameters`` the protocol (or Triton's clients) define: not the model's."""


def model_parameters(request: dict[str, Any]) -> dict[str, Any]:
    """The model's inference parameters in a request's ``parameters``: all but
    :data:`PROTOCOL_PARAMETERS` (checked against the model by the scorer)."""
    params = request.get("parameters")
    if not isinstance(params, dict):
        return {}
    return {k: v for k, v in params.items() if k not in PROTOCOL_PARAMETERS}


# --- OpenAPI: what the routes declare --------------------------------------------------------

_PARAMETERS: dict[str, Any] = {"type": "object"}
TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0},
                  "description": "[N] or [N, 1]: N rows, one value each"},
        "datatype": {"type": "string", "enum": ["BYTES", *_NUMPY]},
        "data": {"type": "array", "description": "N values (absent when binary)"},
        "parameters": {**_PARAMETERS, "properties": {
            "binary_data_size": {"type": "integer", "minimum": 0}}},
    },
    "anyOf": [{"required": ["data"]},
              {"required": ["parameters"],
               "properties": {"parameters": {"required": ["binary_data_size"]}}}],
}
REQUEST_SCHEMA: dict[str, Any] = {
    "title": "Inference request (Open Inference Protocol v2)",
    "description": "One tensor per model input (see the model's metadata), any order. With "
                   "the binary tensor extension the JSON is followed by the tensors' bytes and "
                   f"its length is sent in {HEADER_LENGTH}.",
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {**_PARAMETERS, "description": "binary_data_output, and the model's "
                       "inference parameters (see its metadata); an unknown one is a 400",
                       "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "items": TENSOR_SCHEMA},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": {
                **_PARAMETERS, "properties": {"binary_data": {"type": "boolean"}}}}}},
    },
}
_OUT_TENSOR: dict[str, Any] = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": "integer"}},
                   "data": {"type": "array"},
                   "parameters": {"type": "object", "properties": {
                       "binary_data_size": {"type": "integer"}}}}}
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["model_name", "model_version", "outputs"],
    "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                   "id": {"type": "string"}, "outputs": {"type": "array", "items": _OUT_TENSOR}}}
_META_TENSOR: dict[str, Any] = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": "integer"}}}}
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {"name": {"type": "string"},
                   "versions": {"type": "array", "items": {"type": "string"}},
                   "platform": {"type": "string"},
                   "inputs": {"type": "array", "items": _META_TENSOR},
                   "outputs": {"type": "array", "items": _META_TENSOR},
                   "parameters": {"type": "object", "properties": {
                       "inference_parameters": {
                           "type": "object", "description": "the model's inference "
                           "parameters: name -> type, default, limits, description"}}}}}
SERVER_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "version", "extensions"],
    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                   "extensions": {"type": "array", "items": {"type": "string"}}}}
ERROR_SCHEMA: dict[str, Any] = {"type": "object", "required": ["error"],
                                "properties": {"error": {"type": "string"}}}
READY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "ready"],
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"},
                   "error": {"type": "string"}}}
_EXAMPLE_VALUES: dict[str, Any] = {"string": "fits well, lovely fabric", "float64": 1.5,
                                   "int64": 1, "bool": True}


def example(signature: Any) -> dict[str, Any]:
    """A request for ``signature``'s inputs, one row (the OpenAPI example)."""
    return {"id": "example-1", "inputs": [
        {"name": s.name, "shape": [1], "datatype": DATATYPES[s.type],
         "data": [_EXAMPLE_VALUES[s.type]]} for s in signature.inputs]}
