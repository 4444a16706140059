"""The input-file ledger: every discovered file, its state, claims with leases, and batches.

States: ``discovered -> claimed -> scored | quarantined | failed``. A claim is a lease: a worker
that dies leaves a claim that expires and is taken over. Claims are taken inside one exclusive
catalog transaction, so two workers never hold the same file at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._db import utcnow

if TYPE_CHECKING:
    import pandas as pd

    from .model import Catalog

STATES = ("discovered", "claimed", "scored", "quarantined", "failed")


@dataclass(frozen=True)
class FileRef:
    """A file a source has seen: its URI and what identifies this version of it."""

    uri: str
    etag: str | None = None
    size: int | None = None
    mtime: datetime | None = None

    @property
    def identity(self) -> str:
        """ETag when the store gives one, else size and mtime."""
        if self.etag:
            return f"etag:{self.etag}"
        stamp = self.mtime.isoformat() if self.mtime else ""
        return f"stat:{self.size}:{stamp}"

    @property
    def file_id(self) -> str:
        """Stable id of this version of the file (a new ETag is new work)."""
        return hashlib.sha256(f"{self.uri}\0{self.identity}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FileRecord:
    """A ledger row."""

    file_id: str
    source_uri: str
    etag: str | None
    size: int | None
    mtime: datetime | None
    state: str
    attempts: int
    error: str | None = None
    claimed_by: str | None = None

    @property
    def ref(self) -> FileRef:
        return FileRef(self.source_uri, self.etag, self.size, self.mtime)


@dataclass(frozen=True)
class ClaimedBatch:
    """What :meth:`Ledger.claim_batch` did: the batch opened (None when nothing was claimed),
    the model run it resolved, the files claimed and when their leases expire."""

    batch_id: str | None
    model_run_id: str | None
    records: list[FileRecord]
    lease_expires_at: datetime | None


def worker_id() -> str:
    """A name for this worker: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


_COLUMNS = "file_id, source_uri, etag, size, mtime, state, attempts, error, claimed_by"


class Ledger:
    """The ledger tables of a :class:`~batchml.Catalog`."""

    def __init__(self, catalog: Catalog, *, max_attempts: int = 5) -> None:
        self.catalog = catalog
        self.max_attempts = max_attempts

    def discover(self, refs: Iterable[FileRef]) -> list[str]:
        """Record files not seen before; return the ids that are new.

        Reads first: a poll that finds only known files costs one shared read, no write."""
        rows = {r.file_id: r for r in refs}
        if not rows:
            return []
        with self.catalog.db.read() as con:
            known = {r[0] for r in con.execute(
                "SELECT file_id FROM files WHERE file_id IN (SELECT unnest(?))",
                [list(rows)]).fetchall()}
        new = [r for fid, r in rows.items() if fid not in known]
        if not new:
            return []
        now = utcnow()
        with self.catalog.db.write(single=True) as con:
            # another process may have recorded some in between: those are not new
            added = {r[0] for r in con.execute(
                "INSERT OR IGNORE INTO files (file_id, source_uri, etag, size, mtime, state,"
                " discovered_at, updated_at) SELECT unnest(?), unnest(?), unnest(?),"
                " unnest(?), unnest(?::TIMESTAMPTZ[]), 'discovered', ?, ? RETURNING file_id",
                [[r.file_id for r in new], [r.uri for r in new], [r.etag for r in new],
                 [r.size for r in new], [r.mtime for r in new], now, now]).fetchall()}
        return [r.file_id for r in new if r.file_id in added]

    def claim(self, worker: str, *, limit: int, lease_s: float,
              file_ids: Sequence[str] | None = None,
              prefix: str | None = None) -> list[FileRecord]:
        """Claim up to ``limit`` pending files (new ones, or claims whose lease expired),
        optionally only those whose URI starts with ``prefix``."""
        with self.catalog.db.write(single=True) as con:
            return self._claim(con, worker, utcnow(), limit=limit, lease_s=lease_s,
                               file_ids=file_ids, prefix=prefix)

    @staticmethod
    def _claim(con: Any, worker: str, now: datetime, *, limit: int, lease_s: float,
               file_ids: Sequence[str] | None, prefix: str | None) -> list[FileRecord]:
        where = ("(state = 'discovered' OR (state = 'claimed' AND lease_expires_at < ?))")
        args: list[Any] = [now]
        if file_ids is not None:
            where += " AND file_id IN (SELECT unnest(?))"
            args.append(list(file_ids))
        if prefix is not None:
            where += " AND starts_with(source_uri, ?)"
            args.append(prefix)
        rows = con.execute(
            f"UPDATE files SET state = 'claimed', claimed_by = ?, claimed_at = ?,"
            f" lease_expires_at = ?, attempts = attempts + 1, updated_at = ?"
            f" WHERE file_id IN (SELECT file_id FROM files WHERE {where}"
            f" ORDER BY discovered_at, source_uri LIMIT {int(limit)})"
            f" RETURNING {_COLUMNS}",
            [worker, now, now + timedelta(seconds=lease_s), now, *args]).fetchall()
        return [FileRecord(*r) for r in sorted(rows, key=lambda r: r[1])]

    def claim_batch(self, worker: str, *, limit: int, lease_s: float,
                    run_id: str | None = None, tag: str | None = None, flow: str = "train",
                    expect_run_id: str | None = None, file_ids: Sequence[str] | None = None,
                    prefix: str | None = None,
                    prefect_flow_run_id: str | None = None) -> ClaimedBatch:
        """Resolve the model, claim up to ``limit`` files and open their batch, all in one
        transaction, so a batch's ``started_at`` is never later than the moment its model was
        chosen (a tag removed after that is removed after the batch started).

        The model is ``run_id``, else the newest successful run of ``flow`` carrying ``tag``.
        When it is not ``expect_run_id`` (the model the caller has loaded), nothing is claimed:
        the caller loads the returned ``model_run_id`` and asks again. ``model_run_id`` is None
        when no run carries the tag."""
        with self.catalog.db.write() as con:
            now = utcnow()
            if run_id is None:
                if tag is None:
                    raise ValueError("Give a run id or a tag to choose the model.")
                row = self.catalog._latest_tagged(con, flow, tag, True)
                if row is None:
                    return ClaimedBatch(None, None, [], None)
                run_id = str(row[0])
            if expect_run_id is not None and run_id != expect_run_id:
                return ClaimedBatch(None, run_id, [], None)
            records = self._claim(con, worker, now, limit=limit, lease_s=lease_s,
                                  file_ids=file_ids, prefix=prefix)
            if not records:
                return ClaimedBatch(None, run_id, [], None)
            batch_id = f"batch-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            con.execute("INSERT INTO prediction_batches (batch_id, model_run_id, status,"
                        " started_at, prefect_flow_run_id) VALUES (?, ?, 'running', ?, ?)",
                        [batch_id, run_id, now, prefect_flow_run_id])
        return ClaimedBatch(batch_id, run_id, records, now + timedelta(seconds=lease_s))

    def renew(self, file_ids: Sequence[str], worker: str, *,
              lease_s: float) -> tuple[set[str], datetime]:
        """Extend the leases of files this worker still holds; return the ids still held and
        the new expiry. A file missing from the answer was taken over (its lease expired)."""
        expires = utcnow() + timedelta(seconds=lease_s)
        if not file_ids:
            return set(), expires
        with self.catalog.db.write(single=True) as con:
            rows = con.execute(
                "UPDATE files SET lease_expires_at = ? WHERE file_id IN (SELECT unnest(?))"
                " AND state = 'claimed' AND claimed_by = ? RETURNING file_id",
                [expires, list(file_ids), worker]).fetchall()
        return {r[0] for r in rows}, expires

    def release(self, file_ids: Sequence[str], worker: str, *, reason: str | None = None,
                count_attempt: bool = False) -> int:
        """Give claimed files back as pending (shutdown, no model yet, a transient error)."""
        if not file_ids:
            return 0
        with self.catalog.db.write() as con:
            done = con.execute(
                "UPDATE files SET state = CASE WHEN ? AND attempts >= ? THEN 'failed'"
                " ELSE 'discovered' END,"
                " attempts = CASE WHEN ? THEN attempts ELSE greatest(attempts - 1, 0) END,"
                " error = coalesce(?, error), claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE file_id IN (SELECT unnest(?)) AND state = 'claimed'"
                " AND claimed_by = ? RETURNING file_id",
                [count_attempt, self.max_attempts, count_attempt, reason, utcnow(),
                 list(file_ids), worker]).fetchall()
        return len(done)

    def finish(self, file_id: str, worker: str, *, state: str, error: str | None = None,
               model_run_id: str | None = None, batch_id: str | None = None,
               output_uri: str | None = None, rows: int | None = None) -> bool:
        """Mark a claimed file scored / quarantined / failed. False if the claim was lost."""
        assert state in ("scored", "quarantined", "failed")
        with self.catalog.db.write() as con:
            done = con.execute(
                "UPDATE files SET state = ?, error = ?, model_run_id = ?, batch_id = ?,"
                " output_uri = ?, rows = ?, claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE file_id = ? AND state = 'claimed' AND claimed_by = ?"
                " RETURNING file_id",
                [state, error, model_run_id, batch_id, output_uri, rows, utcnow(), file_id,
                 worker]).fetchall()
        return bool(done)

    def requeue(self, *, uri: str | None = None, model_run_id: str | None = None) -> list[str]:
        """Send scored or quarantined files back to pending on purpose (``batchml reprocess``)."""
        where, args = [], []
        if uri is not None:
            where.append("source_uri = ?")
            args.append(uri)
        if model_run_id is not None:
            where.append("model_run_id = ?")
            args.append(model_run_id)
        if not where:
            raise ValueError("Say which files to reprocess: a URI or a model run.")
        with self.catalog.db.write() as con:
            rows = con.execute(
                "UPDATE files SET state = 'discovered', attempts = 0, claimed_by = NULL,"
                " lease_expires_at = NULL, error = 'reprocess requested', updated_at = ?"
                f" WHERE {' AND '.join(where)} AND state IN ('scored', 'quarantined', 'failed')"
                " RETURNING file_id", [utcnow(), *args]).fetchall()
        return [r[0] for r in rows]

    def has_pending(self, prefix: str | None = None) -> bool:
        """True when some file (under ``prefix``) waits to be claimed: new, or its claim's
        lease expired."""
        with self.catalog.db.read() as con:
            row = con.execute("SELECT EXISTS (SELECT 1 FROM files WHERE (state = 'discovered' OR"
                              " (state = 'claimed' AND lease_expires_at < ?))"
                              " AND starts_with(source_uri, ?))",
                              [utcnow(), prefix or ""]).fetchone()
        return bool(row and row[0])

    def get(self, file_id: str) -> FileRecord | None:
        """One ledger row."""
        with self.catalog.db.read() as con:
            row = con.execute(f"SELECT {_COLUMNS} FROM files WHERE file_id = ?",
                              [file_id]).fetchone()
        return FileRecord(*row) if row else None

    def files(self, state: str | None = None) -> pd.DataFrame:
        """The ``file_status`` view, optionally one state."""
        if state is not None and state not in STATES:
            raise ValueError(f"Unknown state {state!r}; use one of {', '.join(STATES)}.")
        sql = "SELECT * FROM file_status"
        return self.catalog.sql(sql + (" WHERE state = ?" if state else ""),
                                [state] if state else None)

    def counts(self) -> dict[str, int]:
        """Files per state."""
        with self.catalog.db.read() as con:
            rows = con.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall()
        return {s: 0 for s in STATES} | {s: int(n) for s, n in rows}

    # --- batches ---------------------------------------------------------------------------

    def start_batch(self, model_run_id: str | None, *,
                    prefect_flow_run_id: str | None = None) -> str:
        """Open a prediction batch and return its id."""
        batch_id = f"batch-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        with self.catalog.db.write() as con:
            con.execute("INSERT INTO prediction_batches (batch_id, model_run_id, status,"
                        " started_at, prefect_flow_run_id) VALUES (?, ?, 'running', ?, ?)",
                        [batch_id, model_run_id, utcnow(), prefect_flow_run_id])
        return batch_id

    def record_file(self, batch_id: str, outcome: Any, worker: str) -> bool:
        """Record one file's outcome in the batch and move its ledger row, atomically."""
        return bool(self.record_files(batch_id, [outcome], worker))

    def record_files(self, batch_id: str, outcomes: Sequence[Any], worker: str, *,
                     end: Mapping[str, Any] | None = None) -> set[str]:
        """Record the outcomes of several files of a batch in one transaction: each file's
        ledger row moves and its ``batch_files`` row is written only if this worker still holds
        its claim. With ``end`` (``files``, ``rows``, ``duration_ms``, ``error``) the batch is
        closed in the same transaction, its ``files`` and ``rows`` being those recorded before
        this call plus the outcomes this call records. Returns the ids recorded."""
        done: set[str] = set()
        if not outcomes and end is None:
            return done
        now = utcnow()
        with self.catalog.db.write() as con:
            if outcomes:
                o = outcomes
                done = {r[0] for r in con.execute(
                    # numbered: DuckDB 1.5 binds the FROM subquery's parameters first
                    "UPDATE files SET state = v.state, error = v.error,"
                    " model_run_id = v.model_run_id, batch_id = $1, output_uri = v.output_uri,"
                    " rows = v.rows, claimed_by = NULL, lease_expires_at = NULL,"
                    " updated_at = $2 FROM (SELECT unnest($3::VARCHAR[]) AS file_id,"
                    " unnest($4::VARCHAR[]) AS state, unnest($5::VARCHAR[]) AS error,"
                    " unnest($6::VARCHAR[]) AS model_run_id, unnest($7::VARCHAR[]) AS output_uri,"
                    " unnest($8::BIGINT[]) AS rows) v WHERE files.file_id = v.file_id"
                    " AND files.state = 'claimed' AND files.claimed_by = $9"
                    " RETURNING files.file_id",
                    [batch_id, now, [x.file_id for x in o], [x.status for x in o],
                     [x.error for x in o], [x.model_run_id for x in o],
                     [x.output_uri for x in o], [x.rows for x in o], worker]).fetchall()}
                kept = [x for x in o if x.file_id in done]
                if kept:
                    con.execute(
                        "INSERT OR REPLACE INTO batch_files (batch_id, file_id, source_uri,"
                        " model_run_id, status, output_uri, rows, positives, duration_ms, error,"
                        " reprocess, finished_at, truncated_values)"
                        " SELECT ?, unnest(?::VARCHAR[]),"
                        " unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]),"
                        " unnest(?::VARCHAR[]), unnest(?::BIGINT[]), unnest(?::BIGINT[]),"
                        " unnest(?::DOUBLE[]), unnest(?::VARCHAR[]), unnest(?::BOOLEAN[]), ?,"
                        " unnest(?::BIGINT[])",
                        [batch_id, [x.file_id for x in kept], [x.source_uri for x in kept],
                         [x.model_run_id for x in kept], [x.status for x in kept],
                         [x.output_uri for x in kept], [x.rows for x in kept],
                         [x.positives for x in kept], [x.duration_ms for x in kept],
                         [x.error for x in kept], [bool(x.reprocess) for x in kept], now,
                         [int(getattr(x, "truncated", 0) or 0) for x in kept]])
            if end is not None:
                kept = [x for x in outcomes if x.file_id in done]
                self._end_batch(con, batch_id, now, **{
                    **end, "files": end["files"] + len(kept),
                    "rows": end["rows"] + sum(x.rows or 0 for x in kept)})
        return done

    def end_batch(self, batch_id: str, *, files: int, rows: int, duration_ms: float,
                  error: str | None = None) -> None:
        """Close a batch with its totals."""
        with self.catalog.db.write() as con:
            self._end_batch(con, batch_id, utcnow(), files=files, rows=rows,
                            duration_ms=duration_ms, error=error)

    @staticmethod
    def _end_batch(con: Any, batch_id: str, now: datetime, *, files: int, rows: int,
                   duration_ms: float, error: str | None = None) -> None:
        con.execute("UPDATE prediction_batches SET status = ?, ended_at = ?, files = ?,"
                    " rows = ?, duration_ms = ?, error = ? WHERE batch_id = ?",
                    ["failed" if error else "completed", now, files, rows, duration_ms,
                     error, batch_id])

    def record_rejected_event(self, source: str, message_id: str, body: str,
                              error: str) -> None:
        """Keep an unparseable source event in the ledger (quarantined) so it is not lost."""
        ref = FileRef(f"{source}#message={message_id}", etag=message_id)
        now = utcnow()
        with self.catalog.db.write() as con:
            con.execute(
                "INSERT OR IGNORE INTO files (file_id, source_uri, etag, state, attempts, error,"
                " discovered_at, updated_at) VALUES (?, ?, ?, 'quarantined', 0, ?, ?, ?)",
                [ref.file_id, ref.uri, message_id,
                 json.dumps({"error": error, "body": body[:4000]}), now, now])

    def ensure_predictions_view(self, outbox_root: str) -> bool:
        """Create the ``predictions`` view over a local outbox's parquet (once it has files).

        A plain ``duckdb`` session on the catalog can then query predictions with their lineage.
        S3 outboxes are registered per session by ``batchml sql`` instead (no extension needed).
        """
        if "://" in outbox_root:
            return False
        root = str(Path(outbox_root).resolve())
        # Outputs are OUTBOX/<run>/<name>.parquet; `[!.]` skips hidden temp files (a worker's
        # in-flight output), and the root's own glob characters are escaped as classes.
        pattern = (_glob_escape(root) + "/**/[!.]*.parquet").replace("'", "''")
        sql = (f"CREATE OR REPLACE VIEW predictions AS SELECT * FROM read_parquet('{pattern}',"
               " union_by_name = true)")
        with self.catalog.db.read() as con:
            row = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'predictions'"
                              ).fetchone()
        if row and pattern in row[0]:
            return False
        if not any(Path(outbox_root).rglob("*.parquet")):
            return False
        with self.catalog.db.write() as con:
            con.execute(sql)
        return True


def _glob_escape(path: str) -> str:
    """``path`` as a DuckDB glob that matches only itself (``preds[1]`` -> ``preds[[]1[]]``)."""
    return "".join(f"[{ch}]" if ch in "*?[]{}" else ch for ch in path)
