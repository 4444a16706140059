"""Named, versioned migrations: a new file gets all, an older file is upgraded on open."""

from __future__ import annotations

from pathlib import Path

import duckdb

from batchml import Catalog
from batchml.catalog.migrations import migrations


def test_migrations_are_named_and_versioned() -> None:
    found = migrations()
    versions = [v for v, _, _ in found]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert all(name for _, name, _ in found)


def test_new_catalog_records_every_migration(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    assert cat.migrated == [f"{v:04d}_{n}" for v, n, _ in migrations()]
    rows = cat.sql("SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows["version"].tolist() == [v for v, _, _ in migrations()]
    assert Catalog(tmp_path / "c.duckdb").migrated == []  # reopening applies nothing


def test_older_catalog_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    version, name, sql = migrations()[0]
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT"
                " NULL, applied_at TIMESTAMPTZ NOT NULL)")
    con.execute(sql)
    con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [version, name])
    con.execute("INSERT INTO runs (run_id, flow, number, status, started_at) VALUES"
                " ('train/1', 'train', 1, 'completed', now())")
    con.close()

    cat = Catalog(path)
    assert cat.migrated == [f"{v:04d}_{n}" for v, n, _ in migrations()[1:]]
    assert cat.db.schema_version() == migrations()[-1][0]
    # Data written under the old schema survives and shows in the views added later.
    assert cat.sql("SELECT run_id FROM runs_overview")["run_id"].tolist() == ["train/1"]
