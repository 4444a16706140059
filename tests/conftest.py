"""Shared fixtures: real DuckDB files in tmp_path, moto's standalone S3 server over HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pgserver import PostgresServer

# An in-process ephemeral Prefect server (Service.run(None), flows without a server) gets 20 s
# to start by default; on 2 busy cores it sometimes needs more (seen once in a fresh-clone run).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Under pytest-xdist (pytest -n 2) each process gets its own Prefect home, so
# the two processes' temporary Prefect servers never share one SQLite database (~/.prefect).
if os.environ.get("PYTEST_XDIST_WORKER") and "PREFECT_HOME" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _worker = os.environ["PYTEST_XDIST_WORKER"]
    _prefect_home = tempfile.mkdtemp(prefix=f"batchml-tests-prefect-{_worker}-")
    os.environ["PREFECT_HOME"] = _prefect_home
    atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)

from testhelp import free_port, make_tagged_home  # noqa: E402,F401  (fixtures use them)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: clone the project beside ../shared")
    return SHARED


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_server: str) -> str:
    """Fake credentials in the environment (boto3's standard chain reads them)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@pytest.fixture
def s3_bucket(aws_env: str) -> Iterator[str]:
    """A fresh bucket on the moto server; yields its name."""
    import uuid

    from batchml.store import s3_client

    name = f"bucket-{uuid.uuid4().hex[:10]}"
    client = s3_client(aws_env, "us-east-1")
    client.create_bucket(Bucket=name)
    yield name


BACKENDS = ["duckdb", "postgresql"]
"""The catalog backends every catalog, ledger and training-record test runs on."""


@pytest.fixture(params=BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog on each backend: a DuckDB file in ``tmp_path``, or a new
    database on the test session's PostgreSQL server."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "catalog.duckdb")


@pytest.fixture
def catalog(catalog_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A catalog with an artifact store, once on each backend."""
    from batchml import Catalog, open_store

    return Catalog(catalog_url, store=open_store(str(tmp_path / "artifacts")))


@pytest.fixture
def duckdb_catalog(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A DuckDB catalog, for what only the embedded backend has (its file, lock, copy)."""
    from batchml import Catalog, open_store

    return Catalog(tmp_path / "catalog.duckdb", store=open_store(str(tmp_path / "artifacts")))


@pytest.fixture
def tagged_home(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A batchml home whose catalog holds one tagged training run (a fast scikit-learn text
    model on synthetic reviews); returns its Settings."""
    return make_tagged_home(tmp_path / "data", tmp_path / "home")


@pytest.fixture(scope="module")
def module_tagged_home(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """:func:`tagged_home` made once per test module (1,500 / 500 rows)."""
    home = tmp_path_factory.mktemp("home")
    return make_tagged_home(home / "data", home, train_rows=1500, valid_rows=500)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on a free loopback port (tests/pgserver.py), started once
    per session; stopped and its directory removed at the end."""
    from pgserver import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database on :func:`pg_server`; yields its URL and drops it (WITH (FORCE)) after
    the test."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)
