"""`batchml serve-api`: MLflow's scoring protocol and the Open Inference Protocol v2 over a real
trained model, the same input rules as batch (column-level 400s, never a 500), limits, and an
alias followed under continuous load without a failed or mixed request."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import uvicorn
from fastapi.testclient import TestClient
from testhelp import free_port

from batchml import Catalog, Settings
from batchml.api import create_app

TEXTS = ["great dress, fits well", "awful, it ripped after one wash", "ok"]


@pytest.fixture(scope="module")
def api_home(module_tagged_home: Settings) -> Settings:
    """The tagged run registered as reviews/1 and a copy of it as reviews/2 (same model,
    another run id, so a response says which version answered); champion -> 1."""
    cat = Catalog.from_settings(module_tagged_home)
    model = cat.model("reviews")
    if model.exists:
        return module_tagged_home
    first = cat.latest_run(module_tagged_home.train_flow, tag=module_tagged_home.model_tag)
    name, info = next((n, m) for n, m in first.models.items() if m["is_primary"])
    second = cat.create_run(module_tagged_home.train_flow)
    cat.backend.record_model(second.id, name, flavor=info["flavor"],
                             signature=info["signature"], artifact=info["artifact"],
                             primary=True)
    for art, meta in first.artifacts.items():
        cat.backend.record_artifact(second.id, art, uri=meta["uri"], sha256=meta["sha256"],
                                    size=meta["bytes"], kind=meta["kind"])
    second.finish()
    model.register(first), model.register(second)
    model.set_alias("champion", 1, expect=None)
    cat.close()
    return module_tagged_home


@pytest.fixture(scope="module")
def client(api_home: Settings) -> Iterator[TestClient]:
    settings = api_home.model_copy(update={"api_max_rows": 50, "api_max_body_mb": 0.01,
                                           "api_log_predictions": False})
    with TestClient(create_app(settings, "reviews@champion")) as c:
        yield c


def _expected(settings: Settings, texts: list[str]) -> list[str]:
    cat = Catalog.from_settings(settings)
    model = cat.model("reviews").version(1).load()
    return [str(x) for x in model.predict(pd.DataFrame({"review": texts}))]


@pytest.mark.parametrize("payload", [
    {"dataframe_split": {"columns": ["review"], "data": [[t] for t in TEXTS]}},
    {"dataframe_records": [{"review": t} for t in TEXTS]},
    {"instances": [{"review": t} for t in TEXTS]},
    {"instances": TEXTS},
    {"inputs": {"review": TEXTS}},
    {"inputs": [{"review": t} for t in TEXTS], "params": {"batch_size": 2}},
], ids=["dataframe_split", "dataframe_records", "instances-records", "instances-values",
        "inputs-columns", "inputs-records-params"])
def test_mlflow_json_shapes_score_like_the_model(client: TestClient, api_home: Settings,
                                                 payload: dict[str, Any]) -> None:
    response = client.post("/invocations", json=payload)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [str(p["label"]) for p in predictions] == _expected(api_home, TEXTS)
    assert all(0.0 <= p["proba"] <= 1.0 for p in predictions)


def test_mlflow_csv_and_health(client: TestClient, api_home: Settings) -> None:
    body = "review\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n"
    response = client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert response.status_code == 200, response.text
    assert [str(p["label"]) for p in response.json()["predictions"]] == _expected(api_home,
                                                                                 TEXTS)
    assert client.get("/ping").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/version").status_code == 200
    assert "/invocations" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(("body", "content_type", "status", "message"), [
    ({"dataframe_records": [{"text": "x"}]}, "application/json", 400,
     "column 'review' is missing"),
    ({"dataframe_records": [{"review": 3}]}, "application/json", 400,
     "column 'review' has type int64 but the model expects string"),
    ({"dataframe_records": [{"review": None}]}, "application/json", 400, "'review'"),
    ({"dataframe_records": [{"review": "a"}, {"review": 2}]}, "application/json", 400,
     "column 'review': its values are not of one type"),
    ({"dataframe_split": {"columns": ["review"], "data": [["a", "b"]]}}, "application/json",
     400, "must hold 1 value"),
    ({"rows": []}, "application/json", 400, "exactly one of the keys"),
    ({"dataframe_records": []}, "application/json", 400, "holds no rows"),
    ({"inputs": ["x"] * 51}, "application/json", 413, "at most 50 are accepted"),
    ("not json", "application/json", 400, "not valid JSON"),
    ("review\nx\n", "application/xml", 415, "Unsupported content type"),
    ({"inputs": ["x" * 20_000]}, "application/json", 413, "bytes; at most 10,485 are accepted"),
], ids=["missing-column", "wrong-type", "null", "mixed-types", "row-width", "unknown-key",
        "no-rows", "too-many-rows", "bad-json", "media-type", "body-too-large"])
def test_mlflow_errors_are_column_level_and_never_500(
        client: TestClient, body: Any, content_type: str, status: int, message: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/invocations", content=content,
                           headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["error_code"] in ("BAD_REQUEST",)
    assert message in response.json()["message"]


def test_v2_metadata_and_infer(client: TestClient, api_home: Settings) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/reviews").json()
    assert meta["inputs"] == [{"name": "review", "datatype": "BYTES", "shape": [-1]}]
    assert {"label", "proba"} <= {o["name"] for o in meta["outputs"]}
    assert client.get("/v2/models/reviews/ready").json()["ready"] is True
    request = {"id": "r1", "inputs": [{"name": "review", "shape": [3], "datatype": "BYTES",
                                       "data": TEXTS}]}
    response = client.post("/v2/models/reviews/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == "reviews"
    assert body["model_version"] == "1"
    labels = next(o for o in body["outputs"] if o["name"] == "label")
    assert [str(x) for x in labels["data"]] == _expected(api_home, TEXTS)
    # an explicit version, not the one the alias points at
    other = client.post("/v2/models/reviews/versions/2/infer", json=request)
    assert other.status_code == 200 and other.json()["model_version"] == "2"
    assert client.post("/v2/models/reviews/versions/9/infer", json=request).status_code == 404
    assert client.post("/v2/models/nope/infer", json=request).status_code == 404
    bad = client.post("/v2/models/reviews/infer", json={"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert bad.status_code == 400 and "column 'review' is missing" in bad.json()["error"]


class _Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_alias_move_under_load_fails_nothing_and_mixes_nothing(api_home: Settings) -> None:
    """16 clients post continuously; the alias moves from 1 to 2 mid-stream. Every request
    succeeds, each answer comes from one version (its rows all scored by it), and once a
    request answered by version 2 has been seen, version 1 never answers again after the
    follower's refresh."""
    settings = api_home.model_copy(update={"api_log_predictions": False})
    app = create_app(settings, "reviews@champion")
    moved = threading.Event()
    results: list[tuple[float, int, set[str]]] = []

    async def client_loop(url: str, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                r = await http.post("/v2/models/reviews/infer", json={"inputs": [
                    {"name": "review", "shape": [2], "datatype": "BYTES",
                     "data": TEXTS[:2]}]})
                versions = {r.json().get("model_version", "?")} if r.status_code == 200 \
                    else {f"error {r.status_code}: {r.text}"}
                results.append((sent, r.status_code, versions))

    async def load(url: str) -> float:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(client_loop(url, stop)) for _ in range(16)]
        await asyncio.sleep(0.5)  # traffic before the move
        cat = Catalog.from_settings(settings)
        cat.model("reviews").set_alias("champion", 2, expect=1, reason="load test")
        cat.close()
        at = time.monotonic()
        moved.set()
        # until a request sent 1 s after the move has answered
        while not any(s > at + 1.0 for s, _, _ in results):
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        return at

    with _Server(app) as url:
        try:
            at = asyncio.run(load(url))
        finally:
            cat = Catalog.from_settings(settings)
            cat.model("reviews").set_alias("champion", 1, expect=2, reason="restore")
            cat.close()
    failures = [r for r in results if r[1] != 200]
    assert not failures, failures[:3]
    assert all(len(v) == 1 for _, _, v in results)
    late = [v for s, _, v in results if s > at + 1.0]
    assert late and all(v == {"2"} for v in late)
    assert any(v == {"1"} for s, _, v in results if s < at)
    print(f"\n[api-alias] {len(results)} requests, 0 failed; first version-2 answer "
          f"{min(s for s, _, v in results if v == {'2'}) - at:.3f} s after the move")


def test_serve_api_cli_binds_loopback(api_home: Settings, tmp_path: Path) -> None:
    """The console script serves on 127.0.0.1 by default and answers /ping."""
    import os
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    env.update(BATCHML_HOME=str(api_home.home), BATCHML_API_PORT=str(port))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "batchml"), "serve-api",
                             "--model", "reviews@champion"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "serve-api did not answer /ping"
            time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations",
                       json={"inputs": {"review": TEXTS}})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
