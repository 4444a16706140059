"""The metadata catalog: runs, params, metrics, tags with history, artifacts and models.

A navigable object model in the spirit of Metaflow's client::

    catalog = Catalog("catalog.duckdb")
    run = catalog.latest_run("train", tag="deployment_candidate")
    run.metrics["roc_auc"], run.tags, run.load_model()

Objects load lazily: a :class:`Run` holds only its id until an attribute is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    ArtifactNotFound,
    CatalogError,
    InvalidRunState,
    ModelNotFound,
    QueryRefused,
    RunNotFound,
)
from ._db import Database, utcnow

if TYPE_CHECKING:
    import pandas as pd

    from ..estimators import Estimator
    from ..store import ArtifactStore

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_ORDER = re.compile(r"^\s*(?:(metrics|params)\.)?([A-Za-z0-9_.]+)\s*(ASC|DESC)?\s*$", re.I)
_RUN_COLUMNS = {"run_id", "flow", "number", "status", "started_at", "ended_at"}


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"Invalid {kind} {value!r}: use 1-128 letters, digits, '_', '.' or '-'."
        )
    return value


class Catalog:
    """A batchml catalog in one DuckDB file.

    ``Catalog(path)`` creates the file if needed and upgrades an older one to the current schema.
    ``store`` is the artifact store used by :meth:`Run.log_artifact` and :meth:`Run.load_model`.
    """

    def __init__(self, path: str | Path, *, store: ArtifactStore | None = None,
                 lock_timeout_s: float = 60.0, published_path: str | Path | None = None,
                 publish_interval_s: float = 1.0) -> None:
        self.path = Path(path).expanduser()
        self.db = Database.open(self.path, lock_timeout_s=lock_timeout_s,
                                publish_to=Path(published_path) if published_path else None,
                                publish_interval_s=publish_interval_s)
        self._store = store
        self.migrated = self._ensure_schema()

    @property
    def published_path(self) -> Path:
        """The read-only copy people open (``duckdb -readonly``); see :meth:`publish`."""
        return self.db.publication.target

    def publish(self) -> Path:
        """Publish the read-only copy now; batchml also does it within
        ``publish_interval_s`` of every change. Returns its path."""
        return self.db.publish()

    @classmethod
    def from_settings(cls, settings: Any) -> Catalog:
        """The catalog and artifact store named by a :class:`~batchml.Settings`."""
        from ..store import open_store

        store = open_store(settings.artifact_root, endpoint_url=settings.s3_endpoint_url,
                           region=settings.s3_region)
        return cls(settings.catalog_file, store=store, lock_timeout_s=settings.lock_timeout_s,
                   published_path=settings.published_catalog_path,
                   publish_interval_s=settings.publish_interval_s)

    def _ensure_schema(self) -> list[str]:
        from ._db import migrations

        latest = migrations()[-1][0]
        if self.path.exists() and self.db.schema_version() >= latest:
            self.db.publish_if_stale()
            return []
        return self.db.migrate()

    @property
    def store(self) -> ArtifactStore:
        """The artifact store; raises if the catalog was opened without one."""
        if self._store is None:
            raise CatalogError("This catalog was opened without an artifact store.",
                               hint="Pass store=open_store(...) or use Catalog.from_settings().")
        return self._store

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r})"

    # --- runs ------------------------------------------------------------------------------

    def create_run(self, flow: str, *, params: Mapping[str, Any] | None = None,
                   prefect_flow_run_id: str | None = None, code_fingerprint: str | None = None,
                   data_fingerprint: str | None = None,
                   metrics: Mapping[str, float] | None = None,
                   tags: Iterable[str] = ()) -> Run:
        """Start a new run of ``flow`` (status ``running``) and return it.

        ``metrics`` (step 0) and ``tags`` are recorded in the same transaction, so logging a
        whole run costs two commits: this one and :meth:`Run.finish`."""
        _check_name("flow name", flow)
        keys = [_check_name("metric name", k) for k in (metrics or {})]
        values = [float(v) for v in (metrics or {}).values()]
        tag_list = list(dict.fromkeys(_check_name("tag", t) for t in tags))
        now = utcnow()
        with self.db.write(single=not keys and not tag_list) as con:
            # one statement: the number is taken under the exclusive lock, so it cannot race
            row = con.execute(
                "INSERT INTO runs (run_id, flow, number, status, started_at, params,"
                " prefect_flow_run_id, code_fingerprint, data_fingerprint)"
                " SELECT $1 || '/' || n, $1, n, 'running', $2, $3, $4, $5, $6"
                " FROM (SELECT coalesce(max(number), 0) + 1 AS n FROM runs WHERE flow = $1)"
                " RETURNING run_id",
                [flow, now, json.dumps(dict(params or {}), default=str),
                 prefect_flow_run_id, code_fingerprint, data_fingerprint],
            ).fetchone()
            assert row is not None
            if keys:
                con.execute("INSERT INTO metrics SELECT ?, unnest(?), unnest(?), 0, ?",
                            [row[0], keys, values, now])
            if tag_list:
                con.execute("INSERT INTO tags (run_id, tag, added_at) SELECT ?, unnest(?), ?",
                            [row[0], tag_list, now])
        return Run(self, row[0])

    def transaction(self) -> Any:
        """A context manager: every catalog write inside it (``create_run``, ``log_metrics``,
        ``add_tag``, ``finish`` ...) commits once, when the block ends, or not at all."""
        return self.db.write()

    def run(self, run_id: str) -> Run:
        """The run with this path-like id (``"train/42"``); raises :class:`RunNotFound`."""
        run = Run(self, run_id)
        run._row  # noqa: B018 - load now so a wrong id fails here, not later
        return run

    def runs(self, flow: str | None = None, *, tag: str | None = None,
             successful: bool | None = None, limit: int | None = None) -> list[Run]:
        """Runs newest first, optionally of one flow, carrying ``tag`` now, and by outcome."""
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
            ids = [r[0] for r in con.execute(sql, args).fetchall()]
        return [Run(self, i) for i in ids]

    def latest_run(self, flow: str, *, tag: str | None = None,
                   successful: bool = True) -> Run:
        """The newest run of ``flow`` (carrying ``tag`` if given); raises if there is none.

        With a tag this is one indexed lookup on the tags table joined to the run, so it stays
        flat in the number of runs.
        """
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
        if row is None:
            what = f"run of flow {flow!r}" + (f" tagged {tag!r}" if tag else "")
            if successful:
                what = "successful " + what
            raise (ModelNotFound if tag else RunNotFound)(
                f"No {what}.",
                hint="Train one with `batchml train`, or tag a run with `batchml tag add`.",
            )
        return Run(self, row[0])

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
        """Runs as a DataFrame with ``metrics.*`` and ``params.*`` columns, MLflow-style.

        ``where`` is a SQL filter over that frame's columns (quote dotted names:
        ``"metrics.roc_auc" > 0.8``); ``order_by`` is like ``"metrics.roc_auc DESC"``.
        Runs on a private in-memory copy, so a filter can never modify the catalog.
        """
        import pandas as pd  # not at import time: `batchml predict` never needs it

        if where is not None:
            import duckdb

            if len(duckdb.extract_statements(f"SELECT 1 WHERE {where}")) != 1:
                raise ValueError("`where` must be one filter expression, not several statements.")
        runs = self.runs(flow, tag=tag)
        ids = [r.id for r in runs]
        if not ids:
            return pd.DataFrame(columns=["run_id", "flow", "status", "started_at", "ended_at",
                                         "data_fingerprint", "tags"])
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
        frame = base.drop(columns=["params"])
        params = pd.json_normalize([json.loads(p) for p in base["params"]]) if len(base) else None
        if params is not None and len(params.columns):
            params.columns = [f"params.{c}" for c in params.columns]
            frame = pd.concat([frame, params], axis=1)
        if len(mets):
            wide = mets.pivot(index="run_id", columns="key", values="value")
            wide.columns = [f"metrics.{c}" for c in wide.columns]
            frame = frame.merge(wide, left_on="run_id", right_index=True, how="left")
        frame = frame.merge(tags, on="run_id", how="left")
        if where or order_by:
            import duckdb

            mem = duckdb.connect()
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
            frame = mem.execute(sql).df()
            mem.close()
        return frame.reset_index(drop=True)

    def sql(self, query: str, params: Iterable[Any] | None = None, *, write: bool = False,
            views: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run SQL against the catalog (read-only unless ``write``) and return a DataFrame.

        ``views`` registers extra relations (DataFrames, pyarrow datasets) for this query only,
        e.g. the predictions of an S3 outbox.
        """
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


class Run:
    """One run, addressed by its path-like id ``flow/number``. Attributes load lazily."""

    def __init__(self, catalog: Catalog, run_id: str) -> None:
        self.catalog = catalog
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def refresh(self) -> Run:
        """Forget loaded attributes so the next access reads the catalog again."""
        for name in ("_row", "params", "metrics", "artifacts", "models"):
            self.__dict__.pop(name, None)
        return self

    @cached_property
    def _row(self) -> dict[str, Any]:
        with self.catalog.db.read() as con:
            cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [self.id])
            row = cur.fetchone()
            cols = [d[0] for d in cur.description]
        if row is None:
            raise RunNotFound(f"No run {self.id!r} in {self.catalog.path}.",
                              hint="List runs with `batchml runs`.")
        return dict(zip(cols, row, strict=True))

    @property
    def flow(self) -> str:
        return str(self._row["flow"])

    @property
    def number(self) -> int:
        return int(self._row["number"])

    @property
    def status(self) -> str:
        return str(self._row["status"])

    @property
    def successful(self) -> bool:
        return self.status == "completed"

    @property
    def started_at(self) -> datetime:
        return self._row["started_at"]  # type: ignore[no-any-return]

    @property
    def ended_at(self) -> datetime | None:
        return self._row["ended_at"]  # type: ignore[no-any-return]

    @property
    def error(self) -> str | None:
        return self._row["error"]  # type: ignore[no-any-return]

    @property
    def prefect_flow_run_id(self) -> str | None:
        return self._row["prefect_flow_run_id"]  # type: ignore[no-any-return]

    @property
    def data_fingerprint(self) -> str | None:
        return self._row["data_fingerprint"]  # type: ignore[no-any-return]

    @property
    def code_fingerprint(self) -> str | None:
        return self._row["code_fingerprint"]  # type: ignore[no-any-return]

    @cached_property
    def params(self) -> dict[str, Any]:
        """The run's parameters."""
        value = self._row["params"]
        return json.loads(value) if isinstance(value, str) else dict(value or {})

    @cached_property
    def metrics(self) -> dict[str, float]:
        """Latest value of each metric (the highest step)."""
        with self.catalog.db.read() as con:
            rows = con.execute(
                "SELECT key, arg_max(value, step) FROM metrics WHERE run_id = ? GROUP BY key",
                [self.id]).fetchall()
        return {k: v for k, v in rows}

    @property
    def tags(self) -> set[str]:
        """The tags the run carries now (always read fresh: tags change)."""
        with self.catalog.db.read() as con:
            rows = con.execute("SELECT tag FROM tags WHERE run_id = ? AND removed_at IS NULL",
                               [self.id]).fetchall()
        return {r[0] for r in rows}

    def tag_history(self) -> pd.DataFrame:
        """Every time a tag was added to or removed from this run."""
        return self.catalog.sql(
            "SELECT tag, added_at, removed_at, note FROM tags WHERE run_id = ? ORDER BY tag_id",
            [self.id])

    @cached_property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        """Artifacts by name: uri, sha256, bytes, kind."""
        with self.catalog.db.read() as con:
            rows = con.execute(
                "SELECT name, uri, sha256, bytes, kind FROM artifacts WHERE run_id = ?",
                [self.id]).fetchall()
        return {n: {"uri": u, "sha256": s, "bytes": b, "kind": k} for n, u, s, b, k in rows}

    @cached_property
    def models(self) -> dict[str, dict[str, Any]]:
        """Models logged by the run, by name: flavor, signature, artifact, is_primary."""
        with self.catalog.db.read() as con:
            rows = con.execute(
                "SELECT name, flavor, signature::VARCHAR, artifact, is_primary FROM models"
                " WHERE run_id = ?", [self.id]).fetchall()
        return {n: {"flavor": f, "signature": json.loads(s), "artifact": a, "is_primary": p}
                for n, f, s, a, p in rows}

    # --- writing ---------------------------------------------------------------------------

    def _require_running(self, what: str) -> None:
        if self.refresh().status != "running":
            raise InvalidRunState(f"Cannot {what}: run {self.id} has already ended "
                                  f"({self.status}).",
                                  hint="Runs are facts; start a new run instead.")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into the run's parameters."""
        self._require_running("log params")
        merged = {**self.params, **params}
        with self.catalog.db.write() as con:
            con.execute("UPDATE runs SET params = ? WHERE run_id = ?",
                        [json.dumps(merged, default=str), self.id])
        self.refresh()

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0) -> None:
        """Record metric values (replacing the same key and step)."""
        keys = [_check_name("metric name", k) for k in metrics]
        values = [float(v) for v in metrics.values()]
        with self.catalog.db.write(single=True) as con:
            # One statement over lists: DuckDB's executemany costs ~5 ms a row.
            con.execute("INSERT OR REPLACE INTO metrics SELECT ?, unnest(?), unnest(?), ?, ?",
                        [self.id, keys, values, step, utcnow()])
        self.__dict__.pop("metrics", None)

    def add_tag(self, tag: str, *, note: str | None = None) -> bool:
        """Put ``tag`` on the run. Idempotent: returns False if it already carries it."""
        _check_name("tag", tag)
        # No BEGIN/COMMIT round trips: the catalog's write lock keeps the check and the one
        # writing statement together (an INSERT ... WHERE EXISTS over runs would scan them).
        with self.catalog.db.write(single=True) as con:
            row = con.execute(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE run_id = $run),"
                " EXISTS (SELECT 1 FROM tags WHERE run_id = $run AND tag = $tag"
                " AND removed_at IS NULL)", {"run": self.id, "tag": tag}).fetchone()
            if not row or not row[0]:
                raise RunNotFound(f"No run {self.id!r}.", hint="List runs with `batchml runs`.")
            if row[1]:
                return False
            con.execute("INSERT INTO tags (run_id, tag, added_at, note) VALUES (?, ?, ?, ?)",
                        [self.id, tag, utcnow(), note])
        return True

    def remove_tag(self, tag: str) -> bool:
        """Take ``tag`` off the run, keeping its history. Returns False if it was not there."""
        with self.catalog.db.write(single=True) as con:
            row = con.execute(
                "UPDATE tags SET removed_at = ? WHERE run_id = ? AND tag = ?"
                " AND removed_at IS NULL RETURNING tag_id", [utcnow(), self.id, tag]).fetchall()
        return bool(row)

    def set_data_fingerprint(self, value: str) -> None:
        """Record the hash of the run's input data (so runs on the same data compare)."""
        self._require_running("set the data fingerprint")
        with self.catalog.db.write() as con:
            con.execute("UPDATE runs SET data_fingerprint = ? WHERE run_id = ?", [value, self.id])
        self.refresh()

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """End the run as ``completed`` or ``failed`` (with the error)."""
        if status not in ("completed", "failed"):
            raise ValueError("status must be 'completed' or 'failed'")
        with self.catalog.db.write(single=True) as con:
            done = con.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ?"
                " AND status = 'running' RETURNING run_id",
                [status, utcnow(), error, self.id]).fetchall()
        if not done:
            raise InvalidRunState(f"Run {self.id} is not running; it cannot be finished again.")
        self.refresh()

    def log_artifact(self, name: str, data: bytes, *, kind: str = "file") -> dict[str, Any]:
        """Store ``data`` in the artifact store under this run and record its sha256."""
        key = f"runs/{self.id}/{name}"
        stored = self.catalog.store.put(key, data)
        record = {"uri": stored.uri, "sha256": stored.sha256, "bytes": stored.size,
                  "kind": kind}
        with self.catalog.db.write() as con:
            con.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [self.id, name, stored.uri, stored.sha256, stored.size, kind, utcnow()])
        self.__dict__.pop("artifacts", None)
        return record

    def fetch_artifact(self, name: str) -> bytes:
        """The artifact's bytes, verified against the sha256 recorded in the catalog."""
        info = self.artifacts.get(name)
        if info is None:
            raise ArtifactNotFound(f"Run {self.id} has no artifact {name!r}.",
                                   hint=f"It has: {', '.join(sorted(self.artifacts)) or 'none'}.")
        if self.catalog._store is None:
            from ..store import store_for_uri

            return store_for_uri(info["uri"]).get(info["uri"], sha256=info["sha256"])
        return self.catalog.store.get(info["uri"], sha256=info["sha256"])

    def log_model(self, name: str, estimator: Estimator, *, primary: bool = False) -> None:
        """Save ``estimator`` as an artifact and record it with its flavor and signature."""
        artifact = f"models/{name}{estimator.file_suffix}"
        self.log_artifact(artifact, estimator.to_bytes(), kind="model")
        with self.catalog.db.write() as con:
            if primary:
                con.execute("UPDATE models SET is_primary = false WHERE run_id = ?", [self.id])
            con.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [self.id, name, estimator.flavor,
                         json.dumps(estimator.signature.to_dict()), artifact, primary, utcnow()])
        self.__dict__.pop("models", None)

    def load_model(self, name: str | None = None) -> Estimator:
        """Load the run's primary model (or ``name``), refusing bytes whose sha256 differs."""
        from ..estimators import load_estimator

        models = self.models
        if name is None:
            name = next((n for n, m in models.items() if m["is_primary"]), None)
        if name is None or name not in models:
            raise ModelNotFound(f"Run {self.id} has no model {name or '(primary)'!r}.",
                                hint=f"It has: {', '.join(sorted(models)) or 'none'}.")
        info = models[name]
        try:
            data = self.fetch_artifact(info["artifact"])
        except Exception as exc:
            exc.add_note(f"while loading model {name!r} of run {self.id}")
            raise
        return load_estimator(info["flavor"], data)


_READING = {"SELECT", "EXPLAIN"}


def _refuse_writing_statements(query: str) -> None:
    """Read-only SQL runs SELECT and EXPLAIN only: the read-only connection already stops
    catalog writes, and this stops the statements that write files or fetch code (COPY TO,
    EXPORT DATABASE, ATTACH, INSTALL/LOAD, SET) before DuckDB sees them."""
    import duckdb

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
