"""S3 reliability: issue 7's "same for an S3 inbox/outbox on moto's server" and "S3 faults".

1. **Kill on S3.** ``batchml watch s3://BUCKET/in/`` with ``BATCHML_OUTBOX=s3://BUCKET/out``
   against moto's standalone server (HTTP on loopback) is SIGKILLed at random moments while
   objects land, some of them while an output is being written (its local temp file exists),
   and restarted each time; a final ``batchml watch --once`` drains after the leases expire.
   Every input object has exactly one complete output object, no temp object or unfinished
   multipart upload is left, nothing is stuck in ``claimed`` and the catalog's counts match.

2. **S3 faults.** The same command talks to S3 through ``faultproxy.FaultProxy``: a loopback
   HTTP proxy in front of moto that answers 20% of the requests with 500 / 503 / 503 SlowDown,
   resets the connection (before or after moto applied the request) or cuts the answer's body
   in half, and delays 10% of them. Every file is still scored exactly once, no data is lost,
   retries back off (measured from botocore's ``amz-sdk-request`` attempt header), and the
   error rate shows up in the worker's log and in ``batchml status``.

Nothing is patched: the workers are real ``batchml`` processes (forked from the pre-warmed
zygote, see relhelp.py) speaking HTTP to moto.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import relhelp
from faultproxy import FaultProxy

from batchml.synthetic import synthetic_reviews

pytestmark = pytest.mark.reliability

LEASE_S = 2.0
REGION = "us-east-1"
OUTPUT_KEY = re.compile(r"^out/train-\d+/[A-Za-z0-9._=-]+-[0-9a-f]{16}\.parquet$")


def _client(endpoint: str) -> Any:
    from batchml.store import s3_client

    return s3_client(endpoint, REGION)


def _put(client: Any, bucket: str, key: str, frame: Any) -> str:
    buf = io.BytesIO()
    frame.to_parquet(buf)
    client.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return f"s3://{bucket}/{key}"


def _keys(client: Any, bucket: str, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"].strip('"') for o in page.get("Contents", [])})
    return out


@dataclass
class S3Outputs:
    by_input: dict[str, list[str]]
    rows: dict[str, int]  # output key -> rows
    stray: list[str]  # keys under out/ that are not committed outputs
    uploads: list[str]  # unfinished multipart uploads


def s3_outputs(client: Any, bucket: str) -> S3Outputs:
    """Read every object under out/ and group them by the lineage ``input_uri``."""
    by_input: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    stray: list[str] = []
    for key in sorted(_keys(client, bucket, "out/")):
        if not OUTPUT_KEY.match(key):
            stray.append(key)
            continue
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        meta = pq.read_metadata(io.BytesIO(data))
        lineage = json.loads((meta.metadata or {})[b"batchml.lineage"])
        by_input.setdefault(lineage["input_uri"], []).append(key)
        rows[key] = meta.num_rows
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return S3Outputs(by_input, rows, stray, uploads)


def s3_env(settings: Any, endpoint: str, tmpdir: Path) -> dict[str, str]:
    tmpdir.mkdir(parents=True, exist_ok=True)
    return relhelp.worker_env(settings, BATCHML_S3_ENDPOINT_URL=endpoint,
                              BATCHML_S3_REGION=REGION, TMPDIR=str(tmpdir),
                              AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                              AWS_DEFAULT_REGION=REGION)


def check_exactly_once(client: Any, bucket: str, expected: dict[str, int],
                       catalog_file: Path) -> S3Outputs:
    outs = s3_outputs(client, bucket)
    lost = sorted(set(expected) - set(outs.by_input))
    unexpected = sorted(set(outs.by_input) - set(expected))
    duplicates = {k: v for k, v in outs.by_input.items() if len(v) != 1}
    assert (lost, unexpected, duplicates) == ([], [], {})
    for uri, (key,) in outs.by_input.items():
        assert outs.rows[key] == expected[uri], (uri, key)
    assert outs.stray == [], outs.stray  # no temp or partial objects in the outbox
    assert outs.uploads == [], outs.uploads  # no unfinished multipart upload
    facts = relhelp.catalog_facts(catalog_file)
    assert facts.claimed == []
    assert facts.states == {"scored": len(expected)}, facts.states
    assert facts.scored_uris == sorted(expected)
    assert facts.scored_files == facts.batch_scored_rows == facts.batch_scored_distinct \
        == len(expected) == sum(len(v) for v in outs.by_input.values())
    recorded = dict(zip(facts.frame["source_uri"], facts.frame["output_uri"], strict=True))
    assert all(recorded[uri] == f"s3://{bucket}/{keys[0]}"
               for uri, keys in outs.by_input.items())
    # the inputs are untouched (S3 inputs are never moved or rewritten)
    inputs = _keys(client, bucket, "in/")
    assert {f"s3://{bucket}/{k}" for k in inputs} == set(expected)
    return outs


def _s3_home(make_home: Any, bucket: str, name: str) -> Any:
    return make_home(name, inbox=f"s3://{bucket}/in", outbox=f"s3://{bucket}/out",
                     lease_s=LEASE_S)


# --- 1. SIGKILL on an S3 inbox and outbox ---------------------------------------------------


@dataclass
class S3KillRun:
    expected: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    kills_mid_write: int = 0
    crashes: list[str] = field(default_factory=list)
    final: Any = None
    local_temp_left: int = 0
    seconds: float = 0.0


def _partials(tmpdir: Path) -> set[Path]:
    return set(tmpdir.glob(".batchml-out-*.partial"))


def s3_kill_scenario(settings: Any, zygote: relhelp.Zygote, client: Any, bucket: str,
                     endpoint: str, *, n_files: int, n_kills: int, seed: int,
                     interval_s: float, big_every: int, big_rows: int) -> S3KillRun:
    rng = random.Random(seed)
    run = S3KillRun()
    home = Path(settings.home)
    tmpdir = home / "tmp"
    env = s3_env(settings, endpoint, tmpdir)
    small = [synthetic_reviews(100 + 10 * i, seed=200 + i) for i in range(5)]
    big = synthetic_reviews(big_rows, seed=299)
    lock = threading.Lock()

    def feed() -> None:
        for i in range(n_files):
            frame = big if i % big_every == big_every - 1 else small[i % len(small)]
            uri = _put(client, bucket, f"in/obj-{i:04d}.parquet", frame)
            with lock:
                run.expected[uri] = len(frame)
            time.sleep(interval_s)

    start = time.monotonic()
    feeder = threading.Thread(target=feed, name="s3-feeder", daemon=True)
    feeder.start()
    argv = ["watch", f"s3://{bucket}/in/"]
    child = zygote.spawn(argv, env, home, "s3watch")
    for k in range(n_kills):
        known = _partials(tmpdir)

        def writing(known: set[Path] = known) -> bool:
            return bool(_partials(tmpdir) - known)

        mid = False
        if k % 2 == 0 and child.alive():  # kill while an output is being written
            mid = relhelp.kill_mid_write(child, writing, 30,
                                         jitter=lambda: rng.uniform(0, 0.05))
        elif child.alive():
            time.sleep(rng.uniform(0.3, 2.0))
        if not mid and not child.alive():
            run.crashes.append(f"rc={child.rc}: {child.err()[-2000:]}")
        else:
            if not mid:
                mid = writing()
                child.kill()
            assert child.wait(10), f"pid {child.pid} survived SIGKILL"
            run.kills += 1
            run.kills_mid_write += mid
        child = zygote.spawn(argv, env, home, "s3watch")
    feeder.join(timeout=300)
    assert not feeder.is_alive()
    time.sleep(rng.uniform(0.5, 1.5))
    if child.alive():
        child.kill()
        assert child.wait(10)
        run.kills += 1
    else:
        run.crashes.append(f"rc={child.rc}: {child.err()[-2000:]}")
    time.sleep(LEASE_S + 0.5)
    final = zygote.spawn([*argv, "--once"], env, home, "s3final")
    assert final.wait(170), "the final `batchml watch --once` did not finish"
    run.final = subprocess.CompletedProcess(argv, final.rc, final.out(), final.err())
    # output temps of killed workers (the next Outbox sweeps those no live writer locks)
    run.local_temp_left = len(list(tmpdir.glob(".batchml-out-*")))
    run.seconds = time.monotonic() - start
    return run


@pytest.mark.parametrize("size", ["quick", pytest.param("full", marks=pytest.mark.slow)])
def test_sigkilled_s3_worker_scores_every_object_exactly_once(
        size: str, make_home: Any, zygote: relhelp.Zygote, s3_bucket: str, aws_env: str) -> None:
    s = relhelp.scale()
    if size == "full" and s <= 1:
        pytest.skip("the longer S3 kill variant runs with BATCHML_RELIABILITY_SCALE > 1 "
                    "(the quick one covers scale 1)")
    params = dict(n_files=24, n_kills=4, interval_s=0.12, big_every=6, big_rows=12_000) \
        if size == "quick" else \
        dict(n_files=int(40 * s), n_kills=max(8, int(2 * s)), interval_s=0.1, big_every=5,
             big_rows=20_000)
    settings = _s3_home(make_home, s3_bucket, f"s3kill-{size}")
    client = _client(aws_env)
    run = s3_kill_scenario(settings, zygote, client, s3_bucket, aws_env,
                           seed=77 if size == "quick" else 78, **params)
    assert run.final.returncode == 0, run.final.stderr[-3000:]
    assert "Traceback" not in run.final.stderr, run.final.stderr[-3000:]
    assert not run.crashes, run.crashes
    assert run.kills >= params["n_kills"]
    check_exactly_once(client, s3_bucket, run.expected, settings.catalog_file)
    # input downloads of the killed workers were swept by the next process
    assert not list((Path(settings.home) / "tmp").glob("batchml-in-*"))
    assert run.local_temp_left == 0  # and their output temps by the next Outbox
    print(f"\n[s3-kill] files={len(run.expected)} kills={run.kills} (mid-write "
          f"{run.kills_mid_write}) duplicates=0 lost=0 stray_objects=0 multipart_left=0 "
          f"stuck_claimed=0 output_temp_files_left={run.local_temp_left} input_downloads_left=0 "
          f"seconds={run.seconds:.0f}")


# --- 2. S3 faults through the fault-injecting proxy -----------------------------------------


@dataclass
class Retry:
    invocation: str
    attempt: int
    gap_s: float  # from the end of the failed attempt to the start of this one
    after: str  # the fault that answered the previous attempt


def retry_gaps(proxy: FaultProxy) -> list[Retry]:
    """Pair each retried attempt with the attempt before it (botocore's headers
    ``amz-sdk-invocation-id`` and ``amz-sdk-request: attempt=N``)."""
    by_call: dict[str, dict[int, Any]] = {}
    for rec in proxy.log:
        if rec.invocation:
            by_call.setdefault(rec.invocation, {})[rec.attempt] = rec
    gaps = []
    for inv, attempts in by_call.items():
        for n, rec in attempts.items():
            prev = attempts.get(n - 1)
            if prev is not None and prev.fault:
                gaps.append(Retry(inv, n, rec.start - prev.end, prev.fault))
    return gaps


def test_s3_faults_every_file_scored_exactly_once(make_home: Any, zygote: relhelp.Zygote,
                                                  s3_bucket: str, aws_env: str) -> None:
    n_files = max(60, int(60 * relhelp.scale()))
    settings = _s3_home(make_home, s3_bucket, "s3faults")
    client = _client(aws_env)  # the producer talks to moto directly
    home = Path(settings.home)
    expected: dict[str, int] = {}
    with FaultProxy(aws_env, fault_rate=0.2, delay_rate=0.1, seed=20261122) as proxy:
        env = s3_env(settings, proxy.url, home / "tmp")
        argv = ["watch", f"s3://{s3_bucket}/in/"]
        worker = zygote.spawn(argv, env, home, "s3faults")
        start = time.monotonic()
        for i in range(n_files):
            frame = synthetic_reviews(40 + 3 * i, seed=400 + i)
            expected[_put(client, s3_bucket, f"in/f-{i:03d}.parquet", frame)] = len(frame)
            time.sleep(0.05)

        def done() -> int:
            return relhelp.catalog_facts(settings.catalog_file).states.get("scored", 0)

        deadline = time.monotonic() + 240
        while done() < n_files and time.monotonic() < deadline and worker.alive():
            time.sleep(0.5)
        worker.kill(15)  # SIGTERM: finishes the batch, releases nothing
        assert worker.wait(60)
        final = zygote.spawn([*argv, "--once"], env, home, "s3faults-final")
        assert final.wait(170)
        seconds = time.monotonic() - start
        # the status command, through the proxy's era (its counts come from the workers)
        status_json = zygote.spawn(["status", "--format", "json"], env, home, "status-json")
        status_table = zygote.spawn(["status"], env, home, "status")
        assert status_json.wait(60) and status_table.wait(60)
    assert worker.rc == 0, worker.err()[-3000:]
    assert final.rc == 0, final.err()[-3000:]
    outs = check_exactly_once(client, s3_bucket, expected, settings.catalog_file)

    # the faults happened, in every kind, and were survived
    assert proxy.requests >= 120, proxy.summary()
    rate = proxy.injected / proxy.requests
    assert 0.08 <= rate <= 0.33, proxy.summary()  # 20% +- 3 standard deviations at n=120
    for kind in ("500", "503", "slowdown", "reset", "truncate", "delay"):
        assert proxy.faults[kind] > 0, (kind, proxy.summary())

    # retries back off: botocore's standard mode waits rand(0,1) * 1 s after a throttling
    # answer (SlowDown) for the first retry, doubling each attempt, rand * 50 ms otherwise
    gaps = retry_gaps(proxy)
    assert len(gaps) >= 10, gaps
    throttled = [g.gap_s for g in gaps if g.after == "slowdown" and g.attempt == 2]
    assert throttled and sum(throttled) / len(throttled) >= 0.1, throttled
    assert max(g.attempt for g in gaps) >= 3  # some calls needed several retries

    # the error rate is in the log ...
    log_text = worker.err() + final.err()
    retried_lines = re.findall(r"S3 \w+ succeeded after \d+ retr", log_text)
    assert len(retried_lines) >= 10, log_text[-3000:]
    # ... and in `batchml status` (exit 1: no `batchml serve` is up, but the counts are shown)
    info = json.loads(status_json.out())
    s3 = info["s3"]
    assert s3 is not None, status_json.out()
    assert s3["failed_attempts"] >= 10 and s3["retries"] >= 10, s3
    assert 0.05 <= s3["error_rate"] <= 0.35, s3
    table = status_table.out()
    assert re.search(r"s3 \(last 15 min\).*\d+ of \d+ requests failed", table), table
    retries = sum(g.attempt > 1 for g in gaps)
    print(f"\n[s3-faults] files={n_files} proxy {proxy.summary()} retried_attempts={retries} "
          f"max_attempt={max(g.attempt for g in gaps)} "
          f"mean_backoff_after_slowdown={sum(throttled) / len(throttled):.2f}s "
          f"log_lines_retried={len(retried_lines)} duplicates=0 lost=0 "
          f"outputs={len(outs.rows)} seconds={seconds:.0f}\n"
          f"[s3-faults] status: {[ln for ln in table.splitlines() if 's3' in ln]}\n"
          f"[s3-faults] status json s3: {s3}")
