"""Many processes, one catalog file: concurrent writers and a SIGKILLed writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from batchml import Catalog

WRITER = textwrap.dedent("""
    import sys
    from batchml import Catalog
    cat = Catalog(sys.argv[1], lock_timeout_s=120)
    worker, n = sys.argv[2], int(sys.argv[3])
    for i in range(n):
        run = cat.create_run("w" + worker, params={"i": i})
        run.log_metrics({"m%d" % k: k for k in range(5)})
        run.add_tag("t" + worker)
        if i % 3 == 0:
            run.remove_tag("t" + worker)
        cat.latest_run("w" + worker, successful=False)  # reads interleave with writes
        run.finish()
    print("done", worker)
""")


def test_four_processes_write_concurrently_without_loss_or_lock_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    Catalog(path).db.close()
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    reader = Catalog(path)
    seen_reads = 0
    while any(p.poll() is None for p in procs):
        reader.runs(limit=5)  # a reader in yet another process keeps reading meanwhile
        seen_reads += 1
        time.sleep(0.01)
    outputs = [p.communicate() for p in procs]
    for proc, (_stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert "lock" not in stderr.lower(), stderr
    assert seen_reads > 0
    counts = reader.sql("SELECT flow, count(*) AS runs, count(*) FILTER (status = 'completed')"
                        " AS done, max(number) AS top FROM runs GROUP BY flow ORDER BY flow")
    assert counts["runs"].tolist() == [n] * 4
    assert counts["done"].tolist() == [n] * 4
    assert counts["top"].tolist() == [n] * 4  # numbering had no gaps or duplicates
    assert reader.sql("SELECT count(*) AS c FROM metrics")["c"][0] == 4 * n * 5
    tags = reader.sql("SELECT count(*) AS c, count(removed_at) AS removed FROM tags")
    assert tags["c"][0] == 4 * n
    assert tags["removed"][0] == 4 * len(range(0, n, 3))


CRASHER = textwrap.dedent("""
    import sys
    from batchml import Catalog
    cat = Catalog(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:
        with cat.db.write() as con:  # 200 metric rows per transaction: all or nothing
            run = cat.create_run("crash")
            run.log_metrics({"m%d" % k: k for k in range(200)})
            run.add_tag("t")
            run.finish()
        i += 1
""")


def test_sigkill_mid_write_leaves_a_consistent_catalog(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.4 + 0.3 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        cat = Catalog(path, lock_timeout_s=10)  # opens: the kernel freed the lock
        per_run = cat.sql("SELECT r.run_id, r.status, count(m.key) AS n FROM runs r LEFT JOIN"
                          " metrics m USING (run_id) GROUP BY ALL")
        assert len(per_run) > 0
        assert set(per_run["n"]) == {200}, per_run[per_run["n"] != 200]
        assert set(per_run["status"]) == {"completed"}
        assert cat.sql("SELECT count(*) AS c FROM tags")["c"][0] == len(per_run)
        cat.db.close()
