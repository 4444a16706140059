"""The SQL of backfills, shared by both backends (the statements are the same in both
dialects; each backend says how to open a transaction, how to write placeholders and how to
lock rows).

A backfill is a row of ``backfills`` and one ``backfill_files`` row per input it scores again.
Those rows are claimed like the ledger's files, with leases, so each input is scored exactly
once under its backfill: a killed process's claims expire and whoever runs the backfill next
takes them over. One backfill may be unfinished per (model reference, window, source): its
``running_key`` is unique while it runs, so the same ask resumes it instead of starting twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ._db import utcnow
from .records import FileRecord
from .registry_sql import DialectSQL

_BACKFILL_COLS = ("backfill_id", "model_ref", "model_run_id", "model_name", "model_version",
                  "since", "until", "source", "status", "files", "scored", "missing",
                  "quarantined", "failed", "rows", "created_at", "created_by", "updated_at",
                  "finished_at")
_FILE_COLS = "file_id, source_uri, etag, size, mtime, state, attempts, error, claimed_by"
_OUTCOMES = ("scored", "missing", "quarantined", "failed")


def backfill_id_for(now: datetime) -> str:
    """A new backfill id, readable and unique: ``bf-<UTC time>-<random>``."""
    return f"bf-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class BackfillSQL(DialectSQL):
    """The backfill half of a backend (mixed into the backend class)."""

    def start_backfill(self, *, model_ref: str, model_run_id: str, model_name: str | None,
                       model_version: int | None, since: datetime, until: datetime | None,
                       source: str, created_by: str) -> tuple[str, bool]:
        now = utcnow()
        key = " | ".join([model_ref, since.isoformat(), until.isoformat() if until else "",
                         source])
        with self._registry_write() as con:
            new_id = backfill_id_for(now)
            made = self._x(
                con, "INSERT INTO backfills (backfill_id, model_ref, model_run_id, model_name,"
                     " model_version, since, until, source, status, running_key, created_at,"
                     " created_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?,"
                     " ?, ?) ON CONFLICT (running_key) DO NOTHING RETURNING backfill_id",
                [new_id, model_ref, model_run_id, model_name, model_version, since, until,
                 source, key, now, created_by, now]).fetchall()
            if not made:  # the same ask is unfinished: resume it
                row = self._x(con, "SELECT backfill_id FROM backfills WHERE running_key = ?",
                               [key]).fetchone()
                return str(row[0]), False
            where = "f.state = 'scored' AND f.discovered_at >= ?"
            args: list[Any] = [since]
            if until is not None:
                where += " AND f.discovered_at < ?"
                args.append(until)
            if source:
                where += " AND starts_with(f.source_uri, ?)"
                args.append(source)
            self._x(con, "INSERT INTO backfill_files (backfill_id, file_id, source_uri, etag,"
                          " size, mtime, state, updated_at) SELECT ?, f.file_id, f.source_uri,"
                          " f.etag, f.size, f.mtime, 'pending', ? FROM files f"
                          f" WHERE {where}", [new_id, now, *args])
            self._backfill_counts(con, new_id, now)
        return new_id, True

    def backfills(self, backfill_id: str | None = None) -> list[dict[str, Any]]:
        where = " WHERE backfill_id = ?" if backfill_id is not None else ""
        with self._registry_read() as con:
            rows = self._x(con, f"SELECT {', '.join(_BACKFILL_COLS)} FROM backfills{where}"
                                 " ORDER BY created_at DESC, backfill_id",
                            [backfill_id] if backfill_id is not None else []).fetchall()
        return [dict(zip(_BACKFILL_COLS, r, strict=True)) for r in rows]

    def backfill_files(self, backfill_id: str) -> list[dict[str, Any]]:
        cols = ("file_id", "source_uri", "state", "attempts", "error", "claimed_by",
                "lease_expires_at", "batch_id", "output_uri", "rows")
        with self._registry_read() as con:
            rows = self._x(con, f"SELECT {', '.join(cols)} FROM backfill_files"
                                 " WHERE backfill_id = ? ORDER BY source_uri, file_id",
                            [backfill_id]).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def claim_backfill(self, backfill_id: str, worker: str, *, limit: int, lease_s: float,
                       model_run_id: str, prefect_flow_run_id: str | None
                       ) -> tuple[str | None, list[FileRecord], datetime]:
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        lock = f"{self._for_update} SKIP LOCKED" if self._for_update else ""
        with self._registry_write() as con:
            # batches of this backfill whose process stopped renewing (killed) are closed
            self._x(con, "UPDATE prediction_batches SET status = 'failed', ended_at = ?,"
                          " error = 'abandoned: its backfill process stopped renewing its"
                          " lease (killed, or cut off from the catalog); its files went back"
                          " to the backfill' WHERE backfill_id = ? AND status = 'running'"
                          " AND lease_expires_at < ?", [now, backfill_id, now])
            rows = self._x(
                con, "UPDATE backfill_files SET state = 'claimed', claimed_by = ?,"
                     " lease_expires_at = ?, attempts = attempts + 1, updated_at = ?"
                     " WHERE backfill_id = ? AND file_id IN (SELECT file_id FROM backfill_files"
                     " WHERE backfill_id = ? AND (state = 'pending' OR (state = 'claimed' AND"
                     f" lease_expires_at < ?)) ORDER BY source_uri, file_id LIMIT {int(limit)}"
                     f"{lock}) RETURNING {_FILE_COLS}",
                [worker, expires, now, backfill_id, backfill_id, now]).fetchall()
            if not rows:
                return None, [], expires
            batch_id = f"batch-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            # no worker on the row: the ledger's claims close their own abandoned batches only
            self._x(con, "INSERT INTO prediction_batches (batch_id, model_run_id, status,"
                          " started_at, prefect_flow_run_id, lease_expires_at, backfill_id,"
                          " model_name, model_version) SELECT ?, model_run_id, 'running', ?, ?,"
                          " ?, backfill_id, model_name, model_version FROM backfills"
                          " WHERE backfill_id = ?",
                     [batch_id, now, prefect_flow_run_id, expires, backfill_id])
        records = [FileRecord(*r) for r in sorted(rows, key=lambda r: (r[1], r[0]))]
        return batch_id, records, expires

    def renew_backfill(self, backfill_id: str, batch_id: str, worker: str, *,
                       lease_s: float) -> tuple[set[str], datetime]:
        expires = utcnow() + timedelta(seconds=lease_s)
        with self._registry_write() as con:
            rows = self._x(con, "UPDATE backfill_files SET lease_expires_at = ?"
                                 " WHERE backfill_id = ? AND state = 'claimed'"
                                 " AND claimed_by = ? RETURNING file_id",
                            [expires, backfill_id, worker]).fetchall()
            self._x(con, "UPDATE prediction_batches SET lease_expires_at = ?"
                          " WHERE batch_id = ? AND status = 'running'", [expires, batch_id])
        return {str(r[0]) for r in rows}, expires

    def release_backfill(self, backfill_id: str, file_ids: Sequence[str], worker: str,
                         reason: str | None) -> int:
        done = 0
        with self._registry_write() as con:
            for file_id in file_ids:
                done += len(self._x(
                    con, "UPDATE backfill_files SET state = 'pending', claimed_by = NULL,"
                         " lease_expires_at = NULL, attempts = greatest(attempts - 1, 0),"
                         " error = coalesce(?, error), updated_at = ? WHERE backfill_id = ?"
                         " AND file_id = ? AND state = 'claimed' AND claimed_by = ?"
                         " RETURNING file_id",
                    [reason, utcnow(), backfill_id, file_id, worker]).fetchall())
        return done

    def record_backfill(self, backfill_id: str, batch_id: str, outcomes: Sequence[Any],
                        worker: str, *, end: Mapping[str, Any] | None = None) -> set[str]:
        now = utcnow()
        done: set[str] = set()
        with self._registry_write() as con:
            for o in outcomes:
                state = o.status
                assert state in _OUTCOMES, state
                held = self._x(
                    con, "UPDATE backfill_files SET state = ?, error = ?, batch_id = ?,"
                         " output_uri = ?, rows = ?, claimed_by = NULL,"
                         " lease_expires_at = NULL, updated_at = ? WHERE backfill_id = ?"
                         " AND file_id = ? AND state = 'claimed' AND claimed_by = ?"
                         " RETURNING file_id",
                    [state, o.error, batch_id, o.output_uri, o.rows, now, backfill_id,
                     o.file_id, worker]).fetchall()
                if not held:
                    continue  # the claim was lost: whoever holds it now records it
                done.add(o.file_id)
                if state == "missing":
                    continue  # nothing was scored: no batch row
                self._x(con, "INSERT INTO batch_files (batch_id, file_id, source_uri,"
                              " model_run_id, status, output_uri, rows, positives,"
                              " duration_ms, error, reprocess, finished_at, truncated_values,"
                              " backfill_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [batch_id, o.file_id, o.source_uri, o.model_run_id, o.status,
                          o.output_uri, o.rows, o.positives, o.duration_ms, o.error, True,
                          now, int(o.truncated or 0), backfill_id])
                if state == "scored":  # the ledger row names the current output
                    self._x(con, "UPDATE files SET output_uri = ?, model_run_id = ?,"
                                  " batch_id = ?, rows = ?, updated_at = ? WHERE file_id = ?"
                                  " AND state = 'scored'",
                             [o.output_uri, o.model_run_id, batch_id, o.rows, now, o.file_id])
            if end is not None:
                kept = [o for o in outcomes if o.file_id in done and o.status != "missing"]
                self._x(con, "UPDATE prediction_batches SET status = ?, ended_at = ?,"
                              " files = ?, rows = ?, duration_ms = ?, error = ?"
                              " WHERE batch_id = ?",
                         ["failed" if end.get("error") else "completed", now,
                          end["files"] + len(kept),
                          end["rows"] + sum(o.rows or 0 for o in kept), end["duration_ms"],
                          end.get("error"), batch_id])
            self._backfill_counts(con, backfill_id, now, batch_id)
        return done

    def _backfill_counts(self, con: Any, backfill_id: str, now: datetime,
                         batch_id: str | None = None) -> None:
        """Bring the backfill's counts up to date; close it when no input is left, and with
        it the batches of processes that died after recording their files but before their
        batch's end (no claim is left whose expiry would close them; ``batch_id``, the
        caller's own, is ended by the caller)."""
        row = self._x(
            con, "SELECT count(*), sum(CASE WHEN state = 'scored' THEN 1 ELSE 0 END),"
                 " sum(CASE WHEN state = 'missing' THEN 1 ELSE 0 END),"
                 " sum(CASE WHEN state = 'quarantined' THEN 1 ELSE 0 END),"
                 " sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END),"
                 " sum(CASE WHEN state IN ('pending', 'claimed') THEN 1 ELSE 0 END),"
                 " sum(CASE WHEN state = 'scored' THEN rows ELSE 0 END)"
                 " FROM backfill_files WHERE backfill_id = ?", [backfill_id]).fetchone()
        files, scored, missing, quarantined, failed, open_, rows = (int(x or 0) for x in row)
        self._x(con, "UPDATE backfills SET files = ?, scored = ?, missing = ?,"
                      " quarantined = ?, failed = ?, rows = ?, updated_at = ? WHERE"
                      " backfill_id = ?",
                 [files, scored, missing, quarantined, failed, rows, now, backfill_id])
        if open_ == 0:
            self._x(con, "UPDATE backfills SET status = 'completed', running_key = NULL,"
                          " finished_at = ? WHERE backfill_id = ? AND status = 'running'",
                     [now, backfill_id])
            self._x(con, "UPDATE prediction_batches SET status = 'failed', ended_at = ?,"
                          " error = 'abandoned: its backfill process stopped before the"
                          " batch ended; its backfill finished without it' WHERE"
                          " backfill_id = ? AND status = 'running' AND batch_id <> ?",
                     [now, backfill_id, batch_id or ""])

    def backfill_open(self, backfill_id: str) -> tuple[int, datetime | None]:
        """Inputs not finished yet, and the earliest lease of those claimed now."""
        with self._registry_read() as con:
            row = self._x(con, "SELECT sum(CASE WHEN state IN ('pending', 'claimed') THEN 1"
                                " ELSE 0 END), min(lease_expires_at) FROM backfill_files"
                                " WHERE backfill_id = ?", [backfill_id]).fetchone()
        return int(row[0] or 0), row[1]
