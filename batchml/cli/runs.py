"""``batchml runs``, ``run show``, ``tag add``/``tag rm`` and ``compare``: the runs in the
catalog."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ._common import CatalogOpt, HomeOpt, clean_errors, open_catalog, out, print_frame


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


@clean_errors
def tag_add(run_id: Annotated[str, typer.Argument(help="Run id such as train/3.")],
            tag: Annotated[str, typer.Argument(help="Tag to add.")],
            note: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
            home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Tag a run. Idempotent: adding a tag the run carries changes nothing."""
    added = open_catalog(home, catalog).run(run_id).add_tag(tag, note=note)
    out.print(f"{run_id}: {'tagged' if added else 'already tagged'} {tag}")


@clean_errors
def tag_rm(run_id: Annotated[str, typer.Argument(help="Run id such as train/3.")],
           tag: Annotated[str, typer.Argument(help="Tag to remove.")],
           home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Remove a tag from a run; its history stays in tag_history."""
    removed = open_catalog(home, catalog).run(run_id).remove_tag(tag)
    out.print(f"{run_id}: {'removed' if removed else 'did not carry'} {tag}")


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
