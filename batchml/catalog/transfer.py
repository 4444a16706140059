"""Moving a whole catalog to another backend (``batchml catalog migrate``): a team's DuckDB
file onto a PostgreSQL server, everything intact.

No SQL here: the source backend dumps its tables as Arrow
(:meth:`~batchml.catalog.backend.CatalogBackend.dump_tables`), the target loads them in one
transaction into an empty catalog and sets what the rows imply (PostgreSQL's run counters,
the tag sequence) (:meth:`~batchml.catalog.backend.CatalogBackend.load_tables`); this module
checks the two catalogs fit, calls both and checks the counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CatalogError

if TYPE_CHECKING:
    from .model import Catalog

TABLES: dict[str, tuple[str, ...]] = {
    "runs": ("flow", "number"),
    "metrics": ("run_id", "key", "step"),
    "tags": ("tag_id",),
    "artifacts": ("run_id", "name"),
    "models": ("run_id", "name"),
    "files": ("file_id",),
    "prediction_batches": ("batch_id",),
    "batch_files": ("batch_id", "file_id"),
    "registered_models": ("name",),
    "model_versions": ("name", "version"),
    "model_aliases": ("name", "alias"),
    "alias_moves": ("name", "alias", "seq"),
    "label_files": ("file_id",),
    "label_matches": ("file_id", "model_run_id", "role", "day"),
    "label_score_bins": ("file_id", "model_run_id", "role", "day", "class", "bin"),
    "shadow_comparisons": ("batch_id", "file_id"),
    "shadow_bins": ("batch_id", "file_id", "bin"),
    "backfills": ("backfill_id",),
    "backfill_files": ("backfill_id", "file_id"),
    "batch_drift": ("batch_id", "feature", "metric"),
}
"""The tables a catalog transfer moves, in load order, each with the columns that identify a
row (a dump lists rows in that order). Not moved: ``schema_migrations`` (each catalog records
its own), DuckDB's ``publication`` (about its read-only copy) and PostgreSQL's ``run_numbers``
(set from ``runs`` when loading)."""


def migrate_catalog(source: Catalog, target: Catalog) -> dict[str, int]:
    """Copy every row of ``source`` into the empty catalog ``target`` (another backend, usually
    PostgreSQL); return the rows per table, as counted in the target.

    Both must be at the same schema version. The target loads everything in one transaction
    and refuses when it holds rows already (nothing changes then). Rows written to the source
    while it is copied are not copied: stop the workers that write it first.
    """
    if str(source.path) == str(target.path):
        raise CatalogError(f"The source and the target are the same catalog ({source.path}).",
                           hint="Give the new catalog's URL with --to.")
    check_same_schema(source, target)
    tables = source.backend.dump_tables()
    expected = {name: table.num_rows for name, table in tables.items()}
    loaded = target.backend.load_tables(tables)
    differ = {name: (rows, loaded.get(name)) for name, rows in expected.items()
              if loaded.get(name) != rows}
    if differ:
        said = ", ".join(f"{name}: {want} read, {got} loaded"
                         for name, (want, got) in differ.items())
        raise CatalogError(
            f"The migration to {target.path} committed but the row counts differ ({said}).",
            hint="Do not use the target: drop it, create it empty again and migrate once more.")
    return loaded


def check_same_schema(source: Catalog, target: Catalog) -> None:
    """Raise :class:`~batchml.errors.CatalogError` unless both catalogs are at one schema
    version, saying which one to upgrade."""
    have, want = source.schema_version(), target.schema_version()
    if have == want:
        return
    from .migrations import migrations

    behind, newer = (target, have) if want < have else (source, want)
    which = "target" if behind is target else "source"
    known = migrations()[-1][0]
    how = (f"open it once with `batchml init --catalog {behind.path}`" if newer <= known else
           f"this batchml knows schema versions up to {known}: install the batchml that wrote "
           f"version {newer}, then open the {which} once with `batchml init --catalog "
           f"{behind.path}`")
    raise CatalogError(
        f"The source catalog {source.path} is at schema version {have} and the target "
        f"{target.path} at {want}; a migration needs both at the same version.",
        hint=f"Upgrade the {which} to version {newer}: {how}.")


# --- the rules both backends' load_tables follow ----------------------------------------------


def load_order(tables: Mapping[str, Any]) -> list[str]:
    """The names of ``tables`` in load order; a name that is not a catalog table is an error."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise CatalogError(f"Not catalog tables: {', '.join(unknown)}; nothing was loaded.",
                           hint=f"A catalog has {', '.join(TABLES)}.")
    return [name for name in TABLES if name in tables]


def refuse_rows(path: Path | str, held: Sequence[str]) -> None:
    """Raise when catalog tables ``held`` (of the catalog at ``path``) hold rows already."""
    if held:
        raise CatalogError(
            f"The catalog {path} is not empty: {', '.join(held)} "
            f"{'holds' if len(held) == 1 else 'hold'} rows already; nothing was loaded.",
            hint="Migrate into a new, empty catalog (for PostgreSQL a new database: "
                 "createdb NAME), so no run, tag or ledger row is mixed with another's.")


def check_columns(path: Path | str, table: str, given: Iterable[str],
                  have: Iterable[str]) -> None:
    """Raise unless the columns ``given`` for ``table`` are exactly the ones the catalog at
    ``path`` has (``have``), in any order."""
    given, have = list(given), list(have)
    extra = [c for c in given if c not in have]
    missing = [c for c in have if c not in given]
    if extra or missing:
        said = "; ".join(part for part in (
            f"not in {path}: {', '.join(extra)}" if extra else "",
            f"missing: {', '.join(missing)}" if missing else "") if part)
        raise CatalogError(f"The rows for table {table} do not fit its columns ({said}); "
                           "nothing was loaded.",
                           hint="Migrate between catalogs at the same schema version "
                                "(open both once with `batchml init`).")


def count_mismatch(path: Path | str, table: str, given: int, counted: int) -> None:
    """Raise when ``table`` of the catalog at ``path`` counts other than the ``given`` rows."""
    if given != counted:
        raise CatalogError(f"Loading table {table} into {path} gave {counted} rows, not the "
                           f"{given} given; nothing was loaded.")
