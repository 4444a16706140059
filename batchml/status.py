"""What ``batchml status`` reports: service health, files per state, training and model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .catalog import Catalog, Ledger
from .errors import BatchMLError
from .resolve import ModelRef, ModelResolver
from .settings import Settings
from .store import HEALTH_DIR, s3_health_summary


def collect_status(catalog: Catalog, settings: Settings,
                   service: dict[str, Any]) -> dict[str, Any]:
    """One dict with everything an operator or a supervisor checks."""
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
    return {"service": service, "files": ledger.counts(), "last_training_run": last,
            "current_model": current, "recent_errors": recent, "s3": s3,
            "published_catalog": published_catalog(catalog)}


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
