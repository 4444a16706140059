"""A worker's batch keeps its claims (leases renewed while it runs) and never commits an output
or records an outcome for a file whose claim another worker took over."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batchml import Catalog, Settings
from batchml.catalog import Ledger
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker


def _worker(settings: Settings, n: int, rows: int, *, isolate: bool = False) -> Worker:
    inbox = Path(settings.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        synthetic_reviews(rows, seed=i).to_parquet(inbox / f".f{i}")
        (inbox / f".f{i}").rename(inbox / f"f{i:02d}.parquet")
    src = DirectorySource(inbox, quarantine_dir=settings.quarantine, use_events=False)
    worker = Worker(Catalog.from_settings(settings), src, settings, isolate=isolate)
    worker.discover()
    return worker


def _until(deadline: float) -> None:
    """Return once the wall clock (the catalog's clock too) has passed ``deadline``."""
    pause = threading.Event()
    while time.time() <= deadline:
        pause.wait(deadline - time.time() + 0.01)


def test_leases_are_renewed_while_a_batch_outlasts_them(tagged_home: Settings) -> None:
    """Ordered by events and deadlines, not by how long scoring happens to take: the first
    file's scoring (a hook in the batch path, ``run_batch(score=)``) does not go on until
    (1) the batch's lease thread has renewed the leases past the original expiry plus
    ``lease_s / 2`` (seen through the ledger's ``renew``, a condition the test waits on) and
    (2) the original lease has run out by the clock. Only then does a rival try to claim:
    it must get nothing, because the renewed leases still run for about ``lease_s / 2`` and
    keep being renewed every ``lease_s / 3``."""
    from batchml.scoring import score_file

    settings = Settings(home=tagged_home.home, lease_s=1.2)
    worker = _worker(settings, 3, 50)
    rival = Ledger(worker.catalog)
    renewed = threading.Condition()
    expiries: list[float] = []
    real_renew = worker.ledger.renew

    def renew(file_ids: Any, name: str, *, lease_s: float) -> Any:
        held, expires = real_renew(file_ids, name, lease_s=lease_s)
        with renewed:
            expiries.append(expires.timestamp())
            renewed.notify_all()
        return held, expires

    worker.ledger.renew = renew  # type: ignore[method-assign]
    claimed_until: list[float] = []  # the claim was made before on_claimed: a bound of it
    stolen: list[str] = []

    def score(path: Path, record: Any, model: Any, outbox: Any, batch_id: str) -> Any:
        if len(claimed_until) == 1:  # the first file only
            original = claimed_until.pop()
            with renewed:
                assert renewed.wait_for(
                    lambda: bool(expiries) and max(expiries) > original + settings.lease_s / 2,
                    timeout=60), "the leases were not renewed while the batch ran"
            _until(original)  # the batch has outlasted its original lease ...
            stolen.extend(r.source_uri for r in rival.claim("rival", limit=50, lease_s=60))
        return score_file(path, record, model, outbox, batch_id)

    report = worker.run_batch(
        limit=50, score=score,
        on_claimed=lambda _: claimed_until.append(time.time() + settings.lease_s))
    assert claimed_until == []  # the hook ran
    assert stolen == []  # ... and no claim expired meanwhile
    assert [o.status for o in report.outcomes] == ["scored"] * 3
    assert worker.ledger.counts()["scored"] == 3
    outputs = list(Path(settings.outbox).rglob("*.parquet"))
    assert len(outputs) == 3


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "scorer-process"])
def test_no_output_or_outcome_for_a_claim_taken_over(tagged_home: Settings,
                                                     isolate: bool) -> None:
    """Ordered by a deadline, not a guessed stall: ``on_claimed`` runs after the claim and
    before the lease thread starts; it waits until the claim's lease has certainly run out
    (the time of the callback plus ``lease_s``), then the rival takes the file over. Only
    then is the file scored, and its commit guard (the worker's outbox; with ``isolate``,
    the scorer process asking the worker) finds the claim lost: no output, no outcome."""
    settings = Settings(home=tagged_home.home, lease_s=0.5)
    worker = _worker(settings, 1, 50, isolate=isolate)
    rival = Ledger(worker.catalog)
    taken: list[str] = []

    def take_over(claimed: list[Any]) -> None:  # this worker stalls past its lease
        _until(time.time() + settings.lease_s)
        taken.extend(r.file_id for r in rival.claim("rival", limit=5, lease_s=60))

    try:
        report = worker.run_batch(on_claimed=take_over)
    finally:
        worker.close()
    assert len(taken) == 1
    assert report.outcomes == []
    assert not list(Path(settings.outbox).rglob("*.parquet"))
    record = rival.get(taken[0])
    assert record is not None and (record.state, record.claimed_by) == ("claimed", "rival")
    batch = worker.catalog.sql("SELECT status, files FROM prediction_batches"
                               " WHERE batch_id = ?", [report.batch_id]).iloc[0].to_dict()
    assert batch == {"status": "completed", "files": 0}
    assert worker.catalog.sql("SELECT count(*) AS n FROM batch_files")["n"].iloc[0] == 0


def test_a_guarded_outbox_commits_only_what_its_guard_lets_through(tmp_path: Path) -> None:
    """The commit guard is an explicit seam of Outbox (no wrapper forwarding attributes): a
    guarded view shares the outbox's root and temp files; a refusal removes the temp file,
    drops its lock and propagates; the outbox itself is unguarded."""
    from batchml.scoring import Outbox

    class Refused(Exception):
        pass

    outbox = Outbox(str(tmp_path / "out"))
    asked: list[str] = []

    def refuse(key: str) -> None:
        asked.append(key)
        raise Refused(key)

    view = outbox.guarded(refuse)
    assert (view.root, view.s3, outbox.commit_guard) == (outbox.root, outbox.s3, None)
    tmp = view.temp_path()
    tmp.write_bytes(b"x")
    try:
        view.commit(tmp, "a/b.parquet")
    except Refused:
        pass
    else:
        raise AssertionError("the guard's refusal did not propagate")
    assert asked == ["a/b.parquet"] and not tmp.exists()
    assert outbox._locks == {}  # the view's temp file lock was the outbox's, and is gone
    ok = outbox.guarded(asked.append)
    tmp = ok.temp_path()
    tmp.write_bytes(b"y")
    assert ok.commit(tmp, "c.parquet") == str(tmp_path / "out" / "c.parquet")
    assert asked[-1] == "c.parquet" and outbox._locks == {}
    assert not hasattr(Outbox, "__getattr__")
    # a view of a guarded outbox keeps its guard and adds its own, outer first
    order: list[str] = []
    outer = Outbox(str(tmp_path / "out2"), commit_guard=lambda key: order.append("outer"))
    inner = outer.guarded(lambda key: order.append("inner"))
    tmp = inner.temp_path()
    tmp.write_bytes(b"z")
    inner.commit(tmp, "d.parquet")
    assert order == ["outer", "inner"]
