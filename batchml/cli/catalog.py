"""``batchml init`` and ``batchml sql``: create the catalog; query it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import CatalogOpt, HomeOpt, clean_errors, err, out, print_frame, settings_from


@clean_errors
def init(home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Create the catalog (or upgrade an older one) and the local folders."""
    settings = settings_from(home, catalog)
    from ..catalog import Catalog

    for folder in (settings.inbox, settings.outbox, settings.quarantine, settings.artifact_root):
        if folder and "://" not in folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
    cat = Catalog.from_settings(settings)
    applied = ", ".join(cat.migrated) or "none (already current)"
    out.print(f"catalog {cat.path} ready; migrations applied: {applied}")
    if cat.backend.published_path != cat.path:
        out.print(f"read-only copy for duckdb sessions: {cat.publish()}")


@clean_errors
def sql(query: Annotated[str | None, typer.Argument(help="SQL to run against the catalog.")
                         ] = None,
        fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
        write: Annotated[bool, typer.Option("--write", help="Allow statements that modify the "
                                            "catalog (default: read-only).")] = False,
        duckdb_init: Annotated[bool, typer.Option(
            "--duckdb-init", help="Instead of running SQL, print the init script for your own "
            "DuckDB session (docs/catalog.md). A DuckDB catalog with an S3 outbox: httpfs, an S3 "
            "secret and the predictions view, for duckdb -readonly PUBLISHED-CATALOG -init FILE. "
            "A PostgreSQL catalog (BATCHML_CATALOG_URL=postgresql://...): the catalog attached "
            "read-only through DuckDB's postgres extension, its tables and views by their plain "
            "names, and the predictions view over a local or S3 outbox, for duckdb -init FILE; "
            "no password is printed (libpq reads PGPASSWORD, ~/.pgpass or PGPASSFILE). With an "
            "S3 outbox it PRINTS YOUR S3 CREDENTIALS to stdout: write it only to a private file "
            "(umask 077), delete it after, never log it.")] = False,
        home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Run SQL against the catalog (read-only unless --write) and print the result."""
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    settings = settings_from(home, catalog)
    if duckdb_init:
        if query is not None:
            raise ValueError("Give either a query or --duckdb-init, not both.")
        from ..catalog.duckdb_init import duckdb_init_sql

        sys.stdout.write(duckdb_init_sql(settings))  # plain text: no rich markup or wrapping
        return
    if query is None:
        raise ValueError("Give a query (or --duckdb-init).")
    from ..catalog import Catalog

    cat = Catalog.from_settings(settings)
    views = {}
    if "predictions" in query.lower() and str(settings.outbox).startswith("s3://"):
        from ..scoring import Outbox

        dataset = Outbox(str(settings.outbox)).dataset(endpoint_url=settings.s3_endpoint_url,
                                                       region=settings.s3_region)
        if dataset is not None:
            views["predictions"] = dataset
    try:
        frame = cat.sql(query, write=write, views=views)
    except Exception as exc:
        # the database's own complaint about the query (DuckDB's or PostgreSQL's)
        if type(exc).__module__.split(".")[0] in ("duckdb", "_duckdb", "psycopg"):
            err.print(f"[bold red]SQL error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        raise
    print_frame(frame, fmt)
