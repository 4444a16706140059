"""The input-file ledger: every discovered file, its state, claims with leases, and batches.

States: ``discovered -> claimed -> scored | quarantined | failed``. A claim is a lease: a worker
that dies leaves a claim that expires and is taken over. Claims are taken inside one exclusive
catalog transaction, so two workers never hold the same file at once. The statements are the
catalog backend's (:mod:`.backend`); this module holds the rules and the records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Backoff, CatalogError
from .records import STATES, ClaimedBatch, FileRecord, FileRef, worker_id

if TYPE_CHECKING:
    import pandas as pd

    from .model import Catalog

__all__ = ["STATES", "ClaimedBatch", "FileRecord", "FileRef", "Ledger", "worker_id"]

_RECORD_ATTEMPTS = 5
"""Tries to record a batch's outcomes, end or releases through a transient catalog error (a
dropped session, a server restart): about 4 s of backoff in all. Recording again is safe: a
file is recorded only while this worker still holds its claim."""


def _retrying(call: Any) -> Any:
    """``call()``, tried again after a transient catalog error, with backoff."""
    import time

    backoff = Backoff(base=0.25, cap=2.0)
    for attempt in range(_RECORD_ATTEMPTS):
        try:
            return call()
        except CatalogError as exc:
            if not exc.transient or attempt == _RECORD_ATTEMPTS - 1:
                raise
            time.sleep(backoff.failed())

class Ledger:
    """The ledger tables of a :class:`~batchml.Catalog`."""

    def __init__(self, catalog: Catalog, *, max_attempts: int = 5) -> None:
        self.catalog = catalog
        self.max_attempts = max_attempts

    def discover(self, refs: Iterable[FileRef]) -> list[str]:
        """Record files not seen before; return the ids that are new.

        Reads first: a poll that finds only known files costs one shared read, no write."""
        return self.catalog.backend.discover(list(refs))

    def claim(self, worker: str, *, limit: int, lease_s: float,
              file_ids: Sequence[str] | None = None,
              prefix: str | None = None) -> list[FileRecord]:
        """Claim up to ``limit`` pending files (new ones, or claims whose lease expired),
        optionally only those whose URI starts with ``prefix``."""
        return self.catalog.backend.claim(worker, limit=limit, lease_s=lease_s,
                                          file_ids=file_ids, prefix=prefix)

    def claim_batch(self, worker: str, *, limit: int, lease_s: float,
                    run_id: str | None = None, tag: str | None = None, flow: str = "train",
                    expect_run_id: str | None = None, file_ids: Sequence[str] | None = None,
                    prefix: str | None = None,
                    prefect_flow_run_id: str | None = None, registered: str | None = None,
                    alias: str | None = None, version: int | None = None) -> ClaimedBatch:
        """Resolve the model, claim up to ``limit`` files and open their batch, all in one
        transaction, so a batch's ``started_at`` is never later than the moment its model was
        chosen (a tag removed after that is removed after the batch started).

        The model is the version of registered model ``registered`` that ``alias`` points
        at now (or its ``version``), else ``run_id``, else the newest successful run of
        ``flow`` carrying ``tag``. The batch records the registered model, version and alias
        (for a run or a tag: the version the run is registered as, if any).
        When it is not ``expect_run_id`` (the model the caller has loaded), nothing is claimed:
        the caller loads the returned ``model_run_id`` and asks again. ``model_run_id`` is None
        when no run carries the tag (or the alias is not set, the version not there)."""
        return self.catalog.backend.claim_batch(
            worker, limit=limit, lease_s=lease_s, run_id=run_id, tag=tag, flow=flow,
            expect_run_id=expect_run_id, file_ids=file_ids, prefix=prefix,
            prefect_flow_run_id=prefect_flow_run_id, registered=registered, alias=alias,
            version=version)

    def renew(self, file_ids: Sequence[str], worker: str, *,
              lease_s: float) -> tuple[set[str], datetime]:
        """Extend the leases of files this worker still holds; return the ids still held and
        the new expiry. A file missing from the answer was taken over (its lease expired)."""
        return self.catalog.backend.renew(file_ids, worker, lease_s=lease_s)

    def release(self, file_ids: Sequence[str], worker: str, *, reason: str | None = None,
                count_attempt: bool = False) -> int:
        """Give claimed files back as pending (shutdown, no model yet, a transient error)."""
        return int(_retrying(lambda: self.catalog.backend.release(
            file_ids, worker, reason=reason, count_attempt=count_attempt,
            max_attempts=self.max_attempts)))

    def finish(self, file_id: str, worker: str, *, state: str, error: str | None = None,
               model_run_id: str | None = None, batch_id: str | None = None,
               output_uri: str | None = None, rows: int | None = None) -> bool:
        """Mark a claimed file scored / quarantined / failed. False if the claim was lost."""
        assert state in ("scored", "quarantined", "failed")
        return self.catalog.backend.finish_file(
            file_id, worker, state=state, error=error, model_run_id=model_run_id,
            batch_id=batch_id, output_uri=output_uri, rows=rows)

    def requeue(self, *, uri: str | None = None, model_run_id: str | None = None) -> list[str]:
        """Send scored or quarantined files back to pending on purpose (``batchml reprocess``)."""
        if uri is None and model_run_id is None:
            raise ValueError("Say which files to reprocess: a URI or a model run.")
        return self.catalog.backend.requeue(uri=uri, model_run_id=model_run_id)

    def has_pending(self, prefix: str | None = None) -> bool:
        """True when some file (under ``prefix``) waits to be claimed: new, or its claim's
        lease expired."""
        return self.catalog.backend.has_pending(prefix)

    def get(self, file_id: str) -> FileRecord | None:
        """One ledger row."""
        return self.catalog.backend.get_file(file_id)

    def files(self, state: str | None = None, *, limit: int | None = None) -> pd.DataFrame:
        """The ``file_status`` view, optionally one state; with ``limit`` only the files
        updated last (newest first)."""
        if state is not None and state not in STATES:
            raise ValueError(f"Unknown state {state!r}; use one of {', '.join(STATES)}.")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise ValueError(f"limit must be a whole number >= 0, not {limit!r}.")
        return self.catalog.backend.files(state, limit=limit)

    def counts(self) -> dict[str, int]:
        """Files per state."""
        return {s: 0 for s in STATES} | self.catalog.backend.file_counts()

    # --- batches ---------------------------------------------------------------------------

    def start_batch(self, model_run_id: str | None, *,
                    prefect_flow_run_id: str | None = None) -> str:
        """Open a prediction batch and return its id."""
        return self.catalog.backend.start_batch(model_run_id,
                                                prefect_flow_run_id=prefect_flow_run_id)

    def record_file(self, batch_id: str, outcome: Any, worker: str) -> bool:
        """Record one file's outcome in the batch and move its ledger row, atomically."""
        return bool(self.record_files(batch_id, [outcome], worker))

    def record_files(self, batch_id: str, outcomes: Sequence[Any], worker: str, *,
                     end: Mapping[str, Any] | None = None) -> set[str]:
        """Record the outcomes of several files of a batch in one transaction: each file's
        ledger row moves and its ``batch_files`` row is written only if this worker still holds
        its claim. With ``end`` (``files``, ``rows``, ``duration_ms``, ``error``) the batch is
        closed in the same transaction, its ``files`` and ``rows`` being those recorded before
        this call plus the outcomes this call records. Returns the ids recorded. A transient
        catalog error is retried (a few seconds): outcomes are not lost to a dropped session."""
        done: set[str] = _retrying(
            lambda: self.catalog.backend.record_files(batch_id, outcomes, worker, end=end))
        return done

    def end_batch(self, batch_id: str, *, files: int, rows: int, duration_ms: float,
                  error: str | None = None) -> None:
        """Close a batch with its totals (retried through a transient catalog error)."""
        _retrying(lambda: self.catalog.backend.end_batch(
            batch_id, files=files, rows=rows, duration_ms=duration_ms, error=error))

    def record_drift(self, batch_id: str, rows: Sequence[Any], *, files: int,
                     scored_rows: int, model_run_id: str | None, model_name: str | None = None,
                     model_version: int | None = None) -> int:
        """Record a batch's drift metrics (:mod:`batchml.drift`), retried through a
        transient catalog error."""
        return int(_retrying(lambda: self.catalog.backend.record_drift(
            batch_id, rows, files=files, scored_rows=scored_rows, model_run_id=model_run_id,
            model_name=model_name, model_version=model_version)))

    def batch_drift(self, batch_id: str | None = None, *, batches: int = 20,
                    alerts_only: bool = False) -> list[dict[str, Any]]:
        """Drift rows of ``batch_id``, or of the ``batches`` measured last (newest first,
        alerts first); only alerts with ``alerts_only``."""
        return self.catalog.backend.batch_drift(batch_id, batches=batches,
                                                alerts_only=alerts_only)

    def recent_batches(self, limit: int = 20) -> pd.DataFrame:
        """The ``limit`` prediction batches started last, newest first, with their totals and
        their files' outcomes (``scored``, ``quarantined``, ``failed``, ``positives``)."""
        return self.catalog.backend.recent_batches(max(0, int(limit)))

    def scored_by_hour(self, since: datetime) -> pd.DataFrame:
        """Files, rows and positives scored per hour (UTC) since ``since``, oldest first;
        hours without a scored file are left out."""
        return self.catalog.backend.scored_by_hour(since)

    def record_rejected_event(self, source: str, message_id: str, body: str,
                              error: str) -> None:
        """Keep an unparseable source event in the ledger (quarantined) so it is not lost."""
        ref = FileRef(f"{source}#message={message_id}", etag=message_id)
        self.catalog.backend.record_rejected_event(
            ref, json.dumps({"error": error, "body": body[:4000]}))

    def ensure_predictions_view(self, outbox_root: str) -> bool:
        """Create the ``predictions`` view over a local outbox's parquet (once it has files).

        A plain ``duckdb`` session on the catalog can then query predictions with their lineage.
        S3 outboxes are registered per session by ``batchml sql`` instead (no extension needed).
        """
        if "://" in outbox_root:
            return False
        from .duckdb_init import (
            OUTPUT_FILE_COLUMN,
            glob_escape,
            local_output_kinds,
            predictions_select,
        )

        root = str(Path(outbox_root).resolve())
        # Outputs are OUTBOX/<run>/<name>.parquet, or OUTBOX/date=D/model=M/<name>.parquet in
        # the hive layout (then `date` and `model` are columns); `[!.]` skips hidden temp files
        # (a worker's in-flight output), and the root's own glob characters are escaped.
        visible = "[!.]*.parquet"
        kinds = local_output_kinds(root, visible)
        if not kinds:
            return False
        query = predictions_select(glob_escape(root), flat=kinds.flat, hive=kinds.hive,
                                   visible=visible, file_column=OUTPUT_FILE_COLUMN)
        if self.catalog.backend.has_predictions_view(query):
            return False
        self.catalog.backend.create_predictions_view(query)
        return True
