"""The memory budget per file (``BATCHML_MEMORY_BUDGET_MB``): how much decoded data one
parquet file may hold at once, estimated from its footer before anything is decoded and
checked again on every batch, whatever the compression ratio.

From the footer (:func:`plan_read`), per row group:

* its uncompressed pages may take half the budget (``PAGES_SHARE``): the reader decompresses
  one page whole (a value never spans pages) next to the batch it decodes from it;
* each column chunk's *decoded* size is bounded: fixed-width values are ``num_values x
  width`` (runs of one value compress to nothing but decode in full); plain strings are in
  the pages; DELTA_BYTE_ARRAY values are each at most the chunk's pages long; a
  dictionary-encoded string column decodes to up to ``num_values x longest entry`` (one long
  string repeated through a dictionary page: 3.5 KB on disk, 1.5 GB decoded). The longest
  entry is read from the dictionary itself: a 1-row read with ``read_dictionary`` returns the
  whole dictionary and one index, never expanded (skipped when even the crude bound fits);
* list and map columns may hold all their values in one row: they must fit the budget whole;
* rows per batch follow from the bytes per row, so a decoded batch stays within an eighth of
  the budget (``BATCH_SHARE``); a row that cannot fit the budget alone refuses the file.

Training holds the whole file, so :func:`plan_read` with ``whole=True`` also refuses a file
whose total is over the budget (when the bound is, the exact size of its dictionary columns
is computed with numpy from dictionary + indices). :meth:`ReadPlan.batches` then checks
every decoded batch against the budget (a lying footer) and wraps Arrow's decoding errors.
Every refusal is a :class:`~batchml.errors.MemoryBudgetExceeded` naming the file, the
estimate, the limit and the setting.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .footer import check_encryption
from .limits import Limits, decode_error, mib, over_budget

PAGES_SHARE = 0.5  # a row group's uncompressed pages: one page is decompressed whole
_FIXED_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


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
                    raise over_budget(
                        self.uri, f"row group {g} decoded a batch of {batch.num_rows:,} rows "
                                  f"to {mib(batch.nbytes)} (its footer estimated "
                                  f"{mib(plan.decoded_bytes)} for the whole row group)",
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
            raise over_budget(uri, f"row group {g} decodes to {mib(pages)} of pages", limits,
                               share=PAGES_SHARE, fix="Rewrite it with smaller row groups. ")
        # a repeated column's values may all sit in one row: its floor (4 bytes a value,
        # before any probe) must fit as a whole
        floor = sum(4.0 * c.num_values for c in chunks if c.repeated)
        if floor > budget:
            n = sum(c.num_values for c in chunks if c.repeated)
            raise over_budget(uri, f"row group {g} holds {n:,} nested values (list or map "
                                    f"entries) that decode to at least {mib(floor)}", limits)
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
            raise over_budget(uri, f"row group {g}: nested column {widest.path!r} "
                                    f"({widest.num_values:,} values) decodes to up to "
                                    f"{mib(nested_bytes)}", limits)
        flat = [c for c in chunks if not c.repeated]
        if flat:
            widest = max(flat, key=lambda c: c.per_row)
            if widest.per_row > budget:
                raise over_budget(uri, f"row group {g}: one value of column {widest.path!r} "
                                        f"decodes to up to {mib(widest.per_row)} (the row "
                                        f"group to up to {mib(decoded)})", limits,
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
            raise over_budget(uri, f"decodes to {'' if exact else 'up to '}{mib(size)} in "
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
