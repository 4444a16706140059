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


@pytest.fixture
def make_home(rel_base: Base, tmp_path: Path) -> Callable[..., object]:
    """``make_home(name, **settings)`` -> Settings of a fresh private home."""
    from batchml import Settings

    def make(name: str = "home", **overrides: object) -> Settings:
        home = tmp_path / name
        home.mkdir(parents=True, exist_ok=True)
        relhelp.copy_catalog(rel_base.catalog_file, home / "catalog.duckdb")
        values: dict[str, object] = dict(
            home=home, catalog_path=home / "catalog.duckdb",
            artifact_root=str(rel_base.artifact_root), inbox=str(home / "inbox"),
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
