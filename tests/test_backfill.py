"""Backfills (batchml/backfill.py, catalog/backfill_sql.py): past inputs scored again by
another model version into a new output version, on both catalog backends; exactly once with
two processes at once and through a SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
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


# --- processes: two at once, and a SIGKILL mid-way --------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    env.update(BATCHML_HOME=str(settings.home), BATCHML_ISOLATE_SCORING="false",
               BATCHML_LEASE_S="3", BATCHML_BATCH_ROWS="16",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if settings.catalog_url:
        env["BATCHML_CATALOG_URL"] = str(settings.catalog_url)
    return env


def _backfill_process(settings: Settings, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from batchml.cli import main; main()", "backfill",
         "--model", "labels/2", "--since", "2000-01-01", *extra],
        env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outputs(settings: Settings) -> list[Path]:
    """The backfill outputs committed in the outbox."""
    return sorted(p for p in Path(settings.outbox).rglob("*.parquet") if ".bf-" in p.name)


def _wait_for(condition: Any, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _check_exactly_once(settings: Settings, uris: list[str], rows: int) -> str:
    """Every input's current output is its one backfill output, whole: no duplicate, no lost
    row. Returns the backfill id."""
    catalog = Catalog.from_settings(settings)
    (row,) = catalog.backend.backfills()
    assert (row["status"], row["files"], row["scored"]) == ("completed", len(uris), len(uris))
    bid = row["backfill_id"]
    recorded = _sql(settings, "SELECT file_id, count(*) FROM batch_files WHERE backfill_id ="
                              f" '{bid}' GROUP BY file_id")
    assert len(recorded) == len(uris) and {n for _, n in recorded} == {1}
    assert len(_outputs(settings)) == len(uris)  # one per input: a retry replaced its own
    assert not list(Path(settings.outbox).rglob("*.partial"))  # dead writers' temps swept
    current = _sql(settings, "SELECT source_uri, output_uri, backfill_id FROM current_outputs")
    assert sorted(u for u, _, _ in current) == uris
    for uri, output, backfill in current:
        assert backfill == bid, uri
        table = pq.read_table(output)
        assert sorted(table.column("row_index").to_pylist()) == list(range(rows)), uri
        assert set(table.column("model_run_id").to_pylist()) == {"train/2"}
    if not str(settings.catalog_target).startswith("postgresql"):
        assert _sql(settings, "SELECT count(*), count(DISTINCT review_id) FROM predictions"
                    ) == [(len(uris) * rows, len(uris) * rows)]
    return str(bid)


def test_a_backfill_survives_sigkill_and_resumes(tmp_path: Path, catalog_url: str) -> None:
    settings = _home(tmp_path, catalog_url)
    rows = 600
    uris = _land_and_score(settings, 24, rows=rows)
    proc = _backfill_process(settings, "--batch-files", "1")
    _wait_for(lambda: len(_outputs(settings)) >= 3, proc)  # some committed, most not yet
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    (row,) = Catalog.from_settings(settings).backend.backfills()
    assert row["status"] == "running" and row["scored"] < len(uris)

    again = _backfill_process(settings, "--batch-files", "4")  # the same ask resumes it
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"backfill {row['backfill_id']} (resumed" in out
    assert _check_exactly_once(settings, uris, rows) == row["backfill_id"]
    # the killed process's batch is closed as abandoned, not left running
    statuses = _sql(settings, "SELECT status, count(*) FROM prediction_batches WHERE"
                              f" backfill_id = '{row['backfill_id']}' GROUP BY status")
    assert "running" not in dict(statuses)


def _freeze_between_catalog_steps(proc: subprocess.Popen[str], settings: Settings,
                                  catalog_url: str, timeout: float = 120) -> None:
    """SIGSTOP ``proc`` at a moment it holds no lock on a DuckDB catalog (a frozen holder
    would stop the other process's catalog steps); a PostgreSQL catalog has no such lock."""
    import fcntl

    base = settings.catalog_file
    locks = [] if catalog_url.startswith("postgresql") else \
        [base.with_name(base.name + suffix) for suffix in (".lock", ".wlock")]

    def free(path: Path) -> bool:
        with path.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "could not freeze it"
        os.kill(proc.pid, signal.SIGSTOP)
        if all(free(p) for p in locks):
            return  # frozen between catalog steps
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.002)


def test_two_processes_share_one_backfill(tmp_path: Path, catalog_url: str) -> None:
    settings = _home(tmp_path, catalog_url)
    rows = 2000
    uris = _land_and_score(settings, 30, rows=rows)
    first = _backfill_process(settings, "--batch-files", "2")
    _wait_for(lambda: len(_outputs(settings)) >= 2, first)
    # Freeze the first (between two catalog steps) while the second starts and takes a share,
    # so the first cannot finish before the second has joined, however fast the machine.
    _freeze_between_catalog_steps(first, settings, catalog_url)
    try:
        frozen_at = len(_outputs(settings))
        second = _backfill_process(settings, "--batch-files", "2")
        _wait_for(lambda: len(_outputs(settings)) > frozen_at, second)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    (out1, err1), (out2, err2) = first.communicate(timeout=300), second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    bid = _check_exactly_once(settings, uris, rows)
    assert f"backfill {bid} (started" in out1 and f"backfill {bid} (resumed" in out2
    here = [int(re.search(r"; (\d+) recorded by this process", o).group(1))  # type: ignore[union-attr]
            for o in (out1, out2)]
    assert sum(here) == len(uris) and min(here) > 0, here


def test_the_backfill_flow(tmp_path: Path) -> None:
    """A real Prefect flow run (temporary server): the same backfill, its artifact."""
    from prefect.testing.utilities import prefect_test_harness

    from batchml.flows.backfill import backfill_flow

    settings = _home(tmp_path, str(tmp_path / "catalog.duckdb"))
    uris = _land_and_score(settings, 3)
    Path(uris[0]).unlink()
    with prefect_test_harness(server_startup_timeout=120):
        out = backfill_flow(model="labels@challenger", since="2000-01-01", settings=settings)
        assert (out["status"], out["scored"], out["missing"]) == ("completed", 2, 1)
        assert out["missing_uris"] == [uris[0]]
        (flow_run_id,) = {r[0] for r in _sql(
            settings, "SELECT prefect_flow_run_id FROM prediction_batches"
                      f" WHERE backfill_id = '{out['backfill_id']}'")}
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        async def read() -> list[Any]:
            async with get_client() as client:
                return list(await client.read_artifacts(artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))))

        (artifact,) = [a for a in asyncio.run(read()) if a.key == "backfill"]
        table = str(artifact.data)
        assert out["backfill_id"] in table and uris[0] in table
