"""Drift per batch as people see it: a batch's counts merged and measured
(:func:`batch_drift`), the model's reference stored with its training run
(:func:`record_reference`), and the reports: the alerts of ``batchml status``
(:func:`alert_summary`), the Prefect artifact's markdown (:func:`drift_markdown`) and its PNG
chart (:func:`drift_png`). The arithmetic is :mod:`batchml.drift`'s.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .drift import (
    REFERENCE_ARTIFACT,
    DriftCounts,
    DriftReference,
    DriftRow,
    DriftThresholds,
    build_reference,
    drift_rows,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger("batchml.drift")


def batch_drift(reference: DriftReference | None, outcomes: list[Any],
                thresholds: DriftThresholds) -> tuple[DriftCounts | None, list[DriftRow],
                                                      str | None]:
    """A batch's drift: its scored files' counts (``FileOutcome.drift``) merged, their
    metrics, and a note when there are none (no reference, no counted file)."""
    if reference is None:
        return None, [], ("no drift measured: the model has no drift reference (trained "
                          "before drift references, or its flavor gives none)")
    counted = [o.drift for o in outcomes if o.status == "scored" and o.drift is not None]
    if not counted:
        return None, [], "no drift measured: no file of the batch was counted"
    total = DriftCounts()
    for part in counted:
        total.merge(part)
    return total, drift_rows(reference, total, thresholds), None


def record_reference(run: Any, model: str, train_x: pd.DataFrame, *, text_column: str | None,
                     classes: list[Any], valid_x: pd.DataFrame | None = None,
                     valid_proba: np.ndarray | None = None) -> DriftReference | None:
    """Build the winner's reference and store it as the run's :data:`REFERENCE_ARTIFACT`;
    one that cannot be made is logged and skipped, never failing the run."""
    try:
        reference = build_reference(model, train_x, text_column=text_column, classes=classes,
                                    valid_x=valid_x, valid_proba=valid_proba)
    except Exception as exc:  # a report: it must not fail training
        log.warning(
            "no drift reference for %s of %s: %s: %s", model, run.id, type(exc).__name__, exc)
        return None
    run.log_artifact(REFERENCE_ARTIFACT, reference.to_json(), kind="report")
    return reference



def _row(r: DriftRow | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(r, DriftRow):
        return {"feature": r.feature, "kind": r.kind, "metric": r.metric, "value": r.value,
                "threshold": r.threshold, "alert": r.alert, "note": r.note}
    return dict(r)


def alert_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``batch_drift`` rows (alerts) grouped by batch, newest first: per batch its time,
    model and alerts as ``feature metric value > threshold``."""
    batches: dict[str, dict[str, Any]] = {}
    for r in rows:
        if not r["alert"]:
            continue
        model = (f"{r['model_name']}/{r['model_version']}" if r.get("model_name")
                 else r.get("model_run_id"))
        entry = batches.setdefault(r["batch_id"], {
            "batch_id": r["batch_id"], "at": r["created_at"], "model": model,
            "rows": r["rows"], "alerts": []})
        entry["alerts"].append(f"{r['feature']} {r['metric']} {r['value']:.3g} > "
                               f"{r['threshold']:.3g}")
    return list(batches.values())


def drift_markdown(batch_id: str, rows: Sequence[DriftRow | Mapping[str, Any]], *,
                   note: str | None = None, png: bytes | None = None) -> str:
    """The Prefect artifact of a batch's drift: a table of every metric (alerts first) and,
    when given, the chart embedded as a data URI."""
    lines = [f"# Drift of batch `{batch_id}`", ""]
    if note:
        lines += [note, ""]
    shown = sorted((_row(r) for r in rows), key=lambda r: (not r["alert"], r["feature"],
                                                          r["metric"]))
    alerts = sum(r["alert"] for r in shown)
    if shown:
        lines += [f"**{alerts} alert(s)** of {len(shown)} metrics.", "",
                  "| feature | kind | metric | value | threshold | alert | note |",
                  "|---|---|---|---:|---:|---|---|"]
        lines += [f"| `{r['feature']}` | {r['kind']} | {r['metric']} | {r['value']:.4f} | "
                  f"{r['threshold']:.3g} | {'**ALERT**' if r['alert'] else 'ok'} | "
                  f"{(r['note'] or '').replace('|', '/')} |" for r in shown]
    if png:
        lines += ["", f"![drift chart](data:image/png;base64,{base64.b64encode(png).decode()})"]
    return "\n".join(lines) + "\n"


def drift_png(batch_id: str, rows: Sequence[DriftRow | Mapping[str, Any]]) -> bytes:
    """A bar chart of a batch's metrics, each as a share of its threshold (1 = the alert
    line), alerts in red."""
    from .evaluation import _plt, _png

    shown = [_row(r) for r in rows]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * max(3, len(shown)) + 1.2))
    ratios = [r["value"] / r["threshold"] if r["threshold"] else 0.0 for r in shown]
    ax.barh(range(len(shown)), ratios,
            color=["tab:red" if r["alert"] else "tab:blue" for r in shown])
    ax.set_yticks(range(len(shown)),
                  [f"{r['feature'][:28]} {r['metric']}" for r in shown], fontsize=8)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("value / alert threshold", fontsize=8)
    ax.set_title(f"drift of batch {batch_id[:40]}", fontsize=9)
    return bytes(_png(fig))


def drift_artifact(batch_id: str | None, rows: Sequence[DriftRow | Mapping[str, Any]],
                   note: str | None) -> str | None:
    """The Prefect artifact of a batch (:func:`drift_markdown` with :func:`drift_png`
    embedded); None when drift is off (no rows and no note)."""
    if not rows and not note:
        return None
    png = drift_png(batch_id or "", rows) if rows else None
    return drift_markdown(batch_id or "", rows, note=note, png=png)
