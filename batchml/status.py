"""What ``batchml status`` reports: service health, files per state, training and model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .catalog import Catalog, Ledger
from .drift_report import alert_summary
from .errors import BatchMLError
from .resolve import ModelRef, ModelResolver
from .settings import Settings
from .store import HEALTH_DIR, s3_health_summary


def collect_status(catalog: Catalog, settings: Settings,
                   service: dict[str, Any], *, drift_batches: int = 10) -> dict[str, Any]:
    """One dict with everything an operator or a supervisor checks; ``drift_alerts``: the
    batches among the last ``drift_batches`` measured whose drift alerted, newest first."""
    ledger = Ledger(catalog)
    last = None
    runs = catalog.runs(settings.train_flow, limit=1)
    if runs:
        last = f"{runs[0].id} ({runs[0].status})"
    try:
        current = ModelResolver(catalog, flow=settings.train_flow).run(
            ModelRef.for_tag(settings.model_tag)).id
    except BatchMLError:
        current = None
    errors = catalog.recent_file_errors(window_s=3600)
    recent: dict[str, Any] = {k: v for k, v in errors.items() if v}
    # S3 calls of every batchml process of this home (serve, watch workers), last 15 minutes
    s3 = s3_health_summary(settings.home / HEALTH_DIR)
    if s3 and (s3["failed_attempts"] or s3["failed_calls"]):
        recent[f"s3 (last {s3['window_minutes']:g} min)"] = (
            f"{s3['failed_attempts']} of {s3['attempts']} requests failed "
            f"({100 * s3['error_rate']:.1f}%), {s3['retries']} retries, "
            f"{s3['failed_calls']} calls gave up")
    # drift: the alerts of the last batches measured (batchml/drift.py)
    drift = alert_summary(ledger.batch_drift(batches=drift_batches, alerts_only=True))
    return {"service": service, "files": ledger.counts(), "last_training_run": last,
            "current_model": current, "recent_errors": recent, "s3": s3,
            "published_catalog": published_catalog(catalog), "drift_alerts": drift}


def published_catalog(catalog: Catalog) -> dict[str, Any]:
    """Where the read-only copy for people is and how old it is (None when not yet made)."""
    import time

    path = catalog.published_path
    if not isinstance(path, Path):  # a server (PostgreSQL): people read the catalog itself
        return {"path": str(path), "age_s": 0.0, "live": True}
    try:
        age: float | None = round(time.time() - path.stat().st_mtime, 3)
    except FileNotFoundError:
        age = None
    return {"path": str(path), "age_s": age}
