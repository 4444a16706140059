"""The backfill flow: thin Prefect wiring over :func:`batchml.backfill.run_backfill`.

One flow run runs a backfill to its end (or resumes an unfinished one) and leaves a table
artifact of its counts and the inputs that were missing, quarantined or failed. Several flow
runs of the same backfill share its inputs; a crashed one's are taken over once its leases
expire.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from batchml import Settings
from batchml.backfill import run_backfill


@flow(name="backfill", log_prints=True)
def backfill_flow(
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
    source: str | None = None,
    resume: str | None = None,
    batch_files: int = 20,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Score past inputs again into a new output version (see :mod:`batchml.backfill`):
    ``model`` a reference (``NAME@ALIAS``), ``since``/``until`` dates or ISO times, ``source``
    a directory or ``s3://`` prefix (default the inbox); ``resume`` an unfinished backfill's
    id."""
    settings = settings or Settings()
    result = run_backfill(settings, model=model, since=since, until=until, source=source,
                          resume=resume, batch_files=batch_files,
                          prefect_flow_run_id=str(flow_run.id) if flow_run.id else None)
    table = [{"backfill": result.backfill_id, "model": result.model_ref,
              "run": result.model_run_id, "status": result.status, "files": result.files,
              "scored": result.scored, "rows": result.rows, "missing": result.missing,
              "quarantined": result.quarantined, "failed": result.failed}]
    table += [{"backfill": result.backfill_id, "file": uri, "error": reason}
              for uri, reason in result.problems]
    create_table_artifact(table, key="backfill", description=f"backfill {result.backfill_id}")
    print(f"backfill {result.backfill_id}: {result.status}; {result.scored} of {result.files} "
          f"scored ({result.rows} rows), {result.missing} missing")
    return {"backfill_id": result.backfill_id, "status": result.status,
            "created": result.created, "files": result.files, "scored": result.scored,
            "missing": result.missing, "quarantined": result.quarantined,
            "failed": result.failed, "rows": result.rows, "here": result.here,
            "missing_uris": result.missing_uris}
