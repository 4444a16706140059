"""The PostgreSQL catalog backend: many hosts, one catalog. All of its SQL is here and in
:mod:`.postgres_ledger`; connections and migrations are :mod:`._pg`'s.

Registered as the ``postgresql`` (and ``postgres``) URL scheme in :mod:`.backend`:
``BATCHML_CATALOG_URL=postgresql://user@host:5432/batchml``. The object model, table and view
names are the DuckDB backend's; the schema is the ``postgresql/`` dialect of the same
migrations. There is no published copy: people read the server itself (psql), or from DuckDB
with its postgres extension (``batchml sql --duckdb-init``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, RunNotFound
from ._db import utcnow
from ._pg import PgConnections, display_url
from .backend import CatalogBackend
from .backfill_sql import BackfillSQL
from .drift_sql import DriftSQL
from .labels_sql import LabelsSQL
from .metrics_sql import MetricsSQL
from .migrations import migrations
from .postgres_ledger import PostgresLedger, frame
from .registry_sql import RegistrySQL

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


class PostgresBackend(PostgresLedger, RegistrySQL, LabelsSQL, BackfillSQL, MetricsSQL, DriftSQL,
                      CatalogBackend):
    """A catalog in a PostgreSQL database, shared by every host that can reach it."""

    def __init__(self, location: str, *, lock_timeout_s: float = 60.0,
                 published_path: str | Path | None = None, publish_interval_s: float = 1.0,
                 connect_timeout_s: float = 10.0, pool_size: int = 4,
                 password: str | None = None) -> None:
        del published_path, publish_interval_s  # no published copy: the server is shared
        if location.startswith("postgres://"):
            location = "postgresql://" + location[len("postgres://"):]
        self.url = location
        self.pg = PgConnections(location, connect_timeout_s=connect_timeout_s,
                                pool_size=pool_size, lock_timeout_s=lock_timeout_s,
                                password=password)
        self.path = display_url(location)  # what messages and `batchml status` show

    def __repr__(self) -> str:
        return f"PostgresBackend({self.pg.shown!r})"

    # --- schema, connections, publication ----------------------------------------------------

    def ensure_schema(self) -> list[str]:
        self.pg.check()
        if self.pg.schema_version() >= migrations("postgresql")[-1][0]:
            return []
        return self.pg.migrate()

    def migrate(self) -> list[str]:
        return self.pg.migrate()

    def schema_version(self) -> int:
        return self.pg.schema_version()

    def transaction(self) -> AbstractContextManager[Any]:
        return self.pg.write()

    def hold(self) -> AbstractContextManager[None]:
        return self.pg.hold()

    def close(self) -> None:
        self.pg.close()

    _for_update = " FOR UPDATE"

    def _registry_write(self) -> AbstractContextManager[Any]:
        return self.pg.write()

    def _registry_read(self) -> AbstractContextManager[Any]:
        return self.pg.read()

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @property
    def published_path(self) -> Path | str:
        return self.path  # people read the server itself

    def publish(self) -> Path | str:
        return self.path  # nothing to copy: every committed change is visible at once

    def published_at(self) -> datetime | None:
        return utcnow()

    def sql(self, query: str, params: Iterable[Any] | None = None, *, write: bool = False,
            views: Mapping[str, Any] | None = None) -> pd.DataFrame:
        if views:
            raise ConfigError(
                f"A PostgreSQL catalog cannot read {', '.join(views)} (parquet outputs).",
                hint="Query outputs with DuckDB: `batchml sql --duckdb-init > init.sql` then "
                     "`duckdb -init init.sql` attaches this catalog and the outputs.")
        import psycopg

        with self.pg.write() as con:
            if not write:
                # the server refuses every write in this transaction, whatever the statement
                con.execute("SET TRANSACTION READ ONLY")
            cur = con.cursor()
            try:
                cur.execute(_placeholders(query) if params is not None else query,
                            list(params) if params is not None else None)
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                from ..errors import QueryRefused

                said = str(exc).splitlines()[0]  # "cannot execute DELETE in a read-only ..."
                verb = said.split("execute ", 1)[-1].split(" in a read-only")[0]
                raise QueryRefused(
                    f"The catalog is read-only here: {verb} statements do not run without "
                    f"--write (the server said: {said}).",
                    hint="Add --write to modify the catalog.") from None
            return frame(cur)

    # --- the HTTP API's request log ---------------------------------------------------------

    def has_online_predictions_view(self, pattern: str) -> bool:
        return True  # the log is parquet: DuckDB reads it (batchml sql --duckdb-init)

    def create_online_predictions_view(self, pattern: str) -> None:
        return None

    # --- runs --------------------------------------------------------------------------------

    def create_run(self, flow: str, *, params: Mapping[str, Any],
                   prefect_flow_run_id: str | None, code_fingerprint: str | None,
                   data_fingerprint: str | None, metrics: Mapping[str, float],
                   tags: Sequence[str]) -> str:
        now = utcnow()
        with self.pg.write() as con:
            # the flow's counter row is locked until commit: concurrent runs get n, n+1, ...
            row = con.execute(
                "INSERT INTO run_numbers AS c (flow, last_number)"
                " VALUES (%s, (SELECT coalesce(max(number), 0) + 1 FROM runs WHERE flow = %s))"
                " ON CONFLICT (flow) DO UPDATE SET last_number = c.last_number + 1"
                " RETURNING last_number", [flow, flow]).fetchone()
            assert row is not None
            run_id = f"{flow}/{row[0]}"
            con.execute(
                "INSERT INTO runs (run_id, flow, number, status, started_at, params,"
                " prefect_flow_run_id, code_fingerprint, data_fingerprint)"
                " VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s)",
                [run_id, flow, row[0], now, json.dumps(dict(params), default=str),
                 prefect_flow_run_id, code_fingerprint, data_fingerprint])
            if metrics:
                con.execute("INSERT INTO metrics SELECT %s, k, v, 0, %s"
                            " FROM unnest(%s::text[], %s::float8[]) AS m(k, v)",
                            [run_id, now, list(metrics), [float(v) for v in metrics.values()]])
            if tags:
                con.execute("INSERT INTO tags (run_id, tag, added_at)"
                            " SELECT %s, t, %s FROM unnest(%s::text[]) AS t",
                            [run_id, now, list(tags)])
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.pg.read() as con:
            cur = con.execute(
                "SELECT run_id, flow, number, status, started_at, ended_at, params::text AS"
                " params, error, prefect_flow_run_id, code_fingerprint, data_fingerprint"
                " FROM runs WHERE run_id = %s", [run_id])
            row = cur.fetchone()
            cols = [d.name for d in cur.description]
        return dict(zip(cols, row, strict=True)) if row is not None else None

    def run_ids(self, flow: str | None = None, *, tag: str | None = None,
                successful: bool | None = None, limit: int | None = None) -> list[str]:
        where, args = ["true"], []
        if flow is not None:
            where.append("r.flow = %s")
            args.append(flow)
        if successful is True:
            where.append("r.status = 'completed'")
        elif successful is False:
            where.append("r.status = 'failed'")
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.run_id = r.run_id"
                         " AND t.tag = %s AND t.removed_at IS NULL)")
            args.append(tag)
        sql = (f"SELECT r.run_id FROM runs r WHERE {' AND '.join(where)}"
               " ORDER BY r.started_at DESC, r.number DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.pg.read() as con:
            return [r[0] for r in con.execute(sql, args).fetchall()]

    def latest_run_id(self, flow: str, *, tag: str | None = None,
                      successful: bool = True) -> str | None:
        with self.pg.read() as con:
            if tag is not None:
                row = self._latest_tagged(con, flow, tag, successful)
            else:
                row = con.execute(
                    "SELECT run_id FROM runs WHERE flow = %s"
                    + (" AND status = 'completed'" if successful else "")
                    + " ORDER BY number DESC LIMIT 1", [flow]).fetchone()
        return None if row is None else str(row[0])

    def _latest_tagged(self, con: Any, flow: str, tag: str, successful: bool) -> Any:
        # one statement: the partial expression index on tags walks the flow's tagged runs by
        # number, newest first, and stops at the first completed one, so it stays flat in N
        return con.execute(
            "SELECT t.run_id FROM tags t JOIN runs r ON r.run_id = t.run_id"
            " WHERE t.tag = %s AND t.removed_at IS NULL AND split_part(t.run_id, '/', 1) = %s"
            + (" AND r.status = 'completed'" if successful else "")
            + " ORDER BY split_part(t.run_id, '/', 2)::BIGINT DESC LIMIT 1",
            [tag, flow]).fetchone()

    def search_runs(self, flow: str | None = None, *, where: str | None = None,
                    order_by: str | None = None, tag: str | None = None) -> pd.DataFrame:
        from .duckdb_backend import runs_frame

        ids = self.run_ids(flow, tag=tag)
        with self.pg.read() as con:
            base = frame(con.execute(
                "SELECT run_id, flow, status, started_at, ended_at, params::text AS params,"
                " data_fingerprint FROM runs WHERE run_id = ANY(%s)", [ids]))
            mets = frame(con.execute(
                "SELECT run_id, key, value FROM metrics WHERE step = 0 AND run_id = ANY(%s)",
                [ids]))
            tags = frame(con.execute(
                "SELECT run_id, string_agg(tag, ',' ORDER BY tag) AS tags FROM tags"
                " WHERE removed_at IS NULL AND run_id = ANY(%s) GROUP BY run_id", [ids]))
        return runs_frame(base, mets, tags, where=where, order_by=order_by)

    def runs_overview(self, flow: str | None = None, *, tag: str | None = None,
                      limit: int = 50) -> pd.DataFrame:
        where, args = [], []
        if flow:
            where.append("flow = %s")
            args.append(flow)
        if tag:
            where.append("%s = ANY(string_to_array(tags, ', '))")
            args.append(tag)
        sql = "SELECT run_id, status, started_at, seconds, model, accuracy, roc_auc, f1, tags" \
              " FROM runs_overview"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY started_at DESC LIMIT {int(limit)}"
        with self.pg.read() as con:
            return frame(con.execute(sql, args))

    def set_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        with self.pg.write() as con:
            con.execute("UPDATE runs SET params = %s WHERE run_id = %s",
                        [json.dumps(dict(params), default=str), run_id])

    def set_data_fingerprint(self, run_id: str, value: str) -> None:
        with self.pg.write() as con:
            con.execute("UPDATE runs SET data_fingerprint = %s WHERE run_id = %s",
                        [value, run_id])

    def end_run(self, run_id: str, status: str, error: str | None) -> bool:
        with self.pg.write() as con:
            done = con.execute(
                "UPDATE runs SET status = %s, ended_at = %s, error = %s WHERE run_id = %s"
                " AND status = 'running' RETURNING run_id",
                [status, utcnow(), error, run_id]).fetchall()
        return bool(done)

    # --- metrics, tags, artifacts, models ----------------------------------------------------

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        with self.pg.write() as con:
            con.execute(
                "INSERT INTO metrics SELECT %s, k, v, %s, %s"
                " FROM unnest(%s::text[], %s::float8[]) AS m(k, v)"
                " ON CONFLICT (run_id, key, step) DO UPDATE SET value = EXCLUDED.value,"
                " recorded_at = EXCLUDED.recorded_at",
                [run_id, step, utcnow(), list(metrics), [float(v) for v in metrics.values()]])

    def metrics(self, run_id: str) -> dict[str, float]:
        with self.pg.read() as con:
            rows = con.execute("SELECT DISTINCT ON (key) key, value FROM metrics"
                               " WHERE run_id = %s ORDER BY key, step DESC", [run_id]).fetchall()
        return {k: v for k, v in rows}

    def tags(self, run_id: str) -> set[str]:
        with self.pg.read() as con:
            rows = con.execute("SELECT tag FROM tags WHERE run_id = %s AND removed_at IS NULL",
                               [run_id]).fetchall()
        return {r[0] for r in rows}

    def tag_history(self, run_id: str) -> pd.DataFrame:
        with self.pg.read() as con:
            return frame(con.execute("SELECT tag, added_at, removed_at, note FROM tags"
                                     " WHERE run_id = %s ORDER BY tag_id", [run_id]))

    def add_tag(self, run_id: str, tag: str, note: str | None) -> bool:
        with self.pg.write() as con:
            if con.execute("SELECT 1 FROM runs WHERE run_id = %s", [run_id]).fetchone() is None:
                raise RunNotFound(f"No run {run_id!r}.", hint="List runs with `batchml runs`.")
            # the unique index on current tags settles two hosts tagging the run at once
            row = con.execute(
                "INSERT INTO tags (run_id, tag, added_at, note) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (run_id, tag) WHERE removed_at IS NULL DO NOTHING"
                " RETURNING tag_id", [run_id, tag, utcnow(), note]).fetchone()
        return row is not None

    def remove_tag(self, run_id: str, tag: str) -> bool:
        with self.pg.write() as con:
            rows = con.execute(
                "UPDATE tags SET removed_at = %s WHERE run_id = %s AND tag = %s"
                " AND removed_at IS NULL RETURNING tag_id", [utcnow(), run_id, tag]).fetchall()
        return bool(rows)

    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.pg.read() as con:
            rows = con.execute("SELECT name, uri, sha256, bytes, kind FROM artifacts"
                               " WHERE run_id = %s", [run_id]).fetchall()
        return {n: {"uri": u, "sha256": s, "bytes": b, "kind": k} for n, u, s, b, k in rows}

    def record_artifact(self, run_id: str, name: str, *, uri: str, sha256: str, size: int,
                        kind: str) -> None:
        with self.pg.write() as con:
            con.execute(
                "INSERT INTO artifacts VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (run_id, name) DO UPDATE SET uri = EXCLUDED.uri,"
                " sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes, kind = EXCLUDED.kind,"
                " created_at = EXCLUDED.created_at",
                [run_id, name, uri, sha256, size, kind, utcnow()])

    def models(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.pg.read() as con:
            rows = con.execute("SELECT name, flavor, signature::text, artifact, is_primary"
                               " FROM models WHERE run_id = %s", [run_id]).fetchall()
        return {n: {"flavor": f, "signature": json.loads(s), "artifact": a, "is_primary": p}
                for n, f, s, a, p in rows}

    def record_model(self, run_id: str, name: str, *, flavor: str,
                     signature: Mapping[str, Any], artifact: str, primary: bool) -> None:
        with self.pg.write() as con:
            if primary:
                con.execute("UPDATE models SET is_primary = false WHERE run_id = %s", [run_id])
            con.execute(
                "INSERT INTO models VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (run_id, name) DO UPDATE SET flavor = EXCLUDED.flavor,"
                " signature = EXCLUDED.signature, artifact = EXCLUDED.artifact,"
                " is_primary = EXCLUDED.is_primary, created_at = EXCLUDED.created_at",
                [run_id, name, flavor, json.dumps(dict(signature)), artifact, primary,
                 utcnow()])

    # --- moving a whole catalog (batchml.catalog.transfer) -----------------------------------

    def dump_tables(self) -> dict[str, pa.Table]:
        import pyarrow as pa
        from psycopg import sql

        from .transfer import TABLES

        dumped: dict[str, pa.Table] = {}
        with self.pg.write() as con:
            # one snapshot for every table, and nothing written in it
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for name, key in TABLES.items():
                columns = self._table_columns(con, name)
                types = [_ARROW_TYPES.get(kind) for _, kind in columns]
                select = sql.SQL(", ").join(
                    sql.SQL("{}").format(sql.Identifier(c)) if t is not None
                    else sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c))
                    for (c, _), t in zip(columns, types, strict=True))
                # byte order for text keys (as DuckDB sorts), whatever the database's collation
                kinds = dict(columns)
                order = sql.SQL(", ").join(
                    sql.SQL('{} COLLATE "C"' if kinds.get(c) in _TEXT else "{}")
                    .format(sql.Identifier(c)) for c in key)
                rows = con.execute(sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    select, sql.Identifier(name), order)).fetchall()
                values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
                dumped[name] = pa.table(
                    [pa.array(v, type=_arrow_type(t)) for v, t in zip(values, types, strict=True)],
                    names=[c for c, _ in columns])
        return dumped

    def load_tables(self, tables: Mapping[str, pa.Table]) -> dict[str, int]:
        import psycopg
        from psycopg import sql

        from ..errors import CatalogError
        from .transfer import TABLES, check_columns, count_mismatch, load_order, refuse_rows

        names = load_order(tables)
        every = [*TABLES, "run_numbers"]
        loaded: dict[str, int] = {}
        with self.pg.write() as con:  # one transaction: a failure below rolls all of it back
            # writers (a worker, a second migration) wait until this commits; readers do not
            con.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                sql.SQL(", ").join(map(sql.Identifier, every))))
            refuse_rows(self.path, [t for t in every if con.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(t))
            ).fetchone() != (False,)])
            for name in names:
                table = tables[name]
                check_columns(self.path, name, table.column_names,
                              [c for c, _ in self._table_columns(con, name)])
                copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(name),
                    sql.SQL(", ").join(map(sql.Identifier, table.column_names)))
                try:
                    with con.cursor() as cur, cur.copy(copy_sql) as copy:
                        for batch in table.to_batches(max_chunksize=50_000):
                            for row in zip(*(_copy_values(c) for c in batch.columns),
                                           strict=True):
                                copy.write_row(row)
                except psycopg.OperationalError:
                    raise  # the server went away: CatalogUnavailable, as for any statement
                except psycopg.Error as exc:
                    said = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    where = (exc.diag.context or "").strip().splitlines()
                    raise CatalogError(
                        f"Cannot load table {name} into {self.path}: {said}"
                        + (f" ({where[0][:300]})" if where else "") + "; nothing was loaded.",
                        hint="Fix that row in the source catalog (batchml sql --write) and "
                             "migrate again.") from None
                row = con.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(name))).fetchone()
                loaded[name] = int(row[0]) if row else 0
                count_mismatch(self.path, name, table.num_rows, loaded[name])
            # what the rows imply: each flow's next run number, the next tag id
            con.execute("INSERT INTO run_numbers (flow, last_number)"
                        " SELECT flow, max(number) FROM runs GROUP BY flow")
            con.execute("SELECT setval('tag_seq', coalesce(max(tag_id), 1),"
                        " max(tag_id) IS NOT NULL) FROM tags")
            for name in [*names, "run_numbers"]:  # planner statistics for the new rows now
                con.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))
        return loaded

    @staticmethod
    def _table_columns(con: Any, table: str) -> list[tuple[str, str]]:
        """``(name, type)`` of each column of the catalog's ``table``, in the schema's order."""
        return [(str(c), str(t)) for c, t in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s"
            " ORDER BY ordinal_position", [table]).fetchall()]


def _placeholders(query: str) -> str:
    """A user's query with DuckDB-style ``?`` placeholders in psycopg's ``%s`` style (a
    literal ``%`` doubled), so ``Catalog.sql(query, params)`` reads the same on both."""
    out, quote = [], None
    for ch in query:
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


# PostgreSQL column types as the Arrow types DuckDB's dump gives (json, jsonb and any type not
# named here are read as text)
_ARROW_TYPES: dict[str, str] = {
    "character varying": "string", "text": "string", "bigint": "int64", "integer": "int32",
    "smallint": "int16", "double precision": "float64", "real": "float32", "boolean": "bool",
    "timestamp with time zone": "timestamp[us, tz=UTC]", "date": "date32"}
_TEXT = {"character varying", "text"}


def _copy_values(column: pa.Array) -> list[Any]:
    """An Arrow column as Python values for ``COPY ... FROM STDIN``: timestamps as ISO text in
    UTC (``2024-01-02 03:04:05.123456Z``, exact to the microsecond), which the server parses;
    Arrow writes it ~20 times faster than Python makes timezone-aware datetimes."""
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.string())
    return column.to_pylist()


def _arrow_type(name: str | None) -> pa.DataType:
    """The Arrow type named in :data:`_ARROW_TYPES` (None: text)."""
    import pyarrow as pa

    if name == "timestamp[us, tz=UTC]":
        return pa.timestamp("us", tz="UTC")
    return pa.type_for_alias(name or "string")
