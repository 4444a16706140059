"""The metadata catalog: runs, params, metrics, tags with history, artifacts and models.

A navigable object model in the spirit of Metaflow's client::

    catalog = Catalog("catalog.duckdb")
    run = catalog.latest_run("train", tag="deployment_candidate")
    run.metrics["roc_auc"], run.tags, run.load_model()

Objects load lazily: a :class:`Run` holds only its id until an attribute is read. Both talk to
the catalog's :class:`~batchml.catalog.backend.CatalogBackend`, never to SQL text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactNotFound, CatalogError, InvalidRunState, ModelNotFound, RunNotFound
from .backend import CatalogBackend, open_backend, split_location
from .registry import RegisteredModel

if TYPE_CHECKING:
    import pandas as pd

    from ..custom_model import LoggedModel
    from ..estimators import Estimator
    from ..store import ArtifactStore
    from ._db import Database

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"Invalid {kind} {value!r}: use 1-128 letters, digits, '_', '.' or '-'."
        )
    return value


class Catalog:
    """A batchml catalog: a DuckDB file (a path, or a ``duckdb://`` URL), or another registered
    backend's URL (:mod:`batchml.catalog.backend`).

    ``Catalog(path)`` creates the catalog if needed and upgrades an older one to the current
    schema. ``store`` is the artifact store used by :meth:`Run.log_artifact` and
    :meth:`Run.load_model`. ``backend`` gives an opened backend instead of ``path``'s.
    """

    def __init__(self, path: str | Path, *, store: ArtifactStore | None = None,
                 lock_timeout_s: float = 60.0, published_path: str | Path | None = None,
                 publish_interval_s: float = 1.0, backend: CatalogBackend | None = None) -> None:
        self.backend = backend or open_backend(
            path, lock_timeout_s=lock_timeout_s, published_path=published_path,
            publish_interval_s=publish_interval_s)
        self.path = self.backend.path
        self._store = store
        self.migrated = self.backend.ensure_schema()

    @property
    def db(self) -> Database:
        """The DuckDB connections of a DuckDB catalog (``close()``, ``hold()``, and raw
        connections for tests and benchmarks)."""
        db = getattr(self.backend, "db", None)
        if db is None:
            raise CatalogError(f"{self.backend!r} is not a DuckDB catalog.")
        return db  # type: ignore[no-any-return]

    @property
    def published_path(self) -> Path | str:
        """The read-only copy people open (``duckdb -readonly``); see :meth:`publish`."""
        return self.backend.published_path

    def publish(self) -> Path | str:
        """Publish the read-only copy now; batchml also does it within
        ``publish_interval_s`` of every change. Returns its path."""
        return self.backend.publish()

    def published_at(self) -> datetime | None:
        """When the read-only copy was published, as the copy itself says (what a person
        opening it sees)."""
        return self.backend.published_at()

    def schema_version(self) -> int:
        """The highest migration applied to the catalog."""
        return self.backend.schema_version()

    def hold(self) -> AbstractContextManager[None]:
        """Keep the catalog connection across the statements of this block (a worker's
        batch)."""
        return self.backend.hold()

    def close(self) -> None:
        """Let the connection (and the catalog lock) go now; the next call reopens it."""
        self.backend.close()

    @classmethod
    def from_settings(cls, settings: Any, *, with_store: bool = True) -> Catalog:
        """The catalog (and, unless ``with_store`` is False, the artifact store) named by a
        :class:`~batchml.Settings`: its ``catalog_url``, else its DuckDB ``catalog_path``."""
        from ..store import open_store

        store = open_store(settings.artifact_root, endpoint_url=settings.s3_endpoint_url,
                           region=settings.s3_region) if with_store else None
        options: dict[str, Any]
        if split_location(settings.catalog_target)[0] != "duckdb":
            password = settings.catalog_password
            options = {"password": password.get_secret_value() if password else None}
        else:
            options = {"published_path": settings.published_catalog_path,
                       "publish_interval_s": settings.publish_interval_s}
        backend = open_backend(settings.catalog_target, lock_timeout_s=settings.lock_timeout_s,
                               **options)
        return cls(backend.path, store=store, backend=backend)

    @property
    def store(self) -> ArtifactStore:
        """The artifact store; raises if the catalog was opened without one."""
        if self._store is None:
            raise CatalogError("This catalog was opened without an artifact store.",
                               hint="Pass store=open_store(...) or use Catalog.from_settings().")
        return self._store

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r})"

    # --- the model registry (batchml.catalog.registry) ---------------------------------------

    def model(self, name: str) -> RegisteredModel:
        """The registered model ``name`` (lazy: nothing is read until used)."""
        return RegisteredModel(self, name)

    def registered_models(self) -> list[RegisteredModel]:
        """Every registered model, by name."""
        return [RegisteredModel(self, r["name"]) for r in self.backend.registered_models()]

    def create_model(self, name: str, *, description: str | None = None,
                     tags: Mapping[str, str] | None = None) -> RegisteredModel:
        """Create registered model ``name`` (an existing one gets the description and
        tags)."""
        model = RegisteredModel(self, name)
        if not self.backend.create_registered_model(model.name, description=description,
                                                    tags=tags) and (description or tags):
            model.update(description=description, tags=tags)
        return model

    def log_model(self, *, name: str, python_model: Any, code: str | Path,
                  input_example: Any, artifacts: Mapping[str, str | Path] | None = None,
                  **options: Any) -> LoggedModel:
        """Log a :class:`~batchml.PythonModel` (its class, ``"module:Class"``, or an
        instance without state) whose code is ``code`` (a .py file or a package folder), with
        ``artifacts`` (name -> file or folder), as a run and the next version of registered
        model ``name``. ``input_example`` (a DataFrame or parquet path) gives the input
        columns; options: ``classes``, ``params``, ``requirements``, ``signature``,
        ``validation``, ``label_column``, ``alias``, ``description``. Returns a
        :class:`~batchml.custom_model.LoggedModel` (``.run``, ``.version``, ``.gate``).
        See docs/custom-models.md."""
        from ..custom_model import log_python_model

        return log_python_model(self, name=name, python_model=python_model, code=code,
                                input_example=input_example, artifacts=artifacts, **options)

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
        checked = {_check_name("metric name", k): float(v) for k, v in (metrics or {}).items()}
        tag_list = list(dict.fromkeys(_check_name("tag", t) for t in tags))
        run_id = self.backend.create_run(
            flow, params=dict(params or {}), prefect_flow_run_id=prefect_flow_run_id,
            code_fingerprint=code_fingerprint, data_fingerprint=data_fingerprint,
            metrics=checked, tags=tag_list)
        return Run(self, run_id)

    def transaction(self) -> Any:
        """A context manager: every catalog write inside it (``create_run``, ``log_metrics``,
        ``add_tag``, ``finish`` ...) commits once, when the block ends, or not at all."""
        return self.backend.transaction()

    def run(self, run_id: str) -> Run:
        """The run with this path-like id (``"train/42"``); raises :class:`RunNotFound`."""
        run = Run(self, run_id)
        run._row  # noqa: B018 - load now so a wrong id fails here, not later
        return run

    def runs(self, flow: str | None = None, *, tag: str | None = None,
             successful: bool | None = None, limit: int | None = None) -> list[Run]:
        """Runs newest first, optionally of one flow, carrying ``tag`` now, and by outcome."""
        ids = self.backend.run_ids(flow, tag=tag, successful=successful, limit=limit)
        return [Run(self, i) for i in ids]

    def latest_run(self, flow: str, *, tag: str | None = None,
                   successful: bool = True) -> Run:
        """The newest run of ``flow`` (carrying ``tag`` if given); raises if there is none.

        With a tag this is one indexed lookup on the tags table joined to the run, so it stays
        flat in the number of runs.
        """
        run_id = self.backend.latest_run_id(flow, tag=tag, successful=successful)
        if run_id is None:
            what = f"run of flow {flow!r}" + (f" tagged {tag!r}" if tag else "")
            if successful:
                what = "successful " + what
            raise (ModelNotFound if tag else RunNotFound)(
                f"No {what}.",
                hint="Train one with `batchml train`, or tag a run with `batchml tag add`.",
            )
        return Run(self, run_id)

    def search_runs(self, flow: str | None = None, *, where: str | None = None,
                    order_by: str | None = None, tag: str | None = None) -> pd.DataFrame:
        """Runs as a DataFrame with ``metrics.*`` and ``params.*`` columns, MLflow-style.

        ``where`` is a SQL filter over that frame's columns (quote dotted names:
        ``"metrics.roc_auc" > 0.8``); ``order_by`` is like ``"metrics.roc_auc DESC"``.
        Runs on a private in-memory copy, so a filter can never modify the catalog.
        """
        return self.backend.search_runs(flow, where=where, order_by=order_by, tag=tag)

    def runs_overview(self, flow: str | None = None, *, tag: str | None = None,
                      limit: int = 50) -> pd.DataFrame:
        """What ``batchml runs`` lists: runs newest first (of ``flow``, carrying ``tag``) with
        status, duration, model, key metrics and current tags."""
        return self.backend.runs_overview(flow, tag=tag, limit=limit)

    def recent_file_errors(self, window_s: float = 3600) -> dict[str, int]:
        """Files that failed or were quarantined in batches of the last ``window_s``."""
        return self.backend.recent_file_errors(window_s)

    def drift_alerts(self, window_s: float = 3600.0) -> int:
        """Drift alerts recorded in the last ``window_s`` seconds (0 before the catalog holds
        drift results); the ``batchml_drift_alerts`` metric."""
        return self.backend.drift_alerts(window_s)

    def sql(self, query: str, params: Iterable[Any] | None = None, *, write: bool = False,
            views: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run SQL against the catalog (read-only unless ``write``) and return a DataFrame.

        ``views`` registers extra relations (DataFrames, pyarrow datasets) for this query only,
        e.g. the predictions of an S3 outbox.
        """
        return self.backend.sql(query, params, write=write, views=views)


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
        row = self.catalog.backend.get_run(self.id)
        if row is None:
            raise RunNotFound(f"No run {self.id!r} in {self.catalog.path}.",
                              hint="List runs with `batchml runs`.")
        return row

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
        return self.catalog.backend.metrics(self.id)

    @property
    def tags(self) -> set[str]:
        """The tags the run carries now (always read fresh: tags change)."""
        return self.catalog.backend.tags(self.id)

    def tag_history(self) -> pd.DataFrame:
        """Every time a tag was added to or removed from this run."""
        return self.catalog.backend.tag_history(self.id)

    @cached_property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        """Artifacts by name: uri, sha256, bytes, kind."""
        return self.catalog.backend.artifacts(self.id)

    @cached_property
    def models(self) -> dict[str, dict[str, Any]]:
        """Models logged by the run, by name: flavor, signature, artifact, is_primary."""
        return self.catalog.backend.models(self.id)

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
        self.catalog.backend.set_params(self.id, merged)
        self.refresh()

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0) -> None:
        """Record metric values (replacing the same key and step)."""
        checked = {_check_name("metric name", k): float(v) for k, v in metrics.items()}
        self.catalog.backend.log_metrics(self.id, checked, step)
        self.__dict__.pop("metrics", None)

    def add_tag(self, tag: str, *, note: str | None = None) -> bool:
        """Put ``tag`` on the run. Idempotent: returns False if it already carries it."""
        _check_name("tag", tag)
        return self.catalog.backend.add_tag(self.id, tag, note)

    def remove_tag(self, tag: str) -> bool:
        """Take ``tag`` off the run, keeping its history. Returns False if it was not there."""
        return self.catalog.backend.remove_tag(self.id, tag)

    def set_data_fingerprint(self, value: str) -> None:
        """Record the hash of the run's input data (so runs on the same data compare)."""
        self._require_running("set the data fingerprint")
        self.catalog.backend.set_data_fingerprint(self.id, value)
        self.refresh()

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """End the run as ``completed`` or ``failed`` (with the error)."""
        if status not in ("completed", "failed"):
            raise ValueError("status must be 'completed' or 'failed'")
        done = self.catalog.backend.end_run(self.id, status, error)
        if not done:
            raise InvalidRunState(f"Run {self.id} is not running; it cannot be finished again.")
        self.refresh()

    def log_artifact(self, name: str, data: bytes, *, kind: str = "file") -> dict[str, Any]:
        """Store ``data`` in the artifact store under this run and record its sha256."""
        key = f"runs/{self.id}/{name}"
        stored = self.catalog.store.put(key, data)
        record = {"uri": stored.uri, "sha256": stored.sha256, "bytes": stored.size,
                  "kind": kind}
        self.catalog.backend.record_artifact(self.id, name, uri=stored.uri,
                                             sha256=stored.sha256, size=stored.size, kind=kind)
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
        self.catalog.backend.record_model(self.id, name, flavor=estimator.flavor,
                                          signature=estimator.signature.to_dict(),
                                          artifact=artifact, primary=primary)
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

