"""Online predictions are data too (issue 18 item 7): the HTTP API's request log.

Every answered request lands in parquet by hour under HOME/online, written from a thread that
never makes a request wait; the catalog shows the files as the ``online_predictions`` view,
queried in DuckDB beside the batch ``predictions``; ``batchml serve --api`` serves HTTP beside
the file service and stops with it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pyarrow as pa
import pytest
import uvicorn
from fastapi.testclient import TestClient
from testhelp import free_port

from batchml import Catalog, Settings
from batchml.api import create_app
from batchml.api.prediction_log import PredictionLog, write_atomically
from batchml.catalog.duckdb_init import (
    duckdb_init_sql,
    online_pattern,
    online_predictions_select,
    online_root,
)
from batchml.online import ModelFollower, Served
from batchml.predict import predict_files
from batchml.resolve import ModelRef
from batchml.scoring import ModelCache, model_columns
from batchml.service import Heartbeat
from batchml.synthetic import synthetic_reviews

BIN = Path(sys.executable).parent
DUCKDB_CLI = BIN / "duckdb"
TEXTS = ["great dress, fits well", "awful, it ripped after one wash", "ok"]


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``condition`` until it is truthy (returned), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.02)


def read_log(root: Path) -> pa.Table:
    """Every logged row under ``root``, read the way the ``online_predictions`` view reads."""
    return duckdb.sql(online_predictions_select(online_pattern(root))
                      + " ORDER BY received_at, request_id, row_index").to_arrow_table()


def visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def served(module_tagged_home: Settings) -> Served:
    """The tagged model of the module's home, as the API serves it."""
    s = module_tagged_home
    catalog = Catalog.from_settings(s)
    ref = ModelRef.from_options(model=None, default_model=None, default_tag=s.model_tag,
                                flow=s.train_flow)
    return ModelFollower(catalog, ref, ModelCache(catalog, flow=s.train_flow)).current()


def scored(served: Served, texts: list[str]) -> tuple[pa.Table, pa.Table]:
    """A request's input table and the outputs the model gives it."""
    inputs = pa.table({"review": texts})
    batch = inputs.to_batches()[0]
    proba = np.asarray(served.model.estimator.predict_proba(batch))
    index = served.model.estimator.label_index(proba)
    return inputs, pa.table(model_columns(served.model, batch, proba, index))


class Server:
    """uvicorn in a thread on a free loopback port (lifespan included)."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started, "uvicorn to start", 60)
        return f"http://127.0.0.1:{self.server.config.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


# --- the log itself ------------------------------------------------------------------------


def test_concurrent_requests_are_all_logged(module_tagged_home: Settings,
                                            tmp_path: Path) -> None:
    """32 clients send 256 requests of 1-4 rows in both protocols through the real server
    (micro-batched): every row is logged once, with its request's inputs, the outputs the
    client got, the protocol and the model; files are flushed by rows while requests run."""
    root = tmp_path / "online"
    plog = PredictionLog(root, flush_rows=40, flush_s=0.05)
    app = create_app(module_tagged_home, prediction_log=plog)
    sent: dict[str, tuple[str, list[str], list[Any]]] = {}

    async def one(http: httpx.AsyncClient, i: int, gate: asyncio.Semaphore) -> None:
        texts = [f"request {i} row {r}: {TEXTS[(i + r) % 3]}" for r in range(1 + i % 4)]
        async with gate:
            if i % 2:
                r = await http.post("/invocations", json={"inputs": {"review": texts}})
                assert r.status_code == 200, r.text
                labels = [p["label"] for p in r.json()["predictions"]]
                protocol = "mlflow"
            else:
                r = await http.post(f"/v2/models/{app.state.api.model_name}/infer", json={
                    "inputs": [{"name": "review", "shape": [len(texts)], "datatype": "BYTES",
                                "data": texts}]})
                assert r.status_code == 200, r.text
                labels = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"]
                protocol = "v2"
        sent[texts[0]] = (protocol, texts, labels)

    async def load(url: str) -> None:
        gate = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await asyncio.gather(*(one(http, i, gate) for i in range(256)))

    with Server(app) as url:
        asyncio.run(load(url))
    # the lifespan closed the log: everything is on disk, nothing in flight
    stats = plog.stats()
    rows = sum(len(t) for _, t, _ in sent.values())
    assert stats == {"requests": 256, "logged_rows": rows, "files": stats["files"],
                     "pending_rows": 0, "dropped_requests": 0, "dropped_rows": 0,
                     "failed_rows": 0}
    assert stats["files"] > 1
    assert not [p for p in root.rglob("*") if p.is_file() and p.name.startswith(".")]
    logged = read_log(root).to_pylist()
    assert len(logged) == rows
    by_request: dict[str, list[dict[str, Any]]] = {}
    for row in logged:
        by_request.setdefault(row["request_id"], []).append(row)
    assert len(by_request) == 256
    for group in by_request.values():
        group.sort(key=lambda r: r["row_index"])
        protocol, texts, labels = sent[group[0]["review"]]
        assert [r["review"] for r in group] == texts
        assert [r["label"] for r in group] == labels
        assert [r["row_index"] for r in group] == list(range(len(texts)))
        assert {(r["protocol"], r["model_run_id"], r["model_version"], r["model_flavor"])
                for r in group} == {(protocol, "train/1", "train/1", "sklearn")}
        assert len({(r["received_at"], r["latency_ms"]) for r in group}) == 1
        assert 0 < group[0]["latency_ms"] < 30_000
        assert all(0 <= r["proba"] <= 1 for r in group)
    print(f"\n[prediction-log] 256 requests, {rows} rows in {stats['files']} files; "
          f"{app.state.api.scorer.model_calls} model calls")


def test_rows_land_in_the_hour_they_were_received(served: Served, tmp_path: Path) -> None:
    """The partition is the UTC hour of received_at (the injected clock minus the latency):
    a request received at 13:59:59.95 and answered at 14:00:00.02 is logged under hour=13."""
    now = [datetime(2026, 12, 5, 14, 0, 0, 20_000, tzinfo=UTC)]
    root = tmp_path / "online"
    plog = PredictionLog(root, clock=lambda: now[0], flush_rows=10_000, flush_s=3600)
    inputs, outputs = scored(served, TEXTS)
    plog.append(served=served, inputs=inputs, outputs=outputs, latency_ms=70.0,
                protocol="mlflow")                                      # 13:59:59.950
    plog.append(served=served, inputs=inputs.slice(0, 1), outputs=outputs.slice(0, 1),
                latency_ms=1.0, protocol="v2")                          # 14:00:00.019
    now[0] = datetime(2026, 12, 6, 0, 30, tzinfo=UTC)
    plog.append(served=served, inputs=inputs.slice(0, 2), outputs=outputs.slice(0, 2),
                latency_ms=2.0, protocol="mlflow")                      # the next day
    plog.close()
    files = visible_files(root)
    assert [str(p.parent.relative_to(root)) for p in files] == [
        "date=2026-12-05/hour=13", "date=2026-12-05/hour=14", "date=2026-12-06/hour=00"]
    assert all(p.name.startswith("part-") and len(p.stem) == len("part-") + 32 for p in files)
    rows = read_log(root).to_pylist()
    assert [(str(r["date"]), r["hour"], r["protocol"], r["review"]) for r in rows] == [
        ("2026-12-05", 13, "mlflow", TEXTS[0]), ("2026-12-05", 13, "mlflow", TEXTS[1]),
        ("2026-12-05", 13, "mlflow", TEXTS[2]), ("2026-12-05", 14, "v2", TEXTS[0]),
        ("2026-12-06", 0, "mlflow", TEXTS[0]), ("2026-12-06", 0, "mlflow", TEXTS[1])]
    assert rows[0]["received_at"] == datetime(2026, 12, 5, 13, 59, 59, 950_000, tzinfo=UTC)
    assert rows[3]["received_at"] == datetime(2026, 12, 5, 14, 0, 0, 19_000, tzinfo=UTC)
    assert [r["label"] for r in rows[:3]] == outputs.column("label").to_pylist()


def test_close_flushes_and_flushes_come_by_rows_and_by_time(served: Served,
                                                           tmp_path: Path) -> None:
    inputs, outputs = scored(served, TEXTS)
    # neither threshold is reached: only close() writes, and it writes everything
    held = PredictionLog(tmp_path / "held", flush_rows=10_000, flush_s=3600)
    for _ in range(4):
        held.append(served=served, inputs=inputs, outputs=outputs, latency_ms=1.0,
                    protocol="mlflow")
    assert held.stats()["logged_rows"] == 0 and not visible_files(tmp_path / "held")
    held.close()
    assert held.stats()["logged_rows"] == 12 and held.stats()["pending_rows"] == 0
    assert len(visible_files(tmp_path / "held")) == 1 and len(read_log(tmp_path / "held")) == 12
    assert not held.append(served=served, inputs=inputs, outputs=outputs, latency_ms=1.0,
                           protocol="mlflow")  # closed: dropped, counted
    assert held.stats()["dropped_requests"] == 1
    # by rows: the 2nd request makes 6 >= 5 rows, written without close
    by_rows = PredictionLog(tmp_path / "rows", flush_rows=5, flush_s=3600)
    for _ in range(2):
        by_rows.append(served=served, inputs=inputs, outputs=outputs, latency_ms=1.0,
                       protocol="v2")
    wait_for(lambda: by_rows.stats()["logged_rows"] == 6, "a flush by rows")
    assert len(read_log(tmp_path / "rows")) == 6
    by_rows.close()
    # by time: one small request, written within flush_s
    by_time = PredictionLog(tmp_path / "time", flush_rows=10_000, flush_s=0.1)
    start = time.monotonic()
    by_time.append(served=served, inputs=inputs, outputs=outputs, latency_ms=1.0,
                   protocol="v2")
    wait_for(lambda: visible_files(tmp_path / "time"), "a flush by time", 10)
    assert time.monotonic() - start >= 0.1
    by_time.close()


def test_a_full_queue_drops_and_counts_without_blocking(served: Served, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """A writer stuck on a slow disk: appends still return at once; past ``max_rows`` waiting
    rows they are dropped and counted (and the writer warns), then the rest is written."""
    entered, release = threading.Event(), threading.Event()

    def slow_writer(path: Path, table: pa.Table) -> None:
        entered.set()
        assert release.wait(60)
        write_atomically(path, table)

    plog = PredictionLog(tmp_path / "online", flush_rows=1, flush_s=3600, max_rows=10,
                         writer=slow_writer)
    inputs, outputs = scored(served, TEXTS[:2])
    assert plog.append(served=served, inputs=inputs, outputs=outputs, latency_ms=1.0,
                       protocol="mlflow")
    assert entered.wait(30)  # the writer holds those 2 rows; 8 more may wait
    start = time.perf_counter()
    taken = [plog.append(served=served, inputs=inputs, outputs=outputs, latency_ms=1.0,
                         protocol="mlflow") for _ in range(1000)]
    elapsed = time.perf_counter() - start
    assert taken == [True] * 4 + [False] * 996
    stats = plog.stats()
    assert (stats["dropped_requests"], stats["dropped_rows"], stats["pending_rows"]) == \
        (996, 1992, 10)
    assert elapsed < 1.0, f"1000 appends took {elapsed:.3f} s with the writer stuck"
    with caplog.at_level(logging.WARNING, logger="batchml.api.prediction_log"):
        release.set()
        plog.close()
    assert plog.stats()["logged_rows"] == 10 and len(read_log(tmp_path / "online")) == 10
    assert "dropped 996 request(s) (1992 rows)" in caplog.text
    print(f"\n[prediction-log] 1000 appends with the writer stuck: {elapsed * 1e3:.1f} ms")


def test_requests_are_answered_while_the_log_is_full(module_tagged_home: Settings,
                                                     tmp_path: Path) -> None:
    """Through the app: with the writer stuck, every request is still answered (200) and
    the ones the queue has no room for are counted as dropped."""
    entered, release = threading.Event(), threading.Event()

    def slow_writer(path: Path, table: pa.Table) -> None:
        entered.set()
        assert release.wait(60)
        write_atomically(path, table)

    plog = PredictionLog(tmp_path / "online", flush_rows=1, flush_s=3600, max_rows=3,
                         writer=slow_writer)
    with TestClient(create_app(module_tagged_home, prediction_log=plog)) as client:
        codes = [client.post("/invocations", json={"inputs": {"review": TEXTS}}).status_code
                 for _ in range(20)]
        assert entered.is_set()
        release.set()
    assert codes == [200] * 20
    stats = plog.stats()
    assert stats["requests"] == 1 and stats["dropped_requests"] == 19
    assert stats["logged_rows"] == 3


def test_off_means_no_files(module_tagged_home: Settings, tmp_path: Path) -> None:
    for on in (False, True):
        settings = module_tagged_home.model_copy(update={"home": tmp_path / str(on),
                                                         "api_log_predictions": on})
        app = create_app(settings)
        assert (app.state.api.prediction_log is None) is not on
        with TestClient(app) as client:
            for _ in range(3):
                r = client.post("/invocations", json={"inputs": {"review": TEXTS}})
                assert r.status_code == 200
        root = online_root(settings)
        assert root == tmp_path / str(on) / "online"
        if on:
            assert len(read_log(root)) == 9
        else:
            assert not root.exists()


# --- the catalog: online and batch predictions in DuckDB alike --------------------------------


COMPARE = """
SELECT 'batch' AS source, model_run_id, label, proba FROM predictions
UNION ALL BY NAME
SELECT 'online' AS source, model_run_id, label, proba FROM online_predictions;
"""


def duckdb_cli(args: list[str], query: str, home: Path) -> list[list[dict[str, Any]]]:
    """The real duckdb CLI: ``query``'s result sets (one per statement) as lists of rows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BATCHML_", "PG"))}
    env["HOME"] = str(home)
    done = subprocess.run([str(DUCKDB_CLI), *args, "-json", "-c", query], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    text = done.stdout[done.stdout.index("\n[") + 1:] if not done.stdout.startswith("[") \
        else done.stdout
    decoder, text, results = json.JSONDecoder(), text.strip(), []
    while text:
        value, end = decoder.raw_decode(text)
        results.append(value)
        text = text[end:].lstrip()
    return results


BOTH = ("SELECT source, count(*) AS n, count(DISTINCT model_run_id) AS runs FROM ("
        f"{COMPARE.strip().rstrip(';')}) GROUP BY source ORDER BY source; "
        # the same 20 reviews scored in a file and in one request: the same answers
        "SELECT count(*) AS n, count(*) FILTER (WHERE b.label = o.label AND "
        "abs(b.proba - o.proba) < 1e-9) AS same FROM predictions b JOIN online_predictions o "
        "USING (row_index, model_run_id);")


@pytest.fixture(scope="module")
def scored_both_ways(module_tagged_home: Settings, tmp_path_factory: pytest.TempPathFactory
                     ) -> Settings:
    """20 reviews scored as a file into the outbox (the `predictions` view) and as one HTTP
    request through the app (the request log and its `online_predictions` view)."""
    settings = module_tagged_home
    frame = synthetic_reviews(20, seed=7)
    path = tmp_path_factory.mktemp("batch") / "reviews.parquet"
    frame.to_parquet(path)
    result = predict_files(settings, [str(path)])
    assert result.all_scored and len([o for r in result.reports for o in r.outcomes]) == 1
    with TestClient(create_app(settings)) as client:
        r = client.post("/invocations", json={"inputs": {"review": list(frame["review"])}})
        assert r.status_code == 200
    return settings


def test_the_catalog_view_answers_beside_batch_predictions(scored_both_ways: Settings,
                                                           tmp_path: Path) -> None:
    """The DuckDB catalog has `online_predictions` (created once the first file existed) and
    its published copy too: the real duckdb CLI counts both sources and finds the file's and
    the request's answers identical, row by row."""
    settings = scored_both_ways
    catalog = Catalog.from_settings(settings)
    assert catalog.sql("SELECT count(*) AS n FROM online_predictions")["n"][0] == 20
    published = settings.published_catalog_path
    assert published is not None

    def published_has_view() -> bool:
        try:
            with duckdb.connect(str(published), read_only=True) as con:
                row = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name "
                                  "IN ('predictions', 'online_predictions')").fetchone()
            return row is not None and row[0] == 2
        except duckdb.Error:
            return False

    wait_for(published_has_view, "the published copy to have both views")
    counts, same = duckdb_cli(["-readonly", str(published)], BOTH, tmp_path / "home")
    assert counts == [{"source": "batch", "n": 20, "runs": 1},
                      {"source": "online", "n": 20, "runs": 1}]
    assert same == [{"n": 20, "same": 20}]
    catalog.close()


def test_postgres_catalog_init_script_defines_the_view(scored_both_ways: Settings,
                                                       served: Served, pg_url: str,
                                                       tmp_path: Path) -> None:
    """A PostgreSQL catalog keeps no view over files: `batchml sql --duckdb-init` defines
    `online_predictions` (and `predictions`) in the session, and the real duckdb CLI answers
    the same query over both as on the DuckDB catalog."""
    home = tmp_path / "pg-home"
    settings = Settings(home=home, catalog_url=pg_url, outbox=scored_both_ways.outbox)
    Catalog.from_settings(settings).close()  # the schema
    empty = duckdb_init_sql(settings)
    assert f"-- {home / 'online'} holds no logged request yet" in empty
    assert "\nCREATE OR REPLACE TEMP VIEW online_predictions" not in empty
    # this host's API logged the same request here
    plog = PredictionLog.from_settings(settings)
    reviews = read_log(online_root(scored_both_ways)).column("review").to_pylist()
    inputs, outputs = scored(served, reviews)
    plog.append(served=served, inputs=inputs, outputs=outputs, latency_ms=1.0,
                protocol="mlflow")
    plog.close()
    script = duckdb_init_sql(settings)
    assert "\nCREATE OR REPLACE TEMP VIEW online_predictions AS\n    SELECT * FROM read_parquet(" \
        in script
    init = tmp_path / "init.sql"
    init.write_text(script)
    counts, same = duckdb_cli(["-init", str(init)], BOTH, tmp_path / "cli-home")
    assert counts == [{"source": "batch", "n": 20, "runs": 1},
                      {"source": "online", "n": 20, "runs": 1}]
    assert same == [{"n": 20, "same": 20}]


# --- batchml serve --api --------------------------------------------------------------------


@pytest.mark.slow
def test_serve_api_scores_files_and_requests_and_stops_on_sigterm(tagged_home: Settings,
                                                                  tmp_path: Path) -> None:
    """The console script: one process scores a dropped file and answers /invocations; SIGTERM
    stops both cleanly (exit 0), the request log flushed and in the catalog's view."""
    settings = tagged_home
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHML_"))}
    env.update(BATCHML_HOME=str(settings.home), BATCHML_API_PORT=str(port))
    log_path = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(BIN / "batchml"), "serve", "--api"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{url}/ping", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, "the HTTP API of batchml serve --api", 240)
        ready = time.monotonic() - start
        inbox = Path(str(settings.inbox))
        synthetic_reviews(50, seed=11).to_parquet(inbox / ".landed.tmp")
        (inbox / ".landed.tmp").rename(inbox / "landed.parquet")
        r = httpx.post(f"{url}/invocations", json={"inputs": {"review": TEXTS}}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        heartbeat = Heartbeat(settings.home / "service.json")
        # the heartbeat counts a file once its batch (a Prefect flow run) has ended: a SIGTERM
        # inside a flow run is Prefect's to handle (it crashes the run), not the service's
        wait_for(lambda: (heartbeat.read() or {}).get("files") == 1,
                 "the dropped file to be scored", 120)
        assert (heartbeat.read() or {})["api_url"] == url
        assert len(visible_files(Path(str(settings.outbox)))) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()
    assert "stopped cleanly" in log_path.read_text()
    assert json.loads((settings.home / "service.json").read_text())["state"] == "stopped"
    logged = read_log(online_root(settings))  # flushed at the stop
    assert logged.column("review").to_pylist() == TEXTS
    catalog = Catalog(settings.catalog_file)
    both = catalog.sql(COMPARE.replace(";", "") + " ORDER BY source")
    assert list(both["source"].value_counts().sort_index()) == [50, 3]
    catalog.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/ping", timeout=1)
    print(f"\n[serve --api] API up {ready:.1f} s after start")


def test_serve_api_on_a_taken_port_fails_before_starting_anything(tagged_home: Settings
                                                                  ) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PREFECT_", "BATCHML_"))}
        env.update(BATCHML_HOME=str(tagged_home.home), BATCHML_API_PORT=str(port))
        done = subprocess.run([str(BIN / "batchml"), "serve", "--api"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert not (tagged_home.home / "prefect" / "server.log").exists()  # no Prefect server
    assert not (tagged_home.home / "service.json").exists()
