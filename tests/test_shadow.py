"""Shadow scoring on both catalog backends: two versions of one trained model with different
decision thresholds (0.5 and 0.9) disagree exactly on the rows whose probability lies between
them; the worker scores each file with both, keeps the challenger's out of the outputs, records
the exact agreement, and late labels give both versions' live metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchml import Settings
from batchml.estimators import make_estimator
from batchml.labels import LabelConfig, LabelInbox, live_performance
from batchml.scoring import Outbox
from batchml.sources import DirectorySource
from batchml.worker import Worker


def _version(catalog: Any, train: pd.DataFrame, threshold: float) -> tuple[Any, str]:
    est = make_estimator("tabular_logreg", feature_columns=["x"], threshold=threshold)
    est.fit(train[["x"]], train["y"])
    run = catalog.create_run("train")
    run.log_model("m", est, primary=True)
    run.finish("completed")
    return est, str(run.id)


@pytest.fixture
def two_versions(catalog: Any) -> tuple[Any, Any]:
    """reviews/1 (threshold 0.5) as champion, reviews/2 (0.9) as challenger."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    train = pd.DataFrame({"x": x, "y": (x + rng.normal(scale=0.8, size=400) > 0).astype(int)})
    model = catalog.model("reviews")
    est1, run1 = _version(catalog, train, 0.5)
    est2, run2 = _version(catalog, train, 0.9)
    model.set_alias("champion", model.register(run1), expect=None)
    model.set_alias("challenger", model.register(run2), expect=None)
    return est1, est2


def _worker(catalog: Any, tmp: Path, **extra: Any) -> Worker:
    settings = Settings(home=tmp / "home", id_column="rid", outbox=str(tmp / "outbox"),
                        **extra)
    source = DirectorySource(tmp / "inbox", quarantine_dir=tmp / "quarantine",
                             use_events=False)
    return Worker(catalog, source, settings, model="reviews@champion")


def test_the_challenger_shadows_the_champion_with_the_exact_agreement(
        catalog: Any, catalog_url: str, tmp_path: Path, two_versions: tuple[Any, Any]) -> None:
    est1, est2 = two_versions
    x = np.linspace(-3, 3, 40)
    frame = pd.DataFrame({"x": x, "rid": [f"r{i}" for i in range(40)]})
    p = est1.predict_proba(frame[["x"]])[:, 1]
    between = int(((p >= 0.5) & (p < 0.9)).sum())  # the rows the two versions disagree on
    assert 0 < between < 40
    assert (est1.predict(frame[["x"]]) != est2.predict(frame[["x"]])).sum() == between
    (tmp_path / "inbox").mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                   tmp_path / "inbox" / "batch.parquet")
    worker = _worker(catalog, tmp_path)
    [report] = worker.run_once()
    [outcome] = report.outcomes
    assert outcome.status == "scored"
    [batch] = catalog.backend.shadow_batches("reviews")
    assert (batch["champion_version"], batch["challenger_version"], batch["files"],
            batch["failed"], batch["rows"]) == (1, 2, 1, 0, 40)
    assert batch["agreement"] == pytest.approx((40 - between) / 40)
    assert batch["psi"] == pytest.approx(0.0)  # same probabilities, another threshold
    [row] = catalog.backend.shadow_comparisons(batch["batch_id"])
    shadow = Path(row["shadow_uri"])
    assert shadow.is_file() and shadow.is_relative_to(tmp_path / "outbox-shadow")
    out = pq.read_table(outcome.output_uri)
    assert out.column("rid").to_pylist() == frame["rid"].tolist()  # the id carried through
    # the shadow output is nowhere among the outputs
    dataset = Outbox(str(tmp_path / "outbox")).dataset()
    assert [Path(f).name for f in dataset.files] == [Path(str(outcome.output_uri)).name]
    # late labels: both versions' live metrics
    truth = (x > 0).astype(int)
    labels = tmp_path / "labels"
    labels.mkdir()
    pq.write_table(pa.table({"rid": frame["rid"].tolist(), "y": truth.tolist()}),
                   labels / "truth.parquet")
    inbox = LabelInbox(catalog, LabelConfig("rid", "y"))
    [lr] = inbox.run_once(DirectorySource(labels, use_events=False))
    assert lr.matched == 40
    perf = {(r["model_version"], r["role"]): r for r in live_performance(catalog, "reviews")}
    assert set(perf) == {(1, "output"), (2, "shadow")}
    assert perf[(1, "output")]["accuracy"] == pytest.approx(
        float((est1.predict(frame[["x"]]) == truth).mean()))
    assert perf[(2, "shadow")]["accuracy"] == pytest.approx(
        float((est2.predict(frame[["x"]]) == truth).mean()))
    assert perf[(1, "output")]["auc"] == pytest.approx(perf[(2, "shadow")]["auc"])
    # the web page shows both
    from fastapi.testclient import TestClient

    from batchml.api.app import create_app

    settings = Settings(home=tmp_path / "home", catalog_url=catalog_url,
                        artifact_root=str(tmp_path / "artifacts"), api_log_predictions=False)
    with TestClient(create_app(settings, "reviews@champion")) as client:
        html = client.get("/").text
        [model] = client.get("/api/models").json()["models"]
    assert "Live performance from late labels" in html and "Shadow scoring" in html
    assert {(r["model_version"], r["role"]) for r in model["live"]} == {(1, "output"),
                                                                       (2, "shadow")}
    assert model["shadow"][0]["agreement"] == pytest.approx((40 - between) / 40)


def test_shadow_is_off_without_a_challenger_or_when_turned_off(
        catalog: Any, tmp_path: Path, two_versions: tuple[Any, Any]) -> None:
    (tmp_path / "inbox").mkdir()
    pq.write_table(pa.table({"x": [0.1, 2.0], "rid": ["a", "b"]}),
                   tmp_path / "inbox" / "a.parquet")
    assert _worker(catalog, tmp_path, shadow=False).shadow is None
    model = catalog.model("reviews")
    model.set_alias("challenger", 1, expect=2)  # the challenger is the champion: no shadow
    [report] = _worker(catalog, tmp_path).run_once()
    assert report.outcomes[0].status == "scored"
    assert catalog.backend.shadow_batches() == []


def test_a_failing_challenger_never_fails_the_champion(
        catalog: Any, tmp_path: Path, two_versions: tuple[Any, Any]) -> None:
    (tmp_path / "inbox").mkdir()
    pq.write_table(pa.table({"x": [0.1, 2.0], "rid": ["a", "b"]}),
                   tmp_path / "inbox" / "a.parquet")
    (tmp_path / "outbox-shadow").write_text("a file where the shadow directory should be")
    worker = _worker(catalog, tmp_path)
    [report] = worker.run_once()
    assert report.outcomes[0].status == "scored"
    [batch] = catalog.backend.shadow_batches()
    assert (batch["files"], batch["failed"]) == (0, 1)
    [row] = catalog.backend.shadow_comparisons(batch["batch_id"])
    assert row["status"] == "failed" and "outbox-shadow" in row["error"]


def test_outputs_are_compared_in_chunks_whatever_their_row_groups(
        catalog: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchml import shadow as shadow_module
    from batchml.scoring import ModelCache
    from batchml.shadow import Shadow

    monkeypatch.setattr(shadow_module, "CHUNK_ROWS", 7)
    p = np.linspace(0.0, 0.99, 40)
    champion = pa.table({"label": (p >= 0.5).astype(int), "proba": p})
    challenger = pa.table({"label": (p >= 0.9).astype(int), "proba": p})
    pq.write_table(champion, tmp_path / "a.parquet", row_group_size=5)
    pq.write_table(challenger, tmp_path / "b.parquet", row_group_size=13)
    shadow = Shadow(catalog, Settings(home=tmp_path / "home"), ModelCache(catalog),
                    Outbox(str(tmp_path / "outbox")))
    rows, agreed, bins = shadow.compare(str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"))
    assert (rows, agreed) == (40, 40 - int(((p >= 0.5) & (p < 0.9)).sum()))
    expected = np.bincount(np.clip((p * 10).astype(int), 0, 9), minlength=10)
    assert bins == [(k, int(n), int(n)) for k, n in enumerate(expected) if n]
    pq.write_table(challenger.slice(0, 39), tmp_path / "short.parquet")
    with pytest.raises(ValueError, match="differ in rows"):
        shadow.compare(str(tmp_path / "a.parquet"), str(tmp_path / "short.parquet"))


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "scorer-process"])
def test_the_id_column_is_carried_even_when_it_is_a_model_input(
        catalog: Any, tmp_path: Path, isolate: bool) -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"x": rng.normal(size=200), "key": np.arange(200)})
    train["y"] = (train["x"] > 0).astype(int)
    est = make_estimator("tabular_logreg", feature_columns=["x", "key"])
    est.fit(train[["x", "key"]], train["y"])
    run = catalog.create_run("train")
    run.log_model("m", est, primary=True)
    run.finish("completed")
    model = catalog.model("keyed")
    model.set_alias("champion", model.register(run.id), expect=None)
    (tmp_path / "inbox").mkdir()
    pq.write_table(pa.table({"x": [0.5, -0.5, 1.0], "key": [7, 8, 9]}),
                   tmp_path / "inbox" / "k.parquet")
    settings = Settings(home=tmp_path / "home", id_column="key", outbox=str(tmp_path / "out"))
    source = DirectorySource(tmp_path / "inbox", quarantine_dir=tmp_path / "q", use_events=False)
    worker = Worker(catalog, source, settings, model="keyed@champion", isolate=isolate)
    try:
        [report] = worker.run_once()
    finally:
        worker.close()
    [outcome] = report.outcomes
    assert outcome.status == "scored", outcome.error
    assert pq.read_table(outcome.output_uri).column("key").to_pylist() == [7, 8, 9]


def test_shadow_scoring_beside_the_scorer_process(catalog: Any, tmp_path: Path,
                                                  two_versions: tuple[Any, Any]) -> None:
    est1, est2 = two_versions
    frame = pd.DataFrame({"x": np.linspace(-3, 3, 40), "rid": [f"r{i}" for i in range(40)]})
    expected = float((est1.predict(frame[["x"]]) == est2.predict(frame[["x"]])).mean())
    (tmp_path / "inbox").mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                   tmp_path / "inbox" / "batch.parquet")
    settings = Settings(home=tmp_path / "home", id_column="rid", outbox=str(tmp_path / "outbox"))
    source = DirectorySource(tmp_path / "inbox", quarantine_dir=tmp_path / "q", use_events=False)
    worker = Worker(catalog, source, settings, model="reviews@champion", isolate=True)
    try:
        [report] = worker.run_once()
    finally:
        worker.close()
    assert report.outcomes[0].status == "scored"
    [batch] = catalog.backend.shadow_batches("reviews")
    assert (batch["rows"], batch["agreement"]) == (40, pytest.approx(expected))
