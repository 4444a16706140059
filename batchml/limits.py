"""What one input file may cost: a memory budget per file, a maximum length per text value,
and a maximum object size before download. Batch scoring and training data loading both go
through here, so a file refused by one is refused by the other (online scoring can reuse it).

**The memory budget** (``BATCHML_MEMORY_BUDGET_MB``) bounds the decoded data one file holds at
once. It is enforced before anything is decoded, from the parquet footer:

* the footer itself: parsing it costs about 16x its bytes (measured), so a footer whose parse
  would take over a quarter of the budget (100,000 columns) is refused;
* each row group's uncompressed pages (what the reader holds while it decodes them);
* each column chunk's *decoded* size, which for a dictionary-encoded string column can be far
  larger than its pages: one long string repeated through a dictionary page decodes to
  ``num_values x longest entry``. The longest entry is read from the dictionary itself (one
  1-row probe with ``read_dictionary``: the dictionary plus one index, never expanded); runs
  of fixed-width values are ``num_values x width``; DELTA_BYTE_ARRAY values are bounded by
  the chunk's uncompressed size each;

and then again on every decoded batch. Rows per batch follow from the estimated bytes per row,
so a batch stays within a quarter of the budget (``BATCH_SHARE``) whatever the compression
ratio; a file whose single row, repeated column chunk or whole data (training) cannot fit is
refused with a :class:`~batchml.errors.MemoryBudgetExceeded` naming the file, the estimate,
the limit and the setting that raises it.

**Text values** longer than ``BATCHML_MAX_TEXT_CHARS`` are truncated (counted) or refused
(``BATCHML_TEXT_OVERFLOW``). **Objects** over ``BATCHML_MAX_FILE_BYTES`` are never downloaded.
"""

from __future__ import annotations

import io
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import DecodeError, FileTooLarge, MemoryBudgetExceeded, UnreadableFile, ValueTooLong

if TYPE_CHECKING:
    from .settings import Settings

MiB = 2**20
BATCH_SHARE = 0.125  # a decoded batch stays within this share of the budget: decoding
# takes ~3x the batch (builders grow by doubling) and the model needs room for its own work
PAGES_SHARE = 0.5  # a row group's uncompressed pages: one page is decompressed whole
FOOTER_SHARE = 0.25
FOOTER_PARSE_FACTOR = 16  # parsed footer bytes per footer byte (100k columns: 19 MB -> 310 MB)
_FIXED_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}
_BUDGET_SETTING = "BATCHML_MEMORY_BUDGET_MB"


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one input file (see the module docstring)."""

    memory_bytes: int = 1024 * MiB
    max_text_chars: int = 100_000
    text_overflow: str = "truncate"  # or "refuse"
    max_file_bytes: int | None = 20 * 2**30

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits configured in ``settings``."""
        return cls(memory_bytes=settings.memory_budget_mb * MiB,
                   max_text_chars=settings.max_text_chars,
                   text_overflow=settings.text_overflow,
                   max_file_bytes=settings.max_file_bytes)

    @classmethod
    def defaults(cls) -> Limits:
        """The documented defaults (the budget sized to this machine)."""
        from .settings import default_memory_budget_mb

        return cls(memory_bytes=default_memory_budget_mb() * MiB)

    @property
    def batch_bytes(self) -> int:
        """What one decoded batch may hold."""
        return max(1, int(self.memory_bytes * BATCH_SHARE))


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= 10 * MiB else f"{n / MiB:,.1f} MiB"


def _over_budget(uri: str, what: str, limits: Limits, *, share: float = 1.0,
                 fix: str = "") -> MemoryBudgetExceeded:
    budget = limits.memory_bytes
    over = f"over the memory budget of {_mib(budget)} per file" if share >= 1 else \
        f"over the memory budget: {share:.0%} of it ({_mib(budget * share)} of " \
        f"{_mib(budget)} per file) may go to this"
    return MemoryBudgetExceeded(
        f"{uri}: {what}, {over}.",
        hint=f"{fix}If the file is genuine, raise {_BUDGET_SETTING} (the file is kept; "
             "reprocess it after).")


# --- before download and before parsing ---------------------------------------------------------


def check_object_size(uri: str, size: int | None, limits: Limits) -> None:
    """Refuse an object larger than ``BATCHML_MAX_FILE_BYTES`` before any byte is fetched."""
    if size is not None and limits.max_file_bytes is not None and size > limits.max_file_bytes:
        raise FileTooLarge(
            f"{uri} is {size:,} bytes, over the limit of {limits.max_file_bytes:,} bytes per "
            "input file; it was not downloaded.",
            hint="Split it into smaller files, or raise BATCHML_MAX_FILE_BYTES.")


def check_footer(source: str | Path | bytes, uri: str, limits: Limits) -> None:
    """Refuse a file whose footer would take over a quarter of the budget to parse, before
    parsing it (the footer length is the 4 bytes before the trailing ``PAR1``)."""
    if isinstance(source, bytes | bytearray | memoryview):
        tail = bytes(source[-8:]) if len(source) >= 8 else b""
        size = len(source)
    else:
        with open(source, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size < 8:
                return  # too short to be parquet: the reader says so
            fh.seek(size - 8)
            tail = fh.read(8)
    if len(tail) < 8 or tail[4:] != b"PAR1":
        return  # not plain parquet: the reader explains what it is
    footer = struct.unpack("<I", tail[:4])[0]
    if footer > size - 8:
        return  # a lying length: the reader refuses it as corrupt
    if footer * FOOTER_PARSE_FACTOR > limits.memory_bytes * FOOTER_SHARE:
        raise _over_budget(
            uri, f"its footer of {footer:,} bytes (a very wide or very fragmented file) needs "
                 f"about {_mib(footer * FOOTER_PARSE_FACTOR)} to parse", limits,
            share=FOOTER_SHARE, fix="Write fewer columns or fewer row groups per file. ")


def check_encryption(source: str | Path | bytes, uri: str) -> None:
    """Refuse a file with encrypted columns before their metadata is touched: pyarrow aborts
    the whole process (not an exception) when asked for an encrypted column's metadata
    without keys. Plaintext-footer files only; an encrypted footer fails to open anyway."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source[-8:])
        footer = struct.unpack("<I", data[:4])[0] if len(data) == 8 else 0
        raw = bytes(source[len(source) - 8 - footer:len(source) - 8]) if footer else b""
    else:
        with open(source, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size < 12:
                return
            fh.seek(size - 8)
            footer = struct.unpack("<I", fh.read(4))[0]
            if footer > size - 8:
                return
            fh.seek(size - 8 - footer)
            raw = fh.read(footer)
    try:
        encrypted = _has_encryption(raw)
    except (IndexError, ValueError):
        return  # malformed: the reader refuses it
    if encrypted:
        raise UnreadableFile(f"{uri} has encrypted columns (parquet modular encryption); "
                             "batchml reads only unencrypted parquet.",
                             hint="Re-export it without encryption; the original is kept.")


def _has_encryption(footer: bytes) -> bool:
    """True when the (plaintext) FileMetaData carries ``encryption_algorithm`` (field 8): a
    walk over its Thrift compact encoding that skips every other field."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            b = footer[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ValueError("bad varint")

    def skip(kind: int, depth: int = 0) -> None:
        nonlocal pos
        if depth > 64:
            raise ValueError("too deep")
        if kind in (1, 2):
            return
        if kind == 3:
            pos += 1
        elif kind in (4, 5, 6):
            varint()
        elif kind == 7:
            pos += 8
        elif kind == 8:
            n = varint()
            pos += n
        elif kind in (9, 10):
            head = footer[pos]
            pos += 1
            n = head >> 4
            if n == 15:
                n = varint()
            elem = head & 0x0F
            for _ in range(n):
                if elem in (1, 2):
                    pos += 1
                else:
                    skip(elem, depth + 1)
        elif kind == 11:
            n = varint()
            if n:
                kv = footer[pos]
                pos += 1
                for _ in range(n):
                    skip(kv >> 4, depth + 1)
                    skip(kv & 0x0F, depth + 1)
        elif kind == 12:
            last = 0
            while True:
                head = footer[pos]
                pos += 1
                if head == 0:
                    return
                last = last + (head >> 4) if head >> 4 else _zigzag(varint())
                skip(head & 0x0F, depth + 1)
        else:
            raise ValueError(f"thrift type {kind}")
        if pos > len(footer):
            raise IndexError("past the footer")

    field_id = 0
    while pos < len(footer):
        head = footer[pos]
        pos += 1
        if head == 0:
            return False
        field_id = field_id + (head >> 4) if head >> 4 else _zigzag(varint())
        if field_id == 8:
            return True
        skip(head & 0x0F)
    return False


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


# --- estimating decoded sizes from the footer ---------------------------------------------------


@dataclass
class GroupPlan:
    """One row group: its estimated decoded size (an upper bound) and rows per batch."""

    index: int
    rows: int
    decoded_bytes: int
    row_bytes: float
    batch_rows: int


@dataclass
class ReadPlan:
    """How to read one file within the budget."""

    uri: str
    limits: Limits
    groups: list[GroupPlan] = field(default_factory=list)

    @property
    def decoded_bytes(self) -> int:
        """The whole file's estimated decoded size (an upper bound)."""
        return sum(g.decoded_bytes for g in self.groups)

    def batches(self, pf: pq.ParquetFile, row_groups: Sequence[int] | None = None,
                columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of ``row_groups`` (default all), each within the batch share of
        the budget; a batch that decodes larger than the whole budget stops the file, and
        Arrow's decoding errors come out as :class:`DecodeError` naming the file."""
        plans = {g.index: g for g in self.groups}
        for g in row_groups if row_groups is not None else range(len(self.groups)):
            plan = plans[g]
            it = pf.iter_batches(batch_size=plan.batch_rows, row_groups=[g],
                                 columns=list(columns) if columns is not None else None)
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError, MemoryError) as exc:
                    raise decode_error(exc, self.uri, self.limits, row_group=g) from exc
                if batch.nbytes > self.limits.memory_bytes:
                    raise _over_budget(
                        self.uri, f"row group {g} decoded a batch of {batch.num_rows:,} rows "
                                  f"to {_mib(batch.nbytes)} (its footer estimated "
                                  f"{_mib(plan.decoded_bytes)} for the whole row group)",
                        self.limits)
                yield batch


@dataclass
class _Chunk:
    name: str  # top-level column
    path: str
    repeated: bool
    decoded: float  # upper bound for the whole chunk
    per_row: float  # bytes per row (non-repeated) used to size batches
    probe: bool = False  # dictionary-encoded strings: the longest entry is read from the file
    num_values: int = 0
    pages: int = 0


def plan_read(pf: pq.ParquetFile, source: Any, uri: str, limits: Limits, *,
              batch_rows: int = 65_536, whole: bool = False) -> ReadPlan:
    """Estimate every row group's decoded size from the footer and choose rows per batch.

    ``source`` is what ``pf`` was opened from (a path or a buffer): dictionaries are probed
    through it. ``whole=True`` (training, which holds the whole table) also refuses a file
    whose total estimate is over the budget. Raises :class:`MemoryBudgetExceeded`.
    """
    check_encryption(source.getvalue() if isinstance(source, io.BytesIO) else source, uri)
    meta = pf.metadata
    schema = pf.schema
    plan = ReadPlan(uri, limits)
    budget = limits.memory_bytes
    leaves = [schema.column(i) for i in range(meta.num_columns)]
    tops = [leaf.path.split(".")[0] for leaf in leaves]
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        rows = max(rg.num_rows, 0)
        chunks = [_chunk(rg.column(i), leaves[i], tops[i], rows) for i in range(meta.num_columns)]
        pages = max(rg.total_byte_size, sum(c.pages for c in chunks))
        if pages > budget * PAGES_SHARE:
            # one page is decompressed whole (a value never spans pages), next to the batch
            # decoded from it: the pages may take half the budget
            raise _over_budget(uri, f"row group {g} decodes to {_mib(pages)} of pages", limits,
                               share=PAGES_SHARE, fix="Rewrite it with smaller row groups. ")
        # a repeated column's values may all sit in one row: its floor (4 bytes a value,
        # before any probe) must fit as a whole
        floor = sum(4.0 * c.num_values for c in chunks if c.repeated)
        if floor > budget:
            n = sum(c.num_values for c in chunks if c.repeated)
            raise _over_budget(uri, f"row group {g} holds {n:,} nested values (list or map "
                                    f"entries) that decode to at least {_mib(floor)}", limits)
        probes = [c for c in chunks if c.probe]
        if sum(c.decoded for c in probes) > limits.batch_bytes:
            _probe_dictionaries(source, pf, g, probes, rows, uri, limits)
        else:  # small enough that even its bound fits one batch: no need to look
            for c in probes:
                c.per_row = c.decoded / max(rows, 1) if not c.repeated else 0.0
        decoded = int(sum(c.decoded for c in chunks))
        nested = [c for c in chunks if c.repeated]
        nested_bytes = sum(c.decoded for c in nested)
        if nested_bytes > budget:
            widest = max(nested, key=lambda c: c.decoded)
            raise _over_budget(uri, f"row group {g}: nested column {widest.path!r} "
                                    f"({widest.num_values:,} values) decodes to up to "
                                    f"{_mib(nested_bytes)}", limits)
        flat = [c for c in chunks if not c.repeated]
        if flat:
            widest = max(flat, key=lambda c: c.per_row)
            if widest.per_row > budget:
                raise _over_budget(uri, f"row group {g}: one value of column {widest.path!r} "
                                        f"decodes to up to {_mib(widest.per_row)} (the row "
                                        f"group to up to {_mib(decoded)})", limits,
                                   fix="Not even a single row can be read within it. ")
        row_bytes = sum(c.per_row for c in flat) + nested_bytes / max(rows, 1)
        fit = int(limits.batch_bytes // row_bytes) if row_bytes > 0 else batch_rows
        plan.groups.append(GroupPlan(g, rows, decoded, row_bytes,
                                     max(1, min(batch_rows, fit))))
    if whole and plan.decoded_bytes > budget:
        exact = _exact_total(source, pf, plan, leaves, tops) if plan.decoded_bytes < 64 * budget \
            else None
        if exact is None or exact > budget:
            size = exact or plan.decoded_bytes
            raise _over_budget(uri, f"decodes to {'' if exact else 'up to '}{_mib(size)} in "
                                    "all", limits, fix="Training holds the whole file in "
                                    "memory: use a sample of the data or split it. ")
    return plan


def _chunk(col: Any, leaf: Any, top: str, rows: int) -> _Chunk:
    physical = leaf.physical_type
    n = max(col.num_values, 0)
    pages = max(col.total_uncompressed_size, 0)
    repeated = leaf.max_repetition_level > 0
    extra = 1 + (4 if repeated else 0)  # validity, list offsets
    c = _Chunk(top, leaf.path, repeated, 0.0, 0.0, num_values=n, pages=pages)
    if physical in _FIXED_WIDTH or physical == "FIXED_LEN_BYTE_ARRAY":
        width = _FIXED_WIDTH.get(physical) or max(leaf.length or 0, 1)
        if leaf.logical_type is not None and leaf.logical_type.type == "DECIMAL":
            width = max(width, 16)
        c.decoded = n * (width + extra)
    elif "DELTA_BYTE_ARRAY" in col.encodings:
        # each value shares a prefix with the one before: any value is at most the suffix
        # bytes of the whole chunk long
        c.decoded = n * (pages + 4 + extra)
    elif col.has_dictionary_page:
        # bounded by the chunk's pages until the probe reads the longest entry
        c.decoded = n * (pages + 4 + extra) + pages
        c.probe = True
    else:  # plain / delta-length: the values are in the pages
        c.decoded = pages + n * (4 + extra)
    c.per_row = c.decoded / max(rows, 1) if not repeated else 0.0
    if c.probe and not repeated:
        c.per_row = pages + 4 + extra
    return c


def _probe_dictionaries(source: Any, pf: pq.ParquetFile, g: int, chunks: list[_Chunk],
                        rows: int, uri: str, limits: Limits) -> None:
    """Read one row of the dictionary-encoded string columns as DictionaryArrays: the
    dictionary comes whole (never expanded), and its longest entry bounds every value."""
    names = sorted({c.name for c in chunks})
    reader = pq.ParquetFile(_reopen(source), metadata=pf.metadata, memory_map=False,
                            buffer_size=1 << 16, pre_buffer=False,
                            read_dictionary=[c.path for c in chunks])
    try:
        batch = next(reader.iter_batches(batch_size=1, row_groups=[g], columns=names,
                                         use_threads=False), None)
    except (pa.ArrowException, OSError, MemoryError) as exc:
        raise decode_error(exc, uri, limits, row_group=g) from exc
    longest = {name: 0 for name in names}
    if batch is not None:
        for name in names:
            longest[name] = max((_longest_entry(d) for d in _dictionaries(batch.column(name))),
                                default=0)
    for c in chunks:
        entry = longest[c.name] + 4 + 1 + (4 if c.repeated else 0)
        c.decoded = c.num_values * entry + c.pages  # fallback (plain) pages hold the rest
        c.per_row = entry if not c.repeated else 0.0
        if not c.repeated:
            c.per_row = max(entry, c.pages / max(rows, 1) + 5)


def _reopen(source: Any) -> Any:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    if isinstance(source, io.BytesIO):
        return io.BytesIO(source.getbuffer())
    return source


def _dictionaries(arr: pa.Array) -> Iterator[pa.Array]:
    t = arr.type
    if pa.types.is_dictionary(t):
        yield arr.dictionary
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _dictionaries(arr.field(i))
    elif pa.types.is_map(t):
        yield from _dictionaries(arr.keys)
        yield from _dictionaries(arr.items)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield from _dictionaries(arr.values)


def _longest_entry(dictionary: pa.Array) -> int:
    if len(dictionary) == 0:
        return 0
    if not (pa.types.is_string(dictionary.type) or pa.types.is_binary(dictionary.type)
            or pa.types.is_large_string(dictionary.type)
            or pa.types.is_large_binary(dictionary.type)):
        return 0
    top = pc.max(pc.binary_length(dictionary)).as_py()
    return int(top or 0)


def _exact_total(source: Any, pf: pq.ParquetFile, plan: ReadPlan, leaves: list[Any],
                 tops: list[str]) -> int | None:
    """The exact decoded size of a file whose bound is over the budget (training): its
    dictionary-encoded string columns are read as dictionary + indices and the expanded size
    is summed with numpy; other columns keep their bound. None when it cannot be computed."""
    dict_cols = sorted({tops[i] for i, leaf in enumerate(leaves)
                        if leaf.physical_type == "BYTE_ARRAY" and leaf.max_repetition_level == 0
                        and tops[i] == leaf.path})
    if not dict_cols:
        return None
    meta = pf.metadata
    reader = pq.ParquetFile(_reopen(source), metadata=meta, memory_map=False,
                            buffer_size=1 << 16, pre_buffer=False, read_dictionary=dict_cols)
    total = 0
    for g in plan.groups:
        rg = meta.row_group(g.index)
        other = 0.0
        for i, leaf in enumerate(leaves):
            if tops[i] not in dict_cols:
                other += _chunk(rg.column(i), leaf, tops[i], g.rows).decoded
        total += int(other)
        for batch in reader.iter_batches(batch_size=g.batch_rows, row_groups=[g.index],
                                         columns=dict_cols):
            for name in dict_cols:
                col = batch.column(name)
                total += 5 * len(col)
                if pa.types.is_dictionary(col.type):
                    lengths = _lengths(col.dictionary)
                    idx = col.indices.fill_null(0) if col.null_count else col.indices
                    from .estimators._arrays import to_numpy

                    total += int(lengths[to_numpy(idx).astype(np.int64)].sum())
                else:
                    total += col.nbytes
        if total > 64 * plan.limits.memory_bytes:
            return None
    return total


def _lengths(dictionary: pa.Array) -> np.ndarray:
    from .estimators._arrays import to_numpy

    if len(dictionary) == 0:
        return np.zeros(1, dtype=np.int64)
    return to_numpy(pc.binary_length(dictionary).fill_null(0)).astype(np.int64)


# --- text values --------------------------------------------------------------------------------


def limit_text(column: pa.Array | pa.ChunkedArray, *, name: str, uri: str, limits: Limits,
               first_row: int = 0) -> tuple[pa.Array | pa.ChunkedArray, int]:
    """``column`` with every value cut to ``max_text_chars`` characters, and how many were
    cut; in ``refuse`` mode a value over the limit raises :class:`ValueTooLong` naming the
    column, the row (counted from ``first_row``), its length, the limit and the setting.

    Cheap on ordinary text: a byte length (from the offsets) at or under the limit means the
    character length is too, so only batches holding a long value are looked at further."""
    t = column.type
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(t):
        return _limit_dictionary(column, name=name, uri=uri, limits=limits, first_row=first_row)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)) or len(column) == 0:
        return column, 0
    limit = limits.max_text_chars
    top = pc.max(pc.binary_length(column)).as_py()
    if top is None or top <= limit:
        return column, 0
    chars = pc.utf8_length(column)
    over = pc.greater(chars, limit)
    count = int(pc.sum(over).as_py() or 0)
    if count == 0:
        return column, 0
    if limits.text_overflow == "refuse":
        from .estimators._arrays import to_numpy

        flags = to_numpy(over.combine_chunks() if isinstance(over, pa.ChunkedArray) else over,
                         null=False)
        row = int(np.argmax(flags))
        raise _too_long(uri, name, first_row + row, chars[row].as_py(), count, limits)
    return pc.utf8_slice_codeunits(column, 0, limit), count


def _too_long(uri: str, name: str, row: int, length: int, count: int,
              limits: Limits) -> ValueTooLong:
    limit = limits.max_text_chars
    return ValueTooLong(
        f"{uri}: column {name!r} row {row:,} holds {length:,} characters, over the limit of "
        f"{limit:,} per text value ({count:,} value(s) of this batch are over it).",
        hint="Shorten the text, raise BATCHML_MAX_TEXT_CHARS, or set "
             f"BATCHML_TEXT_OVERFLOW=truncate to use the first {limit:,} characters of each.")


def _limit_dictionary(column: pa.DictionaryArray, *, name: str, uri: str, limits: Limits,
                      first_row: int) -> tuple[pa.Array, int]:
    """A dictionary-encoded text column: the dictionary is checked (and cut) once, the rows
    pointing at a long entry are counted from the indices."""
    from .estimators._arrays import to_numpy

    dictionary = column.dictionary
    if not (pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type)):
        return column, 0
    limit = limits.max_text_chars
    if len(dictionary) == 0 or (pc.max(pc.binary_length(dictionary)).as_py() or 0) <= limit:
        return column, 0
    chars = pc.utf8_length(dictionary)
    long_entry = to_numpy(pc.greater(chars, limit).fill_null(False))
    idx = to_numpy(column.indices, null=0).astype(np.int64) if column.null_count \
        else to_numpy(column.indices).astype(np.int64)
    hits = long_entry[idx]
    if column.null_count:
        hits &= ~to_numpy(column.is_null())
    count = int(hits.sum())
    if count == 0:
        return column, 0
    if limits.text_overflow == "refuse":
        row = int(np.argmax(hits))
        raise _too_long(uri, name, first_row + row, chars[int(idx[row])].as_py(), count, limits)
    cut = pc.utf8_slice_codeunits(dictionary, 0, limit)
    return pa.DictionaryArray.from_arrays(column.indices, cut), count


def limit_text_columns(table: pa.Table | pa.RecordBatch, names: Sequence[str], *, uri: str,
                       limits: Limits, first_row: int = 0
                       ) -> tuple[pa.Table | pa.RecordBatch, int]:
    """:func:`limit_text` over the named columns of ``table``; returns it and the count cut."""
    total = 0
    for name in names:
        i = table.schema.get_field_index(name)
        if i < 0:
            continue
        new, cut = limit_text(table.column(i), name=name, uri=uri, limits=limits,
                              first_row=first_row)
        if cut:
            total += cut
            table = table.set_column(i, table.schema.field(i), new)
    return table, total


# --- errors a user can act on -------------------------------------------------------------------

_COLUMN = re.compile(r"(?:column|Column)\s+(?:\d+\s+named\s+)?['\"]?([\w.\-]+)['\"]?")


def decode_error(exc: BaseException, uri: str, limits: Limits, *,
                 row_group: int | None = None, column: str | None = None) -> DecodeError:
    """Arrow's or a decompressor's error while decoding ``uri``, as a :class:`DecodeError`
    that says which file, which column when Arrow names one, what limit and what to do."""
    text = str(exc).strip() or type(exc).__name__
    if column is None:
        m = _COLUMN.search(text)
        column = m.group(1) if m else None
    where = f"{uri}" + (f", row group {row_group}" if row_group is not None else "") + \
        (f", column {column!r}" if column else "")
    capacity = isinstance(exc, pa.ArrowCapacityError) or "overflow" in text.lower()
    if capacity or isinstance(exc, MemoryError):
        return DecodeError(
            f"{where}: decoding needs more memory than one array or this process can hold "
            f"({type(exc).__name__}: {text}); the memory budget is "
            f"{_mib(limits.memory_bytes)} per file.",
            hint="The file expands far beyond its size on disk (a decompression bomb, or very "
                 "long values): it is quarantined. If it is genuine, rewrite it with smaller "
                 "row groups and shorter values, or lower BATCHML_BATCH_ROWS.")
    return DecodeError(
        f"{where} could not be decoded ({type(exc).__name__}: {text}).",
        hint="The file is corrupt or written by an incompatible writer; re-export it as "
             "parquet (the original is kept).")
