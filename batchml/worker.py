"""The worker: discover files from a source, claim a micro-batch, resolve the model once,
score each file in isolation, and record everything in the ledger.

``Worker.run_batch`` is what the prediction flow calls; ``Worker.run`` loops for
``batchml watch``. One bad file never fails its neighbours; a missing model leaves files
pending; a transient error releases the claim for a later retry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import ClaimedBatch, FileRecord, FileRef, Ledger, worker_id
from .errors import Backoff, BatchMLError, CatalogError, ConfigError, ModelNotFound, is_transient
from .limits import Limits
from .params import ParamLayer, params_json, resolve_params
from .resolve import ModelRef, nothing_resolved
from .scorer import CommitRefused, ModelSpec, Scorer, ScorerConfig, ScorerDied
from .scoring import CommitGuard, FileOutcome, LoadedModel, ModelCache, Outbox, score_file

if TYPE_CHECKING:
    from .catalog import Catalog
    from .layout import Partition
    from .metrics import ServiceMetrics
    from .settings import Settings
    from .sources import Source
    from .store import S3Health

log = logging.getLogger("batchml.worker")


@dataclass
class BatchReport:
    """What one micro-batch did."""

    batch_id: str | None
    model_run_id: str | None
    outcomes: list[FileOutcome] = field(default_factory=list)
    released: int = 0
    retried: int = 0  # files given back after the scorer process died on them
    error: str | None = None
    model_version: str | None = None
    """The registered version that scored, ``name/3`` (``name/3@alias`` when resolved through
    an alias); None for a run that is not registered."""
    params: dict[str, Any] | None = None
    """The inference parameters the batch was scored with (recorded with the batch)."""
    landed: dict[str, datetime | None] = field(default_factory=dict, repr=False)
    """When each claimed file landed (its modification time), for the latency metric."""
    claimed_at: float = 0.0
    drift: list[Any] = field(default_factory=list)
    """The batch's drift metrics (:class:`batchml.drift.DriftRow`), as recorded."""
    drift_note: str | None = None
    """Why no drift was measured (no reference, nothing counted), when drift is on."""

    @property
    def rows(self) -> int:
        return sum(o.rows or 0 for o in self.outcomes)

    def table(self) -> list[dict[str, Any]]:
        """One row per file, for a Prefect table artifact."""
        return [{"file": o.source_uri, "status": o.status, "rows": o.rows,
                 "positives": o.positives, "output": o.output_uri, "error": o.error}
                for o in self.outcomes]


#: Scores one claimed file: ``(path, record, model, outbox, batch_id) -> FileOutcome``.
ScoreFile = Callable[[Path, FileRecord, LoadedModel, Outbox, str], FileOutcome]


class Worker:
    """Scores files from one source into one outbox."""

    def __init__(self, catalog: Catalog, source: Source, settings: Settings, *,
                 outbox: Outbox | None = None, run_id: str | None = None,
                 tag: str | None = None, cache: ModelCache | None = None,
                 name: str | None = None, isolate: bool = False,
                 health: S3Health | None = None, model: str | None = None,
                 explain: int = 0, params: Mapping[str, Any] | None = None,
                 deployment_params: Mapping[str, Any] | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.catalog = catalog
        self.metrics = metrics
        """Counts recorded outcomes (:mod:`batchml.metrics`; the service's), or None."""
        self.source = source
        self.settings = settings
        self.health = health
        """Counts the S3 calls of the outbox client this worker makes (the entry point's
        tracker, see :meth:`for_source`; ``None``: a private one that only logs)."""
        self.ledger = Ledger(catalog)
        s3 = source.client
        if outbox is None:
            if str(settings.outbox).startswith("s3://") and s3 is None:
                from .store import s3_client

                s3 = s3_client(settings.s3_endpoint_url, settings.s3_region, health=health)
            outbox = Outbox(str(settings.outbox), s3=s3)
        self.outbox = outbox
        self.ref = ModelRef.from_options(run_id, tag, model=model, default_model=settings.model,
                                         default_tag=settings.model_tag,
                                         flow=settings.train_flow)
        """The model this worker scores with (a run id wins over a model reference, which
        wins over a tag)."""
        self.run_id = self.ref.run_id
        self.tag = self.ref.tag
        self.cache = cache or ModelCache(catalog, flow=settings.train_flow,
                                         threshold=settings.decision_threshold)
        self.name = name or worker_id()
        if explain and isolate:
            raise ConfigError("Per-row explanations are made when scoring in-process only.",
                              hint="Use batchml predict --explain K, or BATCHML_ISOLATE_SCORING"
                                   "=false.")
        self.explain = explain
        """Per-row explanations: the ``explain`` largest contributions per row (0: none)."""
        batch = {**({"explain": explain} if explain else {}), **(params or {})}
        self.param_layers: tuple[ParamLayer, ...] = (
            ParamLayer("deployment (flow parameter params)", deployment_params, text=True),
            ParamLayer("inbox settings (BATCHML_PARAMS)", settings.params, text=True),
            ParamLayer("batch (--param)", batch or None, text=True))
        """Inference parameter overrides, lowest precedence first (:mod:`batchml.params`):
        resolved against each model's parameters before any of its files is claimed."""
        self._params: dict[str, dict[str, Any]] = {}
        self._view_ready = False
        self._registered: tuple[str | None, int | None] = (None, None)  # the batch's version
        self.current_partition: Partition | None = None
        """The hive partition of the file being scored now (None: flat layout), for scorers of
        its pieces elsewhere (the Dask flow), so every part lands beside its manifest."""
        self._model: LoadedModel | None = None
        self._outer_hold: contextlib.ExitStack | None = None
        self.flush_files = 50
        self.flush_s = 0.5
        # isolate: score in a scorer child process (batchml serve / watch), see scorer.py
        self.scorer = Scorer(ScorerConfig.from_settings(settings, self.outbox.root),
                             self.model_spec) if isolate else None
        self._specs: dict[str, ModelSpec] = {}
        from .shadow import Shadow

        self.shadow = Shadow.for_worker(catalog, settings, self.cache, self.outbox, self.ref)
        """Scores each file again with NAME@challenger (see :mod:`batchml.shadow`), or None."""
        self._pairing: Any = None
        self.labels: Any = None
        """The labels inbox this worker polls between batches (a :class:`LabelPoller`)."""

    @classmethod
    def for_source(cls, settings: Settings, uri: str | None = None, *,
                   run_id: str | None = None, tag: str | None = None,
                   wait: threading.Event | None = None, model: str | None = None) -> Worker:
        """A worker on the source at ``uri`` (default: the inbox), with rejected queue
        messages kept in the ledger, scoring in a scorer process unless
        ``BATCHML_ISOLATE_SCORING`` is off. Its S3 calls (source and outbox) are counted by
        one tracker whose counts ``batchml status`` shows. With ``wait``, a catalog that
        cannot be reached yet is waited for (with backoff) until it answers or ``wait`` is
        set."""
        from .catalog import Catalog
        from .sources import open_source
        from .store import S3Health

        backoff = Backoff(base=1.0)
        while True:  # a host that boots while the catalog's server is away waits for it
            try:
                catalog = Catalog.from_settings(settings)
                break
            except CatalogError as exc:
                if not exc.transient or wait is None:
                    raise
                delay = backoff.failed()
                log.warning("waiting %.1f s for the catalog: %s", delay, exc)
                if wait.wait(delay):
                    raise
        health = S3Health.for_home(settings.home)
        source = open_source(uri or str(settings.inbox), settings=settings,
                             on_rejected=Ledger(catalog).record_rejected_event, health=health)
        worker = cls(catalog, source, settings, run_id=run_id, tag=tag, model=model,
                     isolate=settings.isolate_scoring, health=health)
        from .labels import LabelPoller

        worker.labels = LabelPoller.from_settings(catalog, settings)
        return worker

    def model_spec(self, model: LoadedModel) -> ModelSpec:
        """Where the scorer process finds ``model``'s bytes (read from the catalog here, so
        the scorer process never opens it)."""
        spec = self._specs.get(model.run_id)
        if spec is None or spec.name != model.name:
            run = self.catalog.run(model.run_id)
            art = run.artifacts[run.models[model.name]["artifact"]]
            spec = self._specs[model.run_id] = ModelSpec(
                model.run_id, model.name, model.flavor, art["uri"], art["sha256"],
                getattr(self.cache, "threshold", None), model.reference)
        return spec

    def params_for(self, model: LoadedModel) -> dict[str, Any]:
        """The inference parameters ``model`` scores with: its defaults overridden by
        :attr:`param_layers`. Raises :class:`~batchml.params.InvalidParams` (or a
        ``ConfigError`` for ``explain`` on a model without per-row contributions): the
        worker's configuration is wrong, not any file, so nothing is claimed."""
        params = self._params.get(model.run_id)
        if params is None:
            params = resolve_params(model.estimator.signature.params, self.param_layers)
            if params.get("explain"):
                from .explanations import check_explainable

                check_explainable(model.estimator, int(params["explain"]))
            self._params = {model.run_id: params}
        return params

    def check_params(self) -> dict[str, Any] | None:
        """Resolve the model now and check the inference parameters against it (what
        ``batchml predict`` / ``watch`` / ``serve`` do at start, so a bad value fails there with
        its message); None when there is no model yet (checked once there is)."""
        try:
            model = self.cache.resolve(self.ref)
        except ModelNotFound:
            return None
        return self.params_for(model)

    def close(self) -> None:
        """Stop the scorer process, if any (the source is the caller's to close)."""
        if self.scorer is not None:
            self.scorer.close()
        if self.labels is not None:
            self.labels.close()

    def hold_catalog(self) -> None:
        """Keep the catalog connection from now until the end of the next batch (or
        :meth:`release_catalog`): ``batchml serve`` holds it from discovery on, so finding,
        claiming, scoring and recording a file reopens the catalog at most once."""
        if self._outer_hold is None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.catalog.hold())
            self._outer_hold = stack

    def release_catalog(self) -> None:
        """End :meth:`hold_catalog` (a no-op when not holding)."""
        stack, self._outer_hold = self._outer_hold, None
        if stack is not None:
            stack.close()

    @property
    def model(self) -> LoadedModel | None:
        """The model of the last batch (None before the first, or after no model was found)."""
        return self._model

    def discover(self) -> list[FileRef]:
        """Poll the source and record new files; acknowledge queue messages afterwards.

        Returns the files seen for the first time."""
        refs = self.source.poll()
        new = set(self.ledger.discover(refs))
        self.source.ack()  # only now are the files safely in the ledger
        if self.labels is not None:  # late labels (at most every few seconds; never raises)
            self.labels.poll()
        return [r for r in refs if r.file_id in new]

    def run_batch(self, *, limit: int = 50, file_ids: list[str] | None = None,
                  prefect_flow_run_id: str | None = None,
                  on_claimed: Callable[[list[FileRecord]], None] | None = None,
                  score: ScoreFile | None = None) -> BatchReport:
        """Claim up to ``limit`` pending files and score them with one model.

        ``score`` replaces how one claimed file is scored (default: whole, in the scorer
        process or here); it is called as ``score(path, record, model, outbox, batch_id)`` and
        its failures are handled like any file's: transient ones give the rest of the batch
        back, anything else quarantines the file (see :class:`batchml.pieces.PieceScorer`).

        The model is chosen, the files claimed and the batch opened in one catalog
        transaction. While the batch runs a thread renews the leases of its files, and an
        output is committed only while its claim is held. Outcomes are recorded a few at a
        time (every ``flush_files`` files or ``flush_s`` seconds, and with the batch's end):
        an output committed but not yet recorded is scored again after a crash, to the same
        output path, so it replaces and never duplicates."""
        try:
            claim, model = self.claim_batch(limit, file_ids, prefect_flow_run_id)
        except ModelNotFound as exc:
            self._model = None
            return BatchReport(None, None, error=str(exc))  # files stay pending
        if claim.batch_id is None:
            return BatchReport(None, model.run_id)
        batch_id = claim.batch_id
        claimed = claim.records
        report = BatchReport(batch_id, model.run_id, params=self.params_for(model),
                             claimed_at=time.time(),
                             landed={r.file_id: r.mtime for r in claimed})
        self._registered = (claim.model_name, claim.model_version)
        if self.metrics is not None:
            self.metrics.model_in_use(model.run_id, claim.model_name, claim.model_version,
                                      claim.model_alias)
        if claim.model_name is not None:
            report.model_version = f"{claim.model_name}/{claim.model_version}" + (
                f"@{claim.model_alias}" if claim.model_alias else "")
        leases = _Leases(self, [r.file_id for r in claimed], claim.lease_expires_at)
        self._pairing = self._shadow_pairing(claim)
        if on_claimed is not None:
            on_claimed(claimed)
        start = time.perf_counter()
        pending: list[FileOutcome] = []
        first_pending = 0.0
        with self.catalog.hold(), leases:
            try:
                for i, record in enumerate(claimed):
                    if not leases.held(record.file_id):
                        continue  # taken over by another worker: it is scored there
                    try:
                        outcome = self._score_one(record, model, batch_id, leases, score,
                                                  report.params)
                    except _ClaimLost:
                        continue
                    except _Retried:
                        report.retried += 1
                        continue
                    except BaseException as exc:
                        # Only transient trouble (outbox full or unreachable, S3 throttling)
                        # and interruption get here: the file and the rest of the batch go back
                        # to pending without spending an attempt, to be scored once the outage
                        # is over.
                        report.error = f"{type(exc).__name__}: {exc}"
                        self._record(report, pending, leases)
                        pending = []
                        rest = [r.file_id for r in claimed[i:]]
                        leases.drop(rest)
                        report.released += self.ledger.release(rest, self.name,
                                                               reason=str(exc))
                        if not isinstance(exc, Exception):
                            raise  # KeyboardInterrupt / SystemExit: claims released, stop
                        break
                    if not pending:
                        first_pending = time.perf_counter()
                    pending.append(outcome)
                    last = i == len(claimed) - 1
                    if not last and (len(pending) >= self.flush_files
                                     or time.perf_counter() - first_pending >= self.flush_s):
                        self._record(report, pending, leases)
                        pending = []
            finally:
                # the remaining outcomes and the batch's end: one transaction
                try:
                    self._record(report, pending, leases, end={
                        "files": 0, "rows": 0, "error": report.error,
                        "duration_ms": (time.perf_counter() - start) * 1000,
                        "params": params_json(report.params)})
                finally:
                    self.release_catalog()  # recorded: readers may come in now
        if self.settings.drift:
            self._record_drift(report, model, claim)
        if not self._view_ready and any(o.output_uri for o in report.outcomes):
            try:
                self.ledger.ensure_predictions_view(self.outbox.root)
                self._view_ready = True
            except Exception:  # a convenience view must never fail a batch
                log.warning("could not create the predictions view", exc_info=True)
        return report

    def _shadow_pairing(self, claim: ClaimedBatch) -> Any:
        """The challenger that shadows this batch's champion (None: no shadow)."""
        if self.shadow is None:
            return None
        try:
            return self.shadow.pairing(claim.model_name, claim.model_version,
                                       claim.model_run_id)
        except Exception as exc:  # shadow trouble never stops the champion
            log.warning("no shadow scoring for this batch: %s", exc)
            return None

    def leases(self, claim: ClaimedBatch) -> _Leases:
        """A context that renews ``claim``'s leases every ``lease_s / 3`` while it is open
        (for work on claimed files outside :meth:`run_batch`, e.g. a file scored in pieces)."""
        return _Leases(self, [r.file_id for r in claim.records], claim.lease_expires_at)

    def claim_batch(self, limit: int, file_ids: list[str] | None = None,
                    prefect_flow_run_id: str | None = None) -> tuple[ClaimedBatch, LoadedModel]:
        """Choose the model, claim up to ``limit`` files and open their batch in one
        transaction; a model the transaction chose that is not loaded yet is loaded (outside
        it) and the claim asked again. Raises :class:`ModelNotFound` when no run qualifies."""
        model = self._model
        if model is None or (self.run_id is not None and model.run_id != self.run_id):
            model = self.cache.resolve(self.ref)
        for _ in range(5):
            self.params_for(model)  # bad parameters: refused before any file is claimed
            claim = self.ledger.claim_batch(
                self.name, limit=limit, lease_s=self.settings.lease_s, run_id=self.run_id,
                tag=self.tag, flow=self.settings.train_flow, expect_run_id=model.run_id,
                file_ids=file_ids, prefix=self._claim_prefix(),
                prefect_flow_run_id=prefect_flow_run_id,
                registered=self.ref.name if self.ref.registered else None,
                alias=self.ref.alias, version=self.ref.version)
            if claim.model_run_id is None:
                raise nothing_resolved(self.ref, self.settings.train_flow)
            if claim.model_run_id == model.run_id:
                self._model = model
                return claim, model
            model = self.cache.load(claim.model_run_id, self.ref)  # the tag moved: load
        raise ModelNotFound("The tagged model kept changing while a batch was being claimed.",
                            hint="Retrying shortly.")

    def _record(self, report: BatchReport, outcomes: list[FileOutcome], leases: _Leases,
                end: dict[str, Any] | None = None) -> None:
        """Record outcomes (and the batch's end); keep in the report only the outcomes whose
        claim was still held, so a file is reported scored by exactly one worker."""
        if not outcomes and end is None:
            return
        assert report.batch_id is not None
        if end is not None:  # the totals so far; record_files adds the outcomes it records
            end = {**end, "files": len(report.outcomes),
                   "rows": sum(o.rows or 0 for o in report.outcomes)}
        with leases.lock:
            done = self.ledger.record_files(report.batch_id, outcomes, self.name, end=end)
            leases.drop([o.file_id for o in outcomes])
        if self.metrics is not None:
            self.metrics.recorded([o for o in outcomes if o.file_id in done], report.landed,
                                  claimed_at=report.claimed_at)
        for o in outcomes:
            if o.file_id in done:
                report.outcomes.append(o)
            else:
                log.warning("claim on %s was lost before its outcome was recorded; another "
                            "worker scores it", o.source_uri)

    def _record_drift(self, report: BatchReport, model: LoadedModel,
                      claim: ClaimedBatch) -> None:
        """Merge the batch's drift counts, measure and record them (never fails a batch)."""
        from .drift import DriftThresholds
        from .drift_report import batch_drift

        if not report.outcomes or report.batch_id is None:
            return
        try:
            counts, rows, report.drift_note = batch_drift(
                model.reference, report.outcomes, DriftThresholds.from_settings(self.settings))
            if counts is not None:
                self.ledger.record_drift(report.batch_id, rows, files=counts.files,
                                         scored_rows=counts.rows, model_run_id=model.run_id,
                                         model_name=claim.model_name,
                                         model_version=claim.model_version)
                report.drift = rows
        except Exception:  # a report: never fails the batch
            log.warning("could not record the drift of batch %s", report.batch_id,
                        exc_info=True)

    def has_pending(self) -> bool:
        """True when a file of this worker's source waits to be claimed."""
        return self.ledger.has_pending(self._claim_prefix())

    def _claim_prefix(self) -> str | None:
        """Claim only files of this worker's source (another source's files are not
        readable here). Queue and list sources name files anywhere."""
        return self.source.claim_prefix

    def _score_one(self, record: FileRecord, model: LoadedModel, batch_id: str,
                   leases: _Leases | None = None, score: ScoreFile | None = None,
                   params: dict[str, Any] | None = None) -> FileOutcome:
        reprocess = (record.error or "") == "reprocess requested"
        outbox = self.outbox if leases is None else self.outbox.guarded(
            leases.commit_guard(record.file_id))
        partition = self.current_partition = self._partition(record, model, reprocess)
        if partition is not None:
            outbox = outbox.partitioned(partition)
        if params is None:  # the model's fault, not the file's: the batch stops, files wait
            params = self.params_for(model)
        try:
            with self.source.fetch(record) as path:
                if score is not None:
                    outcome = score(path, record, model, outbox, batch_id)
                elif self.scorer is not None:
                    outcome = self.scorer.score(
                        path, record, model, batch_id, reprocess=reprocess, partition=partition,
                        still_held=None if leases is None else
                        (lambda: leases.check(record.file_id)), params=params)
                else:
                    outcome = score_file(path, record, model, outbox, batch_id,
                                         batch_rows=self.settings.batch_rows,
                                         budget_bytes=self.settings.memory_budget_mb * 2**20,
                                         reprocess=reprocess,
                                         limits=Limits.from_settings(self.settings),
                                         params=params,
                                         carry=_carry(self.settings),
                                         drift=self.settings.drift)
                if self._pairing is not None and self.shadow is not None \
                        and outcome.status == "scored" and score is None:
                    self.shadow.score(self._pairing, path, record, outcome, batch_id)
        except _ClaimLost:
            raise
        except CommitRefused:
            raise _ClaimLost(record.source_uri) from None
        except ScorerDied as exc:
            outcome = self._scorer_died(record, model, exc, leases)
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

    def _partition(self, record: FileRecord, model: LoadedModel,
                   reprocess: bool) -> Partition | None:
        """Where ``record``'s output goes with ``BATCHML_OUTPUT_LAYOUT=hive`` (today's date,
        the batch's registered version or the run; :mod:`batchml.layout`); None: flat."""
        if self.settings.output_layout != "hive":
            return None
        from .catalog import utcnow
        from .layout import Partition, model_label

        name, version = self._registered
        return Partition(utcnow().date(), model_label(model.run_id, name, version),
                         replace_elsewhere=reprocess or record.attempts > 1)

    def _scorer_died(self, record: FileRecord, model: LoadedModel, exc: ScorerDied,
                     leases: _Leases | None) -> FileOutcome:
        """The scorer process died on ``record``: give the file back for another attempt
        (raises :class:`_Retried`), or after ``BATCHML_POISON_ATTEMPTS`` attempts return it
        quarantined as poison. A claim counts one attempt (released transient ones do not)."""
        uri, death = record.source_uri, exc.death
        limit = self.settings.poison_attempts
        if record.attempts < limit:
            log.warning("scorer died on %s (attempt %d of %d): %s", uri, record.attempts,
                        limit, death.describe())
            if leases is not None:
                leases.drop([record.file_id])
            self.ledger.release(
                [record.file_id], self.name, count_attempt=True,
                reason=f"{_DIED} on attempt {record.attempts} of {limit}: "
                       f"{death.describe()}. It will be tried again.")
            raise _Retried(uri)
        log.error("quarantining %s as poison: %s on attempt %d", uri, death.describe(),
                  record.attempts)
        if record.attempts == 1 or (record.error or "").startswith(_DIED):
            how = f"died on each of {record.attempts} attempts (last {death.describe()})"
        else:  # an earlier claim ended with no outcome: its worker died or lost the lease
            how = (f"died on attempt {record.attempts} of {limit} ({death.describe()}); the "
                   "attempt before ended without an outcome")
        return FileOutcome(
            record.file_id, uri, "quarantined", model.run_id,
            error=f"{uri} is poison: the scorer process {how}. Quarantined so it cannot stop "
                  "the service. Check the file (row group sizes, very long values); split it "
                  "or raise BATCHML_SCORER_MEMORY_MB / BATCHML_MEMORY_BUDGET_MB, then "
                  f"`batchml reprocess {uri}`.")

    def run_once(self, *, limit: int = 50,
                 on_batch: Callable[[BatchReport], None] | None = None) -> list[BatchReport]:
        """Discover once, then score batch after batch until nothing is left to claim (a file
        given back after its scorer process died is tried again at once). A batch that only
        says why nothing could be scored (no model yet) is reported too, last."""
        self.discover()
        reports = []
        while (report := self.run_batch(limit=limit)).outcomes or report.retried:
            reports.append(report)
            if on_batch is not None:
                on_batch(report)
        if report.error:
            reports.append(report)
            if on_batch is not None:
                on_batch(report)
        return reports

    def run(self, stop: threading.Event, *, idle_s: float = 1.0, limit: int = 50,
            on_batch: Callable[[BatchReport], None] | None = None) -> None:
        """Discover and score until ``stop`` is set."""
        if self.scorer is not None:  # claim nothing before files can be scored
            self.scorer.wait_ready()
        backoff = Backoff(base=idle_s)
        while not stop.is_set():
            try:
                self.discover()
                report = self.run_batch(limit=limit)
            except BatchMLError as exc:
                if not exc.transient:
                    raise
                # the catalog's server away: back off; anything else: try again soon
                delay = backoff.failed() if isinstance(exc, CatalogError) else idle_s
                log.warning("transient error, retrying in %.1f s: %s", delay, exc)
                stop.wait(delay)
                continue
            backoff.succeeded()
            if on_batch is not None and (report.outcomes or report.error):
                on_batch(report)
            if not report.outcomes and not report.retried:
                self.source.wait(idle_s)


def _carry(settings: Settings) -> tuple[str, ...]:
    """Input columns every output carries (the id column, for late labels)."""
    return (settings.id_column,) if settings.id_column else ()


class _ClaimLost(Exception):
    """The file's claim passed to another worker before its output was committed."""


_DIED = "The scorer process died"


class _Retried(Exception):
    """The scorer process died on the file; it was given back for another attempt."""


class _Leases:
    """The claims of a running batch: renewed every ``lease_s / 3`` by a thread, and checked
    before each output is committed."""

    def __init__(self, worker: Worker, file_ids: list[str], expires: datetime | None) -> None:
        self.worker = worker
        self.lease_s = float(worker.settings.lease_s)
        self.ids = set(file_ids)
        self.lost: set[str] = set()
        until = expires.timestamp() if expires is not None else 0.0
        self.until = dict.fromkeys(file_ids, until)  # lease expiry per file (epoch seconds)
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Leases:
        self._thread = threading.Thread(target=self._renew_loop, name="batchml-lease",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def held(self, file_id: str) -> bool:
        with self.lock:
            return file_id not in self.lost

    def drop(self, file_ids: list[str]) -> None:
        """Stop renewing these (recorded or released)."""
        with self.lock:
            self.ids.difference_update(file_ids)

    def commit_guard(self, file_id: str) -> CommitGuard:
        """The outbox's commit guard for ``file_id``: an output is committed only while the
        file's claim is held (:meth:`check`), else :class:`_ClaimLost`."""
        def guard(key: str) -> None:
            if not self.check(file_id):
                raise _ClaimLost(key)
        return guard

    def check(self, file_id: str) -> bool:
        """Is the claim on ``file_id`` still ours, for long enough to commit its output?
        Known from the last renewal while it keeps a margin of ``lease_s / 3``; otherwise
        renewed in the catalog now."""
        with self.lock:
            if file_id in self.lost:
                return False
            if time.time() < self.until.get(file_id, 0.0) - self.lease_s / 3:
                return True
            self._renew([file_id])
            return file_id not in self.lost

    def _renew(self, file_ids: list[str]) -> None:
        """Renew in the catalog, then note the files that were taken over.

        The catalog call runs without ``self.lock``: the batch's thread may hold the catalog
        connection while it waits for ``self.lock`` (in ``drop``), so holding both here in the
        other order would deadlock."""
        if not file_ids:
            return
        held, expires = self.worker.ledger.renew(file_ids, self.worker.name,
                                                 lease_s=self.lease_s)
        with self.lock:
            self._note(file_ids, held, expires)

    def _note(self, file_ids: list[str], held: set[str], expires: datetime) -> None:
        lost = set(file_ids) - held
        if lost:
            log.warning("%d claim(s) of this batch were taken over by another worker",
                        len(lost))
            self.lost |= lost
            self.ids -= lost
        for file_id in held:
            self.until[file_id] = expires.timestamp()

    def _renew_loop(self) -> None:
        every = self.lease_s / 3
        while not self._stop.wait(every):
            try:
                with self.lock:
                    ids = sorted(self.ids)
                self._renew(ids)
            except Exception:  # the next renewal, or the check before a commit, tries again
                log.warning("could not renew the batch's leases", exc_info=True)
