"""15. Poison files: a real ``batchml serve`` whose scorer process SIGKILLs itself on one input
(``BATCHML_FAULT_KILL_MARKER``, the test hook standing in for the OOM killer or a segfault).

Files land before and after the poison file. The poison file is tried
``BATCHML_POISON_ATTEMPTS`` (2) times, each killing only the scorer process, then quarantined
with a reason naming the signal, the peak memory and the attempts; the service stays up with
the same pid, and every other file is scored exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import relhelp

from batchml.synthetic import synthetic_reviews

pytestmark = pytest.mark.reliability

MARKER = "POISON"


def _wait(pred: Any, timeout: float, what: str, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_poison_file_is_quarantined_and_the_service_stays_up(home: Any, tmp_path: Path) -> None:
    settings = home
    inbox, outbox = Path(settings.inbox), Path(settings.outbox)
    env = relhelp.worker_env(settings, BATCHML_FAULT_KILL_MARKER=MARKER,
                             BATCHML_POISON_ATTEMPTS="2")
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}

    def status() -> tuple[int, dict[str, Any]]:
        out = relhelp.run_cli(["status", "--format", "json"], env, Path(settings.home))
        return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}

    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([relhelp.BATCHML, "serve"], env=env, cwd=settings.home,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        def up() -> dict[str, Any] | None:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            code, info = status()
            return info if code == 0 else None

        pid = _wait(up, 180, "the service to come up", step=1)["service"]["pid"]
        assert pid == proc.pid
        before = [relhelp.land(inbox / f"before-{i}.parquet", synthetic_reviews(150 + i, seed=i))
                  for i in range(3)]
        poison = relhelp.land(inbox / f"data-{MARKER}.parquet", synthetic_reviews(100, seed=9))
        after = [relhelp.land(inbox / f"after-{i}.parquet", synthetic_reviews(120 + i, seed=20 + i))
                 for i in range(3)]
        good = before + after

        def settled() -> relhelp.CatalogFacts | None:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            facts = relhelp.catalog_facts(settings.catalog_file)
            return facts if facts.states == {"scored": 6, "quarantined": 1} else None

        facts = _wait(settled, 120, "6 files scored and the poison file quarantined")
        def reported() -> dict[str, Any] | None:  # the heartbeat after the last batch
            code, info = status()
            assert code == 0 and info["service"]["up"] and info["service"]["pid"] == pid
            return info if info["service"].get("scorer_deaths") == 2 else None

        info = _wait(reported, 30, "the heartbeat to report 2 scorer deaths")
        assert info["service"]["scorer_pid"] not in (None, pid)
        table = relhelp.run_cli(["status"], env, Path(settings.home))
        assert table.returncode == 0 and "died 2 time(s)" in table.stdout, table.stdout
        assert proc.poll() is None

        row = facts.frame.set_index("source_uri").loc[str(poison)]
        assert (row["state"], row["attempts"]) == ("quarantined", 2)
        for text in ("signal 9 (SIGKILL)", "peak memory", "each of 2 attempts",
                     "batchml reprocess"):
            assert text in row["error"], row["error"]
        peak = float(row["error"].split("peak memory ")[1].split(" MB")[0])
        assert peak > 20, row["error"]
        assert not poison.exists() and list(Path(settings.quarantine).glob(f"*{poison.name}"))

        assert facts.scored_uris == sorted(str(p) for p in good)
        assert facts.batch_scored_rows == facts.batch_scored_distinct == 6  # exactly once
        by_input = relhelp.outputs_by_input(outbox)
        assert sorted(by_input) == sorted(str(p) for p in good)
        assert all(len(v) == 1 for v in by_input.values())
        log_text = log_path.read_text()
        assert log_text.count("killed by signal 9 (SIGKILL)") >= 2, log_text[-3000:]
        print(f"\n[poison] 6 good files scored once, poison quarantined after 2 attempts, "
              f"service pid {pid} up throughout; peak memory reported {peak:.0f} MB")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == 0, log_path.read_text()[-3000:]
    assert relhelp.tmp_leftovers(outbox) == []


def test_watch_once_drains_past_a_poison_file(home: Any) -> None:
    """``batchml watch --once`` gets the same protection: the poison file alone in its batch
    is tried again at once (not left pending for the next run) and quarantined."""
    settings = home
    inbox = Path(settings.inbox)
    poison = relhelp.land(inbox / f"only-{MARKER}.parquet", synthetic_reviews(50, seed=3))
    env = relhelp.worker_env(settings, BATCHML_FAULT_KILL_MARKER=MARKER)
    first = relhelp.run_cli(["watch", str(inbox), "--once"], env, Path(settings.home))
    assert first.returncode == 0, first.stderr[-3000:]
    good = relhelp.land(inbox / "later.parquet", synthetic_reviews(60, seed=4))
    second = relhelp.run_cli(["watch", str(inbox), "--once"], env, Path(settings.home))
    assert second.returncode == 0, second.stderr[-3000:]
    facts = relhelp.catalog_facts(settings.catalog_file)
    row = facts.frame.set_index("source_uri").loc[str(poison)]
    assert (row["state"], row["attempts"]) == ("quarantined", 2), row.to_dict()
    assert "signal 9 (SIGKILL)" in row["error"] and "each of 2 attempts" in row["error"]
    assert facts.scored_uris == [str(good)] and facts.batch_scored_distinct == 1
    assert "killed by signal 9" in first.stderr
