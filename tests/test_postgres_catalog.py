"""What only the PostgreSQL backend has to prove, on a real server the tests start: clear
errors for wrong URLs without the password, claims by many processes without a lock, a
connection dropped mid-transaction, a server restart, migrations raced by several openers.

Everything the two backends share runs on both through the parametrised ``catalog`` fixture.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psycopg
import pytest

from batchml import Catalog, Settings
from batchml.catalog import FileRef, Ledger
from batchml.catalog.postgres_backend import PostgresBackend
from batchml.errors import CatalogError, CatalogUnavailable, ConfigError, is_transient

ROOT = Path(__file__).resolve().parents[1]


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.mark.parametrize(("url", "kind", "message"), [
    ("postgresql://batchml@127.0.0.1:{port}/no_such_db", ConfigError,
     "database does not exist"),
    ("postgresql://batchml@127.0.0.1:{closed}/db", CatalogUnavailable,
     "Check that the server is up"),
    ("postgresql://batchml:s3cr3t-pw@127.0.0.1:{closed}/db", CatalogUnavailable,
     "batchml:***@127.0.0.1"),
])
def test_wrong_urls_say_what_to_do_without_the_password(pg_url: str, url: str, kind: type,
                                                        message: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    target = url.format(port=_port_of(pg_url), closed=closed)
    with pytest.raises(kind) as info:
        Catalog(target)
    text = f"{info.value}"
    assert message in text
    assert "s3cr3t-pw" not in text and "s3cr3t-pw" not in repr(info.value)
    assert len(text.splitlines()) == 1
    assert is_transient(info.value) is (kind is CatalogUnavailable)


def test_a_password_in_the_url_never_reaches_settings_dumps(pg_url: str) -> None:
    settings = Settings(catalog_url=pg_url.replace("batchml@", "batchml:hunter2@"))
    assert "hunter2" not in settings.model_dump_json()
    assert "hunter2" not in repr(settings)
    assert settings.catalog_password is not None
    assert settings.catalog_password.get_secret_value() == "hunter2"
    # trust auth accepts any password: the catalog opens with the URL's user and database
    cat = Catalog.from_settings(settings.model_copy(update={"artifact_root": "/tmp/unused"}))
    assert "hunter2" not in str(cat.path) and isinstance(cat.backend, PostgresBackend)


def test_a_duckdb_url_is_the_embedded_default_spelled_out(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, catalog_url=f"duckdb://{tmp_path / 'x.duckdb'}")
    assert settings.catalog_url is None and settings.catalog_file == tmp_path / "x.duckdb"


def test_a_connection_dropped_mid_transaction_loses_nothing(pg_url: str, pg_server) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog(pg_url)
    kept = cat.create_run("train")
    with pytest.raises(CatalogUnavailable), cat.transaction():
        cat.create_run("train", tags=["half"])
        assert pg_server.terminate_backends(dbname=pg_url.rsplit("/", 1)[1]) >= 1
        cat.create_run("train")  # the server dropped the connection under the transaction
    # nothing of the transaction is there, and the next call works on a new connection
    assert [r.id for r in cat.runs("train")] == [kept.id]
    assert cat.runs("train", tag="half") == []
    assert cat.create_run("train").number == 2


def test_the_service_survives_a_server_restart(pg_url: str, pg_server) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog(pg_url)
    ledger = Ledger(cat)
    ledger.discover([FileRef(f"file:///in/{i}.parquet", etag=str(i)) for i in range(3)])
    pg_server.restart()
    # the pool finds its dead connections at checkout and opens new ones
    assert len(ledger.claim("w1", limit=10, lease_s=60)) == 3
    assert ledger.counts()["claimed"] == 3


_CLAIMER = textwrap.dedent("""
    import sys
    from batchml import Catalog
    from batchml.catalog import Ledger
    ledger = Ledger(Catalog(sys.argv[1]))
    got = []
    while True:
        records = ledger.claim(sys.argv[2], limit=3, lease_s=120)
        if not records:
            break
        for r in records:
            assert ledger.finish(r.file_id, sys.argv[2], state="scored")
            got.append(r.file_id)
    print("\\n".join(got))
""")


def test_six_processes_claim_every_file_exactly_once(pg_url: str) -> None:
    cat = Catalog(pg_url)
    ids = Ledger(cat).discover([FileRef(f"s3://b/in/{i:04d}.parquet", etag="e")
                                for i in range(300)])
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, pg_url, f"w{n}"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for n in range(6)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    claimed = [f for out in outs for f in out]
    assert sorted(claimed) == sorted(ids)  # every file once: no duplicate, none missing
    assert sum(1 for out in outs if out) >= 2  # the work was really shared
    assert Ledger(cat).counts()["scored"] == 300 and Ledger(cat).counts()["claimed"] == 0


def test_concurrent_openers_migrate_once_and_number_runs_without_gaps(pg_url: str) -> None:
    errors: list[BaseException] = []
    ids: list[str] = []

    def open_and_run() -> None:
        try:
            cat = Catalog(pg_url)
            for _ in range(10):
                ids.append(cat.create_run("train").id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(ids, key=lambda i: int(i.split("/")[1])) == [f"train/{n}" for n in
                                                              range(1, 41)]
    rows = Catalog(pg_url).sql("SELECT count(*) AS n FROM schema_migrations")
    from batchml.catalog.migrations import migrations  # numbers may have gaps: count them

    shipped = migrations("postgresql")
    assert int(rows["n"][0]) == len(shipped)
    assert Catalog(pg_url).schema_version() == shipped[-1][0]


def test_read_only_sql_is_enforced_by_the_server(pg_url: str) -> None:
    cat = Catalog(pg_url)
    cat.create_run("train")
    with pytest.raises(CatalogError, match="read-only"):
        cat.sql("UPDATE runs SET status = 'failed'")
    with pytest.raises(CatalogError, match="read-only"):
        cat.sql("WITH x AS (DELETE FROM runs RETURNING 1) SELECT * FROM x")
    assert cat.run("train/1").status == "running"
    cat.sql("UPDATE runs SET error = 'noted'", write=True)
    assert cat.run("train/1").error == "noted"


def test_psql_users_get_the_same_views(pg_url: str, tmp_path: Path) -> None:
    duck = Catalog(tmp_path / "c.duckdb")
    pg = Catalog(pg_url)
    views = {"current_tags", "tag_history", "runs_overview", "file_status",
             "prediction_outputs", "catalog_info"}
    with psycopg.connect(pg_url) as con:
        have = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'")}
    assert views <= have
    for view in views:
        assert list(duck.sql(f"SELECT * FROM {view} LIMIT 0").columns) == \
            list(pg.sql(f"SELECT * FROM {view} LIMIT 0").columns), view


def _wait_until(condition, timeout_s: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_worker_rides_out_a_restart_and_dropped_sessions(pg_server, pg_url: str,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    from testhelp import make_tagged_home

    from batchml.sources import DirectorySource
    from batchml.synthetic import synthetic_reviews
    from batchml.worker import Worker

    settings = make_tagged_home(tmp_path / "data", tmp_path / "home", catalog_url=pg_url)
    inbox = Path(settings.inbox)
    cat = Catalog.from_settings(settings)
    ledger = Ledger(Catalog(pg_url))
    source = DirectorySource(inbox, quarantine_dir=settings.quarantine, settle_s=0,
                             use_events=False)
    worker = Worker(cat, source, settings)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"idle_s": 0.05})
    thread.start()
    try:
        def land(n: int) -> None:
            synthetic_reviews(20, seed=n).to_parquet(inbox / f"f{n}.parquet")

        for n in range(3):
            land(n)
        _wait_until(lambda: ledger.counts()["scored"] == 3)
        pg_server.restart()  # every session of the worker is gone
        for n in range(3, 6):
            land(n)
        _wait_until(lambda: ledger.counts()["scored"] == 6)
        for n in range(6, 9):
            land(n)
        pg_server.terminate_backends(dbname=pg_url.rsplit("/", 1)[1])
        _wait_until(lambda: ledger.counts()["scored"] == 9)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    outputs = sorted(p.name.split("-")[0] for p in Path(settings.outbox).rglob("*.parquet"))
    assert outputs == [f"f{n}" for n in range(9)]  # each file once: nothing lost, no repeat
    assert ledger.counts()["claimed"] == 0
    left = cat.sql("SELECT count(*) AS n FROM prediction_batches WHERE status = 'running'")
    assert int(left["n"][0]) == 0


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    from batchml.errors import Backoff

    b = Backoff(base=1.0, cap=8.0)
    delays = [b.failed() for _ in range(6)]
    for got, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= got <= ceiling
    b.succeeded()
    assert 0.5 <= b.failed() <= 1.0
