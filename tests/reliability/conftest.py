"""Fixtures for the reliability tests. The project's fixtures (``moto_server``, ``aws_env``,
``s3_bucket``, ``catalog``) come from ``tests/conftest.py`` as usual; this file adds:

* ``rel_base``: one catalog with two completed training runs of the scikit-learn text model
  (``train/1`` tagged ``deployment_candidate``, ``train/2`` untagged), trained once per session;
* ``home``: a private batchml home per test: a copy of that catalog, its own inbox / outbox /
  quarantine, the shared (read-only) artifact root;
* ``zygote``: a pre-warmed process that forks ``batchml`` worker processes (see relhelp.py);
  it starts with the session and imports while the training runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import relhelp


@dataclass(frozen=True)
class Base:
    home: Path
    catalog_file: Path
    artifact_root: Path
    old_run: str
    new_run: str


@pytest.fixture(scope="session")
def rel_base(tmp_path_factory: pytest.TempPathFactory, zygote: relhelp.Zygote) -> Base:
    # (the zygote fixture is requested first so its imports overlap with the training)
    from batchml import Catalog, Settings
    from batchml import training as tr
    from batchml.synthetic import synthetic_reviews

    home = tmp_path_factory.mktemp("rel-base")
    data = home / "data"
    data.mkdir()
    settings = Settings(home=home, catalog_path=home / "catalog.duckdb",
                        artifact_root=str(home / "artifacts"))
    cat = Catalog.from_settings(settings)
    runs = []
    for seed in (1, 7):
        synthetic_reviews(1200, seed=seed).to_parquet(data / f"train{seed}.parquet")
        synthetic_reviews(400, seed=seed + 1).to_parquet(data / f"valid{seed}.parquet")
        outcome = tr.train(cat, tr.TrainingConfig(
            train_uri=str(data / f"train{seed}.parquet"),
            valid_uri=str(data / f"valid{seed}.parquet"),
            text_column="review", candidates=["sklearn_text"]))
        assert outcome.decision.tagged, outcome.decision.reasons
        runs.append(outcome.run.id)
    old, new = runs
    cat.run(new).remove_tag(relhelp.TAG)  # the newer run waits; tests move the tag themselves
    assert cat.latest_run("train", tag=relhelp.TAG).id == old
    cat.db.close()
    return Base(home, settings.catalog_file, home / "artifacts", old, new)


@dataclass(frozen=True)
class PgBase:
    server: Any
    template: str
    artifact_root: Path


@pytest.fixture(scope="session")
def rel_base_pg(rel_base: Base, pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> PgBase:
    """:func:`rel_base` on PostgreSQL: the same two runs (``train/1`` tagged, ``train/2`` not)
    trained into a database that each test copies (``CREATE DATABASE ... TEMPLATE``), with its
    own artifact root (the run ids are the same as the DuckDB base's, the bytes are not)."""
    from batchml import Catalog
    from batchml import training as tr

    data = rel_base.home / "data"
    root = tmp_path_factory.mktemp("rel-base-pg")
    url = pg_server.create_database()
    from batchml import open_store

    cat = Catalog(url, store=open_store(str(root / "artifacts")))
    for seed in (1, 7):
        outcome = tr.train(cat, tr.TrainingConfig(
            train_uri=str(data / f"train{seed}.parquet"),
            valid_uri=str(data / f"valid{seed}.parquet"),
            text_column="review", candidates=["sklearn_text"]))
        assert outcome.decision.tagged, outcome.decision.reasons
    cat.run(rel_base.new_run).remove_tag(relhelp.TAG)
    assert cat.latest_run("train", tag=relhelp.TAG).id == rel_base.old_run
    cat.close()  # a template database must have no sessions
    return PgBase(pg_server, url.rsplit("/", 1)[1], root / "artifacts")


@pytest.fixture(params=["duckdb"])
def rel_backend(request: pytest.FixtureRequest) -> str:
    """The catalog backend of :func:`make_home`'s homes: DuckDB unless a test module asks for
    both (``pytest.mark.parametrize("rel_backend", relhelp.BOTH, indirect=True)``)."""
    return str(request.param)


@pytest.fixture
def make_home(rel_base: Base, tmp_path: Path, rel_backend: str,
              request: pytest.FixtureRequest) -> Callable[..., object]:
    """``make_home(name, **settings)`` -> Settings of a fresh private home (its catalog a copy
    of the base's, on the backend :func:`rel_backend` names)."""
    from batchml import Settings

    def make(name: str = "home", **overrides: object) -> Settings:
        home = tmp_path / name
        home.mkdir(parents=True, exist_ok=True)
        if rel_backend == "postgresql":
            base: PgBase = request.getfixturevalue("rel_base_pg")
            catalog: dict[str, object] = {"catalog_url": relhelp.pg_copy_of_base(base)}
            artifact_root = base.artifact_root
        else:
            relhelp.copy_catalog(rel_base.catalog_file, home / "catalog.duckdb")
            catalog = {"catalog_path": home / "catalog.duckdb"}
            artifact_root = rel_base.artifact_root
        values: dict[str, object] = dict(
            home=home, **catalog,
            artifact_root=str(artifact_root), inbox=str(home / "inbox"),
            outbox=str(home / "outbox"), quarantine=str(home / "quarantine"))
        values.update(overrides)
        settings = Settings(**values)
        if "://" not in str(settings.inbox):
            Path(settings.inbox).mkdir(parents=True, exist_ok=True)
        return settings

    return make


@pytest.fixture
def home(make_home: Callable[..., object]) -> object:
    return make_home()


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[relhelp.Zygote]:
    z = relhelp.Zygote(tmp_path_factory.mktemp("zygote-logs"))
    try:
        yield z
    finally:
        z.close()


@pytest.fixture
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Redirect Python's temp directory for this test, so stray temp files can be found."""
    import tempfile

    path = tmp_path / "tmpdir"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path
