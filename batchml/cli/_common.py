"""What the commands of ``batchml`` share: the rich consoles, the common options, settings and
catalog from those options, the error wrapper and the table printer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import BatchMLError
from ..settings import Settings

# Piped output (CI logs, files) gets a wide table rather than rich's 80-column default.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[Path | None, typer.Option("--home", help="batchml home (BATCHML_HOME).",
                                              envvar="BATCHML_HOME", show_envvar=False)]
SourceArg = Annotated[str | None, typer.Argument(
    help="A directory, s3://bucket/prefix or sqs://queue-url (default: BATCHML_INBOX).")]
CatalogOpt = Annotated[str | None, typer.Option(
    "--catalog", help="Catalog: a DuckDB file (BATCHML_CATALOG_PATH) or a URL such as "
    "postgresql://user@host/db (BATCHML_CATALOG_URL).", show_envvar=False)]


def settings_from(home: Path | None = None, catalog: str | Path | None = None,
                  **extra: Any) -> Settings:
    """Resolve settings at the entry point: explicit options win over the environment."""
    kwargs: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if home is not None:
        kwargs["home"] = home
    if catalog is not None:
        if "://" in str(catalog):
            kwargs["catalog_url"] = str(catalog)
        else:
            kwargs["catalog_path"] = Path(catalog)
    return Settings(**kwargs)


def open_catalog(home: Path | None, catalog: str | None) -> Any:
    from ..catalog import Catalog

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
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a third-party failure: one line, traceback on request
            import os

            if os.environ.get("BATCHML_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc} "
                      "(set BATCHML_DEBUG=1 for the traceback)", markup=True, highlight=False)
            raise typer.Exit(1) from None

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
    for col in frame.columns:
        table.add_column(Text(str(col)), overflow="fold", min_width=min(len(str(col)), 12))
    for row in frame.itertuples(index=False):
        # cells are data, not rich markup: "[Errno 2]" or "a [/b]" print as written
        table.add_row(*(Text("" if _isnull(v) else format_cell(v)) for v in row))
    out.print(table)


def _isnull(v: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v)) if not isinstance(v, list | dict | tuple) else False
    except (TypeError, ValueError):
        return False


def format_cell(v: Any) -> str:
    """One table cell: floats to four significant digits, the rest as ``str``."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
