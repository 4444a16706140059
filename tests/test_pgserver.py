"""The throwaway PostgreSQL server of the tests (tests/pgserver.py), against the real server."""

from __future__ import annotations

import psycopg
import pytest
from pgserver import PostgresServer


def test_fresh_database_takes_a_write_and_reads_it_back(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t VALUES (1, 'één'), (2, 'two')")
        conn.commit()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT id, name FROM t ORDER BY id").fetchall() == [
            (1, "één"), (2, "two")]
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        assert conn.execute("SELECT current_user").fetchone() == ("batchml",)


def test_url_shape(pg_server: PostgresServer) -> None:
    port = pg_server.port
    assert pg_server.url() == f"postgresql://batchml@127.0.0.1:{port}/postgres"
    assert pg_server.url("db1") == f"postgresql://batchml@127.0.0.1:{port}/db1"
    assert (pg_server.url("db1", password="p@ss/w") ==
            f"postgresql://batchml:p%40ss%2Fw@127.0.0.1:{port}/db1")
    with psycopg.connect(pg_server.url(password="ignored by trust")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_restart_keeps_data_and_port_and_ends_old_sessions() -> None:
    # its own server: a restart ends every session of the server
    with PostgresServer() as server:
        url = server.create_database()
        port, pid = server.port, server.pid
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('before restart')")
        old = psycopg.connect(url, autocommit=True)
        try:
            assert old.execute("SELECT 1").fetchone() == (1,)
            server.restart()
            assert server.port == port
            assert server.pid != pid
            with pytest.raises(psycopg.OperationalError):
                old.execute("SELECT 1")
        finally:
            old.close()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("before restart",)]


def test_terminate_backends_ends_the_other_session(pg_server: PostgresServer,
                                                   pg_url: str) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    victim = psycopg.connect(pg_url, autocommit=True, application_name="victim")
    bystander = psycopg.connect(pg_url, autocommit=True, application_name="bystander")
    try:
        assert victim.execute("SELECT 1").fetchone() == (1,)
        assert pg_server.terminate_backends(dbname, application_name="victim") == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        # nothing left to end under that name; then every other session of the database
        assert pg_server.terminate_backends(dbname, application_name="victim") == 0
        assert pg_server.terminate_backends(dbname) == 1
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("SELECT 1")
    finally:
        victim.close()
        bystander.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_created_databases_are_independent(pg_server: PostgresServer) -> None:
    first, second = pg_server.create_database(), pg_server.create_database()
    try:
        assert first != second
        with psycopg.connect(first) as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (1)")
        with psycopg.connect(second) as conn:
            conn.execute("CREATE TABLE t (v int)")  # no clash with the first database's t
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
            assert conn.execute("SELECT current_database()").fetchone() == (
                second.rsplit("/", 1)[1],)
        with psycopg.connect(first) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
    finally:
        pg_server.drop_database(first.rsplit("/", 1)[1])
        pg_server.drop_database(second.rsplit("/", 1)[1])
    with psycopg.connect(pg_server.url()) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert first.rsplit("/", 1)[1] not in names


def test_stop_removes_the_directory_and_the_server() -> None:
    server = PostgresServer().start()
    base, url = server.base, server.url()
    assert base is not None and (base / "data" / "PG_VERSION").is_file()
    server.stop()
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
    server.stop()  # twice is harmless
