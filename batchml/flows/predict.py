"""The prediction flow: thin Prefect wiring over :class:`batchml.worker.Worker`.

One flow run scores one micro-batch (up to ``limit`` files) with one model, and leaves a table
artifact of files and row counts.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_table_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.runtime import flow_run

from batchml import Catalog, Settings
from batchml.drift_report import drift_artifact
from batchml.sources import ListSource, open_source
from batchml.worker import Worker


def _worker(settings: Settings, source: str | None, files: list[str] | None,
            run_id: str | None, tag: str | None, model: str | None = None,
            params: dict[str, Any] | None = None) -> Worker:
    from batchml.store import S3Health, s3_client

    catalog = Catalog.from_settings(settings)
    health = S3Health.for_home(settings.home)  # this flow run's S3 calls, in `batchml status`
    if files:
        src: Any = ListSource(files, client=s3_client(settings.s3_endpoint_url,
                                                      settings.s3_region, health=health),
                              health=health)
    else:
        src = open_source(source or str(settings.inbox), settings=settings, health=health)
    return Worker(catalog, src, settings, run_id=run_id, tag=tag, health=health, model=model,
                  deployment_params=params)


@flow(name="predict", log_prints=True)
def predict_flow(
    files: list[str] | None = None,
    file: str | None = None,
    source: str | None = None,
    run_id: str | None = None,
    tag: str | None = None,
    limit: int = 100,
    settings: Settings | None = None,
    model: str | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score pending files (the listed ones, or whatever the source has) in one batch.

    ``file`` takes one URI, as a ``batchml.file.landed`` event trigger passes it. ``model``
    is a model reference (``NAME@ALIAS``, ``NAME/VERSION``; see :mod:`batchml.resolve`).
    ``params`` are the deployment's inference parameters (``deploy/prefect.yaml``), under
    ``BATCHML_PARAMS``; a bad one fails the flow run before any file is claimed."""
    settings = settings or Settings()
    if file:
        files = [*(files or []), file]
    worker = _worker(settings, source, files, run_id, tag, model, params)
    try:
        new = worker.discover()
        ids = [f.file_id for f in worker.source.poll()] if files else None
        report = worker.run_batch(limit=limit, file_ids=ids,
                                  prefect_flow_run_id=str(flow_run.id) if flow_run.id else None)
    finally:
        worker.source.close()
    if report.outcomes:
        create_table_artifact(report.table(), key="prediction-batch",
                              description=f"{report.batch_id} with model {report.model_run_id}")
        if markdown := drift_artifact(report.batch_id, report.drift, report.drift_note):
            create_markdown_artifact(markdown, key="batch-drift",
                                     description=f"drift of {report.batch_id}")
    print(f"discovered {len(new)}, scored {sum(o.status == 'scored' for o in report.outcomes)}"
          f", quarantined {sum(o.status == 'quarantined' for o in report.outcomes)}"
          + (f"; {report.error}" if report.error else ""))
    return {"batch_id": report.batch_id, "model_run_id": report.model_run_id,
            "model_version": report.model_version, "files": report.table(),
            "error": report.error, "params": report.params}


def make_batch_flow(worker: Worker) -> Any:
    """An async prediction flow bound to a long-lived worker (warm model cache): what
    ``batchml serve`` runs per micro-batch. Async flow runs cost ~0.1 s of Prefect overhead,
    sync ones ~1 s, which would dominate a one-second drop-to-output target."""
    import asyncio

    @flow(name="predict", log_prints=False, persist_result=False)
    async def predict_batch(limit: int = 100) -> dict[str, Any]:
        report = await asyncio.to_thread(
            worker.run_batch, limit=limit,
            prefect_flow_run_id=str(flow_run.id) if flow_run.id else None)
        if report.outcomes:
            await acreate_table_artifact(
                report.table(), key="prediction-batch",
                description=f"{report.batch_id} with model {report.model_run_id}")
            if markdown := await asyncio.to_thread(drift_artifact, report.batch_id,
                                                   report.drift, report.drift_note):
                await acreate_markdown_artifact(markdown, key="batch-drift",
                                                description=f"drift of {report.batch_id}")
        return {"batch_id": report.batch_id, "model_run_id": report.model_run_id,
                "files": report.table(), "error": report.error}

    return predict_batch
