"""Late labels' and shadow scoring's SQL, shared by both backends (the statements are the same
in both dialects; mixed into each backend class beside :class:`.registry_sql.RegistrySQL`,
whose ``_registry_write``/``_registry_read``/``_q`` say how to open a transaction and write a
placeholder).

The labels inbox has a ledger of its own, ``label_files``: a label file is discovered once per
version (URI + ETag, or size + mtime), claimed with a lease by one conditional ``UPDATE`` (of
two workers exactly one gets the row; an expired lease is taken over) and finished only by its
claimant, in the same transaction as its statistics, so a label file counts exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ._db import utcnow
from .records import FileRecord, FileRef
from .registry_sql import DialectSQL

_MATCH_COLS = ("file_id", "model_run_id", "role", "day", "model_name", "model_version", "n",
               "correct", "recorded_at")
_BIN_COLS = ("file_id", "model_run_id", "role", "day", "class", "bin", "positives",
             "negatives", "score_sum")
_SHADOW_COLS = ("batch_id", "file_id", "source_uri", "model_name", "champion_version",
                "champion_run_id", "challenger_version", "challenger_run_id", "status", "rows",
                "agreed", "output_uri", "shadow_uri", "error", "recorded_at")


def _plain(value: Any) -> Any:
    """PostgreSQL's sums are numeric (Decimal): whole ones as int, others as float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _records(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{c: _plain(v) for c, v in zip(cols, r, strict=True)} for r in rows]


def _insert(table: str, cols: Sequence[str]) -> str:
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
            f"({', '.join('?' for _ in cols)})")


class LabelsSQL(DialectSQL):
    """The late-labels and shadow half of a backend (mixed into the backend class)."""

    def _many(self, con: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if hasattr(con, "executemany"):  # DuckDB (its cursor() would be a new connection)
            con.executemany(self._q(sql), [list(r) for r in rows])
        else:  # psycopg: a cursor of the same connection, in the same transaction
            with con.cursor() as cur:
                cur.executemany(self._q(sql), [list(r) for r in rows])

    # --- the label files' ledger -----------------------------------------------------------

    def label_discover(self, refs: Sequence[FileRef]) -> list[str]:
        """Record label files not seen before; return the ids that are new."""
        if not refs:
            return []
        ids = [r.file_id for r in refs]
        with self._registry_read() as con:  # a poll that finds only known files writes nothing
            known = {r[0] for r in con.execute(self._q(
                f"SELECT file_id FROM label_files WHERE file_id IN "
                f"({', '.join('?' for _ in ids)})"), ids).fetchall()}
        refs = [r for r in refs if r.file_id not in known]
        if not refs:
            return []
        now = utcnow()
        new: list[str] = []
        with self._registry_write() as con:
            for ref in refs:
                rows = con.execute(self._q(
                    "INSERT INTO label_files (file_id, source_uri, etag, size, mtime, state,"
                    " discovered_at, updated_at) VALUES (?, ?, ?, ?, ?, 'discovered', ?, ?)"
                    " ON CONFLICT DO NOTHING RETURNING file_id"),
                    [ref.file_id, ref.uri, ref.etag, ref.size, ref.mtime, now, now]).fetchall()
                new.extend(r[0] for r in rows)
        return new

    def label_claim(self, worker: str, *, limit: int, lease_s: float,
                    prefix: str | None = None) -> list[FileRecord]:
        """Claim up to ``limit`` label files that are new or whose claim's lease expired."""
        now = utcnow()
        until = now + timedelta(seconds=lease_s)
        where = "(state = 'discovered' OR (state = 'claimed' AND lease_expires_at < ?))"
        params: list[Any] = [now]
        if prefix is not None:
            where += " AND starts_with(source_uri, ?)"
            params.append(prefix)
        claimed: list[FileRecord] = []
        with self._registry_write() as con:
            ids = [r[0] for r in con.execute(self._q(
                f"SELECT file_id FROM label_files WHERE {where} ORDER BY discovered_at, file_id"
                " LIMIT ?"), [*params, int(limit)]).fetchall()]
            for file_id in ids:
                row = con.execute(self._q(
                    "UPDATE label_files SET state = 'claimed', claimed_by = ?,"
                    " lease_expires_at = ?, attempts = attempts + 1, updated_at = ?"
                    f" WHERE file_id = ? AND {where}"
                    " RETURNING file_id, source_uri, etag, size, mtime, state, attempts, error,"
                    " claimed_by"), [worker, until, now, file_id, *params]).fetchone()
                if row is not None:
                    claimed.append(FileRecord(*row))
        return claimed

    def label_release(self, file_ids: Sequence[str], worker: str, reason: str) -> None:
        """Give claimed label files back (a transient error): they are tried again."""
        with self._registry_write() as con:
            for file_id in file_ids:
                con.execute(self._q(
                    "UPDATE label_files SET state = 'discovered', claimed_by = NULL,"
                    " lease_expires_at = NULL, error = ?, updated_at = ?"
                    " WHERE file_id = ? AND claimed_by = ? AND state = 'claimed'"),
                    [reason, utcnow(), file_id, worker])

    def label_finish(self, file_id: str, worker: str, *, state: str, error: str | None,
                     counts: Mapping[str, int], report: Mapping[str, int],
                     matches: Sequence[Mapping[str, Any]],
                     bins: Sequence[Mapping[str, Any]]) -> bool:
        """Finish a claimed label file with its counts and statistics, in one transaction,
        only while ``worker`` holds its claim. False (nothing written) when the claim was
        lost."""
        now = utcnow()
        with self._registry_write() as con:
            row = con.execute(self._q(
                "UPDATE label_files SET state = ?, error = ?, claimed_by = NULL,"
                " lease_expires_at = NULL, updated_at = ?, rows = ?, matched = ?,"
                " unknown_ids = ?, duplicate_ids = ?, bad_labels = ?, report = ?"
                " WHERE file_id = ? AND claimed_by = ? AND state = 'claimed'"
                " RETURNING file_id"),
                [state, error, now, counts.get("rows"), counts.get("matched"),
                 counts.get("unknown_ids"), counts.get("duplicate_ids"),
                 counts.get("bad_labels"), json.dumps(dict(report)), file_id,
                 worker]).fetchone()
            if row is None:
                return False
            self._many(con, _insert("label_matches", _MATCH_COLS),
                       [[file_id if c == "file_id" else now if c == "recorded_at" else m[c]
                         for c in _MATCH_COLS] for m in matches])
            self._many(con, _insert("label_score_bins", _BIN_COLS),
                       [[file_id if c == "file_id" else b[c] for c in _BIN_COLS]
                        for b in bins])
        return True

    def label_files(self) -> list[dict[str, Any]]:
        """Every label file with its state, counts and report, newest first."""
        cols = ("file_id", "source_uri", "state", "attempts", "error", "rows", "matched",
                "unknown_ids", "duplicate_ids", "bad_labels", "report", "updated_at")
        with self._registry_read() as con:
            rows = con.execute(self._q(
                f"SELECT {', '.join(cols)} FROM label_files ORDER BY updated_at DESC,"
                " file_id")).fetchall()
        out = [dict(zip(cols, r, strict=True)) for r in rows]
        for r in out:
            r["report"] = json.loads(r["report"]) if r["report"] else {}
        return out

    def label_outputs(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Every prediction output a label may belong to: scored outputs with the model
        version of their batch (role ``output``), and shadow outputs with the challenger's
        (role ``shadow``); with ``since``, only those written since then."""
        cond_o = " AND bf.finished_at >= ?" if since is not None else ""
        cond_s = " AND s.recorded_at >= ?" if since is not None else ""
        params = [since, since] if since is not None else []
        with self._registry_read() as con:
            rows = con.execute(self._q(
                "SELECT bf.output_uri, bf.model_run_id, b.model_name, b.model_version,"
                " 'output' AS role FROM batch_files bf"
                " JOIN prediction_batches b ON b.batch_id = bf.batch_id"
                " WHERE bf.status = 'scored' AND bf.output_uri IS NOT NULL" + cond_o +
                " UNION ALL SELECT s.shadow_uri, s.challenger_run_id, s.model_name,"
                " s.challenger_version, 'shadow' FROM shadow_comparisons s"
                " WHERE s.status = 'scored' AND s.shadow_uri IS NOT NULL" + cond_s),
                params).fetchall()
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for uri, run_id, name, version, role in rows:
            seen[(uri, role)] = {"uri": uri, "model_run_id": run_id, "model_name": name,
                                 "model_version": version, "role": role}
        return list(seen.values())

    def live_performance(self, name: str | None = None) -> list[dict[str, Any]]:
        """The ``live_performance`` view (of registered model ``name``), newest day first."""
        cols = ("model_name", "model_version", "model_run_id", "role", "day", "n", "accuracy",
                "auc", "calibration_error")
        where = " WHERE model_name = ?" if name is not None else ""
        with self._registry_read() as con:
            rows = con.execute(self._q(
                f"SELECT {', '.join(cols)} FROM live_performance{where}"
                " ORDER BY day DESC, model_version DESC, role"),
                [name] if name is not None else []).fetchall()
        return _records(cols, rows)

    # --- shadow scoring ---------------------------------------------------------------------

    def record_shadow(self, row: Mapping[str, Any], bins: Sequence[tuple[int, int, int]]
                      ) -> None:
        """Record one file's champion/challenger comparison (replacing an earlier one of the
        same batch and file) and its score bins ``(bin, champion, challenger)``."""
        with self._registry_write() as con:
            for table in ("shadow_comparisons", "shadow_bins"):
                con.execute(self._q(f"DELETE FROM {table} WHERE batch_id = ? AND file_id = ?"),
                            [row["batch_id"], row["file_id"]])
            con.execute(self._q(_insert("shadow_comparisons", _SHADOW_COLS)),
                        [utcnow() if c == "recorded_at" else row.get(c) for c in _SHADOW_COLS])
            self._many(con, _insert("shadow_bins",
                                    ("batch_id", "file_id", "bin", "champion", "challenger")),
                       [(row["batch_id"], row["file_id"], b, c, s) for b, c, s in bins])

    def shadow_batches(self, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The ``shadow_batches`` view (of registered model ``name``), newest first."""
        cols = ("batch_id", "model_name", "champion_version", "challenger_version",
                "challenger_run_id", "files", "failed", "rows", "agreement", "psi",
                "recorded_at")
        where = " WHERE model_name = ?" if name is not None else ""
        with self._registry_read() as con:
            rows = con.execute(self._q(
                f"SELECT {', '.join(cols)} FROM shadow_batches{where}"
                " ORDER BY recorded_at DESC LIMIT ?"),
                [*([name] if name is not None else []), int(limit)]).fetchall()
        return _records(cols, rows)

    def shadow_comparisons(self, batch_id: str) -> list[dict[str, Any]]:
        """One batch's comparisons, one row per file."""
        with self._registry_read() as con:
            rows = con.execute(self._q(
                f"SELECT {', '.join(_SHADOW_COLS)} FROM shadow_comparisons"
                " WHERE batch_id = ? ORDER BY source_uri"), [batch_id]).fetchall()
        return [dict(zip(_SHADOW_COLS, r, strict=True)) for r in rows]
