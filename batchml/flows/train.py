"""The training flow: thin Prefect wiring over :mod:`batchml.training`.

Candidates are fitted as parallel Prefect tasks; everything else is one library call.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from batchml import Settings
from batchml import training as tr


@task(name="fit-candidate", cache_policy=NO_CACHE)
def fit_candidate_task(name: str, data: tr.TrainingData,
                       config: tr.TrainingConfig) -> tr.CandidateResult:
    """Fit and evaluate one candidate (failures come back as results, not exceptions)."""
    return tr.fit_candidate(name, data, config)


def _submit_all(names: list[str], data: tr.TrainingData,
                config: tr.TrainingConfig) -> list[tr.CandidateResult]:
    futures = [fit_candidate_task.with_options(task_run_name=f"fit-{n}").submit(n, data, config)
               for n in names]
    return [f.result() for f in futures]


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
      log_prints=True)
def train_flow(
    train_uri: str,
    valid_uri: str,
    label: str = "labels",
    text_column: str | None = None,
    feature_columns: list[str] | None = None,
    candidates: list[str] | None = None,
    smoke_examples: list[tuple[Any, Any]] | None = None,
    smoke_uri: str | None = None,
    primary_metric: str = "roc_auc",
    baseline_margin: float = 0.01,
    seed: int = 0,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train a baseline and candidates, evaluate, check and tag a deployment candidate.

    ``smoke_uri``: parquet or .csv of examples the winner must get right (path or s3://;
    empty: only the checks derived from the data run).
    """
    settings = settings or Settings()
    config = tr.TrainingConfig(
        train_uri=train_uri, valid_uri=valid_uri, label=label, text_column=text_column,
        feature_columns=feature_columns, candidates=candidates, smoke_examples=smoke_examples,
        smoke_uri=smoke_uri or None, primary_metric=primary_metric,
        baseline_margin=baseline_margin, seed=seed, tag=settings.model_tag)
    outcome = tr.train_from_settings(
        settings, config, flow=settings.train_flow,
        prefect_flow_run_id=str(flow_run.id) if flow_run.id else None,
        map_candidates=_submit_all)
    run = outcome.run
    create_table_artifact(tr.summary_table(outcome.results, config.primary_metric),
                          key="candidates", description=f"Candidates of {run.id}")
    plots = "\n".join(f"- [{name}]({info['uri']})" for name, info in sorted(run.artifacts.items())
                      if info["kind"] == "plot")
    registry = outcome.champion
    create_markdown_artifact(tr.decision_markdown(outcome.decision, run.id)
                             + ("\n" + registry.markdown() if registry else "")
                             + "\n## Plots\n" + plots + "\n", key="gate-decision")
    print(f"{run.id}: {'tagged' if outcome.decision.tagged else 'not tagged'}; "
          + outcome.decision.reasons[0])
    if registry is not None:
        print(f"{run.id}: {registry.summary()}")
    return {"run_id": run.id, "tagged": outcome.decision.tagged,
            "winner": outcome.decision.winner, "reasons": outcome.decision.reasons,
            "registry": registry.summary() if registry else None}
