"""2. Concurrent workers: four ``batchml watch INBOX`` processes share one inbox and one
catalog while files land. No file is scored twice or skipped, and no worker reports a lock
error. A second test lets claims expire in the middle of long batches (a lease shorter than a
batch), which is what happens in production when a batch of large files outlasts
``BATCHML_LEASE_S``.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import relhelp

from batchml.synthetic import synthetic_reviews

pytestmark = pytest.mark.reliability

SCORED = re.compile(r"^scored (\S+) rows=", re.M)


def run_workers(settings: Any, zygote: relhelp.Zygote, *, n_workers: int, frames: list[Any],
                interval_s: float, timeout_s: float = 150) -> dict[str, Any]:
    inbox, outbox = Path(settings.inbox), Path(settings.outbox)
    warmup = relhelp.prime_predictions_view(settings)
    env = relhelp.worker_env(settings)
    workers = [zygote.spawn(["watch", str(inbox)], env, Path(settings.home), f"w{i}")
               for i in range(n_workers)]
    deadline = time.monotonic() + 60  # each prints "watching" once its scorer process is up
    while not all("watching " in w.out() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    expected: dict[str, int] = {}

    def feed() -> None:
        for i, frame in enumerate(frames):
            expected[str(relhelp.land(inbox / f"c-{i:04d}.parquet", frame))] = len(frame)
            time.sleep(interval_s)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    feeder.join(timeout_s)
    deadline = time.monotonic() + timeout_s
    while len(relhelp.committed_outputs(outbox)) < len(frames) + 1 and time.monotonic() < deadline:
        if not all(w.alive() for w in workers):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    for w in workers:
        w.kill(signal.SIGTERM)  # `batchml watch` finishes its batch and exits
    for w in workers:
        if not w.wait(60):
            w.kill()
    return {"expected": expected, "workers": workers, "warmup": warmup}


def scored_lines(workers: list[relhelp.Child]) -> Counter[str]:
    return Counter(m.group(1) for w in workers for m in SCORED.finditer(w.out()))


@pytest.mark.parametrize("rel_backend", relhelp.BOTH, indirect=True)
def test_four_workers_share_inbox_and_catalog(home: Any, zygote: relhelp.Zygote) -> None:
    n = int(40 * relhelp.scale())
    frames = [synthetic_reviews(2000 if i % 10 == 9 else 100, seed=i) for i in range(n)]
    result = run_workers(home, zygote, n_workers=4, frames=frames, interval_s=0.03)
    expected, workers = result["expected"], result["workers"]
    for w in workers:
        assert w.rc == 0, (w.rc, w.err()[-3000:])
        assert "lock" not in w.err().lower(), w.err()[-3000:]
        assert "Traceback" not in w.err(), w.err()[-3000:]
    lines = scored_lines(workers)
    assert set(lines) == set(expected)
    assert max(lines.values()) == 1, {k: v for k, v in lines.items() if v > 1}
    by_input = relhelp.outputs_by_input(Path(home.outbox))
    assert len(by_input.pop(result["warmup"])) == 1
    assert set(by_input) == set(expected)
    assert all(len(v) == 1 for v in by_input.values())
    for uri, (out,) in by_input.items():
        assert pq.ParquetFile(out).metadata.num_rows == expected[uri]
    facts = relhelp.catalog_facts(home.catalog_target, like=f"{home.inbox}/%")
    assert facts.states == {"scored": n}
    assert facts.batch_scored_rows == facts.batch_scored_distinct == facts.scored_files == n
    busy = sum(1 for w in workers if SCORED.search(w.out()))
    print(f"\n[concurrency] workers=4 files={n} scored-by-workers={busy} duplicates=0 "
          f"skipped=0 lock-errors=0")


def _batches_of(catalog: Path | str) -> Any:
    from batchml import Catalog

    cat = Catalog(catalog)
    try:
        return cat.sql("SELECT bf.file_id, bf.source_uri, bf.batch_id, bf.model_run_id,"
                       " f.output_uri FROM batch_files bf JOIN files f USING (file_id)"
                       " WHERE bf.status = 'scored'")
    finally:
        cat.close()


@pytest.mark.slow
def test_lease_shorter_than_a_batch_never_scores_a_file_twice(make_home: Any,
                                                              zygote: relhelp.Zygote) -> None:
    settings = make_home("short-lease", lease_s=1.0)
    n = int(12 * relhelp.scale())
    frames = [synthetic_reviews(8000, seed=i) for i in range(n)]  # ~0.5-1 s of scoring each
    result = run_workers(settings, zygote, n_workers=2, frames=frames, interval_s=0.0)
    expected, workers = result["expected"], result["workers"]
    for w in workers:
        assert w.rc == 0, w.err()[-3000:]
    facts = relhelp.catalog_facts(settings.catalog_target, like=f"{settings.inbox}/%")
    assert facts.states == {"scored": n}
    # each file was scored by exactly one worker ...
    lines = scored_lines(workers)
    assert set(lines) == set(expected)
    assert max(lines.values()) == 1, {k: v for k, v in lines.items() if v > 1}
    # ... and the output on disk is the one the catalog recorded (same batch)
    rows = _batches_of(settings.catalog_target)
    for _, row in rows.iterrows():
        assert relhelp.lineage(Path(row["output_uri"]))["batch_id"] == row["batch_id"], row
