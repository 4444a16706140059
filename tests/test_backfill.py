"""Backfills (batchml/backfill.py, catalog/backfill_sql.py): past inputs scored again by
another model version into a new output version, on both catalog backends; exactly once with
two processes at once and through a SIGKILL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from testhelp import make_tagged_home

from batchml import Catalog, Settings
from batchml import training as tr
from batchml.backfill import run_backfill
from batchml.errors import BackfillNotFound, ConfigError
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

ROWS = 40


def _home(tmp_path: Path, catalog_url: str, **extra: Any) -> Settings:
    """A home with two registered versions of ``labels`` (train/1: TF-IDF + LR, train/2:
    counts + NB), on the fixture's backend."""
    url = catalog_url if catalog_url.startswith("postgresql") else None
    settings = make_tagged_home(tmp_path / "data", tmp_path / "home", catalog_url=url)
    settings = settings.model_copy(update={"isolate_scoring": False, **extra})
    data = tmp_path / "data"
    outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(
        train_uri=str(data / "train.parquet"), valid_uri=str(data / "valid.parquet"),
        text_column="review", candidates=["sklearn_text_nb"]))
    assert outcome.decision.tagged, outcome.decision.reasons
    labels = Catalog.from_settings(settings).model("labels")
    assert (labels.register("train/1").version, labels.register("train/2").version) == (1, 2)
    labels.set_alias("challenger", 2, expect=None, reason="test")
    return settings


def _land_and_score(settings: Settings, n: int, rows: int = ROWS) -> list[str]:
    """Drop ``n`` review files in the inbox and score them with train/1; their URIs."""
    inbox = Path(settings.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        frame = synthetic_reviews(rows, seed=100 + i).drop(columns=["labels"])
        frame["review_id"] = [f"f{i}-r{j}" for j in range(rows)]
        frame.to_parquet(inbox / f"in-{i:03d}.parquet")
    catalog = Catalog.from_settings(settings)
    worker = Worker(catalog, DirectorySource(inbox, use_events=False, settle_s=0), settings,
                    run_id="train/1")
    reports = worker.run_once(limit=50)
    scored = [o for r in reports for o in r.outcomes if o.status == "scored"]
    assert len(scored) == n
    return sorted(o.source_uri for o in scored)


def _sql(settings: Settings, query: str) -> list[tuple[Any, ...]]:
    frame = Catalog.from_settings(settings).backend.sql(query)
    return [tuple(r) for r in frame.itertuples(index=False)]


def test_backfill_rescores_into_a_new_version(tmp_path: Path, catalog_url: str) -> None:
    settings = _home(tmp_path, catalog_url)
    uris = _land_and_score(settings, 5)
    gone = uris[-1]
    old_outputs = {u: o for u, o in _sql(settings, "SELECT source_uri, output_uri FROM files")}
    Path(gone).unlink()  # an input deleted since: missing, the rest go on

    seen: list[tuple[int, int]] = []
    result = run_backfill(settings, model="labels/2", since="2000-01-01", batch_files=2,
                          on_progress=lambda done, total: seen.append((done, total)))
    assert result.created and result.status == "completed"
    assert (result.files, result.scored, result.missing, result.quarantined) == (5, 4, 1, 0)
    assert result.model_run_id == "train/2" and result.rows == 4 * ROWS
    assert result.missing_uris == [gone]
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)

    # earlier outputs kept; the new ones beside them, named by the backfill
    for uri, output in old_outputs.items():
        assert Path(output).exists(), uri
    current = {r[0]: r[1:] for r in _sql(
        settings, "SELECT source_uri, output_uri, output_version, model_run_id, backfill_id"
                  " FROM current_outputs")}
    assert set(current) == set(uris)
    for uri in uris[:-1]:
        output, version, run, backfill = current[uri]
        assert (version, run, backfill) == (2, "train/2", result.backfill_id)
        assert output.endswith(f".{result.backfill_id}.parquet") and Path(output).exists()
        assert pq.read_table(output).column("model_run_id").to_pylist() == ["train/2"] * ROWS
    assert current[gone][:3] == (old_outputs[gone], 1, "train/1")
    history = _sql(settings, "SELECT source_uri, output_version, is_current FROM"
                             " output_history ORDER BY source_uri, output_version")
    assert len(history) == 9 and sum(bool(r[2]) for r in history) == 5
    # the ledger names the current output too
    assert {u: o for u, o in _sql(settings, "SELECT source_uri, output_uri FROM files")} == {
        u: current[u][0] for u in uris}

    if not catalog_url.startswith("postgresql"):  # the DuckDB catalog's predictions views
        rows = _sql(settings, "SELECT model_run_id, count(*), count(DISTINCT review_id)"
                              " FROM predictions GROUP BY ALL ORDER BY 1")
        assert rows == [("train/1", ROWS, ROWS), ("train/2", 4 * ROWS, 4 * ROWS)]
        (total,) = _sql(settings, "SELECT count(*) FROM predictions_history")[0]
        assert total == 9 * ROWS

    # the same ask again is a new backfill (the first finished): a third version
    again = run_backfill(settings, model="labels/2", since="2000-01-01")
    assert again.created and again.backfill_id != result.backfill_id
    assert (again.scored, again.missing) == (4, 1)
    versions = _sql(settings, "SELECT max(output_version) FROM current_outputs")
    assert versions == [(3,)]


def test_window_source_and_resume_of_a_finished_backfill(tmp_path: Path,
                                                         catalog_url: str) -> None:
    settings = _home(tmp_path, catalog_url)
    _land_and_score(settings, 2)
    future = run_backfill(settings, model="labels@challenger", since="2999-01-01")
    assert (future.files, future.status) == (0, "completed")
    elsewhere = run_backfill(settings, model="labels/2", since="2000-01-01",
                             source=str(tmp_path / "another-inbox"))
    assert elsewhere.files == 0
    done = run_backfill(settings, model="labels@challenger", since="2000-01-01",
                        until="2999-01-01")
    assert (done.files, done.scored, done.model_run_id) == (2, 2, "train/2")
    row = Catalog.from_settings(settings).backend.backfills(done.backfill_id)[0]
    assert (row["model_ref"], row["model_name"], row["model_version"]) == (
        "labels@challenger", "labels", 2)
    resumed = run_backfill(settings, resume=done.backfill_id)
    assert not resumed.created and (resumed.status, resumed.scored) == ("completed", 2)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"since": "2000-01-01"}, ConfigError, "Say which model scores the backfill"),
    ({"model": "labels/2"}, ConfigError, "Say from when to backfill"),
    ({"model": "labels/2", "since": "yesterday"}, ConfigError,
     "--since 'yesterday' is not a date or time"),
    ({"model": "labels/2", "since": "2026-12-02", "until": "2026-12-01"}, ConfigError,
     "is not after --since"),
    ({"resume": "bf-nope"}, BackfillNotFound, "No backfill has the id 'bf-nope'"),
    ({"model": "labels/9", "since": "2000-01-01"}, Exception, "labels"),
])
def test_refusals(module_tagged_home: Settings, kwargs: dict[str, Any], error: type,
                  message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_backfill(module_tagged_home, **kwargs)
