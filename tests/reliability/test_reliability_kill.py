"""1. Kill at random points: a ``batchml watch INBOX`` worker process is SIGKILLed again and
again while files land at a steady rate (some large, so kills land in the middle of scoring and
of writing an output), and restarted each time. A final real ``batchml watch --once`` drains
what is left once the dead workers' leases (``BATCHML_LEASE_S=2``) have expired.

Afterwards every input has exactly one committed, complete output, nothing is stuck in
``claimed``, and the catalog's counts agree with the files on disk.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import relhelp

from batchml.synthetic import synthetic_reviews

pytestmark = pytest.mark.reliability

LEASE_S = 2.0


@dataclass
class KillRun:
    settings: Any
    expected: dict[str, int]  # input path -> rows
    planned_kills: int = 0
    kills: int = 0
    kills_mid_write: int = 0
    kills_random: int = 0
    crashes: list[str] = field(default_factory=list)  # incarnations that died by themselves
    final: Any = None
    seconds: float = 0.0

    @property
    def outbox(self) -> Path:
        return Path(self.settings.outbox)


def _wait_for(pred: Any, timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def _printed_a_batch(child: relhelp.Child) -> bool:
    return "scored " in child.out()


def kill_scenario(settings: Any, zygote: relhelp.Zygote, *, n_files: int, n_kills: int,
                  seed: int, big_rows: int, big_every: int, interval_s: float,
                  max_sleep_s: float, fresh_final_process: bool) -> KillRun:
    rng = random.Random(seed)
    inbox, outbox = Path(settings.inbox), Path(settings.outbox)
    small = [synthetic_reviews(120 + 10 * i, seed=100 + i) for i in range(5)]
    big = synthetic_reviews(big_rows, seed=99)
    run = KillRun(settings, {}, planned_kills=n_kills)
    lock = threading.Lock()

    def feed() -> None:
        for i in range(n_files):
            frame = big if i % big_every == big_every - 1 else small[i % len(small)]
            path = relhelp.land(inbox / f"in-{i:04d}.parquet", frame)
            with lock:
                run.expected[str(path)] = len(frame)
            time.sleep(interval_s)

    start = time.monotonic()
    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    feeder.start()
    env = relhelp.worker_env(settings)
    argv = ["watch", str(inbox)]
    home = Path(settings.home)
    child = zygote.spawn(argv, env, home, "watch")
    # half the kills wait until an output is being written (a large file is being scored)
    modes = ["scoring" if k % 2 == 0 else "random" for k in range(1, n_kills)]
    rng.shuffle(modes)
    modes.insert(0, "scoring")  # at least one kill while the feed is still running
    for k, mode in enumerate(modes):
        if k == 0:
            # let the first incarnation finish one batch (it prints it), which creates the
            # catalog's `predictions` view (hidden temp files never enter it: see
            # test_reliability_sql.py::test_predictions_view_ignores_inflight_temp_files)
            assert _wait_for(partial(_printed_a_batch, child), 90, step=0.02), child.err()
        known = set(relhelp.tmp_leftovers(outbox))

        def writing(known: set[Path] = known) -> bool:
            return bool(set(relhelp.tmp_leftovers(outbox)) - known)

        if not child.alive():
            run.crashes.append(f"rc={child.rc}: {child.err()[-2000:]}")
        elif mode == "scoring" and relhelp.kill_mid_write(
                child, writing, 30, jitter=partial(rng.uniform, 0, 0.01)):
            assert child.wait(10), f"pid {child.pid} survived SIGKILL"
            run.kills += 1
            run.kills_mid_write += 1
        elif not child.alive():
            run.crashes.append(f"rc={child.rc}: {child.err()[-2000:]}")
        else:
            time.sleep(rng.uniform(0.1, max_sleep_s))
            if not child.alive():
                run.crashes.append(f"rc={child.rc}: {child.err()[-2000:]}")
            else:
                mid_write = writing()
                child.kill()
                assert child.wait(10), f"pid {child.pid} survived SIGKILL"
                run.kills += 1
                run.kills_mid_write += mid_write
                run.kills_random += 1
        child = zygote.spawn(argv, env, home, "watch")
    feeder.join(timeout=300)
    assert not feeder.is_alive()
    # the last incarnation works a little, then is killed too
    time.sleep(rng.uniform(0.5, 1.5))
    if child.alive():
        child.kill()
        assert child.wait(10)
        run.kills += 1
        run.kills_random += 1
    else:
        run.crashes.append(f"rc={child.rc}: {child.err()[-2000:]}")
    time.sleep(LEASE_S + 0.5)  # the dead workers' claims expire
    if fresh_final_process:  # the console script in a brand-new interpreter
        run.final = relhelp.run_cli(["watch", str(inbox), "--once"], env, home, timeout=170)
    else:  # the same command line, forked from the pre-warmed zygote (saves ~7 s of imports)
        final = zygote.spawn(["watch", str(inbox), "--once"], env, home, "final")
        assert final.wait(170), "the final `batchml watch --once` did not finish"
        run.final = subprocess.CompletedProcess(["watch", "--once"], final.rc, final.out(),
                                                final.err())
    run.seconds = time.monotonic() - start
    return run


def sizes(kind: str) -> dict[str, Any]:
    s = relhelp.scale()
    if kind == "quick":
        return dict(n_files=40, n_kills=5, big_rows=15_000, big_every=8, interval_s=0.1,
                    max_sleep_s=1.2, fresh_final_process=False)
    # the longer variant: 40 files and 10 kills at scale 1; 200 files and 10 kills at scale 5
    return dict(n_files=int(40 * s), n_kills=max(10, int(2 * s)), big_rows=20_000,
                big_every=7, interval_s=0.08, max_sleep_s=2.0, fresh_final_process=True)


@pytest.fixture(scope="module", params=[
    "quick", "quick-postgresql", pytest.param("full", marks=pytest.mark.slow),
    pytest.param("full-postgresql", marks=pytest.mark.slow)])
def kill_run(request: pytest.FixtureRequest, rel_base: Any, zygote: relhelp.Zygote,
             tmp_path_factory: pytest.TempPathFactory) -> KillRun:
    from batchml import Settings

    size, _, backend = str(request.param).partition("-")
    home = tmp_path_factory.mktemp(f"kill-{request.param}")
    if backend == "postgresql":
        base = request.getfixturevalue("rel_base_pg")
        catalog: dict[str, Any] = {"catalog_url": relhelp.pg_copy_of_base(base)}
        artifact_root = base.artifact_root
    else:
        relhelp.copy_catalog(rel_base.catalog_file, home / "catalog.duckdb")
        catalog = {"catalog_path": home / "catalog.duckdb"}
        artifact_root = rel_base.artifact_root
    settings = Settings(home=home, **catalog, artifact_root=str(artifact_root),
                        inbox=str(home / "inbox"), outbox=str(home / "outbox"),
                        quarantine=str(home / "quarantine"), lease_s=LEASE_S)
    Path(settings.inbox).mkdir()
    return kill_scenario(settings, zygote, seed=1234 if size == "quick" else 4321,
                         **sizes(size))


def test_sigkilled_worker_scores_every_file_exactly_once(kill_run: KillRun) -> None:
    run, outbox = kill_run, kill_run.outbox
    final = run.final
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Traceback" not in final.stderr, final.stderr[-3000:]
    assert run.kills >= run.planned_kills, run
    assert run.kills_mid_write >= 1, "no kill landed while an output was being written"
    assert not run.crashes, run.crashes

    by_input = relhelp.outputs_by_input(outbox)
    lost = sorted(set(run.expected) - set(by_input))
    unexpected = sorted(set(by_input) - set(run.expected))
    duplicates = {k: [p.name for p in v] for k, v in by_input.items() if len(v) != 1}
    assert (lost, unexpected, duplicates) == ([], [], {})
    for uri, (out,) in by_input.items():  # each output is complete and readable
        assert pq.ParquetFile(out).metadata.num_rows == run.expected[uri], out

    facts = relhelp.catalog_facts(run.settings.catalog_target)  # the catalog opens
    assert facts.claimed == []
    assert facts.states == {"scored": len(run.expected)}, facts.states
    assert facts.scored_uris == sorted(run.expected)
    assert facts.scored_files == facts.batch_scored_rows == facts.batch_scored_distinct \
        == len(run.expected) == len(relhelp.committed_outputs(outbox))
    recorded = dict(zip(facts.frame["source_uri"], facts.frame["output_uri"], strict=True))
    assert all(recorded[uri] == str(outs[0]) for uri, outs in by_input.items())
    print(f"\n[kill] files={len(run.expected)} kills={run.kills} "
          f"(mid-write {run.kills_mid_write}, random {run.kills_random}) duplicates=0 lost=0 "
          f"tmp_leftovers={len(relhelp.tmp_leftovers(outbox))} seconds={run.seconds:.0f}")


def test_killed_worker_leaves_no_visible_temp_files(kill_run: KillRun) -> None:
    assert kill_run.kills_mid_write >= 1
    assert relhelp.tmp_leftovers(kill_run.outbox) == []
    from batchml import Catalog

    if kill_run.settings.catalog_url:  # PostgreSQL: outputs are read with DuckDB directly
        import duckdb

        n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{kill_run.outbox}/**/*.parquet')"
                       ).fetchone()[0]  # type: ignore[index]
    else:
        cat = Catalog(kill_run.settings.catalog_file)
        try:
            n = cat.sql("SELECT count(*) AS n FROM predictions")["n"].iloc[0]
        finally:
            cat.close()
    assert n == sum(kill_run.expected.values())
