"""The published catalog: people read a copy that batchml refreshes after each change, so an
open DuckDB session (CLI ``-readonly``, a notebook's ``read_only=True``) never stalls scoring."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from batchml import Catalog, CatalogBusy, Settings
from batchml.synthetic import synthetic_reviews

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

README_TABLES = ["runs", "metrics", "tags", "artifacts", "models", "files",
                 "prediction_batches", "batch_files", "schema_migrations"]
README_VIEWS = ["runs_overview", "current_tags", "tag_history", "file_status",
                "prediction_outputs", "catalog_info"]


def _wait_for(condition, timeout_s: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _runs_in_copy(path: Path) -> int:
    if not path.exists():
        return -1
    with duckdb.connect(str(path), read_only=True) as con:
        return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])  # type: ignore[index]


def _holder(path: Path, *, read_only: bool) -> subprocess.Popen[str]:
    """A separate process that opens ``path`` with DuckDB, says 'open', and keeps it open
    until its stdin closes; each line it reads makes it print the run count it sees."""
    code = (
        "import duckdb, sys\n"
        f"con = duckdb.connect({str(path)!r}, read_only={read_only})\n"
        "print('open', flush=True)\n"
        "for _ in sys.stdin:\n"
        "    print(con.execute('SELECT count(*) FROM runs').fetchone()[0], flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


def test_every_change_is_published_with_every_table_and_view(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.duckdb", publish_interval_s=0.2)
    assert cat.published_path == tmp_path / "catalog.readonly.duckdb"
    run = cat.create_run("train", params={"alpha": 1})
    run.add_tag("champion")
    _wait_for(lambda: _runs_in_copy(cat.published_path) == 1, what="the run in the copy")
    with duckdb.connect(str(cat.published_path), read_only=True) as con:
        names = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
        assert set(README_TABLES) | set(README_VIEWS) <= names
        info = con.execute("SELECT published_at, age, source_catalog, schema_version, "
                           "publish_interval_s FROM catalog_info").fetchall()
    assert len(info) == 1
    assert info[0][2] == str(tmp_path / "catalog.duckdb") and info[0][4] == 0.2
    assert info[0][3] == max(int(p.name[:4]) for p in
                             (ROOT / "batchml" / "catalog" / "migrations" / "duckdb").glob("[0-9]*.sql"))
    _wait_for(lambda: duckdb.connect(str(cat.published_path), read_only=True).execute(
        "SELECT count(*) FROM current_tags WHERE tag = 'champion'").fetchone()[0] == 1,
        what="the tag in the copy")


@pytest.mark.parametrize("read_only", [True, False])  # even a session opened writable
def test_a_session_holding_the_copy_never_blocks_batchml(tmp_path: Path,
                                                         read_only: bool) -> None:
    cat = Catalog(tmp_path / "catalog.duckdb", lock_timeout_s=2.0, publish_interval_s=0.05)
    cat.create_run("train")
    cat.publish()
    holders = [_holder(cat.published_path, read_only=read_only)]
    try:
        for _ in range(30):  # each commit would wait out the 2 s timeout if it were blocked
            cat.create_run("train")
            cat.publish()
        assert _runs_in_copy(cat.published_path) == 31
        for proc in holders:  # the sessions still read their snapshot
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert int(proc.stdout.readline()) >= 1
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("read_only", [True, False])
def test_a_session_on_the_private_catalog_is_named_with_what_to_do(
        tmp_path: Path, read_only: bool) -> None:
    cat = Catalog(tmp_path / "catalog.duckdb", lock_timeout_s=0.3)
    cat.create_run("train")
    cat.db.close()
    holder = _holder(cat.path, read_only=read_only)
    try:
        with pytest.raises(CatalogBusy) as err:
            cat.create_run("train")
        message = str(err.value)
        assert f"process {holder.pid}" in message
        assert str(cat.published_path) in message
        assert "-readonly" not in message  # never "use read-only" to a read-only user
    finally:
        holder.kill()
        holder.wait()


def test_a_burst_is_published_once_per_interval_and_its_end_soon(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.duckdb", publish_interval_s=0.5)
    cat.publish()
    before = cat.db.publication.count
    start = time.monotonic()
    for _ in range(100):
        cat.create_run("train")
    elapsed = time.monotonic() - start
    _wait_for(lambda: _runs_in_copy(cat.published_path) == 100, what="the burst's end")
    published = cat.db.publication.count - before
    assert 1 <= published <= elapsed / 0.5 + 2, (published, elapsed)


EXIT_SCRIPT = """
import sys, threading
from batchml import Catalog
from batchml.catalog._db import PROCESS_DATABASES
cat = Catalog(sys.argv[1], publish_interval_s=30)  # the debounce keeps the change pending
cat.create_run("train").log_metrics({"m": 1.0})
names = lambda: sorted(t.name for t in threading.enumerate() if t.name.startswith("batchml-"))
print(names(), flush=True)
PROCESS_DATABASES.close_all()  # what interpreter exit runs
print(names(), flush=True)
"""


def test_interpreter_exit_publishes_and_ends_the_catalog_threads(tmp_path: Path) -> None:
    """A process that ends right after a write publishes it, and no catalog thread is left
    inside DuckDB while the interpreter finalises (that aborted processes with SIGABRT)."""
    path = tmp_path / "catalog.duckdb"
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = proc.stdout.splitlines()
    assert "batchml-catalog-publisher" in before
    assert after == "[]"
    assert _runs_in_copy(tmp_path / "catalog.readonly.duckdb") == 1


def test_a_writer_killed_before_publishing_is_caught_up(tmp_path: Path) -> None:
    path = tmp_path / "catalog.duckdb"
    Catalog(path).publish()
    code = ("import os\nfrom batchml import Catalog\n"
            f"c = Catalog({str(path)!r}, publish_interval_s=3600)\n"
            "c.publish()\nc.create_run('train')\nc.db.close()\n"
            "os._exit(0)  # like a SIGKILL: no exit handlers, nothing published\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert _runs_in_copy(path.with_name("catalog.readonly.duckdb")) == 0
    Catalog(path, publish_interval_s=0.1)  # any batchml process that opens it catches up
    _wait_for(lambda: _runs_in_copy(path.with_name("catalog.readonly.duckdb")) == 1,
              what="the caught-up copy")


def test_temporary_copies_of_dead_processes_are_swept(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.duckdb")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".catalog.readonly.duckdb.tmp-{dead.pid}"
    stale.write_bytes(b"half a copy")
    cat.publish()
    assert not stale.exists()
    assert _runs_in_copy(cat.published_path) == 0


def _readme_queries() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Three example queries\s+```sql\n(.*?)```", text, re.S)
    assert block, "README lost its example queries"
    queries = [q.strip() for q in block.group(1).split(";") if q.strip()]
    assert len(queries) == 3
    return queries


def test_the_duckdb_cli_from_pypi_runs_the_readme_queries(tagged_home: Settings,
                                                         tmp_path: Path) -> None:
    cli = BIN / "duckdb"
    assert cli.exists(), "the duckdb-cli package is part of the dev install"
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert version.startswith("v1.5."), version
    env = {**os.environ, "BATCHML_HOME": str(tagged_home.home)}
    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(2):
        synthetic_reviews(50, seed=70 + i).to_parquet(drop / f"in-{i}.parquet")
    subprocess.run([str(BIN / "batchml"), "predict", str(drop)], env=env, check=True,
                   capture_output=True, timeout=300)
    published = tagged_home.published_catalog_path
    assert published is not None and published.exists()
    results = []
    for query in _readme_queries():
        out = subprocess.run([str(cli), "-readonly", "-json", str(published), "-c", query],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        results.append(json.loads(out.stdout or "[]"))
    by_file, by_model, rows = results
    assert sorted(Path(r["source_uri"]).name for r in by_file) == ["in-0.parquet",
                                                                    "in-1.parquet"]
    assert int(by_model[0]["rows"]) == 100 and by_model[0]["model_run_id"] == "train/1"
    assert len(rows) == 100 and {r["model_flavor"] for r in rows} == {"sklearn"}


@pytest.mark.slow
def test_serve_scores_every_file_while_a_session_holds_the_copy(tagged_home: Settings,
                                                               tmp_path: Path) -> None:
    settings = tagged_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["BATCHML_HOME"] = str(settings.home)
    published = settings.published_catalog_path
    assert published is not None
    Catalog.from_settings(settings).publish()
    reader = _holder(published, read_only=True)
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([str(BIN / "batchml"), "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)

    def status() -> dict:  # type: ignore[type-arg]
        out = subprocess.run([str(BIN / "batchml"), "status", "--format", "json"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert proc.poll() is None, log_path.read_text()
        return json.loads(out.stdout) if out.returncode == 0 else {}

    try:
        _wait_for(status, timeout_s=180, what="the service")
        inbox = Path(settings.inbox)
        for i in range(20):
            tmp = inbox / f".f{i}.tmp"
            synthetic_reviews(100, seed=100 + i).to_parquet(tmp)
            tmp.rename(inbox / f"landed-{i:02d}.parquet")
        info = _wait_for(lambda: (s := status()) and s["files"]["scored"] == 20 and s,
                         timeout_s=180, what="20 files scored")
        assert info["files"].get("quarantined", 0) == 0 and info["files"].get("failed", 0) == 0
        # and the copy people read catches up without them doing anything but reconnect
        _wait_for(lambda: duckdb.connect(str(published), read_only=True).execute(
            "SELECT count(*) FROM prediction_outputs WHERE status = 'scored'").fetchone()[0]
            == 20, what="the copy to show 20 scored files")
        assert reader.poll() is None  # the session stayed open throughout
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
        reader.kill()
        reader.wait()
    assert code == 0, log_path.read_text()


def test_a_stuck_batchml_process_is_named_by_the_lock_timeout(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.duckdb", lock_timeout_s=0.3)
    cat.db.close()
    code = ("import sys\nfrom pathlib import Path\nfrom batchml.catalog._locking import FileLock\n"
            f"FileLock(Path({str(cat.path)!r} + '.lock')).acquire(exclusive=True, "
            "timeout_s=5)\nprint('open', flush=True)\nsys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(CatalogBusy, match=rf"held by process {holder.pid} \(.*python"):
            cat.create_run("train")
    finally:
        holder.kill()
        holder.wait()
