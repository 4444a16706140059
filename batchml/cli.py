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

# Piped output (CI logs, files) gets a wide table rather than rich's 80-column default.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[Path | None, typer.Option("--home", help="batchml home (BATCHML_HOME).",
                                              envvar="BATCHML_HOME", show_envvar=False)]
SourceArg = Annotated[str | None, typer.Argument(
    help="A directory, s3://bucket/prefix or sqs://queue-url (default: BATCHML_INBOX).")]
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
        table.add_column(str(col), overflow="fold", min_width=min(len(str(col)), 12))
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
    out.print(f"read-only copy for duckdb sessions: {cat.publish()}")


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
    print_frame(cat.runs_overview(flow, tag=tag, limit=limit), fmt, title="runs")


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
    if "gate.md" in run.artifacts:  # the gate report: threshold, every check, smoke examples
        from rich.markdown import Markdown

        out.print(Markdown(run.fetch_artifact("gate.md").decode()))


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
def sql(query: Annotated[str | None, typer.Argument(help="SQL to run against the catalog.")
                         ] = None,
        fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
        write: Annotated[bool, typer.Option("--write", help="Allow statements that modify the "
                                            "catalog (default: read-only).")] = False,
        duckdb_init: Annotated[bool, typer.Option(
            "--duckdb-init", help="Instead of running SQL, print the init script for your own "
            "DuckDB session on an S3 outbox (httpfs, an S3 secret, the predictions view), for "
            "duckdb -readonly PUBLISHED-CATALOG -init FILE (docs/catalog.md). It PRINTS YOUR S3 "
            "CREDENTIALS to stdout: "
            "write it only to a private file (umask 077), delete it after, never log it.")] = False,
        home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Run SQL against the catalog (read-only unless --write) and print the result."""
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    settings = settings_from(home, catalog)
    if duckdb_init:
        if query is not None:
            raise ValueError("Give either a query or --duckdb-init, not both.")
        from .catalog.duckdb_init import duckdb_init_sql

        sys.stdout.write(duckdb_init_sql(settings))  # plain text: no rich markup or wrapping
        return
    if query is None:
        raise ValueError("Give a query (or --duckdb-init).")
    from .catalog import Catalog

    cat = Catalog.from_settings(settings)
    views = {}
    if "predictions" in query.lower() and str(settings.outbox).startswith("s3://"):
        from .scoring import Outbox

        dataset = Outbox(str(settings.outbox)).dataset(endpoint_url=settings.s3_endpoint_url,
                                                       region=settings.s3_region)
        if dataset is not None:
            views["predictions"] = dataset
    try:
        frame = cat.sql(query, write=write, views=views)
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


def _prefect_env(settings: Settings) -> None:
    """Keep Prefect's local state under the batchml home unless the user chose otherwise."""
    import os

    home = Path(os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The first start of the temporary server migrates its database: allow for a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
@clean_errors
def train(
    train_uri: Annotated[str, typer.Option("--train", help="Training parquet (path or s3://).")],
    valid_uri: Annotated[str, typer.Option("--valid", help="Validation parquet.")],
    text_column: Annotated[str | None, typer.Option(help="Text column (text models).")] = None,
    feature_columns: Annotated[str | None, typer.Option(
        help="Comma-separated feature columns (tabular models).")] = None,
    label: Annotated[str, typer.Option(help="Label column.")] = "labels",
    candidates: Annotated[str | None, typer.Option(
        help="Comma-separated candidates (default: all that fit the data).")] = None,
    metric: Annotated[str, typer.Option(help="Primary metric for the gate.")] = "roc_auc",
    margin: Annotated[float, typer.Option(help="How much the winner must beat the baseline "
                                          "by.")] = 0.01,
    smoke: Annotated[str | None, typer.Option(
        "--smoke", help="Smoke examples the winner must get right: parquet or .csv (path or "
        "s3://) with the input column(s) and the label column (default: BATCHML_SMOKE_PATH; "
        "none: only the checks derived from the data).")] = None,
    prefect: Annotated[bool, typer.Option(help="Run as a Prefect flow (visible in Prefect); "
                                          "--no-prefect runs the same steps directly.")] = True,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Train a baseline and candidates, evaluate, check and tag a deployment candidate."""
    settings = settings_from(home, catalog)
    if text_column is None and feature_columns is None:
        text_column = "review"
    kwargs: dict[str, Any] = dict(
        train_uri=train_uri, valid_uri=valid_uri, label=label, text_column=text_column,
        feature_columns=_split(feature_columns), candidates=_split(candidates),
        primary_metric=metric, baseline_margin=margin,
        smoke_uri=smoke or settings.smoke_path)
    if prefect:
        _prefect_env(settings)
        from .flows.train import train_flow

        result = train_flow(**kwargs, settings=settings)
        run_id, tagged, reasons = result["run_id"], result["tagged"], result["reasons"]
    else:
        from . import training as tr
        from .catalog import Catalog

        s3 = None
        if any((u or "").startswith("s3://") for u in (train_uri, valid_uri,
                                                       kwargs["smoke_uri"])):
            from .store import s3_client

            s3 = s3_client(settings.s3_endpoint_url, settings.s3_region)
        from .limits import Limits

        outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(**kwargs), s3=s3,
                           limits=Limits.from_settings(settings))
        run_id, tagged = outcome.run.id, outcome.decision.tagged
        reasons = outcome.decision.reasons
    cat = open_catalog(home, catalog)
    metrics = cat.run(run_id).metrics
    import pandas as pd

    rows = [{"candidate": name, **{k: metrics.get(f"{name}.{k}") for k in
                                   ("roc_auc", "accuracy", "balanced_accuracy", "f1",
                                    "threshold", "log_loss", "seconds")}}
            for name in cat.run(run_id).params.get("candidates", [])]
    print_frame(pd.DataFrame(rows), title=f"{run_id} candidates")
    out.print(f"[bold]{run_id}[/]: {'[green]tagged ' + settings.model_tag + '[/]' if tagged else '[yellow]not tagged[/]'}"
              f" - {'; '.join(reasons)}")


@app.command()
@clean_errors
def compare(
    flow: Annotated[str, typer.Option(help="Flow whose runs to compare.")] = "train",
    metric: Annotated[str, typer.Option(help="Metric to sort by (descending).")] = "roc_auc",
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 20,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Compare runs side by side: the winner's metrics of each run, best first."""
    cat = open_catalog(home, catalog)
    frame = cat.search_runs(flow, order_by=f"metrics.{metric} DESC")
    cols = ["run_id", "status"] + [c for c in frame.columns if c.count(".") == 1
                                    and c.startswith("metrics.") and "smoke" not in c] + ["tags"]
    print_frame(frame[cols].head(limit).rename(columns=lambda c: c.removeprefix("metrics.")),
                fmt, title=f"{flow} runs by {metric}")


def _worker(settings: Settings, source: Any, run_id: str | None, tag: str | None,
            output: Path | None = None) -> Any:
    from .catalog import Catalog
    from .scoring import Outbox
    from .worker import Worker

    outbox = None
    if output is not None:
        outbox = Outbox(str(output), s3=getattr(source, "client", None))
    return Worker(Catalog.from_settings(settings), source, settings, run_id=run_id, tag=tag,
                  outbox=outbox)


def _report(reports: list[Any]) -> None:
    # a plain rich table: building a DataFrame would import pandas (~0.7 s of cold start)
    columns = ["file", "status", "rows", "positives", "output", "error"]
    rows = [r for rep in reports for r in rep.table()]
    if rows:
        table = Table(title="files", show_lines=False)
        for col in columns:
            table.add_column(col, overflow="fold", min_width=min(len(col), 12))
        for row in rows:
            table.add_row(*("" if row.get(c) is None else _fmt(row[c]) for c in columns))
        out.print(table)


@app.command()
@clean_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Parquet files, directories or s3:// "
                                                "URIs to score.")],
    run: Annotated[str | None, typer.Option("--run", help="Score with this run's model.")] = None,
    tag: Annotated[str | None, typer.Option(help="Score with the latest run carrying this "
                                            "tag (default: BATCHML_MODEL_TAG).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write predictions here instead of the "
                                                "outbox.")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Score files now (each file version once; `batchml reprocess` to score again)."""
    from rich.progress import Progress

    from .sources import DirectorySource, ListSource
    from .store import s3_client

    settings = settings_from(home, catalog)
    uris: list[str] = []
    for item in inputs:
        if "://" not in item and Path(item).is_dir():
            uris += [r.uri for r in DirectorySource(item, use_events=False, settle_s=0).poll()]
        else:
            uris.append(item)
    client = s3_client(settings.s3_endpoint_url, settings.s3_region) \
        if any(u.startswith("s3://") for u in uris) else None
    source = ListSource(uris, client=client, max_file_bytes=settings.max_file_bytes)
    worker = _worker(settings, source, run, tag, output)
    refs = source.poll()
    worker.ledger.discover(refs)
    ids = [r.file_id for r in refs]
    reports = []
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("scoring", total=len(ids))
        while True:
            rep = worker.run_batch(limit=10, file_ids=ids)
            if rep.error and not rep.outcomes:
                from .errors import ModelNotFound

                raise ModelNotFound(rep.error)
            if not rep.outcomes:
                break
            reports.append(rep)
            progress.advance(task, len(rep.outcomes))
    _report(reports)
    done = {o.file_id for rep in reports for o in rep.outcomes}
    skipped = [r.uri for r in refs if r.file_id not in done]
    if skipped:
        out.print(f"{len(skipped)} file(s) were already processed; see `batchml files`, or "
                  "`batchml reprocess URI` to score again.")
    if any(o.status != "scored" for rep in reports for o in rep.outcomes):
        raise typer.Exit(1)


@app.command()
@clean_errors
def watch(
    source: SourceArg = None,
    run: Annotated[str | None, typer.Option("--run", help="Score with this run's model.")] = None,
    tag: Annotated[str | None, typer.Option(help="Model tag (default BATCHML_MODEL_TAG).")]
    = None,
    once: Annotated[bool, typer.Option(help="Process what is there now, then exit.")] = False,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Watch a source and score every file that lands, exactly once (Ctrl-C stops cleanly)."""
    import signal
    import threading

    from .worker import Worker

    settings = settings_from(home, catalog)
    worker = Worker.for_source(settings, source, run_id=run, tag=tag)
    src = worker.source
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def show(rep: Any) -> None:
        for o in rep.outcomes:
            colour = "green" if o.status == "scored" else "red"
            out.print(f"[{colour}]{o.status}[/] {o.source_uri} rows={o.rows} -> "
                      f"{o.output_uri or o.error}")
        if rep.error and not rep.outcomes:
            err.print(f"[yellow]waiting:[/] {rep.error}")

    if worker.scorer is not None and not once:
        worker.scorer.wait_ready()  # "watching" once files can be scored
    out.print(f"watching {src.uri} (Ctrl-C to stop)")
    try:
        if once:
            worker.discover()
            # a file given back after killing the scorer process is tried again at once
            while (rep := worker.run_batch()).outcomes or rep.retried:
                show(rep)
            if rep.error:
                show(rep)
        else:
            worker.run(stop, on_batch=show)
    except KeyboardInterrupt:
        out.print("stopped; claims released")
    finally:
        src.close()
        worker.close()


@app.command()
@clean_errors
def files(
    state: Annotated[str | None, typer.Option(help="Only this state: discovered, claimed, "
                                              "scored, quarantined or failed.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many files.")] = 100,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """List input files from the ledger with their state, rows, output and error."""
    from .catalog import Ledger

    frame = Ledger(open_catalog(home, catalog)).files(state)
    print_frame(frame[["source_uri", "state", "attempts", "rows", "model_run_id", "output_uri",
                       "error"]].head(limit), fmt, title="files")


@app.command()
@clean_errors
def reprocess(
    uri: Annotated[str | None, typer.Argument(help="Input file URI to score again.")] = None,
    model_run: Annotated[str | None, typer.Option(help="Score again every file this model run "
                                                  "scored.")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Send files back to pending on purpose; the next watch/predict scores them again."""
    from .catalog import Ledger

    if uri and "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    ids = Ledger(open_catalog(home, catalog)).requeue(uri=uri, model_run_id=model_run)
    out.print(f"{len(ids)} file(s) queued for reprocessing")
    if not ids:
        raise typer.Exit(1)


@app.command()
@clean_errors
def serve(home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Run the service: watch the inbox, score arrivals, train on the nightly cron.

    Starts its own Prefect server on 127.0.0.1 unless PREFECT_API_URL is set. Ctrl-C or SIGTERM
    finishes the current batch and stops cleanly.
    """
    import logging

    from .service import serve as run_service

    settings = settings_from(home, catalog)
    handler = logging.StreamHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(fmt, rename_fields={"asctime": "time",
                                                               "levelname": "level"}))
    else:
        handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out.print(f"batchml serve: inbox {settings.inbox} -> outbox {settings.outbox}")
    run_service(settings)
    out.print("stopped cleanly")


@app.command()
@clean_errors
def status(
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Is the service up? Files per state, last training run, current model. Exit 1 if down."""
    from .service import service_state
    from .status import collect_status

    settings = settings_from(home, catalog)
    info = collect_status(open_catalog(home, catalog), settings, service_state(settings))
    if fmt == "json":
        sys.stdout.write(json.dumps(info, default=str) + "\n")
    else:
        svc = info["service"]
        out.print(f"service: {'[green]up[/]' if svc.get('up') else '[red]down[/]'}"
                  + (f" (pid {svc.get('pid')}, {svc.get('files', 0)} files in "
                     f"{svc.get('batches', 0)} batches)" if svc.get("pid") else "")
                  + (f"; scorer process {svc['scorer_pid']}, died {svc['scorer_deaths']} "
                     "time(s)" if svc.get("scorer_pid") else ""))
        out.print("files: " + ", ".join(f"{k} {v}" for k, v in info["files"].items()))
        out.print(f"last training run: {info['last_training_run'] or '-'}")
        out.print(f"current model: {info['current_model'] or '-'}")
        pub = info["published_catalog"]
        out.print(f"published copy: {pub['path']} ("
                  + ("not yet published" if pub["age_s"] is None
                     else f"{pub['age_s']:.1f} s old") + ")")
        if info["recent_errors"]:
            out.print(f"recent errors: {info['recent_errors']}")
    if not info["service"].get("up"):
        raise typer.Exit(1)


@app.command()
@clean_errors
def bridge(
    source: SourceArg = None,
    once: Annotated[bool, typer.Option(help="Emit for what is there now, then exit.")] = False,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Server mode: emit a batchml.file.landed Prefect event for each new file (needs
    PREFECT_API_URL); a deployment trigger scores each one."""
    import os
    import time

    if not os.environ.get("PREFECT_API_URL"):
        from .errors import ConfigError

        raise ConfigError("bridge needs a Prefect server: set PREFECT_API_URL.",
                          hint="Or use `batchml serve`, which scores without events.")
    from .flows.bridge import bridge_once
    from .worker import Worker

    worker = Worker.for_source(settings_from(home, catalog), source)
    src = worker.source
    try:
        while True:
            n = bridge_once(worker)
            if n:
                out.print(f"emitted {n} batchml.file.landed event(s)")
            if once:
                break
            src.wait(1.0)
            time.sleep(0)
    except KeyboardInterrupt:
        pass
    finally:
        src.close()


@app.command("demo-data")
@clean_errors
def demo_data(
    directory: Annotated[Path, typer.Argument(help="Where to write the synthetic data.")],
    n_train: Annotated[int, typer.Option(help="Training rows.")] = 4000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a synthetic (made-up, labelled) review dataset for demos and benchmarks."""
    from .synthetic import demo_dataset

    paths = demo_dataset(directory, n_train=n_train, seed=seed)
    for name, path in paths.items():
        out.print(f"{name}: {path}")


def main() -> None:
    """Console-script entry point."""
    app()
