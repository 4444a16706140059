"""The ``batchml`` command line: each command opens the catalog, calls one library function and
prints the result with rich. Library errors become one clear line on stderr and exit code 1."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .errors import BatchMLError
from .settings import Settings

app = typer.Typer(
    help="batchml: train, tag, and score every file that lands, exactly once, queryable in SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(help="Inspect one run.", no_args_is_help=True)
tag_app = typer.Typer(help="Add or remove tags on runs (history is kept).", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(tag_app, name="tag")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[Path | None, typer.Option("--home", help="batchml home (BATCHML_HOME).",
                                              envvar="BATCHML_HOME", show_envvar=False)]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Catalog file "
                                                 "(BATCHML_CATALOG_PATH).", show_envvar=False)]


def settings_from(home: Path | None = None, catalog: Path | None = None, **extra: Any) -> Settings:
    """Resolve settings at the entry point: explicit options win over the environment."""
    kwargs: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if home is not None:
        kwargs["home"] = home
    if catalog is not None:
        kwargs["catalog_path"] = catalog
    return Settings(**kwargs)


def open_catalog(home: Path | None, catalog: Path | None) -> Any:
    from .catalog import Catalog

    return Catalog.from_settings(settings_from(home, catalog))


def clean_errors(fn: F) -> F:
    """Turn batchml errors into one line on stderr and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BatchMLError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except (ValueError, FileNotFoundError) as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_frame(frame: Any, fmt: str = "table", title: str | None = None) -> None:
    """Print a DataFrame as a rich table, CSV or JSON lines."""
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
        return
    if fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso", lines=True))
        sys.stdout.write("\n")
        return
    table = Table(title=title, show_lines=False)
    for i, col in enumerate(frame.columns):
        table.add_column(str(col), overflow="fold", no_wrap=i == 0)
    for row in frame.itertuples(index=False):
        table.add_row(*("" if _isnull(v) else _fmt(v) for v in row))
    out.print(table)


def _isnull(v: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v)) if not isinstance(v, list | dict | tuple) else False
    except (TypeError, ValueError):
        return False


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# --- commands --------------------------------------------------------------------------------


@app.command()
@clean_errors
def init(home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Create the catalog (or upgrade an older one) and the local folders."""
    settings = settings_from(home, catalog)
    from .catalog import Catalog

    for folder in (settings.inbox, settings.outbox, settings.quarantine, settings.artifact_root):
        if folder and "://" not in folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
    cat = Catalog.from_settings(settings)
    applied = ", ".join(cat.migrated) or "none (already current)"
    out.print(f"catalog {cat.path} ready; migrations applied: {applied}")


@app.command()
@clean_errors
def runs(
    flow: Annotated[str | None, typer.Option(help="Only runs of this flow.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only runs carrying this tag now.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    home: HomeOpt = None,
    catalog: CatalogOpt = None,
) -> None:
    """List runs, newest first, with key metrics and current tags."""
    cat = open_catalog(home, catalog)
    where, args = [], []
    if flow:
        where.append("flow = ?")
        args.append(flow)
    if tag:
        where.append("list_contains(string_split(tags, ', '), ?)")
        args.append(tag)
    sql = "SELECT run_id, status, started_at, seconds, model, accuracy, roc_auc, f1, tags" \
          " FROM runs_overview"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY started_at DESC LIMIT {int(limit)}"
    print_frame(cat.sql(sql, args), fmt, title="runs")


@run_app.command("show")
@clean_errors
def run_show(run_id: Annotated[str, typer.Argument(help="Run id such as train/3.")],
             home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Show one run: status, params, metrics, tags, artifacts and models."""
    run = open_catalog(home, catalog).run(run_id)
    out.print(f"[bold]{run.id}[/]  {run.status}  started {run.started_at:%Y-%m-%d %H:%M:%S}"
              + (f"  ended {run.ended_at:%H:%M:%S}" if run.ended_at else ""))
    if run.error:
        out.print(f"[red]error:[/] {run.error}")
    out.print(f"tags: {', '.join(sorted(run.tags)) or '-'}")
    if run.prefect_flow_run_id:
        out.print(f"prefect flow run: {run.prefect_flow_run_id}")
    if run.data_fingerprint:
        out.print(f"data fingerprint: {run.data_fingerprint}")
    import pandas as pd

    if run.params:
        print_frame(pd.DataFrame({"param": list(run.params),
                                  "value": [json.dumps(v) for v in run.params.values()]}),
                    title="params")
    if run.metrics:
        print_frame(pd.DataFrame(sorted(run.metrics.items()), columns=["metric", "value"]),
                    title="metrics")
    if run.models:
        print_frame(pd.DataFrame([{"model": n, "flavor": m["flavor"], "primary": m["is_primary"],
                                   "inputs": ", ".join(c["name"] for c in
                                                       m["signature"].get("inputs", []))}
                                  for n, m in run.models.items()]), title="models")
    if run.artifacts:
        print_frame(pd.DataFrame([{"name": n, "kind": a["kind"], "bytes": a["bytes"],
                                   "sha256": a["sha256"][:12], "uri": a["uri"]}
                                  for n, a in sorted(run.artifacts.items())]), title="artifacts")


@tag_app.command("add")
@clean_errors
def tag_add(run_id: Annotated[str, typer.Argument(help="Run id such as train/3.")],
            tag: Annotated[str, typer.Argument(help="Tag to add.")],
            note: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
            home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Tag a run. Idempotent: adding a tag the run carries changes nothing."""
    added = open_catalog(home, catalog).run(run_id).add_tag(tag, note=note)
    out.print(f"{run_id}: {'tagged' if added else 'already tagged'} {tag}")


@tag_app.command("rm")
@clean_errors
def tag_rm(run_id: Annotated[str, typer.Argument(help="Run id such as train/3.")],
           tag: Annotated[str, typer.Argument(help="Tag to remove.")],
           home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Remove a tag from a run; its history stays in tag_history."""
    removed = open_catalog(home, catalog).run(run_id).remove_tag(tag)
    out.print(f"{run_id}: {'removed' if removed else 'did not carry'} {tag}")


@app.command()
@clean_errors
def sql(query: Annotated[str, typer.Argument(help="SQL to run against the catalog.")],
        fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
        write: Annotated[bool, typer.Option("--write", help="Allow statements that modify the "
                                            "catalog (default: read-only).")] = False,
        home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Run SQL against the catalog (read-only unless --write) and print the result."""
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    cat = open_catalog(home, catalog)
    try:
        frame = cat.sql(query, write=write)
    except Exception as exc:
        import duckdb

        if isinstance(exc, duckdb.Error):
            err.print(f"[bold red]SQL error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        raise
    print_frame(frame, fmt)


@app.command()
@clean_errors
def doctor(home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Check settings, the catalog, the artifact store and the Prefect API; exit 1 on a failure."""
    from .diagnostics import run_checks

    settings = settings_from(home, catalog)
    checks = run_checks(settings)
    table = Table(title="batchml doctor")
    for col in ("check", "ok", "detail"):
        table.add_column(col, overflow="fold")
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()
