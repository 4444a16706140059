"""The web page at ``/`` and its ``/api/`` endpoints (issue 18 items 9 and 10): every endpoint's
content on a trained home (runs with metrics, registered versions and aliases, files scored and
quarantined, rows per hour), the token rules for moving an alias (403 read-only, 401 without a
token, 403 with a wrong one, 409 on a stale expect, 400s on bad input, never a 500), and the page
end to end in headless Chromium (Debian's ``chromium`` driven by Playwright against a real
uvicorn): sort, pick a metric, move an alias through the confirmation dialog, try a sentence,
see the files and the chart. Screenshots go to ``$BATCHML_TEST_ARTIFACTS`` (default: the test's
tmp dir) and their paths are printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr
from testhelp import free_port

from batchml import Catalog, Settings
from batchml.api import create_app
from batchml.api.page import lower_is_better
from batchml.catalog import Ledger
from batchml.predict import predict_files
from batchml.synthetic import synthetic_reviews

TOKEN = "page-test-token-0123456789"
# runs with metrics only (no model): each best by another metric, none the newest or oldest
EXTRA_RUNS = [{"roc_auc": 0.999, "log_loss": 0.7, "accuracy": 0.61},
              {"roc_auc": 0.62, "log_loss": 0.011, "accuracy": 0.64},
              {"roc_auc": 0.75, "log_loss": 0.5}]
GOOD_ROWS = (7, 5)


@pytest.fixture(scope="module")
def page_home(module_tagged_home: Settings, tmp_path_factory: pytest.TempPathFactory
              ) -> Settings:
    """The tagged run registered as reviews/1 and a copy of it as reviews/2, champion -> 1
    (as test_api's api_home); three more runs with metrics only; two files scored and two
    quarantined (a missing column, bytes that are not parquet)."""
    settings = module_tagged_home
    cat = Catalog.from_settings(settings)
    model = cat.model("reviews")
    first = cat.latest_run(settings.train_flow, tag=settings.model_tag)
    name, info = next((n, m) for n, m in first.models.items() if m["is_primary"])
    second = cat.create_run(settings.train_flow)
    cat.backend.record_model(second.id, name, flavor=info["flavor"],
                             signature=info["signature"], artifact=info["artifact"],
                             primary=True)
    for art, meta in first.artifacts.items():
        cat.backend.record_artifact(second.id, art, uri=meta["uri"], sha256=meta["sha256"],
                                    size=meta["bytes"], kind=meta["kind"])
    second.finish()
    model.register(first), model.register(second)
    model.set_alias("champion", 1, expect=None, reason="first champion")
    for metrics in EXTRA_RUNS:
        cat.create_run(settings.train_flow, metrics=metrics).finish()
    inbox = tmp_path_factory.mktemp("page-inbox")
    for i, rows in enumerate(GOOD_ROWS):
        synthetic_reviews(rows, seed=10 + i).to_parquet(inbox / f"good-{i}.parquet")
    pd.DataFrame({"comment": ["no review column"]}).to_parquet(inbox / "wrong-column.parquet")
    (inbox / "not-parquet.parquet").write_bytes(b"these bytes are not parquet" * 10)
    predict_files(settings, [str(inbox)])
    cat.close()
    return settings


def _app(settings: Settings, token: str | None) -> Any:
    update: dict[str, Any] = {"api_log_predictions": False,
                              "api_token": SecretStr(token) if token else None}
    return create_app(settings.model_copy(update=update), "reviews@champion")


@pytest.fixture(scope="module")
def reader(page_home: Settings) -> Iterator[TestClient]:
    """A read-only server (no token configured)."""
    with TestClient(_app(page_home, None)) as client:
        yield client


@pytest.fixture(scope="module")
def writer(page_home: Settings) -> Iterator[TestClient]:
    """A server with a token."""
    with TestClient(_app(page_home, TOKEN)) as client:
        yield client


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _champion(settings: Settings) -> int:
    cat = Catalog.from_settings(settings)
    version = cat.model("reviews").alias("champion")
    assert version is not None
    return version.version


# --- (a) the JSON endpoints, without a browser --------------------------------------------------


def test_api_runs_lists_every_run_with_its_metrics(reader: TestClient,
                                                   page_home: Settings) -> None:
    body = reader.get("/api/runs").json()
    frame = Catalog.from_settings(page_home).search_runs(page_home.train_flow)
    assert [r["run_id"] for r in body["runs"]] == \
        list(frame.sort_values("started_at", ascending=False)["run_id"])
    names = sorted(c.removeprefix("metrics.") for c in frame.columns
                   if c.startswith("metrics."))
    shown = [m["name"] for m in body["metrics"]]
    assert sorted(shown) == names
    assert shown[:5] == ["roc_auc", "balanced_accuracy", "f1_macro", "accuracy", "f1"]
    plain = [n for n in shown if "." not in n]  # the run's own, then per candidate
    assert shown[:len(plain)] == plain and all(m["detail"] == ("." in m["name"])
                                               for m in body["metrics"])
    better = {m["name"]: m["better"] for m in body["metrics"]}
    assert better["roc_auc"] == "higher" and better["accuracy"] == "higher"
    assert better["log_loss"] == "lower" and better["baseline.log_loss"] == "lower"
    for run in body["runs"]:
        row = frame[frame["run_id"] == run["run_id"]].iloc[0]
        for name, value in run["metrics"].items():
            recorded = row[f"metrics.{name}"]
            assert (value is None) == pd.isna(recorded), (run["run_id"], name)
            if value is not None:
                assert value == pytest.approx(recorded)
    by_id = {r["run_id"]: r for r in body["runs"]}
    assert by_id["train/1"]["versions"] == ["reviews/1"]
    assert by_id["train/2"]["versions"] == ["reviews/2"]
    assert "deployment_candidate" in by_id["train/1"]["tags"]
    assert body["default_metric"] == "roc_auc"
    assert body["best"]["run_id"] == "train/3" and body["best"]["value"] == 0.999


@pytest.mark.parametrize(("metric", "lower"), [
    ("log_loss", True), ("val_loss", True), ("logloss", True), ("error_rate", True),
    ("brier_score", True), ("rmse", True), ("mae", True), ("baseline.log_loss", True),
    ("roc_auc", False), ("accuracy", False), ("f1_macro", False), ("name_length", False)])
def test_which_metrics_are_lower_is_better(metric: str, lower: bool) -> None:
    assert lower_is_better(metric) is lower


def test_api_models_lists_versions_aliases_and_history(reader: TestClient,
                                                       page_home: Settings) -> None:
    body = reader.get("/api/models").json()
    assert body["writable"] is False
    (model,) = body["models"]
    cat = Catalog.from_settings(page_home)
    registered = cat.model("reviews")
    assert model["name"] == "reviews"
    assert model["aliases"] == registered.aliases
    assert [(v["version"], v["run_id"]) for v in model["versions"]] == \
        [(v.version, v.run_id) for v in registered.versions()]
    holder = registered.aliases["champion"]
    assert [v["aliases"] for v in model["versions"]] == \
        [["champion"] if v.version == holder else [] for v in registered.versions()]
    moves = registered.history()
    assert [m["seq"] for m in model["history"]] == [m.seq for m in reversed(moves)]
    oldest = model["history"][-1]
    assert (oldest["alias"], oldest["from_version"], oldest["to_version"], oldest["reason"]) \
        == ("champion", None, 1, "first champion")


def test_api_serving_names_the_version_and_its_signature(reader: TestClient,
                                                         page_home: Settings) -> None:
    body = reader.get("/api/serving").json()
    assert body["reference"] == "reviews@champion"
    assert body["inputs"] == [{"name": "review", "type": "string", "required": True}]
    assert {"label", "proba"} <= {o["name"] for o in body["outputs"]}
    assert body["serving"] == f"reviews/{_champion(page_home)}"


def test_api_batches_lists_files_with_state_and_reason(reader: TestClient,
                                                       page_home: Settings) -> None:
    body = reader.get("/api/batches").json()
    assert body["counts"] == Ledger(Catalog.from_settings(page_home)).counts()
    assert body["counts"]["scored"] == 2 and body["counts"]["quarantined"] == 2
    files = {f["name"]: f for f in body["files"]}
    assert set(files) == {"good-0.parquet", "good-1.parquet", "wrong-column.parquet",
                          "not-parquet.parquet"}
    assert [files[f"good-{i}.parquet"]["rows"] for i in range(2)] == list(GOOD_ROWS)
    assert all(files[f"good-{i}.parquet"]["state"] == "scored" for i in range(2))
    assert files["good-0.parquet"]["model_run_id"] == "train/1"
    assert files["wrong-column.parquet"]["state"] == "quarantined"
    assert "column 'review' is missing" in files["wrong-column.parquet"]["error"]
    assert files["not-parquet.parquet"]["state"] == "quarantined"
    assert "parquet" in files["not-parquet.parquet"]["error"]
    stamps = [f["updated_at"] for f in body["files"]]
    assert stamps == sorted(stamps, reverse=True)
    (batch,) = body["batches"]  # predict_files scored the four files in one batch
    assert {k: batch[k] for k in ("model_run_id", "status", "files", "scored", "quarantined",
                                  "failed", "rows", "positives")} == {
        "model_run_id": "train/1", "status": "completed", "files": 4, "scored": 2,
        "quarantined": 2, "failed": 0, "rows": sum(GOOD_ROWS),
        "positives": _positives(page_home)}


def _positives(settings: Settings) -> int:
    """The positives the scored files recorded (read here with SQL, as a person would)."""
    frame = Catalog.from_settings(settings).sql(
        "SELECT sum(positives) AS n FROM batch_files WHERE status = 'scored'")
    return int(frame["n"].iloc[0])


def test_api_hourly_counts_the_rows_scored(reader: TestClient, page_home: Settings) -> None:
    body = reader.get("/api/stats/hourly").json()
    assert body["hours"] == 24 and len(body["buckets"]) == 24
    hours = [b["hour"] for b in body["buckets"]]
    assert hours == sorted(hours) and len(set(hours)) == 24
    assert sum(b["rows"] for b in body["buckets"]) == sum(GOOD_ROWS)
    assert body["buckets"][-1]["rows"] + body["buckets"][-2]["rows"] == sum(GOOD_ROWS)
    assert sum(b["positives"] or 0 for b in body["buckets"]) == _positives(page_home)
    for b in body["buckets"]:
        if b["rows"]:
            assert b["positive_rate"] == pytest.approx(b["positives"] / b["rows"])
        else:
            assert b["positive_rate"] is None and b["positives"] is None
    assert len(reader.get("/api/stats/hourly", params={"hours": 3}).json()["buckets"]) == 3


@pytest.mark.parametrize("hours", ["0", "169", "-1", "1.5", "abc", "", "٣"])
def test_api_hourly_refuses_bad_hours(reader: TestClient, hours: str) -> None:
    response = reader.get("/api/stats/hourly", params={"hours": hours})
    assert response.status_code == 400
    assert "'hours' must be a whole number from 1 to 168" in response.json()["message"]


def test_read_only_server_refuses_moves_and_shows_no_buttons(reader: TestClient,
                                                             page_home: Settings) -> None:
    before = _champion(page_home)
    response = reader.post("/api/models/reviews/aliases/champion", headers=_auth(),
                           json={"version": 2, "expect": before})
    assert response.status_code == 403
    assert response.json()["error_code"] == "READ_ONLY"
    assert "BATCHML_API_TOKEN" in response.json()["message"]
    assert _champion(page_home) == before
    page = reader.get("/")
    assert page.status_code == 200
    assert 'id="read-only"' in page.text and "BATCHML_API_TOKEN" in page.text
    assert "move-alias" not in page.text and 'id="api-token"' not in page.text


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "UNAUTHENTICATED"),
    ({"Authorization": "Bearer"}, 401, "UNAUTHENTICATED"),
    ({"Authorization": f"Basic {TOKEN}"}, 401, "UNAUTHENTICATED"),
    ({"Authorization": "Bearer wrong-token"}, 403, "PERMISSION_DENIED"),
    ({"Authorization": f"Bearer {TOKEN}x"}, 403, "PERMISSION_DENIED"),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 403, "PERMISSION_DENIED"),
], ids=["none", "empty-bearer", "basic", "wrong", "longer", "shorter"])
def test_moves_need_the_right_token(writer: TestClient, page_home: Settings,
                                    headers: dict[str, str], status: int, code: str) -> None:
    before = _champion(page_home)
    response = writer.post("/api/models/reviews/aliases/champion", headers=headers,
                           json={"version": 3 - before, "expect": before})
    assert response.status_code == status, response.text
    assert response.json()["error_code"] == code
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert _champion(page_home) == before


def test_a_move_with_the_token_is_recorded_and_a_stale_expect_is_409(
        writer: TestClient, page_home: Settings) -> None:
    before = _champion(page_home)
    other = 3 - before
    moved = writer.post("/api/models/reviews/aliases/champion", headers=_auth(),
                        json={"version": other, "expect": before, "reason": "api test"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["from_version"], moved.json()["to_version"]) == (before, other)
    model = Catalog.from_settings(page_home).model("reviews")
    last = model.history("champion")[-1]
    assert (last.from_version, last.to_version, last.reason) == (before, other, "api test")
    assert moved.json()["seq"] == last.seq
    # the page still believes `before` holds it: compare-and-set refuses, naming the holder
    moves = len(model.history())
    stale = writer.post("/api/models/reviews/aliases/champion", headers=_auth(),
                        json={"version": other, "expect": before})
    assert stale.status_code == 409
    assert stale.json()["error_code"] == "CONFLICT" and stale.json()["current"] == other
    assert f"reviews@champion is held by version {other}, not version {before}" \
        in stale.json()["message"]
    assert len(model.history()) == moves
    # a new alias (expect null), then back to how it was
    assert writer.post("/api/models/reviews/aliases/challenger", headers=_auth(),
                       json={"version": before, "expect": None}).status_code == 200
    assert model.aliases == {"champion": other, "challenger": before}
    assert writer.post("/api/models/reviews/aliases/challenger", headers=_auth(),
                       json={"version": other, "expect": None}).status_code == 409
    model.set_alias("challenger", None, expect=before)
    back = writer.post("/api/models/reviews/aliases/champion", headers=_auth(),
                       json={"version": before, "expect": other, "reason": "restore"})
    assert back.status_code == 200 and _champion(page_home) == before


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/models/nobody/aliases/champion", {"version": 1, "expect": None}, 404,
     "No registered model 'nobody'"),
    ("/api/models/reviews/aliases/champion", {"version": 9, "expect": 1}, 404,
     "has no version 9"),
    ("/api/models/reviews/aliases/bad%20alias", {"version": 1, "expect": 1}, 400,
     "Invalid alias name 'bad alias'"),
    ("/api/models/%2E%2E/aliases/champion", {"version": 1, "expect": 1}, 400,
     "Invalid model name"),
    ("/api/models/reviews/aliases/champion", "not json", 400, "not valid JSON"),
    ("/api/models/reviews/aliases/champion", [1, 2], 400, "Send a JSON object"),
    ("/api/models/reviews/aliases/champion", {"version": 2}, 400, "'expect'"),
    ("/api/models/reviews/aliases/champion", {"expect": 1}, 400, "'version'"),
    ("/api/models/reviews/aliases/champion", {"version": "2", "expect": 1}, 400,
     "'version' must be a version number"),
    ("/api/models/reviews/aliases/champion", {"version": True, "expect": 1}, 400,
     "'version' must be a version number"),
    ("/api/models/reviews/aliases/champion", {"version": 0, "expect": 1}, 400,
     "'version' must be a version number"),
    ("/api/models/reviews/aliases/champion", {"version": 2, "expect": -3}, 400,
     "'expect' must be a version number"),
    ("/api/models/reviews/aliases/champion", {"version": 2, "expect": 1, "by": "me"}, 400,
     "Unknown field(s) 'by'"),
    ("/api/models/reviews/aliases/champion", {"version": 2, "expect": 1, "reason": 5}, 400,
     "'reason' must be a string"),
    ("/api/models/reviews/aliases/champion", {"version": 2, "expect": 1, "reason": "x" * 501},
     400, "at most 500"),
    ("/api/models/reviews/aliases/champion", {"version": 2, "expect": 1, "reason": "x" * 20000},
     400, "The body is over 16,384 bytes"),
], ids=["no-model", "no-version", "alias-name", "model-path", "not-json", "not-object",
        "no-expect", "no-version-key", "string-version", "bool-version", "zero", "negative",
        "unknown-field", "reason-type", "reason-long", "body-large"])
def test_bad_moves_are_400_or_404_with_a_message(writer: TestClient, page_home: Settings,
                                                 path: str, body: Any, status: int,
                                                 message: str) -> None:
    history = len(Catalog.from_settings(page_home).model("reviews").history())
    content = body if isinstance(body, str) else json.dumps(body)
    response = writer.post(path, headers={**_auth(), "Content-Type": "application/json"},
                           content=content)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    assert len(Catalog.from_settings(page_home).model("reviews").history()) == history


def test_the_page_escapes_what_it_shows_and_keeps_to_its_origin(
        writer: TestClient, page_home: Settings) -> None:
    before = _champion(page_home)
    evil = '<img src=x onerror="alert(1)">'
    for version, expect in ((3 - before, before), (before, 3 - before)):
        assert writer.post("/api/models/reviews/aliases/champion", headers=_auth(),
                           json={"version": version, "expect": expect,
                                 "reason": evil}).status_code == 200
    page = writer.get("/")
    assert evil not in page.text and "&lt;img src=x onerror=" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "<script>" not in page.text  # no inline script: only /static/page.js
    assert page.headers["x-content-type-options"] == "nosniff"
    assert re.search(r'<script src="/static/page\.js\?v=[0-9a-f]{12}" defer>', page.text)
    assert writer.get("/static/page.js").headers["content-type"].startswith("text/javascript")
    assert writer.get("/static/page.css").status_code == 200
    assert writer.get("/static/../app.py").status_code == 404
    assert writer.get("/static/page.html").status_code == 404
    # CORS stays off unless configured: no allow-origin for another site
    other = writer.get("/api/runs", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers
    paths = writer.get("/openapi.json").json()["paths"]
    assert {"/api/runs", "/api/models", "/api/serving", "/api/batches", "/api/stats/hourly",
            "/api/models/{name}/aliases/{alias}"} <= set(paths)
    assert "/" not in paths


def test_the_page_renders_every_section(writer: TestClient, page_home: Settings) -> None:
    page = writer.get("/").text
    for anchor in ('id="runs-table"', 'id="metric-picker"', 'data-model="reviews"',
                   'id="move-dialog"', 'id="api-token"', 'id="try-form"',
                   'data-column="review"', 'id="files-table"', 'id="batches-table"',
                   'id="hourly-chart"', 'class="rate-dot"'):
        assert anchor in page, anchor
    assert page.count('class="bar"') == 24
    assert '<tr data-run-id="train/3" class="best">' in page
    assert page.count('class="move-alias"') == 2  # champion's move, and a new alias
    assert page.count('<tr data-state="quarantined">') == 2
    # drift of the scored batch: a text model measures length, OOV, top tokens and the score
    # (12 rows: measured, never an alert)
    assert 'id="drift-table"' in page and 'class="drift-alert"' not in page
    for metric in ("length_psi", "oov_rate", "token_js", "psi"):
        assert f'data-metric="{metric}"' in page, metric
    assert "only 12 rows: not judged" in page


# --- (b) end to end in headless Chromium ---------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn in a thread on a free loopback port; ``ready`` is set once it listens."""

    def __init__(self, app: Any) -> None:
        super().__init__(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                        log_level="warning"))
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(60), "uvicorn did not start"
        return f"http://127.0.0.1:{self.config.port}"

    def __exit__(self, *exc: object) -> None:
        self.should_exit = True
        self.thread.join(30)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BATCHML_TEST_ARTIFACTS") or tmp_path) / "page"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _expected_order(runs: list[dict[str, Any]], metric: str, descending: bool) -> list[str]:
    have = [r for r in runs if r["metrics"].get(metric) is not None]
    rest = [r for r in runs if r["metrics"].get(metric) is None]
    have.sort(key=lambda r: r["metrics"][metric], reverse=descending)
    return [r["run_id"] for r in have] + [r["run_id"] for r in rest]


def test_the_page_end_to_end_in_chromium(page_home: Settings, artifacts: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import expect, sync_playwright

    settings = page_home
    with TestClient(_app(settings, TOKEN)) as client:
        runs = client.get("/api/runs").json()["runs"]
    cat = Catalog.from_settings(settings)
    model = cat.model("reviews")
    before = _champion(settings)
    other = 3 - before
    shots: list[Path] = []
    sentence = "I really liked it, the quality is great"
    expected_label = str(model.version(before).load().predict(
        pd.DataFrame({"review": [sentence]}))[0])

    with _Server(_app(settings, TOKEN)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium,
                                     args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))  # script errors

            def shot(name: str, target: Any = None) -> None:
                path = artifacts / f"{len(shots) + 1:02d}-{name}.png"
                if target is None:
                    page.screenshot(path=str(path), full_page=True)
                else:
                    target.screenshot(path=str(path))
                shots.append(path)

            page.goto(url + "/")
            expect(page.locator("body")).to_have_attribute("data-ready", "true")
            rows = page.locator("#runs-table tbody tr")
            expect(rows).to_have_count(len(runs))
            shot("loaded")

            def order() -> list[str]:
                return [str(x) for x in rows.evaluate_all(
                    "rs => rs.map(r => r.dataset.runId)")]

            # sort by a metric: higher-is-better sorts best first, again reverses; runs
            # without it stay last
            header = page.locator('th[data-key="metric:roc_auc"]')
            header.locator("button").click()
            expect(header).to_have_attribute("aria-sort", "descending")
            assert order() == _expected_order(runs, "roc_auc", descending=True)
            header.locator("button").click()
            expect(header).to_have_attribute("aria-sort", "ascending")
            assert order() == _expected_order(runs, "roc_auc", descending=False)
            loss = page.locator('th[data-key="metric:log_loss"]')
            loss.locator("button").click()
            expect(loss).to_have_attribute("aria-sort", "ascending")
            assert order() == _expected_order(runs, "log_loss", descending=False)
            page.locator('th[data-key="run"] button').click()
            assert order() == sorted(order(), key=lambda r: int(r.rpartition("/")[2]))

            # the metric picker highlights the best run: lower is better for a loss
            best = page.locator("#runs-table tr.best")
            for metric, descending in (("log_loss", False), ("roc_auc", True),
                                       ("accuracy", True)):
                page.select_option("#metric-picker", metric)
                winner = _expected_order(runs, metric, descending)[0]
                expect(best).to_have_count(1)
                expect(best).to_have_attribute("data-run-id", winner)
                expect(page.locator("#best-run")).to_contain_text(f"Best by {metric}")
                expect(page.locator("#best-run")).to_contain_text(winner)
            page.select_option("#metric-picker", "log_loss")
            expect(best).to_have_attribute("data-run-id", "train/4")
            shot("runs-best-log-loss", page.locator("#runs"))

            # move the alias through the confirmation dialog, with the token
            page.fill("#api-token", TOKEN)
            row = page.locator('article[data-model="reviews"] tr[data-alias="champion"]')
            row.locator("select.alias-target").select_option(str(other))
            row.locator("input.alias-reason").fill("promoted from the page")
            row.locator("button.move-alias").click()
            dialog = page.locator("#move-dialog")
            expect(dialog).to_be_visible()
            expect(dialog).to_contain_text(
                f"Move reviews@champion from version {before} to version {other}?")
            shot("move-dialog")
            page.click("#move-confirm")
            expect(dialog).to_be_hidden()
            status = page.locator("#move-status")
            expect(status).to_contain_text(f"reviews@champion now points at version {other}")
            expect(row.locator(".alias-version")).to_have_text(str(other))
            last = model.history("champion")[-1]
            assert (last.from_version, last.to_version, last.reason) == \
                (before, other, "promoted from the page")
            history = page.locator('article[data-model="reviews"] table.history tbody tr')
            expect(history.first).to_contain_text("promoted from the page")
            shot("alias-moved", page.locator("#models"))

            # someone else moves it back meanwhile: the page's move is refused with the holder
            model.set_alias("champion", before, expect=other, reason="moved elsewhere")
            row.locator("select.alias-target").select_option(str(before))
            row.locator("button.move-alias").click()
            page.click("#move-confirm")
            expect(status).to_contain_text(
                f"reviews@champion is held by version {before}, not version {other}")
            expect(status).to_have_class(re.compile(r"\berror\b"))
            expect(row.locator(".alias-version")).to_have_text(str(before))
            assert model.aliases == {"champion": before}
            shot("alias-conflict", page.locator("#models"))

            # try it: a sentence in, a label and a probability out
            page.fill('#try-form textarea[data-column="review"]', sentence)
            page.click("#try-submit")
            expect(page.locator("#try-result")).to_be_visible()
            expect(page.locator("#try-label")).to_have_text(expected_label)
            expect(page.locator("#try-proba")).to_have_text(re.compile(r"^[01]\.\d{4}$"))
            expect(page.locator("#try-classes tr")).to_have_count(2)
            expect(page.locator("#try-error")).to_be_empty()
            shot("try-it", page.locator("#try"))

            # an `explanation` output (when the server sends one) is shown as its
            # contributions, largest first (the response is stubbed: this is about the page)
            explained = {"predictions": [{
                "label": "b", "proba": 0.7, "proba_a": 0.3, "proba_b": 0.7,
                "explanation": [{"feature": "great", "contribution": 1.25},
                                {"feature": "not", "contribution": -0.5}]}]}
            page.route("**/invocations", lambda route: route.fulfill(
                status=200, content_type="application/json", body=json.dumps(explained)))
            page.click("#try-submit")
            expect(page.locator("#try-label")).to_have_text("b")
            expect(page.locator("#try-proba")).to_have_text("0.7000")
            entries = page.locator("#try-explanation tr")
            expect(entries).to_have_count(2)
            expect(entries.nth(0)).to_contain_text("great")
            expect(entries.nth(0)).to_contain_text("+1.2500")
            expect(entries.nth(1)).to_contain_text("-0.5000")
            shot("try-it-explanation", page.locator("#try"))
            page.unroute("**/invocations")

            # a request the model cannot take: the server's message is shown on the page
            page.fill('#try-form textarea[data-column="review"]', "")
            page.evaluate("document.querySelector('#try-form textarea').dataset.column = "
                          "'not_a_column'")
            page.click("#try-submit")
            expect(page.locator("#try-error")).to_contain_text("column 'review' is missing")

            # files with state and reasons; the chart of rows per hour
            files = page.locator("#files-table tbody tr")
            expect(files).to_have_count(4)
            quarantined = page.locator('#files-table tr[data-state="quarantined"]')
            expect(quarantined).to_have_count(2)
            expect(page.locator("#files-table")).to_contain_text(
                "column 'review' is missing")
            batches = page.locator("#batches-table tbody tr")
            expect(batches).to_have_count(1)
            expect(batches.first).to_contain_text("completed")
            rate = page.locator("#hourly-chart circle.rate-dot")
            expect(rate).not_to_have_count(0)
            bars = page.locator("#hourly-chart rect.bar")
            expect(bars).to_have_count(24)
            assert sum(int(x) for x in bars.evaluate_all(
                "bs => bs.map(b => b.dataset.rows)")) == sum(GOOD_ROWS)
            expect(page.locator("#hourly-chart")).to_be_visible()
            shot("files-and-chart", page.locator("#activity"))
            shot("chart", page.locator("#chart"))
            shot("final")
            assert errors == [], errors
        finally:
            browser.close()
    for path in shots:
        assert path.stat().st_size > 1000, path
        print(f"screenshot: {path}")
