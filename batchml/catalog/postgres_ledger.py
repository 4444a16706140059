"""The PostgreSQL SQL of the file ledger and its batches (part of :class:`.PostgresBackend`).

Claims need no global lock: each claim is one short transaction that locks the rows it takes
with ``FOR UPDATE SKIP LOCKED`` (a file another worker is claiming right now is skipped, not
waited for) and writes the lease into them. A worker that dies keeps its rows until the lease
expires; then any worker takes them over. A connection dropped mid-transaction is rolled back
by the server, so a claim or an outcome is recorded whole or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._db import utcnow
from .duckdb_ledger import _RECENT_BATCHES, batch_id_for
from .records import ClaimedBatch, FileRecord

if TYPE_CHECKING:
    import pandas as pd

    from ._pg import PgConnections
    from .records import FileRef

_COLUMNS = "file_id, source_uri, etag, size, mtime, state, attempts, error, claimed_by"


def frame(cur: Any) -> pd.DataFrame:
    """The rows of an executed psycopg cursor as a DataFrame with its column names."""
    import pandas as pd

    if cur.description is None:
        return pd.DataFrame()
    return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


class PostgresLedger:
    """The ledger and batch methods of :class:`~batchml.catalog.backend.CatalogBackend` over
    PostgreSQL; :class:`.PostgresBackend` mixes them in."""

    pg: PgConnections

    def _latest_tagged(self, con: Any, flow: str, tag: str, successful: bool) -> Any:
        raise NotImplementedError  # the runs half of the backend provides it

    if TYPE_CHECKING:  # the registry half (registry_sql.RegistrySQL) provides these
        def _choose_registered(self, con: Any, name: str | None, alias: str | None,
                               version: int | None) -> tuple[str, int, str, str | None] | None:
            ...

        def _registered_as(self, con: Any, run_id: str) -> tuple[str, int] | None: ...

    def discover(self, refs: Sequence[FileRef]) -> list[str]:
        rows = {r.file_id: r for r in refs}
        if not rows:
            return []
        with self.pg.read() as con:
            known = {r[0] for r in con.execute(
                "SELECT file_id FROM files WHERE file_id = ANY(%s)", [list(rows)]).fetchall()}
        new = [r for fid, r in rows.items() if fid not in known]
        if not new:
            return []
        now = utcnow()
        with self.pg.write() as con:
            # another host may have recorded some in between: those are not new
            added = {r[0] for r in con.execute(
                "INSERT INTO files (file_id, source_uri, etag, size, mtime, state,"
                " discovered_at, updated_at) SELECT i, u, e, s, m, 'discovered', %s, %s"
                " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[],"
                " %s::timestamptz[]) AS v(i, u, e, s, m)"
                " ON CONFLICT (file_id) DO NOTHING RETURNING file_id",
                [now, now, [r.file_id for r in new], [r.uri for r in new],
                 [r.etag for r in new], [r.size for r in new], [r.mtime for r in new]]
            ).fetchall()}
        return [r.file_id for r in new if r.file_id in added]

    def claim(self, worker: str, *, limit: int, lease_s: float,
              file_ids: Sequence[str] | None = None,
              prefix: str | None = None) -> list[FileRecord]:
        with self.pg.write() as con:
            return self._claim(con, worker, utcnow(), limit=limit, lease_s=lease_s,
                               file_ids=file_ids, prefix=prefix)

    @staticmethod
    def _claim(con: Any, worker: str, now: datetime, *, limit: int, lease_s: float,
               file_ids: Sequence[str] | None, prefix: str | None) -> list[FileRecord]:
        where = "(state = 'discovered' OR (state = 'claimed' AND lease_expires_at < %s))"
        args: list[Any] = [now]
        if file_ids is not None:
            where += " AND file_id = ANY(%s)"
            args.append(list(file_ids))
        if prefix is not None:
            where += " AND starts_with(source_uri, %s)"
            args.append(prefix)
        rows = con.execute(
            f"WITH taken AS (SELECT file_id FROM files WHERE {where}"
            f" ORDER BY discovered_at, source_uri LIMIT {int(limit)} FOR UPDATE SKIP LOCKED)"
            " UPDATE files f SET state = 'claimed', claimed_by = %s, claimed_at = %s,"
            " lease_expires_at = %s, attempts = f.attempts + 1, updated_at = %s"
            f" FROM taken WHERE f.file_id = taken.file_id RETURNING"
            f" {', '.join('f.' + c.strip() for c in _COLUMNS.split(','))}",
            [*args, worker, now, now + timedelta(seconds=lease_s), now]).fetchall()
        return [FileRecord(*r) for r in sorted(rows, key=lambda r: r[1])]

    def claim_batch(self, worker: str, *, limit: int, lease_s: float, run_id: str | None,
                    tag: str | None, flow: str, expect_run_id: str | None,
                    file_ids: Sequence[str] | None, prefix: str | None,
                    prefect_flow_run_id: str | None, registered: str | None = None,
                    alias: str | None = None, version: int | None = None) -> ClaimedBatch:
        with self.pg.write() as con:
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
                        " VALUES (%s, %s, 'running', %s, %s, %s, %s, %s, %s, %s)",
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
            "UPDATE prediction_batches SET status = 'failed', ended_at = %s, error = 'abandoned:"
            " its worker ' || coalesce(worker, '?') || ' stopped renewing its lease (killed, or"
            " cut off from the catalog); its files went back to the queue'"
            " WHERE status = 'running' AND worker IS NOT NULL AND (lease_expires_at < %s"
            " OR NOT EXISTS (SELECT 1 FROM files f WHERE f.state = 'claimed'"
            " AND f.claimed_by = prediction_batches.worker))", [now, now])

    def renew(self, file_ids: Sequence[str], worker: str, *,
              lease_s: float) -> tuple[set[str], datetime]:
        expires = utcnow() + timedelta(seconds=lease_s)
        if not file_ids:
            return set(), expires
        with self.pg.write() as con:
            rows = con.execute(
                "UPDATE files SET lease_expires_at = %s WHERE file_id = ANY(%s)"
                " AND state = 'claimed' AND claimed_by = %s RETURNING file_id",
                [expires, list(file_ids), worker]).fetchall()
            con.execute("UPDATE prediction_batches SET lease_expires_at = %s"
                        " WHERE worker = %s AND status = 'running'", [expires, worker])
        return {r[0] for r in rows}, expires

    def release(self, file_ids: Sequence[str], worker: str, *, reason: str | None,
                count_attempt: bool, max_attempts: int) -> int:
        if not file_ids:
            return 0
        with self.pg.write() as con:
            done = con.execute(
                "UPDATE files SET state = CASE WHEN %s AND attempts >= %s THEN 'failed'"
                " ELSE 'discovered' END,"
                " attempts = CASE WHEN %s THEN attempts ELSE greatest(attempts - 1, 0) END,"
                " error = coalesce(%s, error), claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = %s WHERE file_id = ANY(%s) AND state = 'claimed'"
                " AND claimed_by = %s RETURNING file_id",
                [count_attempt, max_attempts, count_attempt, reason, utcnow(),
                 list(file_ids), worker]).fetchall()
        return len(done)

    def finish_file(self, file_id: str, worker: str, *, state: str, error: str | None,
                    model_run_id: str | None, batch_id: str | None, output_uri: str | None,
                    rows: int | None) -> bool:
        with self.pg.write() as con:
            done = con.execute(
                "UPDATE files SET state = %s, error = %s, model_run_id = %s, batch_id = %s,"
                " output_uri = %s, rows = %s, claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = %s WHERE file_id = %s AND state = 'claimed' AND claimed_by = %s"
                " RETURNING file_id",
                [state, error, model_run_id, batch_id, output_uri, rows, utcnow(), file_id,
                 worker]).fetchall()
        return bool(done)

    def requeue(self, *, uri: str | None, model_run_id: str | None) -> list[str]:
        where, args = [], []
        if uri is not None:
            where.append("source_uri = %s")
            args.append(uri)
        if model_run_id is not None:
            where.append("model_run_id = %s")
            args.append(model_run_id)
        if not where:
            raise ValueError("Say which files to reprocess: a URI or a model run.")
        with self.pg.write() as con:
            rows = con.execute(
                "UPDATE files SET state = 'discovered', attempts = 0, claimed_by = NULL,"
                " lease_expires_at = NULL, error = 'reprocess requested', updated_at = %s"
                f" WHERE {' AND '.join(where)} AND state IN ('scored', 'quarantined', 'failed')"
                " RETURNING file_id", [utcnow(), *args]).fetchall()
        return [r[0] for r in rows]

    def has_pending(self, prefix: str | None = None) -> bool:
        with self.pg.read() as con:
            row = con.execute(
                "SELECT EXISTS (SELECT 1 FROM files WHERE (state = 'discovered' OR"
                " (state = 'claimed' AND lease_expires_at < %s))"
                " AND starts_with(source_uri, %s))", [utcnow(), prefix or ""]).fetchone()
        return bool(row and row[0])

    def get_file(self, file_id: str) -> FileRecord | None:
        with self.pg.read() as con:
            row = con.execute(f"SELECT {_COLUMNS} FROM files WHERE file_id = %s",
                              [file_id]).fetchone()
        return FileRecord(*row) if row else None

    def files(self, state: str | None = None, *, limit: int | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM file_status" + (" WHERE state = %s" if state else "")
        args: list[Any] = [state] if state else []
        if limit is not None:
            sql += " ORDER BY updated_at DESC, file_id LIMIT %s"
            args.append(int(limit))
        with self.pg.read() as con:
            return frame(con.execute(sql, args or None))

    def file_counts(self) -> dict[str, int]:
        with self.pg.read() as con:
            rows = con.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall()
        return {s: int(n) for s, n in rows}

    def record_rejected_event(self, ref: FileRef, payload: str) -> None:
        now = utcnow()
        with self.pg.write() as con:
            con.execute(
                "INSERT INTO files (file_id, source_uri, etag, state, attempts, error,"
                " discovered_at, updated_at) VALUES (%s, %s, %s, 'quarantined', 0, %s, %s, %s)"
                " ON CONFLICT (file_id) DO NOTHING",
                [ref.file_id, ref.uri, ref.etag, payload, now, now])

    def has_predictions_view(self, query: str) -> bool:
        return True  # outputs are parquet: DuckDB reads them (batchml sql --duckdb-init)

    def create_predictions_view(self, query: str) -> None:
        return None

    # --- batches -----------------------------------------------------------------------------

    def start_batch(self, model_run_id: str | None, *,
                    prefect_flow_run_id: str | None = None) -> str:
        now = utcnow()
        batch_id = batch_id_for(now)
        with self.pg.write() as con:
            con.execute("INSERT INTO prediction_batches (batch_id, model_run_id, status,"
                        " started_at, prefect_flow_run_id) VALUES (%s, %s, 'running', %s, %s)",
                        [batch_id, model_run_id, now, prefect_flow_run_id])
        return batch_id

    def record_files(self, batch_id: str, outcomes: Sequence[Any], worker: str, *,
                     end: Mapping[str, Any] | None = None) -> set[str]:
        done: set[str] = set()
        if not outcomes and end is None:
            return done
        now = utcnow()
        o = list(outcomes)
        with self.pg.write() as con:
            if o:
                done = {r[0] for r in con.execute(
                    "UPDATE files SET state = v.state, error = v.error,"
                    " model_run_id = v.model_run_id, batch_id = %s, output_uri = v.output_uri,"
                    " rows = v.rows, claimed_by = NULL, lease_expires_at = NULL,"
                    " updated_at = %s FROM unnest(%s::text[], %s::text[], %s::text[],"
                    " %s::text[], %s::text[], %s::bigint[])"
                    " AS v(file_id, state, error, model_run_id, output_uri, rows)"
                    " WHERE files.file_id = v.file_id AND files.state = 'claimed'"
                    " AND files.claimed_by = %s RETURNING files.file_id",
                    [batch_id, now, [x.file_id for x in o], [x.status for x in o],
                     [x.error for x in o], [x.model_run_id for x in o],
                     [x.output_uri for x in o], [x.rows for x in o], worker]).fetchall()}
                kept = [x for x in o if x.file_id in done]
                if kept:
                    con.execute(
                        "INSERT INTO batch_files (batch_id, file_id, source_uri, model_run_id,"
                        " status, output_uri, rows, positives, duration_ms, error, reprocess,"
                        " finished_at, truncated_values)"
                        " SELECT %s, f, u, m, s, o, r, p, d, e, x, %s, t"
                        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
                        " %s::text[], %s::bigint[], %s::bigint[], %s::float8[], %s::text[],"
                        " %s::boolean[], %s::bigint[]) AS v(f, u, m, s, o, r, p, d, e, x, t)"
                        " ON CONFLICT (batch_id, file_id) DO UPDATE SET"
                        " source_uri = EXCLUDED.source_uri, model_run_id = EXCLUDED.model_run_id,"
                        " status = EXCLUDED.status, output_uri = EXCLUDED.output_uri,"
                        " rows = EXCLUDED.rows, positives = EXCLUDED.positives,"
                        " duration_ms = EXCLUDED.duration_ms, error = EXCLUDED.error,"
                        " reprocess = EXCLUDED.reprocess, finished_at = EXCLUDED.finished_at,"
                        " truncated_values = EXCLUDED.truncated_values",
                        [batch_id, now, [x.file_id for x in kept], [x.source_uri for x in kept],
                         [x.model_run_id for x in kept], [x.status for x in kept],
                         [x.output_uri for x in kept], [x.rows for x in kept],
                         [x.positives for x in kept], [x.duration_ms for x in kept],
                         [x.error for x in kept], [bool(x.reprocess) for x in kept],
                         [int(getattr(x, "truncated", 0) or 0) for x in kept]])
            if end is not None:
                kept = [x for x in o if x.file_id in done]
                self._end_batch(con, batch_id, now, **{
                    **end, "files": end["files"] + len(kept),
                    "rows": end["rows"] + sum(x.rows or 0 for x in kept)})
        return done

    def end_batch(self, batch_id: str, *, files: int, rows: int, duration_ms: float,
                  error: str | None = None) -> None:
        with self.pg.write() as con:
            self._end_batch(con, batch_id, utcnow(), files=files, rows=rows,
                            duration_ms=duration_ms, error=error)

    @staticmethod
    def _end_batch(con: Any, batch_id: str, now: datetime, *, files: int, rows: int,
                   duration_ms: float, error: str | None = None,
                   params: str | None = None) -> None:
        con.execute("UPDATE prediction_batches SET status = %s, ended_at = %s, files = %s,"
                    " rows = %s, duration_ms = %s, error = %s, params = coalesce(%s, params)"
                    " WHERE batch_id = %s",
                    ["failed" if error else "completed", now, files, rows, duration_ms,
                     error, params, batch_id])

    def recent_batches(self, limit: int) -> pd.DataFrame:
        with self.pg.read() as con:
            return frame(con.execute(_RECENT_BATCHES, [int(limit)]))

    def scored_by_hour(self, since: datetime) -> pd.DataFrame:
        with self.pg.read() as con:
            return frame(con.execute(
                "SELECT to_timestamp(floor(extract(epoch FROM finished_at) / 3600) * 3600)"
                " AS hour, count(*) AS files, sum(rows) AS rows, sum(positives) AS positives"
                " FROM batch_files WHERE status = 'scored' AND finished_at >= %s"
                " GROUP BY 1 ORDER BY 1", [since]))

    def recent_file_errors(self, window_s: float = 3600) -> dict[str, int]:
        with self.pg.read() as con:
            row = con.execute(
                "SELECT count(*) FILTER (WHERE status = 'failed'),"
                " count(*) FILTER (WHERE status = 'quarantined') FROM batch_files"
                " WHERE finished_at > now() - make_interval(secs => %s)",
                [float(window_s)]).fetchone()
        failed, quarantined = row if row else (0, 0)
        return {"failed": int(failed), "quarantined": int(quarantined)}
