"""The catalog backend interface, and the registry of backends by URL scheme.

:class:`~batchml.catalog.Catalog`, :class:`~batchml.catalog.Run` and
:class:`~batchml.catalog.Ledger` talk to a :class:`CatalogBackend`, never to SQL text. The
DuckDB backend (``duckdb``, :mod:`.duckdb_backend`) is the one shipped; a PostgreSQL backend
implements the same methods and registers itself with :func:`register_backend`.

A catalog is named by a path (a DuckDB file) or a URL whose scheme picks the backend
(``duckdb:///srv/catalog.duckdb``; ``postgresql://...`` once that backend exists).

What every backend guarantees:

- runs are numbered per flow without gaps or races, and are facts once ended;
- a claim is a lease, taken in one transaction with the model choice and the batch it opens,
  so two workers never hold the same file at once;
- a batch's outcomes are recorded only for the files whose claim the worker still holds.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from .records import ClaimedBatch, FileRecord, FileRef


class CatalogBackend(ABC):
    """Where a catalog's runs, tags, models, file ledger and batches are stored."""

    path: Path | str
    """Where the catalog lives (a DuckDB file, or a URL without its password), for messages
    and ``batchml status``."""

    # --- schema, connections, publication ----------------------------------------------------

    @abstractmethod
    def ensure_schema(self) -> list[str]:
        """Create or upgrade the schema when it is behind; return the migrations applied."""

    @abstractmethod
    def migrate(self) -> list[str]:
        """Apply every migration the catalog lacks, in one transaction; return their names."""

    @abstractmethod
    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty catalog)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """Every catalog write inside the block commits once, when it ends, or not at all."""

    @abstractmethod
    def hold(self) -> AbstractContextManager[None]:
        """Keep the connection across the statements of this block (a worker's batch)."""

    @abstractmethod
    def close(self) -> None:
        """Let the connection (and any lock) go now."""

    @property
    @abstractmethod
    def published_path(self) -> Path | str:
        """The read-only copy people open (a server's URL when they read the catalog
        itself)."""

    @abstractmethod
    def publish(self) -> Path | str:
        """Publish the read-only copy now; return its path."""

    @abstractmethod
    def published_at(self) -> datetime | None:
        """When the read-only copy was published, read from the copy itself (None: not yet)."""

    @abstractmethod
    def sql(self, query: str, params: Iterable[Any] | None = None, *, write: bool = False,
            views: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """The ``batchml sql`` passthrough: a user's query, read-only unless ``write``."""

    # --- runs --------------------------------------------------------------------------------

    @abstractmethod
    def create_run(self, flow: str, *, params: Mapping[str, Any],
                   prefect_flow_run_id: str | None, code_fingerprint: str | None,
                   data_fingerprint: str | None, metrics: Mapping[str, float],
                   tags: Sequence[str]) -> str:
        """Start run ``flow/<next number>`` (``running``) with its step-0 metrics and tags, in
        one transaction; return its id."""

    @abstractmethod
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row (run_id, flow, number, status, started_at, ended_at, error, params,
        prefect_flow_run_id, code_fingerprint, data_fingerprint), or None."""

    @abstractmethod
    def run_ids(self, flow: str | None = None, *, tag: str | None = None,
                successful: bool | None = None, limit: int | None = None) -> list[str]:
        """Run ids newest first, optionally of one flow, carrying ``tag`` now, by outcome."""

    @abstractmethod
    def latest_run_id(self, flow: str, *, tag: str | None = None,
                      successful: bool = True) -> str | None:
        """The newest run of ``flow`` (carrying ``tag`` now; completed if ``successful``)."""

    @abstractmethod
    def search_runs(self, flow: str | None = None, *, where: str | None = None,
                    order_by: str | None = None, tag: str | None = None) -> pd.DataFrame:
        """Runs as a frame with ``metrics.*`` and ``params.*`` columns (see
        :meth:`Catalog.search_runs`)."""

    @abstractmethod
    def runs_overview(self, flow: str | None = None, *, tag: str | None = None,
                      limit: int = 50) -> pd.DataFrame:
        """What ``batchml runs`` lists: newest first, with key metrics and current tags."""

    @abstractmethod
    def set_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Replace the run's parameters."""

    @abstractmethod
    def set_data_fingerprint(self, run_id: str, value: str) -> None:
        """Record the hash of the run's input data."""

    @abstractmethod
    def end_run(self, run_id: str, status: str, error: str | None) -> bool:
        """End a running run as ``completed`` or ``failed``; False if it was not running."""

    # --- metrics, tags, artifacts, models ----------------------------------------------------

    @abstractmethod
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values, replacing the same key and step."""

    @abstractmethod
    def metrics(self, run_id: str) -> dict[str, float]:
        """The latest value (highest step) of each metric."""

    @abstractmethod
    def tags(self, run_id: str) -> set[str]:
        """The tags the run carries now."""

    @abstractmethod
    def tag_history(self, run_id: str) -> pd.DataFrame:
        """Every time a tag was added to or removed from the run (tag, added_at, removed_at,
        note)."""

    @abstractmethod
    def add_tag(self, run_id: str, tag: str, note: str | None) -> bool:
        """Put ``tag`` on the run; False if it carries it already. Raises
        :class:`~batchml.errors.RunNotFound`."""

    @abstractmethod
    def remove_tag(self, run_id: str, tag: str) -> bool:
        """Take ``tag`` off the run, keeping its history; False if it was not there."""

    @abstractmethod
    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Artifacts by name: uri, sha256, bytes, kind."""

    @abstractmethod
    def record_artifact(self, run_id: str, name: str, *, uri: str, sha256: str, size: int,
                        kind: str) -> None:
        """Record (or replace) an artifact stored for the run."""

    @abstractmethod
    def models(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Models by name: flavor, signature (a dict), artifact, is_primary."""

    @abstractmethod
    def record_model(self, run_id: str, name: str, *, flavor: str,
                     signature: Mapping[str, Any], artifact: str, primary: bool) -> None:
        """Record (or replace) a model of the run; a primary one takes over from the last."""

    # --- the file ledger ---------------------------------------------------------------------

    @abstractmethod
    def discover(self, refs: Sequence[FileRef]) -> list[str]:
        """Record files not seen before; return the ids that are new."""

    @abstractmethod
    def claim(self, worker: str, *, limit: int, lease_s: float,
              file_ids: Sequence[str] | None = None,
              prefix: str | None = None) -> list[FileRecord]:
        """Claim up to ``limit`` pending files (new, or their lease expired)."""

    @abstractmethod
    def claim_batch(self, worker: str, *, limit: int, lease_s: float, run_id: str | None,
                    tag: str | None, flow: str, expect_run_id: str | None,
                    file_ids: Sequence[str] | None, prefix: str | None,
                    prefect_flow_run_id: str | None, registered: str | None = None,
                    alias: str | None = None, version: int | None = None) -> ClaimedBatch:
        """Choose the model, claim files and open their batch in one transaction (see
        :meth:`Ledger.claim_batch`)."""

    @abstractmethod
    def renew(self, file_ids: Sequence[str], worker: str, *,
              lease_s: float) -> tuple[set[str], datetime]:
        """Extend the leases this worker still holds; return those ids and the new expiry."""

    @abstractmethod
    def release(self, file_ids: Sequence[str], worker: str, *, reason: str | None,
                count_attempt: bool, max_attempts: int) -> int:
        """Give claimed files back as pending (or failed once out of attempts)."""

    @abstractmethod
    def finish_file(self, file_id: str, worker: str, *, state: str, error: str | None,
                    model_run_id: str | None, batch_id: str | None, output_uri: str | None,
                    rows: int | None) -> bool:
        """Move a claimed file to ``state``; False if the claim was lost."""

    @abstractmethod
    def requeue(self, *, uri: str | None, model_run_id: str | None) -> list[str]:
        """Send scored, quarantined or failed files back to pending (``batchml reprocess``)."""

    @abstractmethod
    def has_pending(self, prefix: str | None = None) -> bool:
        """Does some file (under ``prefix``) wait to be claimed?"""

    @abstractmethod
    def get_file(self, file_id: str) -> FileRecord | None:
        """One ledger row."""

    @abstractmethod
    def files(self, state: str | None = None, *, limit: int | None = None) -> pd.DataFrame:
        """The ``file_status`` view, optionally one state; with ``limit`` only the files
        updated last (newest first)."""

    @abstractmethod
    def file_counts(self) -> dict[str, int]:
        """Files per state (states with none left out)."""

    @abstractmethod
    def record_rejected_event(self, ref: FileRef, payload: str) -> None:
        """Keep an unparseable source event as a quarantined ledger row."""

    @abstractmethod
    def has_predictions_view(self, query: str) -> bool:
        """Is the ``predictions`` view ``query`` already (a SELECT over the outbox's parquet,
        :func:`~batchml.catalog.duckdb_init.predictions_select`)?"""

    @abstractmethod
    def create_predictions_view(self, query: str) -> None:
        """(Re)create the ``predictions`` view as ``query`` (see :meth:`has_predictions_view`;
        a backend without views over files does nothing)."""

    def has_online_predictions_view(self, pattern: str) -> bool:
        """Does the ``online_predictions`` view read the parquet glob ``pattern`` already? A
        backend without views over files answers yes (nothing to create)."""
        return True

    def create_online_predictions_view(self, pattern: str) -> None:
        """(Re)create the ``online_predictions`` view over the parquet glob ``pattern`` (the
        HTTP API's request log, :mod:`batchml.api.prediction_log`). Default: nothing."""
        return None

    # --- batches -----------------------------------------------------------------------------

    @abstractmethod
    def start_batch(self, model_run_id: str | None, *,
                    prefect_flow_run_id: str | None = None) -> str:
        """Open a prediction batch; return its id."""

    @abstractmethod
    def record_files(self, batch_id: str, outcomes: Sequence[Any], worker: str, *,
                     end: Mapping[str, Any] | None = None) -> set[str]:
        """Record file outcomes of a batch (and close it with ``end``) in one transaction."""

    @abstractmethod
    def end_batch(self, batch_id: str, *, files: int, rows: int, duration_ms: float,
                  error: str | None = None) -> None:
        """Close a batch with its totals (``failed`` when ``error``)."""

    @abstractmethod
    def recent_file_errors(self, window_s: float = 3600) -> dict[str, int]:
        """Files of batches that ended ``failed`` / ``quarantined`` in the last ``window_s``."""

    @abstractmethod
    def recent_batches(self, limit: int) -> pd.DataFrame:
        """The ``limit`` prediction batches started last, newest first: ``batch_id``,
        ``model_run_id``, ``status``, ``started_at``, ``ended_at``, ``files``, ``rows``,
        ``duration_ms``, ``error``, ``params`` (JSON text), and from the batch's files
        ``scored``, ``quarantined``, ``failed`` (counts) and ``positives`` (their sum; NULL when none recorded any)."""

    @abstractmethod
    def scored_by_hour(self, since: datetime) -> pd.DataFrame:
        """The files scored since ``since`` per hour (``hour``: its start, UTC; hours without
        any left out), oldest first: ``files``, ``rows``, ``positives`` (NULL when no file of
        the hour recorded them)."""

    # --- backfills (SQL shared by both dialects: backfill_sql.py) -----------------------------

    @abstractmethod
    def start_backfill(self, *, model_ref: str, model_run_id: str, model_name: str | None,
                       model_version: int | None, since: datetime, until: datetime | None,
                       source: str, created_by: str) -> tuple[str, bool]:
        """Open a backfill of the scored files discovered in [since, until) under ``source``
        (a URI prefix, '' for any) with its inputs, in one transaction; ``(id, created)``:
        an unfinished backfill of the same reference, window and source is returned instead."""

    @abstractmethod
    def backfills(self, backfill_id: str | None = None) -> list[dict[str, Any]]:
        """Backfill rows (all, newest first, or the one named)."""

    @abstractmethod
    def backfill_files(self, backfill_id: str) -> list[dict[str, Any]]:
        """The inputs of a backfill with their state, output and error."""

    @abstractmethod
    def claim_backfill(self, backfill_id: str, worker: str, *, limit: int, lease_s: float,
                       model_run_id: str, prefect_flow_run_id: str | None
                       ) -> tuple[str | None, list[FileRecord], datetime]:
        """Claim up to ``limit`` unfinished inputs of a backfill (pending, or their lease
        expired) and open their prediction batch, in one transaction: (batch id or None,
        records, lease expiry)."""

    @abstractmethod
    def renew_backfill(self, backfill_id: str, batch_id: str, worker: str, *,
                       lease_s: float) -> tuple[set[str], datetime]:
        """Extend the leases ``worker`` holds in the backfill; the ids still held."""

    @abstractmethod
    def release_backfill(self, backfill_id: str, file_ids: Sequence[str], worker: str,
                         reason: str | None) -> int:
        """Give claimed inputs back (a transient error); how many were given back."""

    @abstractmethod
    def record_backfill(self, backfill_id: str, batch_id: str, outcomes: Sequence[Any],
                        worker: str, *, end: Mapping[str, Any] | None = None) -> set[str]:
        """Record outcomes (scored, missing, quarantined, failed) of inputs ``worker`` still
        holds, their ``batch_files`` rows and the current output in ``files``; with ``end``
        close the batch; update the backfill's counts (closing it when none is left). The ids
        recorded."""

    @abstractmethod
    def backfill_open(self, backfill_id: str) -> tuple[int, datetime | None]:
        """Inputs of the backfill not finished, and the earliest lease among claimed ones."""

    def drift_alerts(self, window_s: float = 3600.0) -> int:
        """Drift alerts recorded in the last ``window_s`` seconds (``batch_drift``; 0 while
        the catalog has no such table). Both shipped backends: :mod:`.metrics_sql`."""
        return 0

    # --- the model registry (SQL shared by both dialects: registry_sql.py) --------------------

    @abstractmethod
    def create_registered_model(self, name: str, *, description: str | None,
                                tags: Mapping[str, str] | None) -> bool:
        """Create a registered model; False if the name exists already."""

    @abstractmethod
    def update_registered_model(self, name: str, *, description: str | None = None,
                                tags: Mapping[str, str] | None = None) -> None:
        """Set the description (when given) and merge ``tags`` into the model's tags."""

    @abstractmethod
    def registered_models(self, name: str | None = None) -> list[dict[str, Any]]:
        """Registered models (name, description, tags, created_at, updated_at,
        latest_version, aliases as {alias: version}), all or the one named."""

    @abstractmethod
    def create_model_version(self, name: str, run_id: str, model: str, *,
                             description: str | None, created_by: str) -> tuple[int, bool]:
        """Register ``model`` of completed run ``run_id`` as the next version of ``name``
        (created when new); ``(version, created)``: the same model again returns its
        version. Raises :class:`~batchml.errors.RegistryError` for a missing or unfinished
        run or model."""

    @abstractmethod
    def model_versions(self, name: str, version: int | None = None, *,
                       run_id: str | None = None) -> list[dict[str, Any]]:
        """Versions of ``name`` (deleted ones too, with ``deleted_at``), oldest first."""

    @abstractmethod
    def versions_of_run(self, run_id: str) -> list[tuple[str, int]]:
        """The (name, version) pairs a run is registered as."""

    @abstractmethod
    def delete_model_version(self, name: str, version: int) -> None:
        """Delete a version (its number and history stay); refused while an alias holds it."""

    @abstractmethod
    def move_alias(self, name: str, alias: str, version: int | None, *, expect: int | None,
                   moved_by: str, reason: str | None) -> int:
        """Compare and set: point ``alias`` at ``version`` (None: remove it) if it points at
        ``expect`` now (None: unset), and record the move; return its number. Raises
        :class:`~batchml.errors.AliasConflict` naming the current holder otherwise, and
        :class:`~batchml.errors.RegistryError` for a missing or deleted version or one whose
        run did not complete."""

    @abstractmethod
    def alias_target(self, name: str, alias: str) -> tuple[int, str, str] | None:
        """(version, run_id, model) the alias points at now, or None."""

    @abstractmethod
    def alias_history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        """Every move of the model's aliases (the ``alias_history`` view), oldest first."""

    @abstractmethod
    def alias_at(self, name: str, alias: str, when: datetime) -> int | None:
        """The version ``alias`` pointed at, at time ``when`` (None: unset)."""

    # --- drift per batch (SQL shared by both dialects: drift_sql.py) --------------------------

    @abstractmethod
    def record_drift(self, batch_id: str, rows: Sequence[Any], *, files: int,
                     scored_rows: int, model_run_id: str | None, model_name: str | None,
                     model_version: int | None) -> int:
        """Store a batch's drift metrics (:class:`batchml.drift.DriftRow`), replacing any
        it had, in one transaction; return how many."""

    @abstractmethod
    def batch_drift(self, batch_id: str | None = None, *, batches: int = 20,
                    alerts_only: bool = False) -> list[dict[str, Any]]:
        """``batch_drift`` rows of one batch, or of the ``batches`` measured last; newest
        first, alerts first."""

    # --- moving a whole catalog (batchml.catalog.transfer) -----------------------------------

    @abstractmethod
    def dump_tables(self) -> dict[str, pa.Table]:
        """Every row of every catalog table (:data:`batchml.catalog.transfer.TABLES`), read in
        one consistent snapshot, as Arrow tables by name: columns in the schema's order, rows
        in the order of each table's key, JSON columns (``runs.params``, ``models.signature``)
        as JSON text. Both backends give the same column names and Arrow types."""

    @abstractmethod
    def load_tables(self, tables: Mapping[str, pa.Table]) -> dict[str, int]:
        """Load ``tables`` (as :meth:`dump_tables` gives them, columns in any order) into this
        catalog, which must be empty and at the current schema, in ONE transaction; return the
        rows per table as counted in this catalog before committing.

        Afterwards sets what the rows imply: the next run number of each flow continues after
        its highest and the tag sequence after the highest ``tag_id``. Raises
        :class:`~batchml.errors.CatalogError`, changing nothing, when a catalog table holds
        rows already (naming them), when a table or column is not this catalog's, or when a
        row does not load (naming the table and the server's reason)."""


# --- the registry ---------------------------------------------------------------------------

BackendFactory = Callable[..., CatalogBackend]

# scheme -> factory, or "module:attribute" imported on first use (the DuckDB backend is not
# imported until a catalog opens). Backends register at import time, as classes do, so this
# holds no state of a running catalog.
_BACKENDS: dict[str, BackendFactory | str] = {
    "duckdb": "batchml.catalog.duckdb_backend:DuckDBBackend",
    "postgresql": "batchml.catalog.postgres_backend:PostgresBackend",
    "postgres": "batchml.catalog.postgres_backend:PostgresBackend",
}


def register_backend(scheme: str, factory: BackendFactory | str) -> None:
    """Open catalog URLs ``<scheme>://...`` with ``factory(location, **options)`` (a callable,
    or ``"module:attribute"`` imported on first use)."""
    _BACKENDS[scheme.lower()] = factory


def split_location(target: str | Path) -> tuple[str, str]:
    """``(scheme, location)`` of a catalog path or URL; a plain path is a DuckDB file."""
    text = str(target)
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme.isidentifier():
        return "duckdb", text
    return scheme.lower(), rest if scheme.lower() == "duckdb" else text


def open_backend(target: str | Path, **options: Any) -> CatalogBackend:
    """The backend for a catalog path or URL, opened with ``options`` (``lock_timeout_s``,
    ``published_path``, ``publish_interval_s`` for DuckDB)."""
    scheme, location = split_location(target)
    factory = _BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(f"No catalog backend for {scheme}:// URLs.",
                          hint=f"Known: {', '.join(sorted(_BACKENDS))}; a plain path is a "
                               "DuckDB file.")
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
        _BACKENDS[scheme] = factory
    return factory(location, **options)

