"""Scoring one huge file in pieces: split it by row groups, score the pieces in parallel
(a Dask task runner in ``flows/pieces.py``), write one output per piece and a manifest last.

Output layout: ``OUTBOX/<model run>/<input name>-<input id>/part-NNNNN.parquet`` plus
``_manifest.json`` listing the parts and their rows. A reader treats the directory as complete
only once the manifest exists; a retry rewrites the same parts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .budget import plan_read
from .ledger import FileRecord
from .limits import Limits
from .scoring import LoadedModel, Outbox, _open_parquet, _stream, check_file, output_key


@dataclass(frozen=True)
class Piece:
    """Consecutive row groups of one file."""

    index: int
    row_groups: list[int]
    rows: int


def plan_pieces(path: Path, *, rows_per_piece: int) -> list[Piece]:
    """Group a file's row groups into pieces of about ``rows_per_piece`` rows each."""
    meta = pq.ParquetFile(path).metadata
    pieces: list[Piece] = []
    current: list[int] = []
    rows = 0
    for i in range(meta.num_row_groups):
        current.append(i)
        rows += meta.row_group(i).num_rows
        if rows >= rows_per_piece:
            pieces.append(Piece(len(pieces), current, rows))
            current, rows = [], 0
    if current:
        pieces.append(Piece(len(pieces), current, rows))
    return pieces


def piece_dir(record: FileRecord, model_run_id: str) -> str:
    """The outbox-relative directory of a file scored in pieces."""
    return output_key(record, model_run_id).removesuffix(".parquet")


def score_piece(path: Path, record: FileRecord, model: LoadedModel, outbox: Outbox,
                batch_id: str, piece: Piece, *, batch_rows: int = 65_536,
                limits: Limits | None = None) -> dict[str, Any]:
    """Score one piece into its own part file (batches sized by bytes within ``limits``);
    returns its manifest entry."""
    start = time.perf_counter()
    limits = limits or Limits.defaults()
    pf = _open_parquet(path, record.source_uri, limits)
    plan = plan_read(pf, path, record.source_uri, limits, batch_rows=batch_rows)
    tmp = outbox.temp_path()
    try:
        rows, positives, truncated = _stream(pf, model, record, batch_id, tmp, batch_rows,
                                             row_groups=piece.row_groups, plan=plan,
                                             limits=limits)
        uri = outbox.commit(tmp, f"{piece_dir(record, model.run_id)}/part-{piece.index:05d}"
                                 ".parquet")
    finally:
        outbox.discard(tmp)
    return {"part": piece.index, "uri": uri, "rows": rows, "positives": positives,
            "truncated": truncated, "row_groups": piece.row_groups, "seconds": round(time.perf_counter() - start, 3)}


def precheck(path: Path, record: FileRecord, model: LoadedModel, budget_bytes: int, *,
             limits: Limits | None = None) -> None:
    """The same checks as whole-file scoring (memory budget, signature, zero rows)."""
    limits = limits or Limits(memory_bytes=budget_bytes)
    check_file(_open_parquet(path, record.source_uri, limits), model, record.source_uri,
               limits.memory_bytes, source=path, limits=limits)


def write_manifest(outbox: Outbox, record: FileRecord, model: LoadedModel, batch_id: str,
                   pieces: list[Piece], parts: list[dict[str, Any]]) -> str:
    """Write the manifest (last, so its presence means every part is there); return its URI."""
    manifest = {"input_uri": record.source_uri, "input_etag": record.etag,
                "model_run_id": model.run_id, "model_flavor": model.flavor,
                "batch_id": batch_id, "pieces": [asdict(p) for p in pieces],
                "parts": sorted(parts, key=lambda p: p["part"]),
                "rows": sum(p["rows"] for p in parts)}
    tmp = outbox.temp_path()
    tmp.write_text(json.dumps(manifest, indent=2))
    return outbox.commit(tmp, f"{piece_dir(record, model.run_id)}/_manifest.json")
