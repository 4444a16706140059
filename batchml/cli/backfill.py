"""``batchml backfill``: score past inputs again with another model into a new output
version (:mod:`batchml.backfill`)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import CatalogOpt, HomeOpt, clean_errors, err, out, settings_from


@clean_errors
def backfill(
    model: Annotated[str | None, typer.Option(
        "--model", help="Score with this model: NAME@ALIAS, NAME/VERSION or a run id, resolved "
                        "once when the backfill starts (default BATCHML_MODEL).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="DATE", help="Files discovered from then on (2026-12-01, or an ISO "
                                        "time; no zone: UTC).")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", metavar="DATE", help="... and before then (default: now and later).")] = None,
    source: Annotated[str | None, typer.Option(
        "--source", help="Only files of this source: a directory or s3://bucket/prefix "
                         "(default BATCHML_INBOX).")] = None,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="ID", help="Go on with this unfinished backfill (the same "
                                       "--model/--since/--until/--source resumes it too).")] = None,
    batch_files: Annotated[int, typer.Option(
        "--batch-files", min=1, help="Inputs claimed (and recorded) together.")] = 20,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Score past inputs again into a new output version; earlier outputs are kept and the
    predictions view shows the current one. Exactly once; a killed backfill resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ..backfill import run_backfill

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("backfill", total=None)
        result = run_backfill(
            settings_from(home, catalog), model=model, since=since, until=until, source=source,
            resume=resume, batch_files=batch_files,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    verb = "started" if result.created else "resumed"
    out.print(f"backfill {result.backfill_id} ({verb}, {result.model_ref} = run "
              f"{result.model_run_id}): {result.status}; {result.files} input(s), "
              f"{result.scored} scored ({result.rows} rows), {result.missing} missing, "
              f"{result.quarantined} quarantined, {result.failed} failed; {result.here} "
              "recorded by this process", soft_wrap=True)
    for uri, reason in result.problems:
        out.print(f"  {uri}: {reason}", soft_wrap=True, markup=False)
    if result.status != "completed" or result.quarantined or result.failed:
        raise typer.Exit(1)
