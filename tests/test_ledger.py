"""The input-file ledger: identities, claims with leases, exactly-once across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchml import Catalog
from batchml.catalog import FileRef, Ledger


def refs(n: int, prefix: str = "/in/f") -> list[FileRef]:
    return [FileRef(f"{prefix}{i}.parquet", None, 100 + i, datetime(2026, 1, 1, tzinfo=UTC))
            for i in range(n)]


def test_identity_changes_with_etag_or_stat() -> None:
    a = FileRef("s3://b/k.parquet", "e1")
    assert a.file_id == FileRef("s3://b/k.parquet", "e1").file_id
    assert a.file_id != FileRef("s3://b/k.parquet", "e2").file_id  # modified object = new work
    b = FileRef("/x.parquet", None, 10, datetime(2026, 1, 1, tzinfo=UTC))
    assert b.file_id != FileRef("/x.parquet", None, 11, b.mtime).file_id


def test_discover_is_idempotent(catalog: Catalog) -> None:
    ledger = Ledger(catalog)
    assert len(ledger.discover(refs(5))) == 5
    assert ledger.discover(refs(6)) == [refs(6)[5].file_id]
    assert ledger.counts()["discovered"] == 6


def test_claims_do_not_overlap_and_leases_expire(catalog: Catalog) -> None:
    ledger = Ledger(catalog)
    ledger.discover(refs(5))
    first = ledger.claim("w1", limit=3, lease_s=60)
    second = ledger.claim("w2", limit=10, lease_s=60)
    assert len(first) == 3 and len(second) == 2
    assert not {r.file_id for r in first} & {r.file_id for r in second}
    assert ledger.claim("w3", limit=10, lease_s=60) == []
    # w1 "died": its leases run out (set to a second ago, not waited for) and w3 takes over
    held, _ = ledger.renew([r.file_id for r in first], "w1", lease_s=-1)
    assert held == {r.file_id for r in first}
    taken = ledger.claim("w3", limit=10, lease_s=60)
    assert {r.file_id for r in taken} == {r.file_id for r in first}
    assert all(r.attempts == 2 for r in taken)
    # the dead worker's late completion is refused: w3 owns the claim now
    assert not ledger.finish(first[0].file_id, "w1", state="scored")
    assert ledger.finish(first[0].file_id, "w3", state="scored")


def test_release_and_retry_limit(catalog: Catalog) -> None:
    ledger = Ledger(catalog, max_attempts=2)
    ledger.discover(refs(1))
    rec = ledger.claim("w", limit=1, lease_s=60)[0]
    assert ledger.release([rec.file_id], "w", reason="no model") == 1
    again = ledger.claim("w", limit=1, lease_s=60)[0]
    assert again.attempts == 1  # a release that does not count keeps the attempt count
    ledger.release([rec.file_id], "w", reason="S3 503", count_attempt=True)
    ledger.claim("w", limit=1, lease_s=60)
    ledger.release([rec.file_id], "w", reason="S3 503", count_attempt=True)
    row = ledger.get(rec.file_id)
    assert row is not None and (row.state, row.error) == ("failed", "S3 503")


def test_requeue_for_reprocessing(catalog: Catalog) -> None:
    ledger = Ledger(catalog)
    ledger.discover(refs(2))
    for r in ledger.claim("w", limit=2, lease_s=60):
        ledger.finish(r.file_id, "w", state="scored", model_run_id="train/1")
    assert ledger.requeue(model_run_id="train/2") == []
    assert len(ledger.requeue(model_run_id="train/1")) == 2
    assert ledger.counts()["discovered"] == 2


CLAIMER = textwrap.dedent("""
    import sys, time
    from batchml import Catalog
    from batchml.catalog import Ledger
    ledger = Ledger(Catalog(sys.argv[1], lock_timeout_s=120))
    got = []
    while True:
        batch = ledger.claim(sys.argv[2], limit=3, lease_s=600)
        if not batch:
            break
        for r in batch:
            ledger.finish(r.file_id, sys.argv[2], state="scored")
            got.append(r.file_id)
    print("\\n".join(got))
""")


def test_four_processes_never_claim_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    cat = Catalog(path)
    Ledger(cat).discover(refs(200))
    cat.db.close()
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(path), f"w{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    claimed: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        claimed += [line for line in out.splitlines() if line]
    assert len(claimed) == 200 and len(set(claimed)) == 200
    assert Ledger(Catalog(path)).counts()["scored"] == 200


def _tagged_run(catalog: Catalog, tag: str = "deployment_candidate") -> str:
    run = catalog.create_run("train", tags=[tag])
    run.finish()
    return run.id


def test_discover_reads_first_and_reports_only_new(catalog: Catalog) -> None:
    ledger = Ledger(catalog)
    ledger.discover(refs(3))
    before = ledger.files()[["file_id", "updated_at"]].sort_values("file_id")
    assert ledger.discover(refs(3)) == []  # all known: a read, no write
    after = ledger.files()[["file_id", "updated_at"]].sort_values("file_id")
    assert before.equals(after)
    # a file recorded by another process between the read and the write is not new
    assert ledger.discover(refs(4)) == [refs(4)[3].file_id]


def test_claim_batch_chooses_model_claims_and_opens_the_batch_together(
        catalog: Catalog) -> None:
    ledger = Ledger(catalog)
    ledger.discover(refs(3))
    assert ledger.claim_batch("w", limit=10, lease_s=60, tag="deployment_candidate"
                              ).model_run_id is None  # no model: nothing claimed
    old = _tagged_run(catalog)
    new = _tagged_run(catalog)
    # the caller holds the old model: the tag now names another run, so nothing is claimed
    stale = ledger.claim_batch("w", limit=10, lease_s=60, tag="deployment_candidate",
                               expect_run_id=old)
    assert (stale.batch_id, stale.model_run_id, stale.records) == (None, new, [])
    assert ledger.counts()["discovered"] == 3
    got = ledger.claim_batch("w", limit=2, lease_s=60, tag="deployment_candidate",
                             expect_run_id=new, prefect_flow_run_id="fr-1")
    assert got.model_run_id == new and len(got.records) == 2 and got.batch_id
    batch = catalog.sql("SELECT model_run_id, status, started_at, prefect_flow_run_id"
                        " FROM prediction_batches WHERE batch_id = ?", [got.batch_id])
    assert batch[["model_run_id", "status", "prefect_flow_run_id"]].values.tolist() == [
        [new, "running", "fr-1"]]
    claimed = catalog.sql("SELECT max(claimed_at) AS t, max(lease_expires_at) AS e FROM files"
                          " WHERE state = 'claimed'")
    assert claimed["t"].iloc[0] == batch["started_at"].iloc[0]  # one transaction, one clock
    assert got.lease_expires_at == claimed["e"].iloc[0]
    # a fixed run id needs no tag
    fixed = ledger.claim_batch("w", limit=5, lease_s=60, run_id=old)
    assert fixed.model_run_id == old and len(fixed.records) == 1


def test_record_files_keeps_only_held_claims_and_ends_the_batch(catalog: Catalog) -> None:
    from batchml.scoring import FileOutcome

    ledger = Ledger(catalog)
    ledger.discover(refs(3))
    run_id = _tagged_run(catalog)
    got = ledger.claim_batch("w1", limit=3, lease_s=0.3, tag="deployment_candidate")
    assert got.batch_id is not None
    ids = [r.file_id for r in got.records]
    held, _ = ledger.renew(ids[:2], "w1", lease_s=60)
    assert held == set(ids[:2])
    time.sleep(0.35)  # the third lease expires and another worker takes the file over
    assert [r.file_id for r in ledger.claim("w2", limit=5, lease_s=60)] == [ids[2]]
    assert ledger.renew(ids, "w1", lease_s=60)[0] == set(ids[:2])
    outcomes = [FileOutcome(r.file_id, r.source_uri, "scored", run_id,
                            output_uri=f"/out/{i}.parquet", rows=10 + i, positives=i,
                            duration_ms=1.5)
                for i, r in enumerate(got.records)]
    outcomes[1].status, outcomes[1].error = "quarantined", "bad"
    outcomes[1].output_uri = outcomes[1].rows = outcomes[1].positives = None
    done = ledger.record_files(got.batch_id, outcomes, "w1",
                               end={"files": 3, "rows": 7, "duration_ms": 5.0})
    assert done == set(ids[:2])
    bf = catalog.sql("SELECT file_id, status, rows, positives, error FROM batch_files"
                     " ORDER BY file_id")
    assert sorted(bf["file_id"]) == sorted(ids[:2])
    states = dict(catalog.sql("SELECT file_id, state FROM files").values.tolist())
    assert [states[i] for i in ids] == ["scored", "quarantined", "claimed"]
    assert ledger.get(ids[0]).error is None and ledger.get(ids[1]).error == "bad"
    batch = catalog.sql("SELECT status, files, rows, ended_at IS NOT NULL AS ended"
                        " FROM prediction_batches").iloc[0].to_dict()
    # the totals recorded before (3 files, 7 rows) plus what this call recorded
    assert batch == {"status": "completed", "files": 5, "rows": 17, "ended": True}
    assert ledger.record_file(got.batch_id, outcomes[2], "w1") is False  # w2 owns it


def test_recent_batches_files_and_hours_for_the_page(catalog: Catalog) -> None:
    """What the web page reads: the newest batches with their files' outcomes, the files
    updated last, rows and positives per hour (both backends)."""
    import pandas as pd

    from batchml.scoring import FileOutcome

    ledger = Ledger(catalog)
    ledger.discover(refs(5))
    run_id = _tagged_run(catalog)
    start = datetime.now(UTC)
    first = ledger.claim_batch("w", limit=3, lease_s=60, tag="deployment_candidate")
    outcomes = [FileOutcome(r.file_id, r.source_uri, "scored", run_id,
                            output_uri=f"/out/{i}.parquet", rows=10, positives=i + 1,
                            duration_ms=1.0) for i, r in enumerate(first.records)]
    outcomes[2].status, outcomes[2].error = "quarantined", "bad"
    outcomes[2].output_uri = outcomes[2].rows = outcomes[2].positives = None
    ledger.record_files(first.batch_id, outcomes, "w",
                        end={"files": 0, "rows": 0, "duration_ms": 3.0})
    second = ledger.claim_batch("w", limit=5, lease_s=60, tag="deployment_candidate")
    assert second.batch_id is not None and len(second.records) == 2  # still running

    batches = ledger.recent_batches(10)
    assert list(batches["batch_id"]) == [second.batch_id, first.batch_id]
    done = batches.iloc[1].to_dict()
    assert {k: done[k] for k in ("model_run_id", "status", "files", "rows", "scored",
                                 "quarantined", "failed", "positives")} == {
        "model_run_id": run_id, "status": "completed", "files": 3, "rows": 20, "scored": 2,
        "quarantined": 1, "failed": 0, "positives": 3}
    running = batches.iloc[0].to_dict()
    assert running["status"] == "running" and running["scored"] == 0
    assert pd.isna(running["positives"])
    assert list(ledger.recent_batches(1)["batch_id"]) == [second.batch_id]

    hours = ledger.scored_by_hour(start - timedelta(hours=1))
    assert (int(hours["files"].sum()), int(hours["rows"].sum()),
            int(hours["positives"].sum())) == (2, 20, 3)
    now = datetime.now(UTC)
    floors = {t.replace(minute=0, second=0, microsecond=0) for t in (start, now)}
    assert {pd.Timestamp(h).tz_convert("UTC").to_pydatetime() for h in hours["hour"]} <= floors
    assert ledger.scored_by_hour(now + timedelta(seconds=1)).empty

    newest = ledger.files(limit=2)
    assert len(newest) == 2
    assert list(newest["updated_at"]) == sorted(ledger.files()["updated_at"],
                                                reverse=True)[:2]
    assert len(ledger.files("quarantined", limit=5)) == 1


def test_a_batch_whose_worker_vanished_is_closed_by_the_next_claim(catalog: Catalog) -> None:
    from batchml.scoring import FileOutcome

    ledger = Ledger(catalog)
    ledger.discover(refs(6))
    run = _tagged_run(catalog)
    dead = ledger.claim_batch("w1", limit=2, lease_s=60, run_id=run)
    done = ledger.claim_batch("w2", limit=2, lease_s=60, run_id=run)
    # w1 dies holding its files (its lease runs out); w2 records its outcomes but not the end
    ledger.renew([r.file_id for r in dead.records], "w1", lease_s=-1)
    assert ledger.record_files(done.batch_id, [
        FileOutcome(r.file_id, r.source_uri, "scored", run, output_uri="o", rows=1)
        for r in done.records], "w2") == {r.file_id for r in done.records}
    live = ledger.claim_batch("w3", limit=10, lease_s=60, run_id=run)
    assert {r.file_id for r in dead.records} <= {r.file_id for r in live.records}
    status = catalog.sql("SELECT batch_id, status, error FROM prediction_batches")
    by_id = {b: (s, e) for b, s, e in status.itertuples(index=False)}
    for gone, worker in ((dead.batch_id, "w1"), (done.batch_id, "w2")):
        state, error = by_id[gone]
        assert state == "failed" and f"abandoned: its worker {worker}" in error
    assert by_id[live.batch_id][0] == "running"  # w3 holds its files: left alone
    # a worker that was only slow ends its batch after all: its end wins
    ledger.end_batch(done.batch_id, files=2, rows=2, duration_ms=1.0)
    assert catalog.sql("SELECT status FROM prediction_batches WHERE batch_id = ?",
                       [done.batch_id])["status"].iloc[0] == "completed"
