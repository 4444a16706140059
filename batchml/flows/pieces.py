"""Score one huge file in parallel pieces on a Dask task runner (a LocalCluster here, a real
Dask cluster in production). Thin wiring over :mod:`batchml.pieces`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

from batchml import Catalog, Settings
from batchml.catalog import FileRecord
from batchml.layout import Partition
from batchml.limits import Limits
from batchml.pieces import Piece, score_in_pieces, score_piece
from batchml.scoring import LoadedModel, ModelCache, Outbox
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
                     settings: Settings, params: dict[str, Any] | None = None,
                     partition: Partition | None = None) -> dict[str, Any]:
    """Score one piece into its part file (in ``partition`` with the hive layout)."""
    model = _models(settings).resolve(run_id=run_id)
    s3 = s3_client(settings.s3_endpoint_url, settings.s3_region) \
        if str(settings.outbox).startswith("s3://") else None
    outbox = Outbox(str(settings.outbox), s3=s3).partitioned(partition)
    return score_piece(Path(path), record, model, outbox, batch_id, piece,
                       batch_rows=settings.batch_rows, limits=Limits.from_settings(settings),
                       params=params)


@flow(name="score-large-file",
      task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
                                                 "processes": True}))  # type: ignore[arg-type]
def score_large_file_flow(file: str, rows_per_piece: int = 1_000_000, run_id: str | None = None,
                          tag: str | None = None,
                          settings: Settings | None = None) -> dict[str, Any]:
    """Claim one file, score its row-group pieces in parallel, write the manifest, record it
    (through the worker's batch path: a failed piece fails the file like any other)."""
    settings = settings or Settings()
    catalog = Catalog.from_settings(settings)
    source = ListSource([file], client=s3_client(settings.s3_endpoint_url, settings.s3_region))
    worker = Worker(catalog, source, settings, run_id=run_id, tag=tag)

    def on_dask(pieces: list[Piece], path: Path, record: FileRecord, model: LoadedModel,
                batch_id: str) -> list[dict[str, Any] | BaseException]:
        params = worker.params_for(model)  # the batch's inference parameters
        partition = worker.current_partition  # the file's, as its manifest's (hive layout)
        futures = [score_piece_task.submit(str(path), record, model.run_id, batch_id, p,
                                           settings, params, partition) for p in pieces]
        results: list[dict[str, Any] | BaseException] = []
        for future in futures:  # wait for every piece, so none writes after a cleanup
            try:
                results.append(future.result())
            except Exception as exc:
                results.append(exc)
        return results

    return score_in_pieces(worker, rows_per_piece=rows_per_piece, map_pieces=on_dask,
                           prefect_flow_run_id=str(flow_run.id) if flow_run.id else None)
