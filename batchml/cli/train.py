"""``batchml train`` and ``batchml demo-data``: fit and gate a model; write demo data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import (
    CatalogOpt,
    HomeOpt,
    clean_errors,
    open_catalog,
    out,
    print_frame,
    settings_from,
)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


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
        from ..flows.train import train_flow
        from ..service import prefect_settings

        # Prefect's state under the batchml home (its temporary server too); no os.environ
        with prefect_settings(settings):
            result = train_flow(**kwargs, settings=settings)
        run_id, tagged, reasons = result["run_id"], result["tagged"], result["reasons"]
        registry = result.get("registry")
    else:
        from ..training import TrainingConfig, train_from_settings

        outcome = train_from_settings(settings, TrainingConfig(**kwargs, tag=settings.model_tag))
        run_id, tagged = outcome.run.id, outcome.decision.tagged
        reasons = outcome.decision.reasons
        registry = outcome.champion.summary() if outcome.champion else None
    import pandas as pd

    from ..training import recorded_candidates

    rows = recorded_candidates(open_catalog(home, catalog).run(run_id))
    print_frame(pd.DataFrame(rows), title=f"{run_id} candidates")
    out.print(f"[bold]{run_id}[/]: {'[green]tagged ' + settings.model_tag + '[/]' if tagged else '[yellow]not tagged[/]'}"
              f" - {'; '.join(reasons)}")
    if registry:
        from rich.markup import escape

        out.print(f"[bold]{run_id}[/]: {escape(registry)}", highlight=False)


@clean_errors
def demo_data(
    directory: Annotated[Path, typer.Argument(help="Where to write the synthetic data.")],
    n_train: Annotated[int, typer.Option(help="Training rows.")] = 4000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a synthetic (made-up, labelled) review dataset for demos and benchmarks."""
    from ..synthetic import demo_dataset

    paths = demo_dataset(directory, n_train=n_train, seed=seed)
    for name, path in paths.items():
        out.print(f"{name}: {path}")
