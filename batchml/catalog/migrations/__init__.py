"""The catalog schema: named, versioned SQL files (``NNNN_name.sql``) applied in order.

Each backend has its dialect's files side by side, with the same versions and names:
``duckdb/`` and ``postgresql/``. A catalog records the versions it has in
``schema_migrations``; opening an older one applies the ones it lacks, all in one transaction
(:meth:`batchml.catalog._db.Database.migrate`, :meth:`batchml.catalog._pg.PgConnections.migrate`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

DIALECTS = ("duckdb", "postgresql")


def migrations(dialect: str = "duckdb") -> list[tuple[int, str, str]]:
    """All shipped migrations of ``dialect`` as (version, name, sql), in version order."""
    if dialect not in DIALECTS:
        raise ValueError(f"No migrations for {dialect!r}; dialects: {', '.join(DIALECTS)}.")
    found = []
    for entry in resources.files(__name__).joinpath(dialect).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


def apply(con: Any) -> list[str]:
    """Apply every DuckDB migration the catalog on connection ``con`` lacks (inside the
    caller's transaction); return their names."""
    applied: list[str] = []
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL)"
    )
    done = {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, name, sql in migrations("duckdb"):
        if version in done:
            continue
        con.execute(sql)
        con.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, datetime.now(UTC)]
        )
        applied.append(f"{version:04d}_{name}")
    return applied


def current_version(con: Any) -> int:
    """The highest migration version recorded on DuckDB connection ``con`` (0 for an empty
    file)."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables"
        " WHERE table_name = 'schema_migrations'").fetchone()
    if not exists or not exists[0]:
        return 0
    row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0) if row else 0
