"""The DuckDB SQL of the file ledger and its batches (part of :class:`.DuckDBBackend`).

Claims are taken inside one exclusive catalog transaction (the write lock of :mod:`._db`), so
two workers never hold the same file at once; a worker's outcomes are recorded only for the
files whose claim it still holds.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._db import utcnow
from .records import ClaimedBatch, FileRecord

if TYPE_CHECKING:
    import pandas as pd

    from ._db import Database
    from .records import FileRef

_COLUMNS = "file_id, source_uri, etag, size, mtime, state, attempts, error, claimed_by"


# the newest batches with their files' outcomes (both dialects: %s placeholders)
_RECENT_BATCHES = (
    "SELECT b.batch_id, b.model_run_id, b.status, b.started_at, b.ended_at, b.files, b.rows,"
    " b.duration_ms, b.error, b.params,"
    " count(f.file_id) FILTER (WHERE f.status = 'scored') AS scored,"
    " count(f.file_id) FILTER (WHERE f.status = 'quarantined') AS quarantined,"
    " count(f.file_id) FILTER (WHERE f.status = 'failed') AS failed,"
    " sum(f.positives) AS positives"
    " FROM (SELECT * FROM prediction_batches ORDER BY started_at DESC, batch_id LIMIT %s) b"
    " LEFT JOIN batch_files f ON f.batch_id = b.batch_id"
    " GROUP BY b.batch_id, b.model_run_id, b.status, b.started_at, b.ended_at, b.files,"
    " b.rows, b.duration_ms, b.error, b.params ORDER BY b.started_at DESC, b.batch_id")


def batch_id_for(now: datetime) -> str:
    """A new batch id, readable and unique: ``batch-<UTC time>-<random>``."""
    return f"batch-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


class DuckDBLedger:
    """The ledger and batch methods of :class:`~batchml.catalog.backend.CatalogBackend` over
    DuckDB; :class:`.DuckDBBackend` mixes them in."""

    db: Database

    def _latest_tagged(self, con: Any, flow: str, tag: str, successful: bool) -> Any:
        raise NotImplementedError  # the runs half of the backend provides it

    if TYPE_CHECKING:  # the registry half (registry_sql.RegistrySQL) provides these
        def _choose_registered(self, con: Any, name: str | None, alias: str | None,
                               version: int | None) -> tuple[str, int, str, str | None] | None:
            ...

        def _registered_as(self, con: Any, run_id: str) -> tuple[str, int] | None: ...

    def discover(self, refs: Sequence[FileRef]) -> list[str]:
        """Reads first: a poll that finds only known files costs one shared read, no write."""
        rows = {r.file_id: r for r in refs}
        if not rows:
            return []
        with self.db.read() as con:
            known = {r[0] for r in con.execute(
                "SELECT file_id FROM files WHERE file_id IN (SELECT unnest(?))",
                [list(rows)]).fetchall()}
        new = [r for fid, r in rows.items() if fid not in known]
        if not new:
            return []
        now = utcnow()
        with self.db.write(single=True) as con:
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
        with self.db.write(single=True) as con:
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

    def claim_batch(self, worker: str, *, limit: int, lease_s: float, run_id: str | None,
                    tag: str | None, flow: str, expect_run_id: str | None,
                    file_ids: Sequence[str] | None, prefix: str | None,
                    prefect_flow_run_id: str | None, registered: str | None = None,
                    alias: str | None = None, version: int | None = None) -> ClaimedBatch:
        with self.db.write() as con:
            now = utcnow()
            chosen = self._choose_registered(con, registered, alias, version)
            if registered is not None:
                if chosen is None:
                    return ClaimedBatch(None, None, [], None)
                run_id = chosen[2]
            elif run_id is None:
                if tag is None:
                    raise ValueError("Give a run id or a tag to choose the model.")
                row = self._latest_tagged(con, flow, tag, True)
                if row is None:
                    return ClaimedBatch(None, None, [], None)
                run_id = str(row[0])
            if expect_run_id is not None and run_id != expect_run_id:
                return ClaimedBatch(None, run_id, [], None)
            self._close_abandoned_batches(con, now)
            records = self._claim(con, worker, now, limit=limit, lease_s=lease_s,
                                  file_ids=file_ids, prefix=prefix)
            if not records:
                return ClaimedBatch(None, run_id, [], None)
            batch_id = batch_id_for(now)
            if chosen is None:  # a run named by id or tag: its registered version, if any
                known = self._registered_as(con, run_id)
                chosen = (known[0], known[1], run_id, None) if known else None
            name, number, _, via = chosen or (None, None, None, None)
            con.execute("INSERT INTO prediction_batches (batch_id, model_run_id, status,"
                        " started_at, prefect_flow_run_id, worker, lease_expires_at,"
                        " model_name, model_version, model_alias)"
                        " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                        [batch_id, run_id, now, prefect_flow_run_id, worker,
                         now + timedelta(seconds=lease_s), name, number, via])
        return ClaimedBatch(batch_id, run_id, records, now + timedelta(seconds=lease_s),
                            model_name=name, model_version=number, model_alias=via)

    @staticmethod
    def _close_abandoned_batches(con: Any, now: datetime) -> None:
        """Close as failed the running batches whose worker stopped renewing their lease, or
        whose worker holds none of its files any more (it died or lost the catalog between
        its last outcome and the batch's end). A live worker that records the end later
        overwrites this."""
        con.execute(
            "UPDATE prediction_batches SET status = 'failed', ended_at = ?, error = 'abandoned:"
            " its worker ' || coalesce(worker, '?') || ' stopped renewing its lease (killed, or"
            " cut off from the catalog); its files went back to the queue'"
            " WHERE status = 'running' AND worker IS NOT NULL AND (lease_expires_at < ?"
            " OR NOT EXISTS (SELECT 1 FROM files f WHERE f.state = 'claimed'"
            " AND f.claimed_by = prediction_batches.worker))", [now, now])

    def renew(self, file_ids: Sequence[str], worker: str, *,
              lease_s: float) -> tuple[set[str], datetime]:
        expires = utcnow() + timedelta(seconds=lease_s)
        if not file_ids:
            return set(), expires
        with self.db.write(single=True) as con:
            rows = con.execute(
                "UPDATE files SET lease_expires_at = ? WHERE file_id IN (SELECT unnest(?))"
                " AND state = 'claimed' AND claimed_by = ? RETURNING file_id",
                [expires, list(file_ids), worker]).fetchall()
            con.execute("UPDATE prediction_batches SET lease_expires_at = ?"
                        " WHERE worker = ? AND status = 'running'", [expires, worker])
        return {r[0] for r in rows}, expires

    def release(self, file_ids: Sequence[str], worker: str, *, reason: str | None,
                count_attempt: bool, max_attempts: int) -> int:
        if not file_ids:
            return 0
        with self.db.write() as con:
            done = con.execute(
                "UPDATE files SET state = CASE WHEN ? AND attempts >= ? THEN 'failed'"
                " ELSE 'discovered' END,"
                " attempts = CASE WHEN ? THEN attempts ELSE greatest(attempts - 1, 0) END,"
                " error = coalesce(?, error), claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE file_id IN (SELECT unnest(?)) AND state = 'claimed'"
                " AND claimed_by = ? RETURNING file_id",
                [count_attempt, max_attempts, count_attempt, reason, utcnow(),
                 list(file_ids), worker]).fetchall()
        return len(done)

    def finish_file(self, file_id: str, worker: str, *, state: str, error: str | None,
                    model_run_id: str | None, batch_id: str | None, output_uri: str | None,
                    rows: int | None) -> bool:
        with self.db.write() as con:
            done = con.execute(
                "UPDATE files SET state = ?, error = ?, model_run_id = ?, batch_id = ?,"
                " output_uri = ?, rows = ?, claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE file_id = ? AND state = 'claimed' AND claimed_by = ?"
                " RETURNING file_id",
                [state, error, model_run_id, batch_id, output_uri, rows, utcnow(), file_id,
                 worker]).fetchall()
        return bool(done)

    def requeue(self, *, uri: str | None, model_run_id: str | None) -> list[str]:
        where, args = [], []
        if uri is not None:
            where.append("source_uri = ?")
            args.append(uri)
        if model_run_id is not None:
            where.append("model_run_id = ?")
            args.append(model_run_id)
        if not where:
            raise ValueError("Say which files to reprocess: a URI or a model run.")
        with self.db.write() as con:
            rows = con.execute(
                "UPDATE files SET state = 'discovered', attempts = 0, claimed_by = NULL,"
                " lease_expires_at = NULL, error = 'reprocess requested', updated_at = ?"
                f" WHERE {' AND '.join(where)} AND state IN ('scored', 'quarantined', 'failed')"
                " RETURNING file_id", [utcnow(), *args]).fetchall()
        return [r[0] for r in rows]

    def has_pending(self, prefix: str | None = None) -> bool:
        with self.db.read() as con:
            row = con.execute("SELECT EXISTS (SELECT 1 FROM files WHERE (state = 'discovered' OR"
                              " (state = 'claimed' AND lease_expires_at < ?))"
                              " AND starts_with(source_uri, ?))",
                              [utcnow(), prefix or ""]).fetchone()
        return bool(row and row[0])

    def get_file(self, file_id: str) -> FileRecord | None:
        with self.db.read() as con:
            row = con.execute(f"SELECT {_COLUMNS} FROM files WHERE file_id = ?",
                              [file_id]).fetchone()
        return FileRecord(*row) if row else None

    def files(self, state: str | None = None, *, limit: int | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM file_status" + (" WHERE state = ?" if state else "")
        args: list[Any] = [state] if state else []
        if limit is not None:
            sql += " ORDER BY updated_at DESC, file_id LIMIT ?"
            args.append(int(limit))
        with self.db.read(read_only=True) as con:
            return con.execute(sql, args or None).df()

    def file_counts(self) -> dict[str, int]:
        with self.db.read() as con:
            rows = con.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall()
        return {s: int(n) for s, n in rows}

    def record_rejected_event(self, ref: FileRef, payload: str) -> None:
        now = utcnow()
        with self.db.write() as con:
            con.execute(
                "INSERT OR IGNORE INTO files (file_id, source_uri, etag, state, attempts, error,"
                " discovered_at, updated_at) VALUES (?, ?, ?, 'quarantined', 0, ?, ?, ?)",
                [ref.file_id, ref.uri, ref.etag, payload, now, now])

    def has_predictions_view(self, query: str) -> bool:
        with self.db.read() as con:
            row = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'predictions'"
                              ).fetchone()
        # the view of current outputs only (superseded_outputs, migration 0010); DuckDB keeps
        # the view's SQL rewritten (CAST('t' AS BOOLEAN), struct_pack(...)): the same view reads
        # the same globs (flat, hive or both: each its own literal)
        return (row is not None and "superseded_outputs" in row[0]
                and _paths(row[0]) == _paths(query))

    def create_predictions_view(self, query: str) -> None:
        """``predictions``: the rows of each input's current output (an output a backfill
        superseded is left out); ``predictions_history``: the rows of every output. ``query``
        reads the outputs with their path in the column ``batchml_output_file``
        (:func:`~batchml.catalog.duckdb_init.predictions_select` with ``file_column``)."""
        from .duckdb_init import OUTPUT_FILE_COLUMN as col

        with self.db.write() as con:
            con.execute(f"CREATE OR REPLACE VIEW predictions AS SELECT * EXCLUDE ({col}) FROM"
                        f" ({query}) WHERE regexp_extract({col}, '[^/]+/[^/]+$') NOT IN"
                        f" (SELECT output_key FROM superseded_outputs)")
            con.execute(f"CREATE OR REPLACE VIEW predictions_history AS SELECT * EXCLUDE"
                        f" ({col}) FROM ({query})")

    # --- batches -----------------------------------------------------------------------------

    def start_batch(self, model_run_id: str | None, *,
                    prefect_flow_run_id: str | None = None) -> str:
        batch_id = batch_id_for(utcnow())
        with self.db.write() as con:
            con.execute("INSERT INTO prediction_batches (batch_id, model_run_id, status,"
                        " started_at, prefect_flow_run_id) VALUES (?, ?, 'running', ?, ?)",
                        [batch_id, model_run_id, utcnow(), prefect_flow_run_id])
        return batch_id

    def record_files(self, batch_id: str, outcomes: Sequence[Any], worker: str, *,
                     end: Mapping[str, Any] | None = None) -> set[str]:
        done: set[str] = set()
        if not outcomes and end is None:
            return done
        now = utcnow()
        with self.db.write() as con:
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
        with self.db.write() as con:
            self._end_batch(con, batch_id, utcnow(), files=files, rows=rows,
                            duration_ms=duration_ms, error=error)

    @staticmethod
    def _end_batch(con: Any, batch_id: str, now: datetime, *, files: int, rows: int,
                   duration_ms: float, error: str | None = None,
                   params: str | None = None) -> None:
        con.execute("UPDATE prediction_batches SET status = ?, ended_at = ?, files = ?,"
                    " rows = ?, duration_ms = ?, error = ?, params = coalesce(?, params)"
                    " WHERE batch_id = ?",
                    ["failed" if error else "completed", now, files, rows, duration_ms,
                     error, params, batch_id])

    def recent_batches(self, limit: int) -> pd.DataFrame:
        with self.db.read(read_only=True) as con:
            return con.execute(_RECENT_BATCHES.replace("%s", "?"), [int(limit)]).df()

    def scored_by_hour(self, since: datetime) -> pd.DataFrame:
        with self.db.read(read_only=True) as con:
            return con.execute(
                "SELECT to_timestamp(floor(epoch(finished_at) / 3600) * 3600) AS hour,"
                " count(*) AS files, sum(rows) AS rows, sum(positives) AS positives"
                " FROM batch_files WHERE status = 'scored' AND finished_at >= ?"
                " GROUP BY 1 ORDER BY 1", [since]).df()

    def recent_file_errors(self, window_s: float = 3600) -> dict[str, int]:
        with self.db.read() as con:
            row = con.execute(
                "SELECT count(*) FILTER (status = 'failed') AS failed,"
                " count(*) FILTER (status = 'quarantined') AS quarantined FROM batch_files"
                " WHERE finished_at > now() - to_seconds(?)", [float(window_s)]).fetchone()
        failed, quarantined = row if row else (0, 0)
        return {"failed": int(failed), "quarantined": int(quarantined)}


_LITERAL = re.compile(r"'(?:[^']|'')*'")


def _paths(sql: str) -> set[str]:
    """The string literals of ``sql`` that hold a path or a pattern of one (a ``/``)."""
    return {lit for lit in _LITERAL.findall(sql) if "/" in lit}
