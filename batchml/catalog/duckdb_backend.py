"""The DuckDB catalog backend: one file, all of its SQL here and in :mod:`.duckdb_ledger`.

Connections, the inter-process lock, publication and migrations are :mod:`._db`'s; this module
says what the statements are. Registered as the ``duckdb`` scheme (and plain paths) in
:mod:`.backend`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from ..errors import QueryRefused, RunNotFound
from ._db import PROCESS_DATABASES, Database, Databases, utcnow
from .backend import CatalogBackend
from .backfill_sql import BackfillSQL
from .drift_sql import DriftSQL
from .duckdb_ledger import DuckDBLedger
from .labels_sql import LabelsSQL
from .metrics_sql import MetricsSQL
from .migrations import migrations
from .registry_sql import RegistrySQL

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

_ORDER = re.compile(r"^\s*(?:(metrics|params)\.)?([A-Za-z0-9_.]+)\s*(ASC|DESC)?\s*$", re.I)


class DuckDBBackend(DuckDBLedger, RegistrySQL, LabelsSQL, BackfillSQL, MetricsSQL, DriftSQL,
                    CatalogBackend):
    """A catalog in one DuckDB file (``path``), shared by this process's catalogs of it."""

    def __init__(self, location: str | Path, *, lock_timeout_s: float = 60.0,
                 published_path: str | Path | None = None, publish_interval_s: float = 1.0,
                 databases: Databases | None = None) -> None:
        self.path: Path = Path(location).expanduser()
        self.db: Database = (databases or PROCESS_DATABASES).open(
            self.path, lock_timeout_s=lock_timeout_s,
            publish_to=Path(published_path) if published_path else None,
            publish_interval_s=publish_interval_s)

    def __repr__(self) -> str:
        return f"DuckDBBackend({str(self.path)!r})"

    # --- schema, connections, publication ----------------------------------------------------

    def ensure_schema(self) -> list[str]:
        latest = migrations()[-1][0]
        if self.path.exists() and self.db.schema_version() >= latest:
            self.db.publish_if_stale()
            return []
        return self.db.migrate()

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def schema_version(self) -> int:
        return self.db.schema_version()

    def transaction(self) -> AbstractContextManager[Any]:
        return self.db.write()

    def hold(self) -> AbstractContextManager[None]:
        return self.db.hold()

    def close(self) -> None:
        self.db.close()

    def _registry_write(self) -> AbstractContextManager[Any]:
        return self.db.write()

    def _registry_read(self) -> AbstractContextManager[Any]:
        return self.db.read()

    @property
    def published_path(self) -> Path:
        return self.db.publication.target

    def publish(self) -> Path:
        return self.db.publish()

    def published_at(self) -> datetime | None:
        # the copy a person opens, opened as they would: its own file, read-only
        with duckdb.connect(str(self.published_path), read_only=True) as con:
            row = con.execute("SELECT published_at FROM catalog_info").fetchone()
        return row[0] if row else None

    def sql(self, query: str, params: Iterable[Any] | None = None, *, write: bool = False,
            views: Mapping[str, Any] | None = None) -> pd.DataFrame:
        if not write:
            _refuse_writing_statements(query)
        ctx = self.db.write() if write else self.db.read(read_only=True)
        with ctx as con:
            cur = con.cursor()  # registrations stay private to this query
            try:
                for name, obj in (views or {}).items():
                    cur.register(name, obj)
                result = cur.execute(query, list(params) if params is not None else None)
                if result.description is None:
                    import pandas as pd

                    return pd.DataFrame()
                return result.df()
            finally:
                cur.close()

    # --- the HTTP API's request log ---------------------------------------------------------

    def has_online_predictions_view(self, pattern: str) -> bool:
        with self.db.read() as con:
            row = con.execute("SELECT sql FROM duckdb_views() WHERE view_name ="
                              " 'online_predictions'").fetchone()
        return bool(row and pattern.replace("'", "''") in row[0])

    def create_online_predictions_view(self, pattern: str) -> None:
        from .duckdb_init import online_predictions_select

        with self.db.write() as con:  # published with the next copy, as `predictions`
            con.execute("CREATE OR REPLACE VIEW online_predictions AS "
                        + online_predictions_select(pattern))

    # --- runs --------------------------------------------------------------------------------

    def create_run(self, flow: str, *, params: Mapping[str, Any],
                   prefect_flow_run_id: str | None, code_fingerprint: str | None,
                   data_fingerprint: str | None, metrics: Mapping[str, float],
                   tags: Sequence[str]) -> str:
        keys, values = list(metrics), [float(v) for v in metrics.values()]
        now = utcnow()
        with self.db.write(single=not keys and not tags) as con:
            # one statement: the number is taken under the exclusive lock, so it cannot race
            row = con.execute(
                "INSERT INTO runs (run_id, flow, number, status, started_at, params,"
                " prefect_flow_run_id, code_fingerprint, data_fingerprint)"
                " SELECT $1 || '/' || n, $1, n, 'running', $2, $3, $4, $5, $6"
                " FROM (SELECT coalesce(max(number), 0) + 1 AS n FROM runs WHERE flow = $1)"
                " RETURNING run_id",
                [flow, now, json.dumps(dict(params), default=str),
                 prefect_flow_run_id, code_fingerprint, data_fingerprint],
            ).fetchone()
            assert row is not None
            if keys:
                con.execute("INSERT INTO metrics SELECT ?, unnest(?), unnest(?), 0, ?",
                            [row[0], keys, values, now])
            if tags:
                con.execute("INSERT INTO tags (run_id, tag, added_at) SELECT ?, unnest(?), ?",
                            [row[0], list(tags), now])
        return str(row[0])

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.db.read() as con:
            cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
            row = cur.fetchone()
            cols = [d[0] for d in cur.description]
        return dict(zip(cols, row, strict=True)) if row is not None else None

    def run_ids(self, flow: str | None = None, *, tag: str | None = None,
                successful: bool | None = None, limit: int | None = None) -> list[str]:
        where, args = ["1=1"], []
        if flow is not None:
            where.append("r.flow = ?")
            args.append(flow)
        if successful is True:
            where.append("r.status = 'completed'")
        elif successful is False:
            where.append("r.status = 'failed'")
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.run_id = r.run_id AND t.tag = ?"
                         " AND t.removed_at IS NULL)")
            args.append(tag)
        sql = (f"SELECT r.run_id FROM runs r WHERE {' AND '.join(where)}"
               " ORDER BY r.started_at DESC, r.number DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.db.read() as con:
            return [r[0] for r in con.execute(sql, args).fetchall()]

    def latest_run_id(self, flow: str, *, tag: str | None = None,
                      successful: bool = True) -> str | None:
        with self.db.read() as con:
            if tag is not None:
                row = self._latest_tagged(con, flow, tag, successful)
            else:
                row = con.execute(
                    "SELECT run_id FROM runs WHERE flow = ?"
                    + (" AND status = 'completed'" if successful else "")
                    + " ORDER BY number DESC LIMIT 1",
                    [flow],
                ).fetchone()
        return None if row is None else str(row[0])

    def _latest_tagged(self, con: Any, flow: str, tag: str, successful: bool) -> Any:
        """``(run_id, ...)`` of the newest run of ``flow`` carrying ``tag`` (and completed
        when ``successful``), or None; on an open connection ``con`` of this catalog."""
        # Tags are few next to runs: take the newest tagged run ids of the flow from the tags
        # table (the run number is the id's suffix); no scan or join over all runs, so the
        # lookup stays flat as runs grow. Runs are facts once ended, so a run seen completed
        # stays completed: its status is remembered (per connection), and the usual lookup is
        # this one statement.
        window = 64
        prefix = f"{flow}/"
        candidates = [r[0] for r in con.execute(
            "SELECT run_id FROM tags WHERE tag = ? AND removed_at IS NULL"
            " AND starts_with(run_id, ?)"
            " ORDER BY CAST(substr(run_id, ?) AS BIGINT) DESC LIMIT ?",
            [tag, prefix, len(prefix) + 1, window]).fetchall()]
        completed = self.db.completed_runs
        for run_id in candidates:  # newest first; normally the first one qualifies
            if run_id in completed:
                return (run_id,)
            row = con.execute("SELECT run_id, status FROM runs WHERE run_id = ?",
                              [run_id]).fetchone()
            if row is not None and row[1] == "completed":
                completed.add(run_id)
            if row is not None and (not successful or row[1] == "completed"):
                return row
        if len(candidates) < window:
            return None
        return con.execute(  # more than `window` newer tagged runs all unfinished: rare
            "SELECT r.run_id FROM tags t JOIN runs r ON r.run_id = t.run_id"
            " WHERE t.tag = ? AND t.removed_at IS NULL AND r.flow = ?"
            + (" AND r.status = 'completed'" if successful else "")
            + " ORDER BY r.number DESC LIMIT 1", [tag, flow]).fetchone()

    def search_runs(self, flow: str | None = None, *, where: str | None = None,
                    order_by: str | None = None, tag: str | None = None) -> pd.DataFrame:
        ids = self.run_ids(flow, tag=tag)
        with self.db.read() as con:
            base = con.execute(
                "SELECT run_id, flow, status, started_at, ended_at, params::VARCHAR AS params,"
                " data_fingerprint FROM runs WHERE run_id IN (SELECT unnest(?))", [ids]
            ).df()
            mets = con.execute(
                "SELECT run_id, key, value FROM metrics WHERE step = 0"
                " AND run_id IN (SELECT unnest(?))", [ids]).df()
            tags = con.execute(
                "SELECT run_id, string_agg(tag, ',' ORDER BY tag) AS tags FROM tags"
                " WHERE removed_at IS NULL AND run_id IN (SELECT unnest(?)) GROUP BY run_id",
                [ids]).df()
        return runs_frame(base, mets, tags, where=where, order_by=order_by)

    def runs_overview(self, flow: str | None = None, *, tag: str | None = None,
                      limit: int = 50) -> pd.DataFrame:
        where, args = [], []
        if flow:
            where.append("flow = ?")
            args.append(flow)
        if tag:
            where.append("list_contains(string_split(tags, ', '), ?)")
            args.append(tag)
        sql = "SELECT run_id, status, started_at, seconds, model, accuracy, roc_auc, f1, tags" \
              " FROM runs_overview"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY started_at DESC LIMIT {int(limit)}"
        return self.sql(sql, args)

    def set_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        with self.db.write() as con:
            con.execute("UPDATE runs SET params = ? WHERE run_id = ?",
                        [json.dumps(dict(params), default=str), run_id])

    def set_data_fingerprint(self, run_id: str, value: str) -> None:
        with self.db.write() as con:
            con.execute("UPDATE runs SET data_fingerprint = ? WHERE run_id = ?", [value, run_id])

    def end_run(self, run_id: str, status: str, error: str | None) -> bool:
        with self.db.write(single=True) as con:
            done = con.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ?"
                " AND status = 'running' RETURNING run_id",
                [status, utcnow(), error, run_id]).fetchall()
        return bool(done)

    # --- metrics, tags, artifacts, models ----------------------------------------------------

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        keys, values = list(metrics), [float(v) for v in metrics.values()]
        with self.db.write(single=True) as con:
            # One statement over lists: DuckDB's executemany costs ~5 ms a row.
            con.execute("INSERT OR REPLACE INTO metrics SELECT ?, unnest(?), unnest(?), ?, ?",
                        [run_id, keys, values, step, utcnow()])

    def metrics(self, run_id: str) -> dict[str, float]:
        with self.db.read() as con:
            rows = con.execute(
                "SELECT key, arg_max(value, step) FROM metrics WHERE run_id = ? GROUP BY key",
                [run_id]).fetchall()
        return {k: v for k, v in rows}

    def tags(self, run_id: str) -> set[str]:
        with self.db.read() as con:
            rows = con.execute("SELECT tag FROM tags WHERE run_id = ? AND removed_at IS NULL",
                               [run_id]).fetchall()
        return {r[0] for r in rows}

    def tag_history(self, run_id: str) -> pd.DataFrame:
        return self.sql(
            "SELECT tag, added_at, removed_at, note FROM tags WHERE run_id = ? ORDER BY tag_id",
            [run_id])

    def add_tag(self, run_id: str, tag: str, note: str | None) -> bool:
        # No BEGIN/COMMIT round trips: the catalog's write lock keeps the check and the one
        # writing statement together (an INSERT ... WHERE EXISTS over runs would scan them).
        with self.db.write(single=True) as con:
            row = con.execute(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE run_id = $run),"
                " EXISTS (SELECT 1 FROM tags WHERE run_id = $run AND tag = $tag"
                " AND removed_at IS NULL)", {"run": run_id, "tag": tag}).fetchone()
            if not row or not row[0]:
                raise RunNotFound(f"No run {run_id!r}.", hint="List runs with `batchml runs`.")
            if row[1]:
                return False
            con.execute("INSERT INTO tags (run_id, tag, added_at, note) VALUES (?, ?, ?, ?)",
                        [run_id, tag, utcnow(), note])
        return True

    def remove_tag(self, run_id: str, tag: str) -> bool:
        with self.db.write(single=True) as con:
            row = con.execute(
                "UPDATE tags SET removed_at = ? WHERE run_id = ? AND tag = ?"
                " AND removed_at IS NULL RETURNING tag_id", [utcnow(), run_id, tag]).fetchall()
        return bool(row)

    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.db.read() as con:
            rows = con.execute(
                "SELECT name, uri, sha256, bytes, kind FROM artifacts WHERE run_id = ?",
                [run_id]).fetchall()
        return {n: {"uri": u, "sha256": s, "bytes": b, "kind": k} for n, u, s, b, k in rows}

    def record_artifact(self, run_id: str, name: str, *, uri: str, sha256: str, size: int,
                        kind: str) -> None:
        with self.db.write() as con:
            con.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [run_id, name, uri, sha256, size, kind, utcnow()])

    def models(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.db.read() as con:
            rows = con.execute(
                "SELECT name, flavor, signature::VARCHAR, artifact, is_primary FROM models"
                " WHERE run_id = ?", [run_id]).fetchall()
        return {n: {"flavor": f, "signature": json.loads(s), "artifact": a, "is_primary": p}
                for n, f, s, a, p in rows}

    def record_model(self, run_id: str, name: str, *, flavor: str,
                     signature: Mapping[str, Any], artifact: str, primary: bool) -> None:
        with self.db.write() as con:
            if primary:
                con.execute("UPDATE models SET is_primary = false WHERE run_id = ?", [run_id])
            con.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [run_id, name, flavor, json.dumps(dict(signature)), artifact, primary,
                         utcnow()])

    # --- moving a whole catalog (batchml.catalog.transfer) -----------------------------------

    def dump_tables(self) -> dict[str, pa.Table]:
        from .transfer import TABLES

        dumped: dict[str, pa.Table] = {}
        # one read: the shared lock keeps every writer out until the last table is read
        with self.db.read() as con:
            for name, key in TABLES.items():
                columns = ", ".join(f'"{c}"::VARCHAR AS "{c}"' if kind == "JSON" else f'"{c}"'
                                    for c, kind in self._table_columns(con, name))
                order = ", ".join(f'"{c}"' for c in key)
                dumped[name] = con.execute(
                    f'SELECT {columns} FROM "{name}" ORDER BY {order}').to_arrow_table()
        return dumped

    def load_tables(self, tables: Mapping[str, pa.Table]) -> dict[str, int]:
        from ..errors import CatalogError
        from .transfer import TABLES, check_columns, count_mismatch, load_order, refuse_rows

        names = load_order(tables)
        loaded: dict[str, int] = {}
        with self.db.write() as con:  # one transaction: a failure below rolls all of it back
            refuse_rows(self.path, [t for t in TABLES if con.execute(
                f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone() != (False,)])
            for name in names:
                table = tables[name]
                check_columns(self.path, name, table.column_names,
                              [c for c, _ in self._table_columns(con, name)])
                columns = ", ".join(f'"{c}"' for c in table.column_names)
                view = f"batchml_load_{name}"
                con.register(view, table)
                try:
                    con.execute(f'INSERT INTO "{name}" ({columns}) SELECT {columns}'
                                f' FROM "{view}"')
                except duckdb.Error as exc:
                    raise CatalogError(
                        f"Cannot load table {name} into {self.path}: {exc}; nothing was "
                        "loaded.") from None
                finally:
                    con.unregister(view)
                row = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
                loaded[name] = int(row[0]) if row else 0
                count_mismatch(self.path, name, table.num_rows, loaded[name])
            # DuckDB has no setval: draw the tag sequence up to the highest tag_id loaded
            top = con.execute("SELECT max(tag_id) FROM tags").fetchone()
            if top and top[0] is not None:
                drawn = con.execute("SELECT nextval('tag_seq')").fetchone()
                if drawn and drawn[0] < top[0]:
                    con.execute("SELECT max(nextval('tag_seq')) FROM range(?)",
                                [int(top[0]) - int(drawn[0])])
        return loaded

    @staticmethod
    def _table_columns(con: Any, table: str) -> list[tuple[str, str]]:
        """``(name, type)`` of each column of the catalog's ``table``, in the schema's order."""
        return [(str(c), str(t)) for c, t in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_catalog = current_database() AND table_schema = 'main'"
            " AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()]


def runs_frame(base: pd.DataFrame, mets: pd.DataFrame, tags: pd.DataFrame, *,
               where: str | None, order_by: str | None) -> pd.DataFrame:
    """What ``search_runs`` returns, from the rows any backend read: runs (``params`` as JSON
    text), step-0 metrics (run_id, key, value) and current tags (run_id, tags); filtered and
    ordered on a private in-memory DuckDB (the PostgreSQL backend uses it too)."""
    import pandas as pd

    if where is not None and len(duckdb.extract_statements(f"SELECT 1 WHERE {where}")) != 1:
        raise ValueError("`where` must be one filter expression, not several statements.")
    if not len(base):
        return pd.DataFrame(columns=["run_id", "flow", "status", "started_at", "ended_at",
                                     "data_fingerprint", "tags"])
    frame = base.drop(columns=["params"])
    params = pd.json_normalize([json.loads(p) for p in base["params"]])
    if len(params.columns):
        params.columns = [f"params.{c}" for c in params.columns]
        frame = pd.concat([frame, params], axis=1)
    if len(mets):
        wide = mets.pivot(index="run_id", columns="key", values="value")
        wide.columns = [f"metrics.{c}" for c in wide.columns]
        frame = frame.merge(wide, left_on="run_id", right_index=True, how="left")
    frame = frame.merge(tags, on="run_id", how="left")
    if where or order_by:
        frame = _filter_frame(frame, where, order_by)
    return frame.reset_index(drop=True)


def _filter_frame(frame: pd.DataFrame, where: str | None, order_by: str | None) -> pd.DataFrame:
    """``frame`` filtered by the SQL expression ``where`` and sorted by ``order_by``, on a
    private in-memory database: a filter can never modify the catalog."""
    with _memory() as mem:
        mem.register("runs", frame)
        sql = "SELECT * FROM runs"
        if where:
            sql += f" WHERE {where}"
        if order_by:
            match = _ORDER.match(order_by)
            if not match:
                raise ValueError(f"Cannot order by {order_by!r}: use 'metrics.NAME DESC'.")
            prefix, name, direction = match.groups()
            column = f"{prefix}.{name}" if prefix else name
            sql += f' ORDER BY "{column}" {direction or "ASC"} NULLS LAST'
        return mem.execute(sql).df()


@contextmanager
def _memory() -> Iterator[duckdb.DuckDBPyConnection]:
    mem = duckdb.connect()
    try:
        yield mem
    finally:
        mem.close()


_READING = {"SELECT", "EXPLAIN"}


def _refuse_writing_statements(query: str) -> None:
    """Read-only SQL runs SELECT and EXPLAIN only: the read-only connection already stops
    catalog writes, and this stops the statements that write files or fetch code (COPY TO,
    EXPORT DATABASE, ATTACH, INSTALL/LOAD, SET) before DuckDB sees them."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error:
        return  # a syntax error: let DuckDB report it where it is
    for st in statements:
        kind = st.type.name
        text = " ".join(st.query.split()).upper()
        if text.startswith(("EXPLAIN ANALYZE", "EXPLAIN (ANALYZE")):
            kind = "EXPLAIN ANALYZE"  # runs the statement it explains
        if kind not in _READING:
            raise QueryRefused(
                f"The catalog is read-only here: {kind.replace('_', ' ')} statements do not "
                "run without --write (only SELECT and EXPLAIN do).",
                hint="Add --write to modify the catalog; to export results use "
                     "`batchml sql QUERY --format csv > file.csv`.")
