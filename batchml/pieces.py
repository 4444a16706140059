"""Scoring one huge file in pieces: split it by row groups, score the pieces in parallel
(a Dask task runner in :mod:`batchml.flows.pieces`), write one output per piece and a manifest
last.

The file goes through the worker's batch path (:meth:`~batchml.worker.Worker.run_batch` with a
:class:`PieceScorer`): claimed with its model in one transaction, leases renewed, the outcome
and the batch's end recorded together, and a failure handled as for any other file. A piece
that fails removes the parts already written, then fails the file: a transient error gives the
file back as pending (the batch closed with the error), anything else quarantines it with the
reason (``batchml reprocess`` sends it back).

Output layout: ``OUTBOX/<model run>/<input name>-<input id>/part-NNNNN.parquet`` plus
``_manifest.json`` listing the parts and their rows. A reader treats the directory as complete
only once the manifest exists; a retry rewrites the same parts.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from .budget import plan_read
from .catalog import FileRecord
from .errors import BatchMLError
from .limits import Limits
from .scoring import (
    FileOutcome,
    LoadedModel,
    Outbox,
    _open_parquet,
    _stream,
    check_file,
    output_key,
)

if TYPE_CHECKING:
    from .worker import Worker

#: Scores ``pieces`` of the file at ``path`` (record, model, batch id) and returns, once every
#: piece has finished, each piece's manifest entry or the exception it raised, in order.
MapPieces = Callable[[list["Piece"], Path, FileRecord, LoadedModel, str],
                     list["dict[str, Any] | BaseException"]]


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
                limits: Limits | None = None,
                params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score one piece into its own part file (batches sized by bytes within ``limits``,
    with the resolved inference ``params``); returns its manifest entry."""
    start = time.perf_counter()
    limits = limits or Limits.defaults()
    pf = _open_parquet(path, record.source_uri, limits)
    plan = plan_read(pf, path, record.source_uri, limits, batch_rows=batch_rows)
    tmp = outbox.temp_path()
    try:
        rows, positives, truncated = _stream(pf, model, record, batch_id, tmp, batch_rows,
                                             row_groups=piece.row_groups, plan=plan,
                                             limits=limits, params=params)
        uri = outbox.commit(tmp, f"{piece_dir(record, model.run_id)}/part-{piece.index:05d}"
                                 ".parquet")
    finally:
        outbox.discard(tmp)
    return {"part": piece.index, "uri": uri, "rows": rows, "positives": positives,
            "truncated": truncated, "row_groups": piece.row_groups,
            "seconds": round(time.perf_counter() - start, 3)}


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


def discard_parts(outbox: Outbox, record: FileRecord, model_run_id: str,
                  parts: list[dict[str, Any]]) -> None:
    """Remove the parts a failed attempt committed, so no partial output is left (the
    ``predictions`` view globs every part). When a manifest is already there (a reprocess of a
    complete output), the parts rewritten hold the same rows as those it lists: they stay."""
    key = outbox.placed(f"{piece_dir(record, model_run_id)}/_manifest.json")
    if outbox.is_s3:
        from .store import split_s3_uri

        bucket, prefix = split_s3_uri(f"{outbox.root}/{key}")
        with contextlib.suppress(Exception):  # a missing manifest is the usual case
            outbox.s3.head_object(Bucket=bucket, Key=prefix)
            return
        for part in parts:
            bucket, name = split_s3_uri(part["uri"])
            outbox.s3.delete_object(Bucket=bucket, Key=name)
        return
    if (Path(outbox.root) / key).exists():
        return
    for part in parts:
        Path(part["uri"]).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only when empty
        (Path(outbox.root) / outbox.placed(piece_dir(record, model_run_id))).rmdir()


@dataclass(frozen=True)
class PieceScorer:
    """Scores one claimed file in pieces: the ``score`` of
    :meth:`~batchml.worker.Worker.run_batch`, called as ``(path, record, model, outbox,
    batch_id)`` and returning the file's outcome.

    The file is checked first like a whole file (a :class:`~batchml.errors.DataError`
    quarantines it), then split by row groups and mapped with ``map_pieces`` (default: in this
    process, one piece after another). When a piece fails, the parts written are removed and
    its exception raised, for the worker to handle like any other file's failure."""

    rows_per_piece: int
    limits: Limits
    batch_rows: int = 65_536
    map_pieces: MapPieces | None = None
    params: Mapping[str, Any] | None = None  # the resolved inference parameters

    def __call__(self, path: Path, record: FileRecord, model: LoadedModel, outbox: Outbox,
                 batch_id: str) -> FileOutcome:
        start = time.perf_counter()
        precheck(path, record, model, self.limits.memory_bytes, limits=self.limits)
        pieces = plan_pieces(path, rows_per_piece=self.rows_per_piece)
        mapper = self.map_pieces or self._in_process(outbox)
        results = mapper(pieces, path, record, model, batch_id)
        parts = [r for r in results if not isinstance(r, BaseException)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            discard_parts(outbox, record, model.run_id, parts)
            raise failed[0]
        uri = write_manifest(outbox, record, model, batch_id, pieces, parts)
        return FileOutcome(record.file_id, record.source_uri, "scored", model.run_id,
                           output_uri=uri, rows=sum(p["rows"] for p in parts),
                           positives=sum(p["positives"] or 0 for p in parts),
                           truncated=sum(p.get("truncated", 0) for p in parts),
                           duration_ms=(time.perf_counter() - start) * 1000)

    def _in_process(self, outbox: Outbox) -> MapPieces:
        """Score the pieces here, one after another, stopping at the first failure."""
        def map_pieces(pieces: list[Piece], path: Path, record: FileRecord, model: LoadedModel,
                       batch_id: str) -> list[dict[str, Any] | BaseException]:
            results: list[dict[str, Any] | BaseException] = []
            for piece in pieces:
                try:
                    results.append(score_piece(path, record, model, outbox, batch_id, piece,
                                               batch_rows=self.batch_rows, limits=self.limits,
                                               params=self.params))
                except Exception as exc:
                    results.append(exc)
                    break
            return results

        return map_pieces


def score_in_pieces(worker: Worker, *, rows_per_piece: int, map_pieces: MapPieces | None = None,
                    prefect_flow_run_id: str | None = None) -> dict[str, Any]:
    """Discover the files of ``worker``'s (list) source, claim one and score it in pieces
    through the worker's batch path; return what happened to it.

    ``{"status": "nothing to do"}`` when there was nothing to claim (scored already, or claimed
    by another worker). Raises :class:`~batchml.errors.BatchMLError` when the file could not be
    scored and stays pending: no model to score with, or a transient error (the file was given
    back and its batch closed with the error)."""
    settings = worker.settings
    worker.discover()
    ids = [r.file_id for r in worker.source.poll()]
    scorer = PieceScorer(rows_per_piece, Limits.from_settings(settings),
                         batch_rows=settings.batch_rows, map_pieces=map_pieces,
                         params=worker.check_params())  # refused here, before the claim
    report = worker.run_batch(limit=1, file_ids=ids, prefect_flow_run_id=prefect_flow_run_id,
                              score=scorer)
    if not report.outcomes:
        if report.error:
            raise BatchMLError(f"Not scored, the file stays pending: {report.error}",
                               hint="Run the flow again once the cause is gone.")
        return {"status": "nothing to do", "file": worker.source.uri}
    outcome = report.outcomes[0]
    return {"status": outcome.status, "output": outcome.output_uri, "rows": outcome.rows,
            "error": outcome.error}
