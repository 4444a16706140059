"""Scoring named files now (``batchml predict``): files, directories and ``s3://`` URIs
scored once each through the worker's batch path, into the outbox or a folder of the user's.

Each file version is scored once; a version scored before is skipped (``batchml reprocess``
sends it back). Nothing here prints: the caller shows progress and the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelNotFound
from .settings import Settings
from .worker import BatchReport, Worker


@dataclass
class PredictResult:
    """What :func:`predict_files` did: the batches, and the inputs it skipped because this
    version was processed before."""

    reports: list[BatchReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def all_scored(self) -> bool:
        """True when every file scored here was scored (none quarantined or failed)."""
        return all(o.status == "scored" for r in self.reports for o in r.outcomes)


def expand_inputs(inputs: list[str]) -> list[str]:
    """Every parquet file the inputs name: a local directory stands for the complete parquet
    files in it (hidden, temp and marker names left out); files and URIs stay as given."""
    from .sources import DirectorySource

    uris: list[str] = []
    for item in inputs:
        if "://" not in item and Path(item).is_dir():
            uris += [r.uri for r in DirectorySource(item, use_events=False, settle_s=0).poll()]
        else:
            uris.append(item)
    return uris


def predict_files(settings: Settings, inputs: list[str], *, run_id: str | None = None,
                  tag: str | None = None, output: Path | None = None, batch_files: int = 10,
                  on_progress: Callable[[int, int], None] | None = None,
                  model: str | None = None, explain: int = 0,
                  params: Mapping[str, Any] | None = None) -> PredictResult:
    """Score ``inputs`` (see :func:`expand_inputs`) with the model of ``run_id``, else the one
    ``model`` names (``NAME@ALIAS``, ``NAME/VERSION``, see :mod:`batchml.resolve`), else of the
    latest successful run carrying ``tag`` (default ``BATCHML_MODEL``, then
    ``BATCHML_MODEL_TAG``), writing to
    ``output`` when given, else to the outbox. ``on_progress(done, total)`` is called after
    each batch. ``explain`` > 0 adds per row the ``explain`` largest feature contributions
    (column ``explanation``, see :mod:`batchml.explanations`). ``params`` are inference
    parameters for this batch (``--param NAME=VALUE``: text values parsed by each parameter's
    type; over ``BATCHML_PARAMS`` and the model's defaults, see :mod:`batchml.params`).

    Raises :class:`~batchml.errors.ModelNotFound` when no run carries the tag,
    :class:`~batchml.errors.RunCannotScore` when the named run cannot score, and
    :class:`~batchml.errors.ConfigError` (before anything is scored) when ``explain`` is
    asked of a model without per-row contributions, and
    :class:`~batchml.errors.InvalidParams` (before anything is scored) for an unknown
    parameter or a bad value."""
    from .catalog import Catalog
    from .scoring import Outbox
    from .sources import ListSource
    from .store import s3_client

    uris = expand_inputs(inputs)
    client = s3_client(settings.s3_endpoint_url, settings.s3_region) \
        if any(u.startswith("s3://") for u in uris) else None
    source = ListSource(uris, client=client, max_file_bytes=settings.max_file_bytes)
    outbox = Outbox(str(output), s3=client) if output is not None else None
    worker = Worker(Catalog.from_settings(settings), source, settings, run_id=run_id, tag=tag,
                    outbox=outbox, model=model, explain=explain, params=params)
    worker.check_params()  # against the model, before anything is claimed or scored
    refs = source.poll()
    worker.ledger.discover(refs)
    ids = [r.file_id for r in refs]
    result = PredictResult()
    done = 0
    while True:
        report = worker.run_batch(limit=batch_files, file_ids=ids)
        if report.error and not report.outcomes:
            raise ModelNotFound(report.error)
        if not report.outcomes:
            break
        result.reports.append(report)
        done += len(report.outcomes)
        if on_progress is not None:
            on_progress(done, len(ids))
    scored = {o.file_id for r in result.reports for o in r.outcomes}
    result.skipped = [r.uri for r in refs if r.file_id not in scored]
    return result
