"""``batchml predict``, ``watch``, ``files`` and ``reprocess``: score files and look at the
ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._common import (
    CatalogOpt,
    HomeOpt,
    SourceArg,
    clean_errors,
    err,
    format_cell,
    open_catalog,
    out,
    print_frame,
    settings_from,
)


def _report(reports: list[Any]) -> None:
    # a plain rich table: building a DataFrame would import pandas (~0.7 s of cold start)
    columns = ["file", "status", "rows", "positives", "output", "error"]
    rows = [r for rep in reports for r in rep.table()]
    if rows:
        table = Table(title="files", show_lines=False)
        for col in columns:
            table.add_column(col, overflow="fold", min_width=min(len(col), 12))
        for row in rows:
            table.add_row(*("" if row.get(c) is None else format_cell(row[c]) for c in columns))
        out.print(table)


@clean_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Parquet files, directories or s3:// "
                                                "URIs to score.")],
    run: Annotated[str | None, typer.Option("--run", help="Score with this run's model.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Score with this model: NAME@ALIAS (followed as the alias moves), "
                        "NAME/VERSION, a run id or tag:NAME (default BATCHML_MODEL).")] = None,
    tag: Annotated[str | None, typer.Option(help="Score with the latest run carrying this "
                                            "tag (default: BATCHML_MODEL_TAG).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write predictions here instead of the "
                                                "outbox.")] = None,
    explain: Annotated[int, typer.Option(
        "--explain", min=0, metavar="K",
        help="Add the column 'explanation': per row the K features with the largest "
             "contributions to the model's decision (linear models only); short for "
             "--param explain=K.")] = 0,
    param: Annotated[list[str] | None, typer.Option(
        "--param", metavar="NAME=VALUE",
        help="An inference parameter for this batch (repeatable), e.g. --param threshold=0.3; "
             "over BATCHML_PARAMS and the model's defaults. `batchml models show` lists a "
             "model's parameters.")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Score files now (each file version once; `batchml reprocess` to score again)."""
    from rich.progress import Progress

    from ..params import parse_assignments
    from ..predict import predict_files

    params = parse_assignments(param or [], layer="batch (--param)")

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("scoring", total=None)
        result = predict_files(
            settings_from(home, catalog), inputs, run_id=run, tag=tag, output=output,
            model=model, explain=explain, params=params,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    _report(result.reports)
    if result.skipped:
        out.print(f"{len(result.skipped)} file(s) were already processed; see `batchml files`, "
                  "or `batchml reprocess URI` to score again.")
    if not result.all_scored:
        raise typer.Exit(1)


@clean_errors
def watch(
    source: SourceArg = None,
    run: Annotated[str | None, typer.Option("--run", help="Score with this run's model.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Score with this model: NAME@ALIAS (followed as the alias moves), "
                        "NAME/VERSION, a run id or tag:NAME (default BATCHML_MODEL).")] = None,
    tag: Annotated[str | None, typer.Option(help="Model tag (default BATCHML_MODEL_TAG).")]
    = None,
    once: Annotated[bool, typer.Option(help="Process what is there now, then exit.")] = False,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Watch a source and score every file that lands, exactly once (Ctrl-C stops cleanly)."""
    import signal
    import threading

    from ..worker import Worker

    settings = settings_from(home, catalog)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = Worker.for_source(settings, source, run_id=run, tag=tag, model=model,
                               wait=None if once else stop)
    src = worker.source
    try:  # the inference parameters (BATCHML_PARAMS) against the model: refused at start
        worker.check_params()
    except BaseException:
        src.close()
        worker.close()
        raise

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
            worker.run_once(on_batch=show)
        else:
            worker.run(stop, on_batch=show)
    except KeyboardInterrupt:
        out.print("stopped; claims released")
    finally:
        src.close()
        worker.close()


@clean_errors
def files(
    state: Annotated[str | None, typer.Option(help="Only this state: discovered, claimed, "
                                              "scored, quarantined or failed.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many files.")] = 100,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """List input files from the ledger with their state, rows, output and error."""
    from ..catalog import Ledger

    frame = Ledger(open_catalog(home, catalog)).files(state)
    print_frame(frame[["source_uri", "state", "attempts", "rows", "model_run_id", "output_uri",
                       "error"]].head(limit), fmt, title="files")


@clean_errors
def reprocess(
    uri: Annotated[str | None, typer.Argument(help="Input file URI to score again.")] = None,
    model_run: Annotated[str | None, typer.Option(help="Score again every file this model run "
                                                  "scored.")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Send files back to pending on purpose; the next watch/predict scores them again."""
    from ..catalog import Ledger

    if uri and "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    ids = Ledger(open_catalog(home, catalog)).requeue(uri=uri, model_run_id=model_run)
    out.print(f"{len(ids)} file(s) queued for reprocessing")
    if not ids:
        raise typer.Exit(1)
