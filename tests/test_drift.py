"""Drift per batch (batchml/drift.py): the reference, mergeable counts, metrics and alerts, and
real batches through the worker (in-process and through the scorer process) on both catalog
backends. Fixed seeds throughout: a fresh sample of the training distribution is not flagged,
a shifted one is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchml import Catalog, Settings
from batchml.drift import (
    REFERENCE_ARTIFACT,
    DriftAccumulator,
    DriftCounts,
    DriftReference,
    DriftThresholds,
    build_reference,
    drift_rows,
    js_distance,
    psi,
)
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews, synthetic_tabular
from batchml.worker import Worker

FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]


def _scores(n: int, seed: int, power: float = 1.0) -> np.ndarray:
    p = np.random.default_rng(seed).uniform(size=n) ** power
    return np.c_[1 - p, p]


def _tabular_reference() -> DriftReference:
    train = synthetic_tabular(5000, seed=1)
    ref = build_reference("m", train[FEATURES], text_column=None, classes=[0, 1],
                          valid_proba=_scores(2000, 2))
    return DriftReference.from_json(ref.to_json())  # as the scorer reads it back


def _text_reference() -> DriftReference:
    train = synthetic_reviews(3000, seed=1)
    valid = synthetic_reviews(500, seed=2)
    ref = build_reference("m", train[["review"]], text_column="review", classes=[0, 1],
                          valid_x=valid[["review"]], valid_proba=_scores(500, 3))
    return DriftReference.from_json(ref.to_json())


def _measure(ref: DriftReference, frame: pd.DataFrame, proba: np.ndarray,
             batch_rows: int = 700) -> dict[tuple[str, str], object]:
    acc = DriftAccumulator(ref)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    start = 0
    for batch in table.to_batches(batch_rows):
        acc.update(batch, proba[start:start + batch.num_rows])
        start += batch.num_rows
    return {(r.feature, r.metric): r for r in drift_rows(ref, acc.counts)}


def _shifted_tabular(n: int, seed: int) -> pd.DataFrame:
    frame = synthetic_tabular(n, seed=seed)[FEATURES].copy()
    frame["monthly_charges"] = frame["monthly_charges"] * 1.6  # a price change
    frame["tenure_months"] = frame["tenure_months"] + 20
    frame["plan"] = np.where(np.random.default_rng(seed).random(n) < 0.7, "pro", frame["plan"])
    return frame


def test_psi_and_js_distance_values() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert psi([0.9, 0.1], [0.1, 0.9]) == pytest.approx(2 * 0.8 * np.log(9))
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([1, 1], [2, 2]) == pytest.approx(0.0)
    assert js_distance([0, 0], [0, 0]) == 0.0


def test_fresh_tabular_sample_is_not_flagged_and_a_shifted_one_is() -> None:
    ref = _tabular_reference()
    assert {f.kind for f in ref.features} == {"numeric", "categorical", "score"}
    fresh = _measure(ref, synthetic_tabular(3000, seed=7)[FEATURES], _scores(3000, 8))
    assert not [k for k, r in fresh.items() if r.alert], fresh  # type: ignore[attr-defined]
    assert set(fresh) == {("tenure_months", "psi"), ("monthly_charges", "psi"),
                          ("support_calls", "psi"), ("plan", "js"), ("region", "js"),
                          ("score:1", "psi")}
    shifted = _measure(ref, _shifted_tabular(3000, seed=7), _scores(3000, 8, power=0.3))
    flagged = {k for k, r in shifted.items() if r.alert}  # type: ignore[attr-defined]
    assert flagged == {("tenure_months", "psi"), ("monthly_charges", "psi"), ("plan", "js"),
                       ("score:1", "psi")}
    # one record batch larger than SAMPLE_ROWS: its evenly spaced rows are counted
    big = _measure(ref, synthetic_tabular(30_000, seed=8)[FEATURES], _scores(30_000, 9),
                   batch_rows=30_000)
    assert not [k for k, r in big.items() if r.alert], big  # type: ignore[attr-defined]
    big = _measure(ref, _shifted_tabular(30_000, seed=8), _scores(30_000, 9, power=0.3),
                   batch_rows=30_000)
    assert {k for k, r in big.items() if r.alert} == flagged  # type: ignore[attr-defined]


def test_fresh_text_sample_is_not_flagged_and_a_shifted_one_is() -> None:
    ref = _text_reference()
    (text,) = [f for f in ref.features if f.kind == "text"]
    assert text.top == 50 and len(text.vocabulary) > 50 and 0 <= text.oov_rate < 0.05
    fresh = _measure(ref, synthetic_reviews(2000, seed=9)[["review"]], _scores(2000, 4))
    assert {k: r.alert for k, r in fresh.items()} == {  # type: ignore[attr-defined]
        ("review", "length_psi"): False, ("review", "oov_rate"): False,
        ("review", "token_js"): False, ("score:1", "psi"): False}
    rng = np.random.default_rng(5)
    words = [f"zq{i}xy" for i in range(300)]  # never seen in training
    other = pd.DataFrame({"review": [" ".join(rng.choice(words, rng.integers(30, 60)))
                                     for _ in range(2000)]})
    shifted = _measure(ref, other, _scores(2000, 4, power=3.0))
    assert {k for k, r in shifted.items() if r.alert} == set(fresh)  # type: ignore[attr-defined]
    assert shifted[("review", "oov_rate")].value == pytest.approx(1.0)  # type: ignore[attr-defined]


def test_merged_partial_counts_equal_one_pass() -> None:
    ref = _text_reference()
    frame = synthetic_reviews(1500, seed=11)[["review"]]
    proba = _scores(1500, 12)
    whole = DriftAccumulator(ref, token_rows=None, sample_rows=None)
    whole.update(pa.Table.from_pandas(frame, preserve_index=False), proba)
    merged = DriftCounts()
    for lo, hi in [(0, 100), (100, 1100), (1100, 1500)]:  # three "files"
        part = DriftAccumulator(ref, token_rows=None, sample_rows=None)
        part.update(pa.Table.from_pandas(frame.iloc[lo:hi], preserve_index=False),
                    proba[lo:hi])
        merged.merge(part.counts)
    assert merged.rows == whole.counts.rows == 1500 and merged.files == 3
    assert merged.counts.keys() == whole.counts.counts.keys()
    for name, parts in whole.counts.counts.items():
        for key, value in parts.items():
            np.testing.assert_array_equal(merged.counts[name][key], value, err_msg=key)
    assert drift_rows(ref, merged) == drift_rows(ref, whole.counts)


@pytest.mark.parametrize(("column", "values", "note"), [
    ("tenure_months", [None] * 400, "all values missing in this batch"),
    ("monthly_charges", [42.0] * 400, "constant in this batch (42)"),
    ("plan", [None] * 400, "all values missing in this batch"),
    ("plan", ["pro"] * 400, "one value in this batch"),
])
def test_all_null_and_constant_columns_give_a_value_and_a_note(
        column: str, values: list[object], note: str) -> None:
    ref = _tabular_reference()
    frame = synthetic_tabular(400, seed=3)[FEATURES].copy()
    frame[column] = pd.Series(values, dtype=frame[column].dtype)
    row = _measure(ref, frame, _scores(400, 1))[(column, "js" if column == "plan" else "psi")]
    assert np.isfinite(row.value) and row.note == note, row  # type: ignore[attr-defined]


@pytest.mark.parametrize(("train", "note"), [
    (pd.DataFrame({"x": [np.nan] * 50, "y": np.arange(50.0)}),
     "reference: all values missing in the training data"),
    (pd.DataFrame({"x": [3.0] * 50, "y": np.arange(50.0)}),
     "reference: constant in the training data: one bin"),
])
def test_degenerate_training_columns_are_noted_not_fatal(train: pd.DataFrame,
                                                         note: str) -> None:
    ref = build_reference("m", train, text_column=None, classes=[0, 1])
    batch = pd.DataFrame({"x": np.arange(200.0), "y": np.arange(200.0)})
    rows = {r.feature: r for r in drift_rows(ref, _counts(ref, batch))}
    assert np.isfinite(rows["x"].value) and note in (rows["x"].note or "")


def _counts(ref: DriftReference, frame: pd.DataFrame) -> DriftCounts:
    acc = DriftAccumulator(ref)
    acc.update(pa.Table.from_pandas(frame, preserve_index=False), None)
    return acc.counts


def test_small_batches_are_measured_but_never_alert() -> None:
    ref = _tabular_reference()
    rows = drift_rows(ref, _counts(ref, _shifted_tabular(50, seed=2)),
                      DriftThresholds(min_rows=100))
    assert rows and not any(r.alert for r in rows)
    assert all("only 50 rows: not judged" in (r.note or "") for r in rows)


# --- real batches -----------------------------------------------------------------------------


def _home(tmp_path: Path, catalog_url: str) -> Settings:
    from testhelp import make_tagged_home

    return make_tagged_home(tmp_path / "data", tmp_path / "home", train_rows=1500,
                            valid_rows=400, catalog_url=catalog_url)


def _drop(settings: Settings, frames: dict[str, pd.DataFrame]) -> None:
    inbox = Path(str(settings.inbox))
    inbox.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(inbox / f".{name}.tmp")
        (inbox / f".{name}.tmp").rename(inbox / name)


def _shifted_reviews(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = [f"zq{i}xy" for i in range(300)]
    return pd.DataFrame({"review_id": np.arange(n), "review": [
        " ".join(rng.choice(words, rng.integers(30, 60))) for _ in range(n)]})


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "scorer-process"])
def test_batches_through_the_worker_record_drift(catalog_url: str, tmp_path: Path,
                                                 isolate: bool) -> None:
    settings = _home(tmp_path, catalog_url)
    catalog = Catalog.from_settings(settings)
    run = catalog.latest_run("train", tag="deployment_candidate")
    assert run is not None and REFERENCE_ARTIFACT in run.artifacts
    reference = json.loads(run.fetch_artifact(REFERENCE_ARTIFACT))
    assert [f["kind"] for f in reference["features"]] == ["text", "score"]
    src = DirectorySource(Path(str(settings.inbox)), use_events=False,
                          quarantine_dir=settings.quarantine)
    worker = Worker(catalog, src, settings, isolate=isolate)
    try:
        _drop(settings, {"a.parquet": synthetic_reviews(300, seed=21),
                         "b.parquet": synthetic_reviews(300, seed=22)})
        fresh = worker.run_once(limit=10)
        _drop(settings, {"c.parquet": _shifted_reviews(400, seed=23)})
        shifted = worker.run_once(limit=10)
    finally:
        worker.close()
    assert len(fresh) == 1 and len(shifted) == 1
    assert not any(r.alert for r in fresh[0].drift) and fresh[0].drift
    assert {(r.metric, r.alert) for r in shifted[0].drift} >= {
        ("oov_rate", True), ("token_js", True)}
    rows = worker.ledger.batch_drift(fresh[0].batch_id)
    assert {r["metric"] for r in rows} == {"length_psi", "oov_rate", "token_js", "psi"}
    assert {(r["files"], r["rows"], r["model_run_id"]) for r in rows} == {
        (2, 600, run.id)}
    alerts = worker.ledger.batch_drift(alerts_only=True)
    assert {r["batch_id"] for r in alerts} == {shifted[0].batch_id}
    view = catalog.sql("SELECT batch_id, feature, metric, alert FROM batch_drift_overview")
    assert len(view) == 2 * len(rows)
    if not isolate:
        return
    # batchml status shows the alert (the service itself is down: exit 1)
    from typer.testing import CliRunner

    from batchml.cli import app

    result = CliRunner().invoke(app, ["status", "--home", str(settings.home),
                                      "--catalog", catalog_url], env={"COLUMNS": "250"})
    assert result.exit_code == 1, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("drift alert")]
    assert f"batch {shifted[0].batch_id}" in line and "review oov_rate 1 > 0.1" in line
    result = CliRunner().invoke(app, ["status", "--home", str(settings.home), "--catalog",
                                      catalog_url, "--format", "json"])
    (alert,) = json.loads(result.output)["drift_alerts"]
    assert alert["batch_id"] == shifted[0].batch_id and alert["rows"] == 400


def test_a_model_without_reference_scores_with_a_note(tagged_home: Settings,
                                                      tmp_path: Path) -> None:
    catalog = Catalog.from_settings(tagged_home)
    run = catalog.latest_run("train", tag="deployment_candidate")
    assert run is not None
    catalog.sql("DELETE FROM artifacts WHERE run_id = ? AND name = ?",
                [run.id, REFERENCE_ARTIFACT], write=True)  # as if trained before drift
    src = DirectorySource(Path(str(tagged_home.inbox)), use_events=False,
                          quarantine_dir=tagged_home.quarantine)
    worker = Worker(Catalog.from_settings(tagged_home), src, tagged_home)
    _drop(tagged_home, {"a.parquet": synthetic_reviews(200, seed=5)})
    (report,) = worker.run_once()
    assert [o.status for o in report.outcomes] == ["scored"]
    assert report.drift == [] and "no drift reference" in (report.drift_note or "")
    assert worker.ledger.batch_drift() == []


def test_the_prediction_flow_leaves_a_drift_artifact(tagged_home: Settings,
                                                     tmp_path: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness
    from test_flows import artifacts_of

    from batchml.flows.predict import predict_flow

    path = tmp_path / "shifted.parquet"
    _shifted_reviews(300, seed=4).to_parquet(path)
    with prefect_test_harness(server_startup_timeout=120):
        out = predict_flow(files=[str(path)], settings=tagged_home)
        assert [f["status"] for f in out["files"]] == ["scored"]
        flow_run = Catalog.from_settings(tagged_home).sql(
            "SELECT prefect_flow_run_id FROM prediction_batches WHERE batch_id = ?",
            [out["batch_id"]]).iloc[0, 0]
        found = artifacts_of(flow_run)
    assert {"prediction-batch", "batch-drift"} <= set(found)
    markdown = str(found["batch-drift"].data)  # type: ignore[attr-defined]
    assert f"# Drift of batch `{out['batch_id']}`" in markdown
    assert "| `review` | text | oov_rate | 1.0000 | 0.1" in markdown and "**ALERT**" in markdown
    assert "![drift chart](data:image/png;base64,iVBORw0KGgo" in markdown
