"""The worker: discover files from a source, claim a micro-batch, resolve the model once,
score each file in isolation, and record everything in the ledger.

``Worker.run_batch`` is what the prediction flow calls; ``Worker.run`` loops for
``batchml watch``. One bad file never fails its neighbours; a missing model leaves files
pending; a transient error releases the claim for a later retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BatchMLError, ModelNotFound, is_transient
from .ledger import FileRecord, FileRef, Ledger, worker_id
from .scoring import FileOutcome, ModelCache, Outbox, score_file

if TYPE_CHECKING:
    from .catalog import Catalog
    from .settings import Settings

log = logging.getLogger("batchml.worker")


@dataclass
class BatchReport:
    """What one micro-batch did."""

    batch_id: str | None
    model_run_id: str | None
    outcomes: list[FileOutcome] = field(default_factory=list)
    released: int = 0
    error: str | None = None

    @property
    def rows(self) -> int:
        return sum(o.rows or 0 for o in self.outcomes)

    def table(self) -> list[dict[str, Any]]:
        """One row per file, for a Prefect table artifact."""
        return [{"file": o.source_uri, "status": o.status, "rows": o.rows,
                 "positives": o.positives, "output": o.output_uri, "error": o.error}
                for o in self.outcomes]


class Worker:
    """Scores files from one source into one outbox."""

    def __init__(self, catalog: Catalog, source: Any, settings: Settings, *,
                 outbox: Outbox | None = None, run_id: str | None = None,
                 tag: str | None = None, cache: ModelCache | None = None,
                 name: str | None = None) -> None:
        self.catalog = catalog
        self.source = source
        self.settings = settings
        self.ledger = Ledger(catalog)
        s3 = getattr(source, "client", None)
        if outbox is None:
            if str(settings.outbox).startswith("s3://") and s3 is None:
                from .store import s3_client

                s3 = s3_client(settings.s3_endpoint_url, settings.s3_region)
            outbox = Outbox(str(settings.outbox), s3=s3)
        self.outbox = outbox
        self.run_id = run_id
        self.tag = tag if tag is not None or run_id is not None else settings.model_tag
        self.cache = cache or ModelCache(catalog, flow=settings.train_flow)
        self.name = name or worker_id()
        self._view_ready = False

    @classmethod
    def for_source(cls, settings: Settings, uri: str | None = None, *,
                   run_id: str | None = None, tag: str | None = None) -> Worker:
        """A worker on the source at ``uri`` (default: the inbox), with rejected queue
        messages kept in the ledger."""
        from .catalog import Catalog
        from .sources import open_source

        catalog = Catalog.from_settings(settings)
        source = open_source(uri or str(settings.inbox), settings=settings,
                             on_rejected=Ledger(catalog).record_rejected_event)
        return cls(catalog, source, settings, run_id=run_id, tag=tag)

    def discover(self) -> list[FileRef]:
        """Poll the source and record new files; acknowledge queue messages afterwards.

        Returns the files seen for the first time."""
        refs = self.source.poll()
        new = set(self.ledger.discover(refs))
        ack = getattr(self.source, "ack", None)
        if ack is not None:
            ack()  # only now are the files safely in the ledger
        return [r for r in refs if r.file_id in new]

    def run_batch(self, *, limit: int = 50, file_ids: list[str] | None = None,
                  prefect_flow_run_id: str | None = None,
                  on_claimed: Callable[[list[FileRecord]], None] | None = None) -> BatchReport:
        """Claim up to ``limit`` pending files and score them with one model."""
        try:
            model = self.cache.resolve(run_id=self.run_id, tag=self.tag)
        except ModelNotFound as exc:
            return BatchReport(None, None, error=str(exc))  # files stay pending
        claimed = self.ledger.claim(self.name, limit=limit, lease_s=self.settings.lease_s,
                                    file_ids=file_ids, prefix=self._claim_prefix())
        if not claimed:
            return BatchReport(None, model.run_id)
        if on_claimed is not None:
            on_claimed(claimed)
        batch_id = self.ledger.start_batch(model.run_id, prefect_flow_run_id=prefect_flow_run_id)
        report = BatchReport(batch_id, model.run_id)
        start = time.perf_counter()
        for i, record in enumerate(claimed):
            try:
                outcome = self._score_one(record, model, batch_id)
            except BaseException as exc:
                # Only transient trouble (outbox full or unreachable, S3 throttling) and
                # interruption get here: the file and the rest of the batch go back to
                # pending without spending an attempt, to be scored once the outage is over.
                rest = [r.file_id for r in claimed[i:]]
                report.released += self.ledger.release(rest, self.name, reason=str(exc))
                report.error = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt / SystemExit: claims are released, now stop
                break
            report.outcomes.append(outcome)
            self.ledger.record_file(batch_id, outcome, self.name)
        self.ledger.end_batch(batch_id, files=len(report.outcomes), rows=report.rows,
                              duration_ms=(time.perf_counter() - start) * 1000,
                              error=report.error)
        if not self._view_ready and any(o.output_uri for o in report.outcomes):
            try:
                self.ledger.ensure_predictions_view(self.outbox.root)
                self._view_ready = True
            except Exception:  # a convenience view must never fail a batch
                log.warning("could not create the predictions view", exc_info=True)
        return report

    def has_pending(self) -> bool:
        """True when a file of this worker's source waits to be claimed."""
        return self.ledger.has_pending(self._claim_prefix())

    def _claim_prefix(self) -> str | None:
        """Claim only files of this worker's source (another source's files are not
        readable here). Queue and list sources name files anywhere."""
        from .sources import DirectorySource, S3PrefixSource

        if isinstance(self.source, DirectorySource):
            return self.source.uri.rstrip("/") + "/"
        if isinstance(self.source, S3PrefixSource):
            return self.source.uri.rstrip("/") + "/"
        return None

    def _score_one(self, record: FileRecord, model: Any, batch_id: str) -> FileOutcome:
        reprocess = (record.error or "") == "reprocess requested"
        try:
            with self.source.fetch(record) as path:
                outcome = score_file(path, record, model, self.outbox, batch_id,
                                     batch_rows=self.settings.batch_rows,
                                     budget_bytes=self.settings.memory_budget_mb * 2**20,
                                     reprocess=reprocess)
        except FileNotFoundError:
            outcome = FileOutcome(record.file_id, record.source_uri, "failed", model.run_id,
                                  error=f"{record.source_uri} vanished before it could be "
                                        "read; nothing to score.")
        except Exception as exc:
            if is_transient(exc):
                raise
            # Anything else is about this file: quarantine it so it can never block the
            # inbox, and keep the reason.
            detail = str(exc) if isinstance(exc, BatchMLError) else \
                f"{record.source_uri} could not be scored: {type(exc).__name__}: {exc}"
            if not isinstance(exc, BatchMLError):
                log.exception("unexpected error scoring %s", record.source_uri)
            outcome = FileOutcome(record.file_id, record.source_uri, "quarantined",
                                  model.run_id, error=detail)
        if outcome.status == "quarantined":
            try:
                moved = self.source.quarantine(record, outcome.error or "")
            except Exception as exc:  # the ledger still says why; the bytes stay put
                log.warning("could not move %s to quarantine: %s", record.source_uri, exc)
                moved = None
            if moved:
                outcome.error = f"{outcome.error} (moved to {moved})"
        return outcome

    def run(self, stop: threading.Event, *, idle_s: float = 1.0, limit: int = 50,
            on_batch: Callable[[BatchReport], None] | None = None) -> None:
        """Discover and score until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.discover()
                report = self.run_batch(limit=limit)
            except BatchMLError as exc:
                if not exc.transient:
                    raise
                log.warning("transient error, retrying: %s", exc)
                stop.wait(idle_s)
                continue
            if on_batch is not None and (report.outcomes or report.error):
                on_batch(report)
            if not report.outcomes:
                self.source.wait(idle_s)
