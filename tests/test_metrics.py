"""Prometheus metrics (batchml/metrics.py): a real `batchml serve` scores files and its metrics
port is scraped over HTTP; `serve --api` serves the same at the API's /metrics; every scrape
is read with Prometheus' own parser (prometheus_client.parser)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from testhelp import free_port

from batchml import Catalog, Settings
from batchml.metrics import MetricsServer, ServiceMetrics
from batchml.scoring import FileOutcome
from batchml.sources import ListSource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

BIN = Path(sys.executable).parent


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name, parsed by prometheus_client.parser from a scrape over HTTP."""
    resp = httpx.get(url, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def _value(samples: dict[str, Any], name: str, **labels: str) -> float:
    matches = [v for lab, v in samples[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return float(matches[0])


def _register(settings: Settings) -> Any:
    """The tagged run as version 1 of ``reviews``, champion."""
    cat = Catalog.from_settings(settings)
    run = cat.latest_run(settings.train_flow, tag=settings.model_tag)
    model = cat.model("reviews")
    version = model.register(run)
    model.set_alias("champion", version, expect=None, reason="metrics test")
    cat.close()
    return run, version


def _land(inbox: Path, n: int, rows: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tmp = inbox / f".f{i}.tmp"
        synthetic_reviews(rows, seed=60 + i).to_parquet(tmp)
        tmp.rename(inbox / f"landed-{i}.parquet")
    (inbox / ".bad.tmp").write_bytes(b"not parquet at all")
    (inbox / ".bad.tmp").rename(inbox / "bad.parquet")


@pytest.mark.slow
def test_batchml_serve_metrics_port_counts_what_it_scored(tagged_home: Settings,
                                                          tmp_path: Path) -> None:
    """The console script with BATCHML_METRICS_PORT: 3 files scored and 1 quarantined are
    exactly what the scrape says, with the model's registered name and version."""
    run, version = _register(tagged_home)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "BATCHML_"))}
    env.update(BATCHML_HOME=str(tagged_home.home), BATCHML_METRICS_PORT=str(port),
               BATCHML_MODEL="reviews@champion")
    url = f"http://127.0.0.1:{port}/metrics"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(BIN / "batchml"), "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:  # the port is bound before Prefect starts
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "metrics port did not answer"
            try:
                first = _scrape(url)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert _value(first, "batchml_files_total", outcome="scored") == 0
        _land(Path(tagged_home.inbox), 3, 200)
        deadline = time.monotonic() + 120
        while True:
            samples = _scrape(url)
            done = sum(_value(samples, "batchml_files_total", outcome=o)
                       for o in ("scored", "quarantined", "failed"))
            if done >= 4:
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, samples
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert _value(samples, "batchml_files_total", outcome="scored") == 3
    assert _value(samples, "batchml_files_total", outcome="quarantined") == 1
    assert _value(samples, "batchml_files_total", outcome="failed") == 0
    assert _value(samples, "batchml_rows_scored_total") == 600
    assert _value(samples, "batchml_drop_to_output_seconds_count") == 4
    assert _value(samples, "batchml_drop_to_output_seconds_bucket", le="+Inf") == 4
    assert 0 < _value(samples, "batchml_drop_to_output_seconds_sum") < 4 * 120
    (labels, one), = samples["batchml_model_info"]
    assert one == 1 and labels == {"run_id": run.id, "name": "reviews",
                                   "version": str(version.version), "alias": "champion"}
    assert _value(samples, "batchml_queue_depth") == 0
    assert _value(samples, "batchml_ledger_files", state="scored") == 3
    assert _value(samples, "batchml_ledger_files", state="quarantined") == 1
    assert _value(samples, "batchml_catalog_up") == 1
    # the ledger agrees with the counters, the drift table with the gauge
    cat = Catalog(tagged_home.catalog_file)
    assert _value(samples, "batchml_drift_alerts") == cat.drift_alerts(3600)
    states = cat.sql("SELECT state, count(*) AS n FROM files GROUP BY state")
    assert dict(zip(states["state"], states["n"], strict=True)) == {"scored": 3,
                                                                   "quarantined": 1}


def test_serve_api_metrics_and_a_worker_in_process(tagged_home: Settings) -> None:
    """One ServiceMetrics shared by a worker (as `batchml serve --api` shares it) and the HTTP
    API under uvicorn: /metrics over HTTP shows the worker's counts, and pending files as queue
    depth before they are scored."""
    from batchml.service import ApiThread

    run, version = _register(tagged_home)
    settings = tagged_home.model_copy(update={"api_port": free_port(),
                                              "api_log_predictions": False})
    metrics = ServiceMetrics(CollectorRegistry())
    cat = Catalog.from_settings(settings)
    inbox = Path(settings.inbox)
    _land(inbox, 2, 50)
    files = sorted(str(p) for p in inbox.glob("*.parquet"))
    worker = Worker(cat, ListSource(files), settings, model="reviews/1", metrics=metrics)
    metrics.attach_catalog(cat)
    api = ApiThread(settings, "reviews@champion", metrics=metrics)
    url = api.start() + "/metrics"
    try:
        worker.discover()
        before = _scrape(url)
        assert _value(before, "batchml_queue_depth") == 3
        assert _value(before, "batchml_files_total", outcome="scored") == 0
        assert "batchml_model_info" not in before  # no batch yet
        report = worker.run_batch(limit=10)
        assert sorted(o.status for o in report.outcomes) == ["quarantined", "scored", "scored"]
        after = _scrape(url)
    finally:
        api.stop()
    assert _value(after, "batchml_queue_depth") == 0
    assert _value(after, "batchml_files_total", outcome="scored") == 2
    assert _value(after, "batchml_files_total", outcome="quarantined") == 1
    assert _value(after, "batchml_rows_scored_total") == 100
    assert _value(after, "batchml_drop_to_output_seconds_count") == 3
    (labels, _), = after["batchml_model_info"]
    assert labels == {"run_id": run.id, "name": "reviews", "version": "1", "alias": ""}


def test_metrics_server_refuses_a_taken_port_and_frees_its_own() -> None:
    metrics = ServiceMetrics()
    server = MetricsServer(metrics, "127.0.0.1", 0)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    try:
        assert "batchml_files_total" in _scrape(server.url)
        with pytest.raises(Exception, match=rf"Cannot serve metrics on 127.0.0.1:{port}: "
                                            r".*BATCHML_METRICS_PORT"):
            MetricsServer(ServiceMetrics(), "127.0.0.1", port)
    finally:
        server.close()
    MetricsServer(ServiceMetrics(), "127.0.0.1", port).close()  # freed


def test_latency_from_landing_else_claim_and_the_model_series_moves() -> None:
    metrics = ServiceMetrics()
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    landed = {"a": now - timedelta(seconds=0.2), "b": (now - timedelta(seconds=40)
                                                      ).replace(tzinfo=None), "c": None}
    outcomes = [FileOutcome("a", "s3://b/a", "scored", "train/1", rows=10),
                FileOutcome("b", "s3://b/b", "failed", "train/1"),
                FileOutcome("c", "s3://b/c", "quarantined", "train/1", rows=None)]
    metrics.recorded(outcomes, landed, claimed_at=now.timestamp() - 3,
                     now=now.timestamp())
    metrics.model_in_use("train/1")
    metrics.model_in_use("train/2", "reviews", 2, "champion")
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(metrics.text().decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    assert _value(samples, "batchml_drop_to_output_seconds_count") == 3
    assert _value(samples, "batchml_drop_to_output_seconds_sum") == pytest.approx(43.2)
    assert _value(samples, "batchml_drop_to_output_seconds_bucket", le="0.25") == 1
    assert _value(samples, "batchml_drop_to_output_seconds_bucket", le="5.0") == 2
    assert _value(samples, "batchml_drop_to_output_seconds_bucket", le="60.0") == 3
    assert _value(samples, "batchml_rows_scored_total") == 10
    assert [lab for lab, _ in samples["batchml_model_info"]] == [
        {"run_id": "train/2", "name": "reviews", "version": "2", "alias": "champion"}]
    assert "batchml_queue_depth" not in samples  # no catalog attached


def test_drift_alerts_count_recent_alerts_and_0_without_the_table(catalog: Catalog) -> None:
    """0 on a catalog without ``batch_drift`` (migrated before 0008); then alerts of the
    window only. The table is made with migration 0008's columns when this build lacks it."""
    catalog.sql("DROP VIEW IF EXISTS batch_drift_overview", write=True)
    catalog.sql("DROP TABLE IF EXISTS batch_drift", write=True)
    assert catalog.drift_alerts() == 0
    metrics = ServiceMetrics(catalog=catalog)
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(metrics.text().decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    assert _value(samples, "batchml_drift_alerts") == 0
    assert _value(samples, "batchml_catalog_up") == 1
    catalog.sql("CREATE TABLE batch_drift (batch_id VARCHAR NOT NULL, feature VARCHAR NOT NULL,"
                " metric VARCHAR NOT NULL, kind VARCHAR NOT NULL, files INTEGER NOT NULL, rows"
                " BIGINT NOT NULL, model_run_id VARCHAR, model_name VARCHAR, model_version"
                " BIGINT, value DOUBLE PRECISION, threshold DOUBLE PRECISION, alert BOOLEAN NOT"
                " NULL, note VARCHAR, created_at TIMESTAMPTZ NOT NULL)", write=True)
    now = datetime.now(UTC)
    for i, (alert, age_s) in enumerate([(True, 10), (True, 100), (False, 10), (True, 7200)]):
        stamp = (now - timedelta(seconds=age_s)).isoformat()
        catalog.sql(f"INSERT INTO batch_drift (batch_id, feature, metric, kind, files, rows,"
                    f" value, threshold, alert, created_at) VALUES ('b{i}', 'f', 'psi',"
                    f" 'numeric', 1, 10, 0.5, 0.2, {str(alert).lower()}, '{stamp}')",
                    write=True)
    assert catalog.drift_alerts(3600) == 2
    assert catalog.drift_alerts(60) == 1
    assert catalog.drift_alerts(10 * 3600) == 3
    samples = {}
    for family in text_string_to_metric_families(metrics.text().decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    assert _value(samples, "batchml_drift_alerts") == 2


def test_two_services_in_one_process_count_apart() -> None:
    """Each ServiceMetrics has its own registry (no global one)."""
    a, b = ServiceMetrics(), ServiceMetrics()
    a.recorded([FileOutcome("x", "u", "scored", "r", rows=5)], claimed_at=time.time())
    assert b"batchml_rows_scored_total 5.0" in a.text()
    assert b"batchml_rows_scored_total 0.0" in b.text()
