"""The catalog reads behind the service's metrics (:mod:`batchml.metrics`), shared by both
backends: the statements are the same in both dialects (``information_schema`` answers in
DuckDB and PostgreSQL alike).

Drift alerts live in the ``batch_drift`` table (migration 0008, written by the drift monitor).
A catalog migrated before that table existed, or a build without it, answers 0 alerts instead
of failing a scrape.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from ._db import utcnow

DRIFT_TABLE = "batch_drift"
_TIME_COLUMNS = ("created_at", "created")  # the first one the table has bounds the window


class MetricsSQL:
    """The metrics half of a backend (mixed into the backend class, beside
    :class:`~batchml.catalog.registry_sql.RegistrySQL`, whose ``_registry_read`` and ``_x``
    it uses)."""

    def _registry_read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _x(self, con: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def drift_alerts(self, window_s: float = 3600.0) -> int:
        """Rows of ``batch_drift`` that raised an alert in the last ``window_s`` seconds (all
        of them when the table has no creation time); 0 while the table does not exist."""
        with self._registry_read() as con:
            columns = {str(r[0]) for r in self._x(
                con, "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                [DRIFT_TABLE]).fetchall()}
            if "alert" not in columns:
                return 0
            when = next((c for c in _TIME_COLUMNS if c in columns), None)
            if when is None:
                row = self._x(con, f"SELECT count(*) FROM {DRIFT_TABLE} WHERE alert").fetchone()
            else:
                since = utcnow() - timedelta(seconds=float(window_s))
                row = self._x(con, f"SELECT count(*) FROM {DRIFT_TABLE} WHERE alert AND"
                                   f" {when} >= ?", [since]).fetchone()
        return int(row[0]) if row else 0
