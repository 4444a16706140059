"""Hostile parquet files that are small on disk and huge (or absurd) decoded: the family of
issue 22, built here so the reliability tests and B5 use the same files.

Each builder writes one file and returns its path. Every file has a ``review`` text column
(so a text model's schema check passes and the memory checks are what stops it) unless its
point is another column; the codec-run files also carry the tabular model's feature columns.
Nothing is downloaded: ``large_string_map`` is regenerated from the script that made
parquet-testing's ``large_string_map.brotli.parquet`` (apache/parquet-testing#38), scaled by
``exponent`` (30 is the original: 1 GiB strings, which takes ~9 GB and 40 s to write).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CODECS = ("zstd", "brotli", "snappy", "gzip")


def _repeat(value: str, n: int) -> pa.Array:
    """``n`` copies of ``value`` as a plain string array, built without n Python objects."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                          pa.array([value])).cast(pa.string())


def text_dictionary(path: Path, *, chars: int = 1_500_000, rows: int = 1000) -> Path:
    """One long string repeated through a dictionary page (zstd): ~3.5 KB on disk,
    ``chars x rows`` decoded (1.5 GB by default; ``chars=3_000_000`` is the variant that made
    Arrow fail with "Take operation overflowed binary array capacity")."""
    review = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)),
                                            pa.array(["x" * chars]))
    table = pa.table({"review_id": np.arange(rows, dtype=np.int64), "review": review})
    # store_schema=False: readers see a plain string column, as from any other writer
    pq.write_table(table, path, compression="zstd", store_schema=False)
    return path


def runs(path: Path, codec: str, *, rows: int = 2_000_000) -> Path:
    """Long runs of one value in every column, plain-encoded (no dictionary), one row group,
    compressed with ``codec``: a few KB on disk, ~50 bytes a row of pages. Carries the tabular
    model's feature columns and a ``review`` column."""
    table = pa.table({
        "customer_id": np.zeros(rows, dtype=np.int64),
        "tenure_months": np.full(rows, 12.0),
        "monthly_charges": np.full(rows, 55.0),
        "support_calls": np.ones(rows, dtype=np.int64),
        "plan": _repeat("basic", rows),
        "region": _repeat("north", rows),
        "review": _repeat("nice", rows),
    })
    pq.write_table(table, path, compression=codec, use_dictionary=False,
                   row_group_size=rows, compression_level=1 if codec in ("brotli", "gzip")
                   else None)
    return path


def nested_map(path: Path, *, entries: int = 20_000_000) -> Path:
    """One row whose map column holds ``entries`` copies of one entry, dictionary + RLE
    encoded: a few KB on disk, ~10 bytes an entry decoded, all in one row."""
    keys = _repeat("k", entries)
    values = pa.array(np.ones(entries, dtype=np.int32))
    tags = pa.MapArray.from_arrays(pa.array([0, entries], pa.int32()), keys, values)
    table = pa.table({"review": pa.array(["nice dress"]), "tags": tags})
    pq.write_table(table, path, compression="zstd")
    return path


def wide(path: Path, *, columns: int = 100_000) -> Path:
    """One row, ``columns`` float columns and a ``review``: a ~19 MB footer that takes ~300 MB
    to parse."""
    zero = pa.array(np.zeros(1))
    cols: dict[str, Any] = {f"c{i}": zero for i in range(columns)}
    cols["review"] = pa.array(["nice dress"])
    pq.write_table(pa.table(cols), path)
    return path


def footer_lies(path: Path, *, claim: int = 2**50, rows: int = 1000) -> Path:
    """A small, valid review file whose footer claims absurd sizes: every row group's
    ``total_byte_size`` and every column chunk's ``total_uncompressed_size`` and
    ``num_values`` are ``claim``."""
    table = pa.table({"review_id": np.arange(rows, dtype=np.int64),
                      "review": _repeat("soft fabric runs small", rows)})
    pq.write_table(table, path)
    data = path.read_bytes()
    size = struct.unpack("<I", data[-8:-4])[0]
    meta = _Thrift(data[-8 - size:-8]).struct()
    for row_group in meta[4][1][1]:  # FileMetaData.row_groups: list<RowGroup>
        row_group[2] = (6, claim)  # total_byte_size
        for chunk in row_group[1][1][1]:  # RowGroup.columns: list<ColumnChunk>
            cmd = chunk[3][1]  # ColumnChunk.meta_data: ColumnMetaData
            cmd[5] = (6, claim)  # num_values
            cmd[6] = (6, claim)  # total_uncompressed_size
    footer = _encode_struct(meta)
    path.write_bytes(data[:-8 - size] + footer + struct.pack("<I", len(footer)) + b"PAR1")
    return path


def large_string_map(path: Path, *, exponent: int = 27) -> Path:
    """parquet-testing's ``large_string_map.brotli.parquet`` (``map<string, int32>`` column
    ``arr``: two rows, each one entry whose key is ``"a" * 2**exponent``), brotli."""
    n = 2**exponent
    data = pa.py_buffer(np.full(n, ord("a"), dtype=np.uint8))
    keys = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(
        np.array([0, n], dtype=np.int32)), data])
    one = pa.MapArray.from_arrays(pa.array([0, 1], pa.int32()), keys, pa.array([1], pa.int32()))
    pq.write_table(pa.table({"arr": pa.chunked_array([one, one])}), path, compression="BROTLI",
                   compression_level=1)
    return path


def large_string_column(path: Path, *, exponent: int = 27, column: str = "arr") -> Path:
    """The same ratio with the column a text model reads: ``column`` a string column, two
    rows of ``"a" * 2**exponent``, brotli."""
    n = 2**exponent
    data = pa.py_buffer(np.full(2 * n, ord("a"), dtype=np.uint8))
    arr = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(
        np.array([0, n, 2 * n], dtype=np.int32)), data])
    pq.write_table(pa.table({column: arr}), path, compression="BROTLI", compression_level=1)
    return path


@dataclass(frozen=True)
class Bomb:
    """One hostile case: how to build it, which model reads it, what must happen."""

    build: Callable[[Path], Path]
    model: str  # text (reads review) | tabular | text_arr (a text model reading arr)
    outcome: str  # scored | quarantined
    reason: str  # a fragment of the recorded error ("" when scored)


BOMBS: dict[str, Bomb] = {
    "text_dictionary_1.5GB": Bomb(text_dictionary, "text", "scored", ""),
    "text_dictionary_3GB": Bomb(lambda p: text_dictionary(p, chars=3_000_000), "text",
                                "scored", ""),
    **{f"runs_{codec}": Bomb(lambda p, c=codec: runs(p, c), "tabular", "quarantined",
                             "of pages, over the memory budget") for codec in CODECS},
    "nested_map_20M_entries": Bomb(nested_map, "text", "quarantined", "nested values"),
    "wide_100k_columns": Bomb(wide, "text", "quarantined", "footer of"),
    "footer_claims_2^50": Bomb(footer_lies, "text", "quarantined", "over the memory budget"),
    "large_string_map": Bomb(large_string_map, "text_arr", "quarantined", "'arr'"),
    "large_string_column": Bomb(large_string_column, "text_arr", "quarantined",
                                "of pages, over the memory budget"),
}


# --- a minimal Thrift compact protocol codec (for footer_lies) ---------------------------------


class _Thrift:
    """Decodes Thrift compact structs into ``{field id: (type, value)}``; lists are
    ``(element type, [values])``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def value(self, kind: int) -> Any:
        if kind in (1, 2):
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            n = self.varint()
            return (n >> 1) ^ -(n & 1)
        if kind == 7:
            self.pos += 8
            return self.data[self.pos - 8:self.pos]
        if kind == 8:
            n = self.varint()
            self.pos += n
            return self.data[self.pos - n:self.pos]
        if kind in (9, 10):
            head = self.byte()
            n = head >> 4 if head >> 4 != 15 else self.varint()
            elem = head & 0x0F
            return elem, [self.byte() == 1 if elem in (1, 2) else self.value(elem)
                          for _ in range(n)]
        if kind == 12:
            return self.struct()
        raise ValueError(f"thrift type {kind} not supported here")

    def struct(self) -> dict[int, tuple[int, Any]]:
        fields: dict[int, tuple[int, Any]] = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            delta, kind = head >> 4, head & 0x0F
            fid = last + delta if delta else self.value(4)
            fields[fid] = (kind, self.value(kind))
            last = fid


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _encode_value(kind: int, value: Any) -> bytes:
    if kind == 3:
        return bytes([value])
    if kind in (4, 5, 6):
        return _varint((value << 1) ^ (value >> 63))
    if kind == 7:
        return bytes(value)
    if kind == 8:
        return _varint(len(value)) + bytes(value)
    if kind in (9, 10):
        elem, items = value
        head = bytes([(len(items) << 4) | elem]) if len(items) < 15 else \
            bytes([0xF0 | elem]) + _varint(len(items))
        if elem in (1, 2):
            return head + bytes(1 if v else 2 for v in items)
        return head + b"".join(_encode_value(elem, v) for v in items)
    if kind == 12:
        return _encode_struct(value)
    raise ValueError(f"thrift type {kind} not supported here")


def _encode_struct(fields: dict[int, tuple[int, Any]]) -> bytes:
    out = bytearray()
    last = 0
    for fid in sorted(fields):
        kind, value = fields[fid]
        wire = (1 if value else 2) if kind in (1, 2) else kind
        if 0 < fid - last <= 15:
            out.append(((fid - last) << 4) | wire)
        else:
            out.append(wire)
            out += _varint((fid << 1) ^ (fid >> 63))
        if kind not in (1, 2):
            out += _encode_value(kind, value)
        last = fid
    out.append(0)
    return bytes(out)


# --- measuring a child's own peak ---------------------------------------------------------------

PEAK_MARK = "BATCHML_PEAK_KB"
# ``python -c PEAK_CLI args...`` runs the batchml command line and, at exit, writes its own peak
# RSS (VmHWM, reset at exec) to stderr. ``ru_maxrss`` from wait4 is not that: it starts at the
# parent's RSS when the child was forked, so it overstates a small child of a big parent.
PEAK_CLI = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    f"            sys.stderr.write('{PEAK_MARK} ' + line.split()[1] + '\\n')\n"
    "atexit.register(_peak)\n"
    "from batchml.cli import main\n"
    "sys.argv = ['batchml'] + sys.argv[1:]\n"
    "main()\n")


def peak_mb(output: str) -> float | None:
    """The peak RSS (MB) a :data:`PEAK_CLI` child wrote, or None (it died before exiting)."""
    for line in reversed(output.splitlines()):
        if line.startswith(PEAK_MARK):
            return int(line.split()[1]) / 1024
    return None
