"""Online predictions are data too: every request the HTTP API answers, appended to parquet.

:class:`PredictionLog` takes each scored request from the request path and writes it from a
background thread, one row per scored row: the model's input columns as the client sent them,
the outputs (``label``, ``proba``, ``proba_<class>``, as batch outputs), and ``request_id``,
``received_at`` (UTC: when scoring the request began, i.e. the answer's time minus its
latency), ``protocol`` (``mlflow``, ``v2``), ``model_run_id``, ``model_flavor``,
``model_version`` (the version label: ``reviews/3``, or the run id of a run served directly),
``latency_ms``, ``row_index`` (the row's place in its request) and ``params`` (the inference
parameters the request was scored with, JSON text with sorted keys). Files land by the hour a
request was received in::

    HOME/online/date=2026-12-05/hour=14/part-<uuid>.parquet

written under a hidden temporary name and renamed, so a reader never sees part of a file.
A file is written every ``flush_rows`` rows or ``flush_s`` seconds, whichever comes first, and
at :meth:`PredictionLog.close`.

The request path never waits and never touches a file: :meth:`~PredictionLog.append` puts a
reference to the request's tables on a queue and returns (microseconds). The queue is bounded in
rows and bytes together with what waits to be written (``max_rows``, ``max_bytes``), so memory is
bounded: when it is full, a request is dropped from the log (counted in :attr:`~PredictionLog.
dropped_requests` / ``dropped_rows``; the writer logs a warning, at most every 10 s) and still
answered. A request arriving when nothing waits is always taken, whatever its size (the API's
own limits bound it). A write that fails (a full disk) loses its rows, counted in
``failed_rows`` and logged; the log goes on.

Once the first file exists the catalog gets an ``online_predictions`` view over the files
(DuckDB; its published copy too), beside the ``predictions`` view of batch outputs; for a
PostgreSQL catalog ``batchml sql --duckdb-init`` defines it in the session. Turned off with
``BATCHML_API_LOG_PREDICTIONS=false``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..catalog.duckdb_init import online_pattern, online_root
from ..params import params_json

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..online import Served
    from ..settings import Settings

log = logging.getLogger("batchml.api.prediction_log")

METADATA = ("request_id", "received_at", "protocol", "model_run_id", "model_flavor",
            "model_version", "latency_ms", "row_index", "params")
"""The columns every logged row has besides the model's inputs and outputs."""

_TYPES = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
          "bool": pa.bool_()}

Writer = Callable[[Path, pa.Table], None]
"""Writes one table to a final path (default: :func:`write_atomically`)."""


def write_atomically(path: Path, table: pa.Table) -> None:
    """Write ``table`` to ``path`` through a hidden temporary file in the same directory,
    synced, then renamed: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclass
class _Entry:
    served: Served
    inputs: pa.Table
    outputs: pa.Table
    latency_ms: float
    protocol: str
    received_at: datetime
    request_id: str
    rows: int
    nbytes: int
    enqueued: float  # monotonic
    params: str | None = None  # the resolved inference parameters, JSON text


class PredictionLog:
    """The request log of one HTTP API (see the module docstring).

    ``clock`` gives the current UTC time (``received_at`` and the hour partition come from it);
    ``writer`` writes one file (tests inject a slow one); ``catalog``, when given, gets the
    ``online_predictions`` view once the first file exists."""

    def __init__(self, root: Path | str, *, catalog: Catalog | None = None,
                 flush_rows: int = 5_000, flush_s: float = 1.0, max_rows: int = 100_000,
                 max_bytes: int = 64 * 2**20, clock: Callable[[], datetime] | None = None,
                 writer: Writer | None = None) -> None:
        self.root = Path(root)
        self.catalog = catalog
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.clock = clock or (lambda: datetime.now(UTC))
        self.writer = writer or write_atomically
        self._queue: deque[_Entry] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pending_rows = 0   # queued or buffered, not yet written (the memory bound)
        self._pending_bytes = 0
        self._view_ready = False
        self._warned_drops = 0
        self._warned_at = 0.0
        self.requests = 0
        """Requests taken (queued)."""
        self.logged_rows = 0
        """Rows written to files."""
        self.files = 0
        self.dropped_requests = 0
        self.dropped_rows = 0
        self.failed_rows = 0
        """Rows lost to a failed write (a full disk): logged as an error, never retried."""

    @classmethod
    def from_settings(cls, settings: Settings, *, catalog: Catalog | None = None,
                      **options: Any) -> PredictionLog:
        """The log of ``settings``' home (``HOME/online``)."""
        return cls(online_root(settings), catalog=catalog, **options)

    @property
    def pattern(self) -> str:
        """The glob of this log's files (what the ``online_predictions`` view reads)."""
        return online_pattern(self.root)

    # --- the request path: no I/O, no waiting ----------------------------------------------

    def append(self, *, served: Served, inputs: pa.Table, outputs: pa.Table,
               latency_ms: float, protocol: str, request_id: str | None = None,
               received_at: datetime | None = None,
               params: Mapping[str, Any] | None = None) -> bool:
        """Log one answered request (``outputs`` one row per ``inputs`` row) scored with
        inference ``params``. Returns False when it was dropped (the queue full, or the log
        closed). Never blocks on I/O."""
        rows = outputs.num_rows
        nbytes = inputs.nbytes + outputs.nbytes
        if received_at is None:
            received_at = self.clock() - timedelta(milliseconds=latency_ms)
        entry = _Entry(served, inputs, outputs, latency_ms, protocol, received_at,
                       request_id or uuid.uuid4().hex, rows, nbytes, time.monotonic(),
                       params_json(params))
        with self._lock:
            taken = not self._closing and not (self._pending_rows and (
                self._pending_rows + rows > self.max_rows
                or self._pending_bytes + nbytes > self.max_bytes))
            if taken:
                self._queue.append(entry)
                self._pending_rows += rows
                self._pending_bytes += nbytes
                self.requests += 1
                wake = len(self._queue) == 1 or self._pending_rows >= self.flush_rows
            else:
                self.dropped_requests += 1
                self.dropped_rows += rows
                wake = True  # the writer says so in the log (no I/O here)
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="batchml-prediction-log")
                self._thread.start()
        if wake:
            self._wake.set()
        return taken

    @property
    def pending_rows(self) -> int:
        """Rows taken and not written yet."""
        return self._pending_rows

    def stats(self) -> dict[str, int]:
        """What the log has done so far (for status pages and tests)."""
        with self._lock:
            return {"requests": self.requests, "logged_rows": self.logged_rows,
                    "files": self.files, "pending_rows": self._pending_rows,
                    "dropped_requests": self.dropped_requests,
                    "dropped_rows": self.dropped_rows, "failed_rows": self.failed_rows}

    def close(self, timeout_s: float | None = 60.0) -> None:
        """Write what is waiting and stop the writer. Appends after this are dropped."""
        with self._lock:
            self._closing = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.error("the prediction log did not finish writing within %s s; %d rows "
                          "may be lost", timeout_s, self._pending_rows)

    # --- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        buffer: list[_Entry] = []
        while True:
            if buffer:
                self._wake.wait(max(0.0, buffer[0].enqueued + self.flush_s - time.monotonic()))
            else:
                self._wake.wait()
            self._wake.clear()
            with self._lock:
                buffer.extend(self._queue)
                self._queue.clear()
                closing = self._closing
            self._warn_drops()
            rows = sum(e.rows for e in buffer)
            due = buffer and (closing or rows >= self.flush_rows
                              or time.monotonic() - buffer[0].enqueued >= self.flush_s)
            if due:
                self._flush(buffer)
                buffer = []
            if closing:
                with self._lock:
                    if not self._queue:
                        return

    def _warn_drops(self) -> None:
        dropped = self.dropped_requests
        if dropped > self._warned_drops and time.monotonic() - self._warned_at >= 10:
            log.warning("the prediction log dropped %d request(s) (%d rows) so far: its queue "
                        "was full (%d rows / %d bytes waiting at most); the requests were "
                        "answered", dropped, self.dropped_rows, self.max_rows, self.max_bytes)
            self._warned_drops = dropped
            self._warned_at = time.monotonic()

    def _flush(self, entries: list[_Entry]) -> None:
        """Write ``entries``: one file per hour partition they fall in."""
        groups: dict[tuple[str, str], list[_Entry]] = {}
        for e in entries:
            when = e.received_at.astimezone(UTC)
            groups.setdefault((f"{when:%Y-%m-%d}", f"{when:%H}"), []).append(e)
        for (date, hour), group in groups.items():
            tables, kept = [], []
            for e in group:
                try:
                    tables.append(_rows(e))
                    kept.append(e)
                except Exception:  # one malformed entry never costs the others
                    log.exception("could not log request %s", e.request_id)
                    self._done(e.rows, e.nbytes, failed=True)
            if not kept:
                continue
            rows, nbytes = sum(e.rows for e in kept), sum(e.nbytes for e in kept)
            path = self.root / f"date={date}" / f"hour={hour}" / \
                f"part-{uuid.uuid4().hex}.parquet"
            try:
                table = tables[0] if len(tables) == 1 else \
                    pa.concat_tables(tables, promote_options="permissive")
                self.writer(path, table)
            except Exception:
                log.exception("could not write %d logged rows to %s", rows, path)
                self._done(rows, nbytes, failed=True)
                continue
            self._done(rows, nbytes, files=1)
        if self.files and not self._view_ready:
            self._ensure_view()

    def _done(self, rows: int, nbytes: int, *, files: int = 0, failed: bool = False) -> None:
        with self._lock:
            self._pending_rows -= rows
            self._pending_bytes -= nbytes
            if failed:
                self.failed_rows += rows
            else:
                self.logged_rows += rows
                self.files += files

    def _ensure_view(self) -> None:
        if self.catalog is None:
            self._view_ready = True
            return
        try:
            backend = self.catalog.backend
            if not backend.has_online_predictions_view(self.pattern):
                backend.create_online_predictions_view(self.pattern)
                log.info("created the online_predictions view over %s", self.root)
            self._view_ready = True
        except Exception:  # a convenience view never costs a logged row: retried next flush
            log.warning("could not create the online_predictions view", exc_info=True)


def _rows(e: _Entry) -> pa.Table:
    """One entry as a table: metadata, the model's input columns, the outputs."""
    n = e.rows
    model = e.served.model
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        "request_id": pa.array([e.request_id] * n, pa.string()),
        "received_at": pa.array([e.received_at.astimezone(UTC)] * n, pa.timestamp("us", "UTC")),
        "protocol": pa.array([e.protocol] * n, pa.string()),
        "model_run_id": pa.array([model.run_id] * n, pa.string()),
        "model_flavor": pa.array([model.flavor] * n, pa.string()),
        "model_version": pa.array([e.served.label] * n, pa.string()),
        "latency_ms": pa.array([e.latency_ms] * n, pa.float64()),
        "row_index": pa.array(range(n), pa.int64()),
        "params": pa.array([e.params] * n, pa.string()),
    }
    outputs = set(e.outputs.column_names)
    for spec in model.signature.inputs:
        if spec.name not in e.inputs.column_names:
            continue
        column = e.inputs.column(spec.name)
        target = _TYPES.get(spec.type)
        if target is not None and column.type != target:
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = column.cast(target)
        name = spec.name if spec.name not in cols and spec.name not in outputs \
            else f"input_{spec.name}"
        cols[name] = column
    for name in e.outputs.column_names:
        cols[name if name not in cols else f"output_{name}"] = e.outputs.column(name)
    return pa.table(cols)
