"""``batchml init``, ``batchml sql`` and ``batchml catalog migrate``: create the catalog, query
it, move it to another backend."""

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


catalog_app = typer.Typer(help="Work on the catalog as a whole: move it to another backend.",
                          no_args_is_help=True)


@clean_errors
def migrate(to: Annotated[str, typer.Option(
                "--to", show_default=False,
                help="The new, empty catalog to copy into: postgresql://USER:PASSWORD@HOST:PORT/DB "
                "(an empty database; batchml creates the tables; the password is never "
                "printed), or a DuckDB file.")],
            home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Copy the catalog (--home or --catalog) into a new, empty one, such as PostgreSQL.

    Everything moves in one transaction: runs with params, metrics and tag history, artifacts,
    models, the file ledger and its batches; new run numbers and tags continue after the
    highest copied. Stop the workers first: rows they write meanwhile are not copied."""
    import time
    from urllib.parse import unquote, urlsplit

    from rich.table import Table

    from ..catalog import Catalog
    from ..catalog._pg import display_url
    from ..catalog.transfer import migrate_catalog
    from ..errors import ConfigError

    source_settings = (settings_from(home, None, catalog_url=catalog) if catalog is not None
                       else settings_from(home))  # a path given wins over BATCHML_CATALOG_URL
    where = source_settings.catalog_target
    if isinstance(where, Path) and not where.exists():
        raise ConfigError(f"No catalog at {where} to migrate.",
                          hint="Name it with --catalog PATH (or --home).")
    password = urlsplit(to).password if "://" in to else None
    target_settings = settings_from(home, None, catalog_url=to,
                                    catalog_password=unquote(password) if password else None)
    source = Catalog.from_settings(source_settings, with_store=False)
    target = Catalog.from_settings(target_settings, with_store=False)
    shown = display_url(str(target.path))
    try:
        started = time.perf_counter()
        rows = migrate_catalog(source, target)
        seconds = time.perf_counter() - started
    finally:
        source.close()
        target.close()
    table = Table(title=f"{source.path} -> {shown}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in rows.items():
        table.add_row(name, f"{count:,}")
    total = sum(rows.values())
    table.add_row("total", f"{total:,}", style="bold")
    out.print(table, highlight=False)
    secret = (", a password in BATCHML_CATALOG_PASSWORD or ~/.pgpass" if "://" in shown
              else "")
    out.print(f"migrated {total:,} rows in {seconds:.2f} s ({total / max(seconds, 1e-9):,.0f} "
              f"rows/s). Point every host at the new catalog (BATCHML_CATALOG_URL={shown}"
              f"{secret}) and start the workers.", highlight=False)
