"""The SQL of drift per batch (``batch_drift``, migration 0008), shared by both backends.

Mixed into a backend class next to :class:`~batchml.catalog.registry_sql.RegistrySQL`, whose
transaction contexts (``_registry_write`` / ``_registry_read``) and placeholder translation
(``_x``) it uses; the statements are the same in both dialects.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ._db import utcnow

_COLS = ("batch_id", "feature", "metric", "kind", "files", "rows", "model_run_id",
         "model_name", "model_version", "value", "threshold", "alert", "note", "created_at")


class DriftSQL:
    """The drift half of a backend (mixed into the backend class)."""

    if TYPE_CHECKING:  # provided by RegistrySQL and the backend
        def _registry_write(self) -> AbstractContextManager[Any]: ...
        def _registry_read(self) -> AbstractContextManager[Any]: ...
        def _x(self, con: Any, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def record_drift(self, batch_id: str, rows: Sequence[Any], *, files: int, scored_rows: int,
                     model_run_id: str | None, model_name: str | None,
                     model_version: int | None) -> int:
        now = utcnow()
        values = [[batch_id, r.feature, r.metric, r.kind, int(files), int(scored_rows), model_run_id,
                   model_name, model_version, float(r.value), float(r.threshold),
                   bool(r.alert), r.note, now] for r in rows]
        marks = ", ".join("?" for _ in _COLS)
        with self._registry_write() as con:
            self._x(con, "DELETE FROM batch_drift WHERE batch_id = ?", [batch_id])
            for value in values:
                self._x(con, f"INSERT INTO batch_drift ({', '.join(_COLS)}) VALUES ({marks})",
                        value)
        return len(values)

    def batch_drift(self, batch_id: str | None = None, *, batches: int = 20,
                    alerts_only: bool = False) -> list[dict[str, Any]]:
        where = ["1 = 1"]
        params: list[Any] = []
        if batch_id is not None:
            where.append("batch_id = ?")
            params.append(batch_id)
        else:
            where.append("batch_id IN (SELECT batch_id FROM batch_drift GROUP BY batch_id"
                         " ORDER BY max(created_at) DESC LIMIT ?)")
            params.append(int(batches))
        if alerts_only:
            where.append("alert")
        with self._registry_read() as con:
            cur = self._x(con, f"SELECT {', '.join(_COLS)} FROM batch_drift"
                               f" WHERE {' AND '.join(where)}"
                               " ORDER BY created_at DESC, batch_id, alert DESC, feature,"
                               " metric", params)
            return [dict(zip(_COLS, row, strict=True)) for row in cur.fetchall()]
