"""Prometheus metrics of the service: what the worker scored, how long files took from landing
to output, which model scores, how many files wait and how many drift alerts were raised.

One :class:`ServiceMetrics` owns one ``prometheus_client.CollectorRegistry``, made by the entry
point (``batchml serve``, ``batchml serve-api``) and passed down: there is no module-level
registry, so two services (or two tests) in one process never share counts. The worker updates
the counters and the histogram where it records outcomes (:meth:`ServiceMetrics.recorded`);
queue depth, ledger states and drift alerts are read from the catalog when Prometheus scrapes
(one ``GROUP BY`` over the ledger and one count of recent alerts), never polled.

Exposed as text at ``/metrics`` of the HTTP API (:func:`batchml.api.create_app`) and, for
``batchml serve`` without ``--api``, on ``BATCHML_METRICS_HOST:BATCHML_METRICS_PORT``
(:class:`MetricsServer`; port 0: off).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .catalog import Catalog
    from .scoring import FileOutcome

log = logging.getLogger("batchml.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format's media type."""

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Drop-to-output seconds: sub-second for a warm service, minutes for a backlog."""

OUTCOMES = ("scored", "quarantined", "failed")

DRIFT_WINDOW_S = 3600.0
"""Drift alerts counted over the last hour (``batchml_drift_alerts``)."""


class ServiceMetrics:
    """The service's metrics in ``registry`` (a fresh one unless given). ``catalog`` feeds the
    collect-time gauges (queue depth, ledger states, drift alerts); without it they are left
    out."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 catalog: Catalog | None = None,
                 drift_window_s: float = DRIFT_WINDOW_S) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.files = Counter("batchml_files", "Input files whose outcome was recorded, by "
                             "outcome.", ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:  # every series present from the start, at 0
            self.files.labels(outcome)
        self.rows = Counter("batchml_rows_scored", "Rows written to the outbox by scored "
                            "files.", registry=self.registry)
        self.latency = Histogram(
            "batchml_drop_to_output_seconds",
            "Seconds from a file landing (its modification time: the file's mtime, the S3 "
            "object's LastModified; its claim when unknown) to its outcome being recorded.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model = Gauge("batchml_model_info", "The model the last batch scored with (1): "
                           "its run, registered name and version, and the alias it was "
                           "resolved through (empty when not registered).",
                           ["run_id", "name", "version", "alias"], registry=self.registry)
        self._model_labels: tuple[str, str, str, str] | None = None
        self._lock = threading.Lock()
        self.catalog: Catalog | None = None
        self.drift_window_s = drift_window_s
        if catalog is not None:
            self.attach_catalog(catalog)

    def attach_catalog(self, catalog: Catalog) -> None:
        """Read the collect-time gauges from ``catalog`` (once: later calls are ignored)."""
        with self._lock:
            if self.catalog is not None:
                return
            self.catalog = catalog
        self.registry.register(CatalogCollector(catalog, drift_window_s=self.drift_window_s))

    def recorded(self, outcomes: Iterable[FileOutcome],
                 landed: Mapping[str, datetime | None] | None = None, *,
                 claimed_at: float | None = None, now: float | None = None) -> None:
        """Count outcomes the ledger has just recorded: per outcome, rows of scored files, and
        each file's drop-to-output time (from ``landed[file_id]``, else ``claimed_at``, epoch
        seconds)."""
        now = time.time() if now is None else now
        for o in outcomes:
            self.files.labels(o.status if o.status in OUTCOMES else "failed").inc()
            if o.status == "scored" and o.rows:
                self.rows.inc(o.rows)
            start = _epoch((landed or {}).get(o.file_id))
            if start is None:
                start = claimed_at
            if start is not None:
                self.latency.observe(max(0.0, now - start))

    def model_in_use(self, run_id: str, name: str | None = None, version: int | None = None,
                     alias: str | None = None) -> None:
        """The model of the batch now scoring: one ``batchml_model_info`` series, at 1."""
        labels = (run_id, name or "", "" if version is None else str(version), alias or "")
        with self._lock:
            if labels == self._model_labels:
                return
            if self._model_labels is not None:
                self.model.remove(*self._model_labels)
            self.model.labels(*labels).set(1)
            self._model_labels = labels

    def text(self) -> bytes:
        """The registry in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # the ledger stores UTC without a zone
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class CatalogCollector(Collector):
    """Gauges read from the catalog at scrape time: ``batchml_queue_depth`` (files discovered
    and not claimed yet), ``batchml_ledger_files{state}`` and ``batchml_drift_alerts`` (alerts
    of the last ``drift_window_s``; 0 before drift is recorded). A catalog that cannot be read
    leaves them out of that scrape (``batchml_catalog_up`` 0) instead of failing it."""

    def __init__(self, catalog: Catalog, *, drift_window_s: float = DRIFT_WINDOW_S) -> None:
        self.catalog = catalog
        self.drift_window_s = drift_window_s

    def describe(self) -> list[Metric]:
        return []  # read at collect time only: registering never touches the catalog

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("batchml_catalog_up", "1 when the catalog answered this scrape.")
        try:
            counts = self.catalog.backend.file_counts()
            alerts = self.catalog.drift_alerts(self.drift_window_s)
        except Exception as exc:  # a scrape never fails on the catalog: it says so instead
            log.warning("metrics: cannot read the catalog: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("batchml_queue_depth", "Files discovered in the ledger and "
                                  "waiting to be claimed.")
        depth.add_metric([], counts.get("discovered", 0))
        yield depth
        states = GaugeMetricFamily("batchml_ledger_files", "Files in the ledger by state.",
                                   labels=["state"])
        from .catalog.records import STATES

        for state in STATES:
            states.add_metric([state], counts.get(state, 0))
        yield states
        drift = GaugeMetricFamily("batchml_drift_alerts", "Drift alerts recorded in the last "
                                  f"{self.drift_window_s:g} s (0 before drift is recorded).")
        drift.add_metric([], alerts)
        yield drift


class MetricsServer:
    """``/metrics`` on its own small HTTP server in a thread (``batchml serve`` without
    ``--api``): bound at construction, so a port in use fails before the service starts."""

    def __init__(self, metrics: ServiceMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, addr=host,
                                                           registry=metrics.registry)
        except OSError as exc:
            raise ConfigError(f"Cannot serve metrics on {host}:{port}: {exc.strerror or exc}.",
                              hint="Free that port, or set BATCHML_METRICS_PORT (0: off) / "
                                   "BATCHML_METRICS_HOST.") from exc
        bound = self._server.server_address
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{int(bound[1])}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def parse_text(text: str) -> dict[str, Any]:
    """Samples of a scrape by name (``{name: [(labels, value), ...]}``), read with Prometheus'
    own parser (``prometheus_client.parser``); for tests and ``batchml doctor``-like checks."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples
