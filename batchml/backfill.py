"""Backfills: past inputs scored again by a chosen model into a new output version.

``run_backfill`` re-scores the files the ledger knows (discovered in ``[since, until)``,
scored before, from one source) with the model a reference names (``NAME@ALIAS``, resolved
once, when the backfill is created). Each input is claimed exactly once under its backfill
(claims with leases, :mod:`batchml.catalog.backfill_sql`), its output committed under the
claim to ``OUTBOX/<model run>/<name>-<file id>.<backfill id>.parquet`` beside the earlier ones,
and recorded with the claim still held: the catalog's ``current_outputs`` then names it, and the
``predictions`` view reads it instead of the output it supersedes. A killed backfill resumes
(``resume=ID``, or the same ask again) once its claims' leases expire; an output committed but
not recorded is written again to the same name, so it replaces and never duplicates. An input
that is gone or changed since is counted ``missing`` and the rest go on. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import FileRecord, FileRef, Ledger, worker_id
from .errors import BackfillNotFound, BatchMLError, ConfigError, is_transient
from .limits import Limits
from .resolve import ModelRef
from .scoring import FileOutcome, LoadedModel, ModelCache, Outbox, output_key, score_file

if TYPE_CHECKING:
    from .catalog import Catalog
    from .settings import Settings

log = logging.getLogger("batchml.backfill")


@dataclass
class BackfillResult:
    """A backfill as the catalog has it after this call (``created``: made by this call,
    else resumed), with the inputs found missing."""

    backfill_id: str
    created: bool
    status: str
    model_ref: str
    model_run_id: str
    files: int
    scored: int
    missing: int
    quarantined: int
    failed: int
    rows: int
    seconds: float = 0.0
    here: int = 0
    """Inputs this call recorded (other processes running the same backfill record the
    rest)."""
    missing_uris: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(input, reason) of the inputs that were missing, quarantined or failed."""


def parse_when(text: str | datetime | date, what: str = "--since") -> datetime:
    """A date (``2026-12-01``, midnight UTC) or an ISO time (naive: UTC) as an aware time."""
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        value = datetime(text.year, text.month, text.day)
    else:
        try:
            value = datetime.fromisoformat(str(text).strip())
        except ValueError:
            raise ConfigError(f"{what} {text!r} is not a date or time.",
                              hint="Write it as 2026-12-01 or 2026-12-01T14:00:00+00:00 "
                                   "(no zone: UTC).") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def source_prefix(uri: str) -> str:
    """The URI prefix of the files a source lists ('' for a queue: files named anywhere)."""
    if uri.startswith(("s3://", "sqs://")) or "://" in uri:
        return uri.rstrip("/") + "/" if uri.startswith("s3://") else ""
    return str(Path(uri).expanduser().resolve()).rstrip("/") + "/"


def backfill_key(record: FileRecord, model_run_id: str, backfill_id: str) -> str:
    """The output's key in the outbox: the usual one (:func:`~batchml.scoring.output_key`)
    with the backfill's id before ``.parquet``, so every version has its own name and a retry
    of the same input under the same backfill replaces it."""
    return output_key(record, model_run_id)[: -len(".parquet")] + f".{backfill_id}.parquet"


def run_backfill(settings: Settings, *, model: str | None = None,
                 since: str | datetime | date | None = None,
                 until: str | datetime | date | None = None, source: str | None = None,
                 resume: str | None = None, batch_files: int = 20,
                 on_progress: Callable[[int, int], None] | None = None,
                 stop: threading.Event | None = None, catalog: Catalog | None = None,
                 prefect_flow_run_id: str | None = None) -> BackfillResult:
    """Run a backfill to its end: a new one of the scored files discovered in ``[since,
    until)`` under ``source`` (default: the inbox) with the model ``model`` names (default
    ``BATCHML_MODEL``), or the unfinished one of that same ask, or the one ``resume`` names.
    Several processes may run the same backfill at once: they share its inputs. A process
    waits for inputs another holds (until that one finishes them or its lease expires).

    ``on_progress(done, total)`` is called after each few inputs; ``stop`` ends it early
    (claims given back). Raises :class:`ConfigError` for a bad ask,
    :class:`BackfillNotFound` for an unknown ``resume``, and the model reference's errors
    (:class:`~batchml.errors.ModelNotFound`, :class:`~batchml.errors.RunCannotScore`)."""
    from .catalog import Catalog

    started = time.perf_counter()
    catalog = catalog or Catalog.from_settings(settings)
    backend = catalog.backend
    cache = ModelCache(catalog, flow=settings.train_flow, threshold=settings.decision_threshold)
    if resume is not None:
        rows = backend.backfills(resume)
        if not rows:
            raise BackfillNotFound(f"No backfill has the id {resume!r}.",
                                   hint="The catalog's backfills table lists them (batchml sql).")
        backfill_id, created = resume, False
    else:
        backfill_id, created = _start(settings, catalog, cache, model, since, until, source)
        rows = backend.backfills(backfill_id)
    row = rows[0]
    here = 0
    src = source or row["source"] or str(settings.inbox)
    if row["status"] == "running":
        run_id = str(row["model_run_id"])
        loaded = cache.load(run_id, ModelRef.for_run(run_id))
        with _opened(settings, src) as (fetcher, outbox):
            runner = _Runner(settings, catalog, backfill_id, loaded, fetcher, outbox,
                             batch_files, on_progress, stop or threading.Event(),
                             prefect_flow_run_id)
            runner.run()
            here = runner.recorded
            try:
                Ledger(catalog).ensure_predictions_view(outbox.root)
            except Exception:  # a convenience view must never fail the backfill
                log.warning("could not create the predictions view", exc_info=True)
    done = result(catalog, backfill_id, created, time.perf_counter() - started)
    done.here = here
    return done


def result(catalog: Catalog, backfill_id: str, created: bool = False,
           seconds: float = 0.0) -> BackfillResult:
    """The backfill ``backfill_id`` as the catalog has it now."""
    row = catalog.backend.backfills(backfill_id)[0]
    files = catalog.backend.backfill_files(backfill_id)
    return BackfillResult(
        backfill_id, created, row["status"], row["model_ref"], row["model_run_id"],
        int(row["files"]), int(row["scored"]), int(row["missing"]), int(row["quarantined"]),
        int(row["failed"]), int(row["rows"]), seconds, 0,
        [f["source_uri"] for f in files if f["state"] == "missing"],
        [(f["source_uri"], f["error"] or "") for f in files
         if f["state"] in ("missing", "quarantined", "failed")])


def _start(settings: Settings, catalog: Catalog, cache: ModelCache, model: str | None,
           since: str | datetime | date | None, until: str | datetime | date | None,
           source: str | None) -> tuple[str, bool]:
    text = model or settings.model
    if not text:
        raise ConfigError("Say which model scores the backfill.",
                          hint="Give --model NAME@ALIAS (or NAME/VERSION, a run id), or set "
                               "BATCHML_MODEL.")
    if since is None:
        raise ConfigError("Say from when to backfill.",
                          hint="Give --since DATE: files discovered from then on are scored "
                               "again.")
    start = parse_when(since, "--since")
    end = parse_when(until, "--until") if until is not None else None
    if end is not None and end <= start:
        raise ConfigError(f"--until {end.isoformat()} is not after --since "
                          f"{start.isoformat()}: the window is empty.",
                          hint="Give an --until later than --since, or none.")
    ref = ModelRef.parse(text, flow=settings.train_flow)
    loaded = cache.resolve(ref)
    name = ref.name if ref.registered else None
    version = ref.version
    if name is not None and version is None:
        version = next((v for n, v in catalog.backend.versions_of_run(loaded.run_id)
                        if n == name), None)
    return catalog.backend.start_backfill(
        model_ref=str(ref) if not ref.registered else text.strip(), model_run_id=loaded.run_id,
        model_name=name, model_version=version, since=start, until=end,
        source=source_prefix(source or str(settings.inbox)), created_by=worker_id())


class _Fetcher:
    """Reads a backfill's inputs: the source's own fetch (an S3 version by If-Match), and for
    a local file a check that it is still the version the ledger scored."""

    def __init__(self, settings: Settings, uri: str) -> None:
        from .sources import DirectorySource, ListSource
        from .store import s3_client

        self.local = "://" not in uri
        if self.local:
            self.source: Any = DirectorySource(uri, use_events=False, settle_s=0)
        else:  # files named by their s3:// URIs, whatever the source (prefix or queue)
            self.source = ListSource([], client=s3_client(settings.s3_endpoint_url,
                                                          settings.s3_region),
                                     max_file_bytes=settings.max_file_bytes)

    @contextlib.contextmanager
    def fetch(self, record: FileRecord) -> Iterator[Path]:
        with self.source.fetch(record) as path:
            if self.local and not record.etag:
                st = os.stat(path)
                now = FileRef(record.source_uri, None, st.st_size,
                              datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC))
                if now.file_id != record.file_id:
                    raise _Changed(record.source_uri)
            yield path


@contextlib.contextmanager
def _opened(settings: Settings, src: str) -> Iterator[tuple[_Fetcher, Outbox]]:
    fetcher = _Fetcher(settings, src)
    s3 = getattr(fetcher.source, "client", None)
    if str(settings.outbox).startswith("s3://") and s3 is None:
        from .store import s3_client

        s3 = s3_client(settings.s3_endpoint_url, settings.s3_region)
    try:
        yield fetcher, Outbox(str(settings.outbox), s3=s3)
    finally:
        fetcher.source.close()


class _Changed(FileNotFoundError):
    """The input at that URI is another version now (the backfill scores the one it knew)."""


class _Lost(Exception):
    """The claim passed to another process before the output was committed."""


class _Runner:
    """One process's part of a backfill: claim, score, record, until no input is left."""

    def __init__(self, settings: Settings, catalog: Catalog, backfill_id: str,
                 model: LoadedModel, fetcher: _Fetcher, outbox: Outbox, batch_files: int,
                 on_progress: Callable[[int, int], None] | None, stop: threading.Event,
                 prefect_flow_run_id: str | None) -> None:
        self.settings, self.catalog, self.backend = settings, catalog, catalog.backend
        self.id = backfill_id
        self.model, self.fetcher, self.outbox = model, fetcher, outbox
        self.limit = max(1, int(batch_files))
        self.on_progress, self.stop = on_progress, stop
        self.flow_run = prefect_flow_run_id
        self.name = worker_id()
        self.recorded = 0  # inputs this process recorded
        self.limits = Limits.from_settings(settings)
        self.lease_s = float(settings.lease_s)
        # the id column rides along as in the worker's outputs (late labels join on it)
        self.carry = (settings.id_column,) if settings.id_column else ()

    def run(self) -> None:
        self._progress()
        while not self.stop.is_set():
            batch_id, records, expires = self.backend.claim_backfill(
                self.id, self.name, limit=self.limit, lease_s=self.lease_s,
                model_run_id=self.model.run_id, prefect_flow_run_id=self.flow_run)
            if batch_id is None:
                left, _ = self.backend.backfill_open(self.id)
                if left == 0:
                    return
                # another process holds the rest: it records them, or its lease runs out
                self.stop.wait(min(1.0, self.lease_s / 10))
                continue
            self._batch(batch_id, records, expires)

    def _progress(self) -> None:
        if self.on_progress is not None:
            row = self.backend.backfills(self.id)[0]
            left, _ = self.backend.backfill_open(self.id)
            self.on_progress(int(row["files"]) - left, int(row["files"]))

    def _batch(self, batch_id: str, records: list[FileRecord], expires: datetime) -> None:
        claims = _Claims(self, batch_id, [r.file_id for r in records], expires)
        start = time.perf_counter()
        pending: list[FileOutcome] = []
        recorded = [0, 0]  # files, rows recorded in this batch so far
        error: str | None = None
        # one catalog connection for the whole batch (as the worker's batches): recording a
        # few inputs at a time then reopens nothing
        with self.catalog.hold(), claims:
            try:
                for i, record in enumerate(records):
                    if self.stop.is_set():
                        error = "stopped before the batch's end"
                        break
                    if not claims.held(record.file_id):
                        continue
                    try:
                        pending.append(self._score(record, batch_id, claims))
                    except _Lost:
                        continue
                    if len(pending) >= 5 or i == len(records) - 1:
                        self._record(batch_id, pending, claims, recorded)
                        pending = []
            except BaseException as exc:  # transient trouble or an interruption
                error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                try:  # what was scored is recorded; the rest goes back to the backfill
                    self._record(batch_id, pending, claims, recorded)
                    if claims.ids:
                        self.backend.release_backfill(self.id, sorted(claims.ids), self.name,
                                                      error)
                finally:
                    self.backend.record_backfill(self.id, batch_id, [], self.name, end={
                        "files": recorded[0], "rows": recorded[1], "error": error,
                        "duration_ms": (time.perf_counter() - start) * 1000})

    def _record(self, batch_id: str, outcomes: list[FileOutcome], claims: _Claims,
                recorded: list[int]) -> None:
        if not outcomes:
            return
        with claims.lock:
            done = self.backend.record_backfill(self.id, batch_id, outcomes, self.name)
            claims.ids.difference_update(o.file_id for o in outcomes)
        self.recorded += len(done)
        kept = [o for o in outcomes if o.file_id in done and o.status != "missing"]
        recorded[0] += len(kept)
        recorded[1] += sum(o.rows or 0 for o in kept)
        for o in outcomes:
            if o.file_id not in done:
                log.warning("claim on %s was lost before its outcome was recorded; another "
                            "process records it", o.source_uri)
        self._progress()

    def _score(self, record: FileRecord, batch_id: str, claims: _Claims) -> FileOutcome:
        model, uri = self.model, record.source_uri

        def guard(key: str) -> None:
            if not claims.check(record.file_id):
                raise _Lost(key)

        try:
            with self.fetcher.fetch(record) as path:
                outcome = score_file(
                    path, record, model, self.outbox.guarded(guard), batch_id,
                    batch_rows=self.settings.batch_rows, limits=self.limits, reprocess=True,
                    carry=self.carry, key=backfill_key(record, model.run_id, self.id))
        except _Lost:
            raise
        except _Changed:
            return FileOutcome(record.file_id, uri, "missing", model.run_id,
                               error=f"{uri} changed since it was scored (another version is "
                                     "there now); the backfill scores the versions it knew.")
        except FileNotFoundError:
            outcome = FileOutcome(record.file_id, uri, "failed", model.run_id)
        except Exception as exc:
            if is_transient(exc):
                raise
            detail = str(exc) if isinstance(exc, BatchMLError) else \
                f"{uri} could not be scored: {type(exc).__name__}: {exc}"
            return FileOutcome(record.file_id, uri, "quarantined", model.run_id, error=detail)
        if outcome.status == "failed":  # deleted before or while it was read
            outcome.status = "missing"
            outcome.error = f"{uri} is not there any more; nothing to score."
        return outcome


class _Claims:
    """A backfill batch's claims: renewed every ``lease_s / 3`` by a thread, checked before
    each output is committed."""

    def __init__(self, runner: _Runner, batch_id: str, file_ids: list[str],
                 expires: datetime) -> None:
        self.runner, self.batch_id = runner, batch_id
        self.ids = set(file_ids)
        self.lost: set[str] = set()
        self.until = expires.timestamp()
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchml-backfill-lease",
                                        daemon=True)

    def __enter__(self) -> _Claims:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def held(self, file_id: str) -> bool:
        with self.lock:
            return file_id not in self.lost

    def check(self, file_id: str) -> bool:
        """Still ours for long enough to commit? Renewed in the catalog when close to expiry."""
        lease_s = self.runner.lease_s
        with self.lock:
            if file_id in self.lost:
                return False
            if time.time() < self.until - lease_s / 3:
                return True
        self._renew()
        return self.held(file_id)

    def _renew(self) -> None:
        r = self.runner
        held, expires = r.backend.renew_backfill(r.id, self.batch_id, r.name, lease_s=r.lease_s)
        with self.lock:
            lost = self.ids - held
            if lost:
                log.warning("%d claim(s) of this backfill batch were taken over", len(lost))
            self.lost |= lost
            self.ids -= lost
            self.until = expires.timestamp()

    def _loop(self) -> None:
        while not self._stop.wait(self.runner.lease_s / 3):
            try:
                self._renew()
            except Exception:  # the check before a commit tries again
                log.warning("could not renew the backfill's leases", exc_info=True)
