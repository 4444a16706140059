"""The scorer process (batchml/scorer.py) under a Worker, without Prefect: a file that kills
its scorer costs the scorer, never the worker; it is tried again and quarantined as poison
after BATCHML_POISON_ATTEMPTS, and every other file is scored exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from batchml import Catalog, Settings
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import BatchReport, Worker


@pytest.fixture(scope="module")
def trained(module_tagged_home: Settings) -> Settings:
    """A home with a tagged training run (scikit-learn text model on synthetic reviews)."""
    return module_tagged_home


def _worker(trained: Settings, tmp_path: Path, names: list[str], **kw: object) -> Worker:
    settings = trained.model_copy(update={"inbox": str(tmp_path / "inbox"),
                                          "outbox": str(tmp_path / "outbox"),
                                          "quarantine": str(tmp_path / "quarantine"), **kw})
    inbox = Path(settings.inbox)
    inbox.mkdir(parents=True)
    for i, name in enumerate(names):
        synthetic_reviews(300, seed=20 + i).to_parquet(inbox / f".{name}.tmp")
        (inbox / f".{name}.tmp").rename(inbox / name)
    src = DirectorySource(inbox, quarantine_dir=settings.quarantine, use_events=False)
    worker = Worker(Catalog.from_settings(settings), src, settings, isolate=True)
    worker.discover()
    return worker


def _drain(worker: Worker) -> list[BatchReport]:
    reports = []
    for _ in range(10):
        rep = worker.run_batch(limit=10)
        if not rep.outcomes and not rep.retried:
            break
        reports.append(rep)
    return reports


def _files(worker: Worker) -> pd.DataFrame:
    return worker.catalog.sql(
        "SELECT f.source_uri, f.state, f.attempts, f.error, (SELECT count(*) FROM batch_files b"
        " WHERE b.file_id = f.file_id AND b.status = 'scored') AS scored_rows FROM files f"
        " WHERE starts_with(f.source_uri, ?) ORDER BY f.source_uri", [worker.source.uri + "/"])


def test_killed_scorer_is_replaced_and_its_file_quarantined_as_poison(
        trained: Settings, tmp_path: Path) -> None:
    names = ["a.parquet", "b-POISON.parquet", "c.parquet", "d.parquet"]
    worker = _worker(trained, tmp_path, names, fault_kill_marker="POISON", poison_attempts=2)
    assert worker.scorer is not None
    try:
        start = time.perf_counter()
        reports = _drain(worker)
        elapsed = time.perf_counter() - start
        scorer = worker.scorer
        # batch 1: a scored, b kills the scorer (attempt 1, given back), c and d scored by a
        # new scorer; batch 2: b kills it again and is quarantined
        assert [r.retried for r in reports] == [1, 0]
        assert len(scorer.deaths) == 2 and scorer.starts == 3
        assert all(d.signal == signal.SIGKILL for d in scorer.deaths)
        assert all(d.peak_mb > 20 for d in scorer.deaths), scorer.deaths
        files = _files(worker).set_index("source_uri")
        inbox = Path(worker.source.uri)
        poison = files.loc[str(inbox / "b-POISON.parquet")]
        assert (poison["state"], poison["attempts"]) == ("quarantined", 2)
        for text in ("signal 9 (SIGKILL)", "peak memory", "each of 2 attempts",
                     "batchml reprocess"):
            assert text in poison["error"], poison["error"]
        good = files.drop(str(inbox / "b-POISON.parquet"))
        assert good["state"].tolist() == ["scored"] * 3
        assert good["scored_rows"].tolist() == [1, 1, 1]  # exactly once
        outputs = sorted(p.name for p in Path(worker.outbox.root).rglob("*.parquet"))
        assert len(outputs) == 3 and not any("POISON" in o for o in outputs)
        assert list(Path(worker.settings.quarantine).glob("*-b-POISON.parquet"))
        # the worker lives on with a warm scorer
        pid = scorer.pid
        assert pid is not None and os.getpid() != pid
        print(f"\n[scorer] 4 files, 2 scorer deaths, drained in {elapsed:.2f} s; "
              f"scorer start {scorer.last_start_s:.2f} s; peaks "
              f"{[round(d.peak_mb) for d in scorer.deaths]} MB")
    finally:
        worker.close()
    assert worker.scorer.pid is None


def test_memory_guard_kills_a_scorer_over_its_limit(trained: Settings,
                                                    tmp_path: Path) -> None:
    worker = _worker(trained, tmp_path, ["HOG.parquet", "ok.parquet"],
                     fault_alloc_marker="HOG", scorer_memory_mb=300, poison_attempts=1)
    assert worker.scorer is not None and worker.scorer.config.memory_limit_mb == 300
    try:
        _drain(worker)
        (death,) = worker.scorer.deaths
        assert death.signal == signal.SIGKILL and death.guard_limit_mb == 300
        assert death.peak_mb >= 300, death
        files = _files(worker).set_index("source_uri")
        inbox = Path(worker.source.uri)
        hog = files.loc[str(inbox / "HOG.parquet")]
        assert hog["state"] == "quarantined"
        assert "memory guard (limit 300 MB)" in hog["error"], hog["error"]
        assert f"peak memory {death.peak_mb:.0f} MB" in hog["error"]
        ok = files.loc[str(inbox / "ok.parquet")]
        assert (ok["state"], ok["scored_rows"]) == ("scored", 1)
        print(f"\n[guard] limit 300 MB, killed at peak {death.peak_mb:.0f} MB")
    finally:
        worker.close()


def test_scorer_dead_while_idle_costs_no_attempt(trained: Settings, tmp_path: Path) -> None:
    worker = _worker(trained, tmp_path, ["one.parquet"])
    assert worker.scorer is not None
    try:
        worker.scorer.start()
        pid = worker.scorer.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # e.g. an operator, between files
        time.sleep(0.2)
        _drain(worker)
        files = _files(worker)
        assert files["state"].tolist() == ["scored"] and files["attempts"].tolist() == [1]
    finally:
        worker.close()


def test_scorer_process_writes_what_in_process_scoring_writes(trained: Settings,
                                                              tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    outputs = []
    for isolate in (True, False):
        worker = _worker(trained, tmp_path / str(isolate), ["same.parquet"])
        if not isolate:
            worker.close()
            worker.scorer = None
        try:
            (rep,) = _drain(worker)
            (outcome,) = rep.outcomes
            assert outcome.status == "scored"
            outputs.append(pq.read_table(outcome.output_uri).drop_columns(
                ["input_uri", "input_etag", "batch_id", "scored_at"]))
        finally:
            worker.close()
    assert outputs[0].equals(outputs[1])


def test_poison_after_a_worker_died_holding_the_file(trained: Settings, tmp_path: Path) -> None:
    from batchml.catalog import Ledger

    worker = _worker(trained, tmp_path, ["x-POISON.parquet"], fault_kill_marker="POISON")
    try:
        # a worker that died while it held the file: its claim expires with no outcome
        (ghost,) = Ledger(worker.catalog).claim("ghost", limit=5, lease_s=0.01)
        time.sleep(0.05)
        (rep,) = _drain(worker)
        (outcome,) = rep.outcomes
        assert outcome.status == "quarantined" and len(worker.scorer.deaths) == 1
        assert "died on attempt 2 of 2" in outcome.error, outcome.error
        assert "the attempt before ended without an outcome" in outcome.error
    finally:
        worker.close()


def test_a_failing_claim_check_refuses_the_commit_and_keeps_the_next_file_in_step(
        trained: Settings, tmp_path: Path) -> None:
    """The parent's claim check raising (the catalog away) must still answer the child: the
    file's output is refused, and the next file gets its own outcome, not this one's."""
    worker = _worker(trained, tmp_path, ["a.parquet", "b.parquet"])
    try:
        claim, model = worker.claim_batch(10)
        first, second = sorted(claim.records, key=lambda r: r.source_uri)
        assert worker.scorer is not None

        def check_fails() -> bool:
            raise RuntimeError("the catalog is away")

        with pytest.raises(RuntimeError, match="the catalog is away"):
            worker.scorer.score(Path(first.source_uri), first, model, str(claim.batch_id),
                                still_held=check_fails)
        outcome = worker.scorer.score(Path(second.source_uri), second, model,
                                      str(claim.batch_id), still_held=lambda: True)
        assert (outcome.source_uri, outcome.status) == (second.source_uri, "scored")
        written = [p.name for p in Path(worker.settings.outbox).rglob("*.parquet")]
        assert len(written) == 1 and written[0].startswith("b-"), written
    finally:
        worker.close()
