"""The limits one input file is held to, in one place so batch scoring, training data
loading (and later online scoring) refuse the same files with the same words:

* ``memory_bytes`` (``BATCHML_MEMORY_BUDGET_MB``): the decoded data one file may hold at once,
  enforced by :mod:`batchml.footer` (before the footer is parsed) and :mod:`batchml.budget`
  (from the footer, before anything is decoded, and on every batch);
* ``max_text_chars`` / ``text_overflow`` (``BATCHML_MAX_TEXT_CHARS``,
  ``BATCHML_TEXT_OVERFLOW``): a longer text value is cut (counted) or refused, here;
* ``max_file_bytes`` (``BATCHML_MAX_FILE_BYTES``): a larger object is never downloaded.

Errors come out as :class:`~batchml.errors.DataError` subclasses that name the file, the
limit and the setting that raises it (:func:`decode_error` wraps Arrow's and decompressors').
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DecodeError, FileTooLarge, MemoryBudgetExceeded, ValueTooLong

if TYPE_CHECKING:
    from .settings import Settings

MiB = 2**20
# a decoded batch stays within this share of the budget: decoding takes ~3x the batch
# (builders grow by doubling) and the model needs room for its own work
BATCH_SHARE = 0.125
BUDGET_SETTING = "BATCHML_MEMORY_BUDGET_MB"


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



def mib(n: float) -> str:
    """``n`` bytes in MiB, for messages."""
    return f"{n / MiB:,.0f} MiB" if n >= 10 * MiB else f"{n / MiB:,.1f} MiB"


def over_budget(uri: str, what: str, limits: Limits, *, share: float = 1.0,
                 fix: str = "") -> MemoryBudgetExceeded:
    """The error for ``uri`` when ``what`` (which names the estimate) is over ``share`` of
    the budget; ``fix`` says what to change in the file."""
    budget = limits.memory_bytes
    over = f"over the memory budget of {mib(budget)} per file" if share >= 1 else \
        f"over the memory budget: {share:.0%} of it ({mib(budget * share)} of " \
        f"{mib(budget)} per file) may go to this"
    return MemoryBudgetExceeded(
        f"{uri}: {what}, {over}.",
        hint=f"{fix}If the file is genuine, raise {BUDGET_SETTING} (the file is kept; "
             "reprocess it after).")


# --- before download ---------------------------------------------------------------------------


def check_object_size(uri: str, size: int | None, limits: Limits) -> None:
    """Refuse an object larger than ``BATCHML_MAX_FILE_BYTES`` before any byte is fetched."""
    if size is not None and limits.max_file_bytes is not None and size > limits.max_file_bytes:
        raise FileTooLarge(
            f"{uri} is {size:,} bytes, over the limit of {limits.max_file_bytes:,} bytes per "
            "input file; it was not downloaded.",
            hint="Split it into smaller files, or raise BATCHML_MAX_FILE_BYTES.")


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
            f"{mib(limits.memory_bytes)} per file.",
            hint="The file expands far beyond its size on disk (a decompression bomb, or very "
                 "long values): it is quarantined. If it is genuine, rewrite it with smaller "
                 "row groups and shorter values, or lower BATCHML_BATCH_ROWS.")
    return DecodeError(
        f"{where} could not be decoded ({type(exc).__name__}: {text}).",
        hint="The file is corrupt or written by an incompatible writer; re-export it as "
             "parquet (the original is kept).")
