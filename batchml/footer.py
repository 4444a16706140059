"""Checks on a parquet footer made from its raw bytes, before pyarrow parses it: its size
against the memory budget (parsing costs ~16x the footer: 100,000 columns, a 19 MB footer,
took 310 MB), and encrypted columns (pyarrow aborts the whole process, not an exception, when
asked for an encrypted column's metadata without keys)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from .errors import UnreadableFile
from .limits import Limits, mib, over_budget

FOOTER_SHARE = 0.25  # the parsed footer may take a quarter of the budget
FOOTER_PARSE_FACTOR = 16  # parsed bytes per footer byte (100k columns: 19 MB -> 310 MB)


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
        raise over_budget(
            uri, f"its footer of {footer:,} bytes (a very wide or very fragmented file) needs "
                 f"about {mib(footer * FOOTER_PARSE_FACTOR)} to parse", limits,
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
