"""A worker's batch keeps its claims (leases renewed while it runs) and never commits an output
or records an outcome for a file whose claim another worker took over."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from batchml import Catalog, Settings
from batchml.catalog import Ledger
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker


def _worker(settings: Settings, n: int, rows: int) -> Worker:
    inbox = Path(settings.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        synthetic_reviews(rows, seed=i).to_parquet(inbox / f".f{i}")
        (inbox / f".f{i}").rename(inbox / f"f{i:02d}.parquet")
    src = DirectorySource(inbox, quarantine_dir=settings.quarantine, use_events=False)
    worker = Worker(Catalog.from_settings(settings), src, settings)
    worker.discover()
    return worker


def test_leases_are_renewed_while_a_batch_outlasts_them(tagged_home: Settings) -> None:
    settings = Settings(home=tagged_home.home, lease_s=0.45)
    worker = _worker(settings, 12, 12_000)  # ~150k rows: well over one lease of scoring
    rival = Ledger(worker.catalog)
    stolen: list[str] = []
    done = threading.Event()

    def poach() -> None:  # another worker tries to take files over all along
        while not done.is_set():
            stolen.extend(r.source_uri for r in rival.claim("rival", limit=50, lease_s=60))
            time.sleep(0.1)

    thief = threading.Thread(target=poach, daemon=True)
    start = time.perf_counter()
    report = worker.run_batch(limit=50, on_claimed=lambda _: thief.start())
    elapsed = time.perf_counter() - start
    done.set()
    thief.join()
    assert elapsed > settings.lease_s  # the batch outlasted one lease ...
    assert stolen == []  # ... and no claim expired meanwhile
    assert [o.status for o in report.outcomes] == ["scored"] * 12
    assert worker.ledger.counts()["scored"] == 12
    outputs = list(Path(settings.outbox).rglob("*.parquet"))
    assert len(outputs) == 12


def test_no_output_or_outcome_for_a_claim_taken_over(tagged_home: Settings) -> None:
    settings = Settings(home=tagged_home.home, lease_s=0.5)
    worker = _worker(settings, 1, 50)
    rival = Ledger(worker.catalog)
    taken: list[str] = []

    def stall(claimed: list) -> None:  # this worker stalls past its lease; a rival takes over
        time.sleep(0.6)
        taken.extend(r.file_id for r in rival.claim("rival", limit=5, lease_s=60))

    report = worker.run_batch(on_claimed=stall)
    assert len(taken) == 1
    assert report.outcomes == []
    assert not list(Path(settings.outbox).rglob("*.parquet"))
    record = rival.get(taken[0])
    assert record is not None and (record.state, record.claimed_by) == ("claimed", "rival")
    batch = worker.catalog.sql("SELECT status, files FROM prediction_batches"
                               " WHERE batch_id = ?", [report.batch_id]).iloc[0].to_dict()
    assert batch == {"status": "completed", "files": 0}
    assert worker.catalog.sql("SELECT count(*) AS n FROM batch_files")["n"].iloc[0] == 0
