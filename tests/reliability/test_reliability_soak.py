"""3. Soak: many small files land at a steady rate into a running service; its memory stays
flat and its latency does not drift.

The service is a real subprocess (``batchml watch INBOX`` by default, ``batchml serve`` with
``BATCHML_SOAK_COMMAND=serve``; serve starts its own Prefect server, which is counted too).
Every second the test samples the resident memory of the service's whole process tree
(``VmRSS`` from ``/proc/PID/status`` of the process and its descendants). Each file's latency
is the time from its rename into the inbox to the ``finished_at`` of its ``scored`` row in
``batch_files``.

Size by environment: ``BATCHML_SOAK_FILES`` (default 400) over ``BATCHML_SOAK_SECONDS``
(default 60), so the normal suite stays quick; the real soak is 10,000 files over 900 s.
``BATCHML_SOAK_REPORT=path.json`` writes the figures.

Criteria (stated here, checked below):

* every file is scored exactly once (one output each, whose lineage names it; catalog counts
  agree), nothing quarantined or stuck;
* memory: the median RSS of the tree over the last tenth of the feed is at most 1.3x its median
  over the second tenth (the first tenth is warm-up: model load, first allocations);
* latency: the median latency of the files landed in the last tenth is at most twice that of
  the files landed in the first tenth (files landed before the service scored its first file are
  warm-up and left out), plus 0.25 s of slack for scheduler noise on a shared machine.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import relhelp

from batchml.synthetic import synthetic_reviews


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


# the project's 600 s per-test timeout is too short for the real soak (900 s of feed)
pytestmark = [pytest.mark.reliability, pytest.mark.slow,
              pytest.mark.timeout(_env_int("BATCHML_SOAK_SECONDS", 60) + 900)]


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, int, int]] = []  # (time, tree KiB, main KiB)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = tree_pids(self.pid)
            self.samples.append((time.time(), sum(rss_kib(p) for p in pids), rss_kib(self.pid)))
            self.stop.wait(self.every_s)

    def median_between(self, t0: float, t1: float, col: int = 1) -> float:
        values = [s[col] for s in self.samples if t0 <= s[0] <= t1]
        return statistics.median(values) / 1024 if values else float("nan")


def count_outputs(outbox: Path) -> int:
    n = 0
    if outbox.is_dir():
        for run_dir in os.scandir(outbox):
            if run_dir.is_dir() and not run_dir.name.startswith("."):
                n += sum(1 for e in os.scandir(run_dir.path)
                         if e.name.endswith(".parquet") and not e.name.startswith("."))
    return n


def decile_stats(values: list[float]) -> list[dict[str, float]]:
    out = []
    n = len(values)
    for d in range(10):
        chunk = sorted(values[d * n // 10:(d + 1) * n // 10])
        if chunk:
            out.append({"p50": chunk[len(chunk) // 2], "p90": chunk[int(len(chunk) * 0.9)],
                        "n": len(chunk)})
    return out


def test_soak_memory_flat_latency_steady(make_home: Any, tmp_path: Path) -> None:
    n_files = _env_int("BATCHML_SOAK_FILES", 400)
    seconds = _env_int("BATCHML_SOAK_SECONDS", 60)
    command = os.environ.get("BATCHML_SOAK_COMMAND", "watch")
    settings = make_home("soak")
    inbox, outbox = Path(settings.inbox), Path(settings.outbox)
    relhelp.prime_predictions_view(settings)  # one warm-up file outside the inbox
    warm_outputs = count_outputs(outbox)
    env = relhelp.worker_env(settings, BATCHML_LOG_FORMAT="text")
    env.pop("PREFECT_API_URL", None)
    argv = [relhelp.BATCHML, "serve"] if command == "serve" else \
        [relhelp.BATCHML, "watch", str(inbox)]
    # small files: a pool of 50 distinct 20-row frames, written as bytes once
    pool = []
    for i in range(50):
        buf = BytesIO()
        synthetic_reviews(20, seed=1000 + i).to_parquet(buf)
        pool.append(buf.getvalue())
    log_out = open(tmp_path / "service.out", "wb")  # noqa: SIM115 - closed below
    log_err = open(tmp_path / "service.err", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=env, cwd=settings.home, stdout=log_out, stderr=log_err,
                            start_new_session=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    landed: dict[str, float] = {}
    try:
        # wait until the service is up: one probe file scored
        probe = relhelp.land(inbox / "probe.parquet", pool[0])
        landed[str(probe)] = time.time()
        deadline = time.monotonic() + 180
        while count_outputs(outbox) <= warm_outputs:
            assert proc.poll() is None, (tmp_path / "service.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "the service scored nothing in 180 s"
            time.sleep(0.2)
        t_up = time.time()
        interval = seconds / n_files
        feed_start = time.time()
        for i in range(n_files):
            due = feed_start + i * interval
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            path = inbox / f"s-{i:05d}.parquet"
            tmp = inbox / f".s-{i:05d}.parquet.tmp"
            tmp.write_bytes(pool[i % len(pool)])
            tmp.rename(path)
            landed[str(path)] = time.time()
            if i % 200 == 0:
                assert proc.poll() is None, (tmp_path / "service.err").read_text()[-3000:]
        feed_end = time.time()
        want = warm_outputs + len(landed)
        deadline = time.monotonic() + max(300.0, seconds)
        while count_outputs(outbox) < want and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.5)
        drained = time.time()
        time.sleep(3)  # a few idle samples after the drain
    finally:
        sampler.stop.set()
        sampler.join(5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log_out.close()
        log_err.close()

    # exactly once
    facts = relhelp.catalog_facts(settings.catalog_file, like=str(inbox) + "/%")
    assert facts.claimed == []
    assert facts.states == {"scored": len(landed)}, facts.states
    assert facts.scored_uris == sorted(landed)
    assert facts.scored_files == facts.batch_scored_rows == facts.batch_scored_distinct
    by_input = relhelp.outputs_by_input(outbox)
    duplicates = {k: len(v) for k, v in by_input.items() if len(v) != 1}
    assert duplicates == {}
    assert set(landed) <= set(by_input)

    # latency: rename -> scored row in the catalog, in landing order
    from batchml import Catalog

    cat = Catalog(settings.catalog_file)
    try:
        done = cat.sql("SELECT source_uri, epoch(finished_at) AS t FROM batch_files"
                       " WHERE status = 'scored' AND source_uri LIKE ?", [str(inbox) + "/%"])
    finally:
        cat.db.close()
    finished = dict(zip(done["source_uri"], done["t"], strict=True))
    order = sorted((t, uri) for uri, t in landed.items() if uri != str(probe))
    latencies = [finished[uri] - t for t, uri in order]
    steady = [finished[uri] - t for t, uri in order if t >= t_up]
    deciles = decile_stats(steady)
    first, last = deciles[0]["p50"], deciles[-1]["p50"]

    # memory: the service's process tree
    span = feed_end - feed_start
    warm = sampler.median_between(feed_start + 0.1 * span, feed_start + 0.2 * span)
    end = sampler.median_between(feed_start + 0.9 * span, feed_end)
    warm_main = sampler.median_between(feed_start + 0.1 * span, feed_start + 0.2 * span, col=2)
    end_main = sampler.median_between(feed_start + 0.9 * span, feed_end, col=2)
    start_rss = sampler.median_between(t_up, t_up + 3)
    after = sampler.median_between(drained, drained + 5)
    peak = max(s[1] for s in sampler.samples) / 1024
    report = {
        "command": command, "files": len(landed) - 1, "feed_seconds": round(span, 1),
        "drain_seconds": round(drained - feed_end, 1),
        "rss_mb": {"start": round(start_rss, 1), "after_warmup": round(warm, 1),
                   "end_of_feed": round(end, 1), "after_drain": round(after, 1),
                   "peak": round(peak, 1), "service_process_after_warmup": round(warm_main, 1),
                   "service_process_end_of_feed": round(end_main, 1)},
        "latency_s": {"first_decile_p50": round(first, 3), "last_decile_p50": round(last, 3),
                      "overall_p50": round(statistics.median(latencies), 3),
                      "overall_max": round(max(latencies), 3),
                      "deciles": [{k: round(v, 3) for k, v in d.items()} for d in deciles]},
        "samples": len(sampler.samples),
    }
    print("\n[soak] " + json.dumps(report))
    (tmp_path / "soak.json").write_text(json.dumps(report, indent=2))
    if os.environ.get("BATCHML_SOAK_REPORT"):
        Path(os.environ["BATCHML_SOAK_REPORT"]).write_text(json.dumps(report, indent=2))
    assert end <= 1.3 * warm, report
    assert last <= 2 * first + 0.25, report
