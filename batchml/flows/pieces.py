"""Score one huge file in parallel pieces on a Dask task runner (a LocalCluster here, a real
Dask cluster in production). Thin wiring over :mod:`batchml.pieces`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

from batchml import Catalog, Settings
from batchml.errors import DataError
from batchml.ledger import FileRecord
from batchml.limits import Limits
from batchml.pieces import Piece, plan_pieces, precheck, score_piece, write_manifest
from batchml.scoring import FileOutcome, ModelCache, Outbox
from batchml.sources import ListSource
from batchml.store import s3_client
from batchml.worker import Worker

_CACHES: dict[str, ModelCache] = {}


def _models(settings: Settings) -> ModelCache:
    # one warm cache per Dask worker process and settings
    key = settings.model_dump_json()
    if key not in _CACHES:
        _CACHES[key] = ModelCache(Catalog.from_settings(settings), flow=settings.train_flow,
                                  threshold=settings.decision_threshold)
    return _CACHES[key]


@task(name="score-piece", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def score_piece_task(path: str, record: FileRecord, run_id: str, batch_id: str, piece: Piece,
                     settings: Settings) -> dict[str, Any]:
    """Score one piece into its part file."""
    model = _models(settings).resolve(run_id=run_id)
    s3 = s3_client(settings.s3_endpoint_url, settings.s3_region) \
        if str(settings.outbox).startswith("s3://") else None
    return score_piece(Path(path), record, model, Outbox(str(settings.outbox), s3=s3), batch_id,
                       piece, batch_rows=settings.batch_rows,
                       limits=Limits.from_settings(settings))


@flow(name="score-large-file",
      task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
                                                 "processes": True}))
def score_large_file_flow(file: str, rows_per_piece: int = 1_000_000, run_id: str | None = None,
                          tag: str | None = None,
                          settings: Settings | None = None) -> dict[str, Any]:
    """Claim one file, score its row-group pieces in parallel, write the manifest, record it."""
    settings = settings or Settings()
    catalog = Catalog.from_settings(settings)
    source = ListSource([file], client=s3_client(settings.s3_endpoint_url, settings.s3_region))
    worker = Worker(catalog, source, settings, run_id=run_id, tag=tag)
    worker.discover()
    ids = [r.file_id for r in source.poll()]
    # model chosen, file claimed and batch opened in one transaction (no model-switch race)
    claim, model = worker.claim_batch(1, ids, str(flow_run.id) if flow_run.id else None)
    if not claim.records or claim.batch_id is None:
        return {"status": "nothing to do", "file": file}
    record, batch_id = claim.records[0], claim.batch_id
    start = time.perf_counter()
    outcome = FileOutcome(record.file_id, record.source_uri, "scored", model.run_id)
    with worker.leases(claim), source.fetch(record) as path:
        try:
            precheck(path, record, model, settings.memory_budget_mb * 2**20,
                     limits=Limits.from_settings(settings))
        except DataError as exc:
            outcome.status, outcome.error = "quarantined", str(exc)
        else:
            pieces = plan_pieces(path, rows_per_piece=rows_per_piece)
            futures = [score_piece_task.submit(str(path), record, model.run_id, batch_id, p,
                                               settings) for p in pieces]
            parts = [f.result() for f in futures]
            outcome.output_uri = write_manifest(worker.outbox, record, model, batch_id, pieces,
                                                parts)
            outcome.rows = sum(p["rows"] for p in parts)
            outcome.positives = sum(p["positives"] or 0 for p in parts)
            outcome.truncated = sum(p.get("truncated", 0) for p in parts)
    outcome.duration_ms = (time.perf_counter() - start) * 1000
    worker.ledger.record_file(batch_id, outcome, worker.name)
    worker.ledger.end_batch(batch_id, files=1, rows=outcome.rows or 0,
                            duration_ms=outcome.duration_ms)
    return {"status": outcome.status, "output": outcome.output_uri, "rows": outcome.rows,
            "error": outcome.error}
