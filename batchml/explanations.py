"""Explanations: what drives a model overall, and what drove each of its answers.

Each flavor says how its models are explained (:meth:`Estimator.global_explanation`,
:meth:`Estimator.contributions`; see :mod:`batchml.estimators.base`); this module turns that
into what people read:

- **Global**, stored with every training run for its winner (:func:`record_explanation`):
  ``explanation.json`` (:func:`global_explanation`: the method, what a score means, the top
  features per class or overall) and ``explanation.png`` (:func:`explanation_png`, a bar
  chart). Linear models rank their features by weight per class; tree ensembles on tables by
  permutation importance on the validation data; the Keras bag-of-words model by its tokens'
  weights.
- **Per row**, when scoring with ``explain=K`` (``batchml predict --explain K``):
  :func:`explanation_column` adds the column :data:`~batchml.signature.EXPLANATION_COLUMN`
  holding, per row, the K features with the largest absolute contributions to the model's
  decision value (binary: the positive class's logit; several classes: the predicted
  class's), largest first. Only models that are linear in their features have exact
  contributions; for others :func:`check_explainable` raises a :class:`ConfigError` naming
  the flavor before anything is scored.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .errors import ConfigError
from .signature import EXPLANATION_ARROW_TYPE

if TYPE_CHECKING:
    import pandas as pd

    from .catalog import Run
    from .estimators import Estimator
    from .estimators.base import Contributions, Labels

log = logging.getLogger("batchml.explanations")

FORMAT = "batchml-explanation"
VERSION = 1
JSON_ARTIFACT = "explanation.json"
PNG_ARTIFACT = "explanation.png"
CHUNK_ROWS = 4_096
"""Rows explained at a time when scoring (bounds the candidates of the top-K search)."""


# --- global ------------------------------------------------------------------------------------


def global_explanation(estimator: Estimator, x: pd.DataFrame, y: Labels, *, top: int = 20,
                       seed: int = 0) -> dict[str, Any] | None:
    """The model's global explanation as a JSON-safe dict, or None when its flavor has none.

    ``groups`` maps a class (``"all"`` when the method ranks features for the whole model) to
    its top ``top`` features, highest score first, each ``{"feature", "score"}`` (and
    ``"spread"``, the standard deviation over repeats, for permutation importance);
    ``measure`` says what a score is. ``x`` and ``y`` are validation data.
    """
    found = estimator.global_explanation(x, y, top=top, seed=seed)
    if found is None:
        return None
    groups = {name: [{"feature": s.feature, "score": s.score,
                      **({} if s.spread is None else {"spread": s.spread})} for s in scores]
              for name, scores in found.groups.items()}
    return {"format": FORMAT, "version": VERSION, "model": estimator.name,
            "flavor": estimator.flavor, "classes": [_plain(c) for c in estimator.classes_],
            "method": found.method, "measure": found.measure, "groups": groups,
            "per_row": estimator.explains_rows, "details": _json_safe(found.details)}


def explanation_png(explanation: dict[str, Any], *, bars: int = 10, panels: int = 4) -> bytes:
    """A bar chart of a :func:`global_explanation`: one panel per group (at most ``panels``),
    its ``bars`` top features; error bars show the spread when there is one."""
    from .evaluation import _plt, _png

    plt = _plt()
    groups = list(explanation["groups"].items())[:panels]
    fig, axes = plt.subplots(1, max(1, len(groups)), squeeze=False,
                             figsize=(4.2 * max(1, len(groups)), 0.35 * bars + 1.4))
    for ax, (name, scores) in zip(axes[0], groups, strict=False):
        shown = scores[:bars][::-1]  # largest at the top
        values = [s["score"] for s in shown]
        spread = [s.get("spread", 0.0) for s in shown]
        ax.barh(range(len(shown)), values, xerr=spread if any(spread) else None,
                color=["tab:blue" if v >= 0 else "tab:red" for v in values])
        ax.set_yticks(range(len(shown)), [_short(s["feature"]) for s in shown], fontsize=8)
        ax.axvline(0.0, color="grey", linewidth=0.6)
        ax.set_title(name if name == "all" else f"class {name}", fontsize=9)
    fig.suptitle(f"{explanation['model']}: {explanation['method'].replace('_', ' ')}",
                 fontsize=10)
    fig.supxlabel(explanation["measure"], fontsize=8)
    return bytes(_png(fig))


def record_explanation(run: Run, estimator: Estimator, x: pd.DataFrame, y: Labels, *,
                       seed: int = 0) -> dict[str, Any] | None:
    """Store ``estimator``'s global explanation as the run's artifacts
    :data:`JSON_ARTIFACT` and :data:`PNG_ARTIFACT` (nothing when its flavor has none).

    An explanation that cannot be made is logged and skipped, never failing the run."""
    try:
        explanation = global_explanation(estimator, x, y, seed=seed)
        if explanation is None:
            return None
        png = explanation_png(explanation)
    except Exception as exc:  # an explanation is a report: it must not fail training
        log.warning("no explanation for %s of %s: %s: %s", estimator.name, run.id,
                    type(exc).__name__, exc)
        return None
    run.log_artifact(JSON_ARTIFACT, json.dumps(explanation, indent=1).encode(), kind="report")
    run.log_artifact(PNG_ARTIFACT, png, kind="plot")
    return explanation


# --- per row -----------------------------------------------------------------------------------


def check_explainable(estimator: Estimator, k: int) -> None:
    """Raise :class:`ConfigError` unless scoring with ``explain=k`` can work: ``k`` >= 0,
    and for ``k`` > 0 a model with exact per-row contributions (the error names the flavor
    and what to do)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"--explain takes a number of features, 0 or more; got {k!r}.",
                          hint="Pass --explain 5 for the five largest contributions per row.")
    if k > 0 and not estimator.explains_rows:
        raise estimator.cannot_explain_rows()


def top_contributions(contrib: Contributions, decision: np.ndarray, k: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row ``i``, the ``k`` features with the largest absolute contribution to decision
    ``decision[i]`` (a position in ``contrib.decisions``), largest first, as (offsets
    (n_rows + 1), feature positions, contributions); ``min(k, n_features)`` per row.

    Features a row lacks all contribute their decision's offset, so only the few with the
    largest offsets can make a row's top ``k``: the search takes the first ``g`` of them
    (``g`` doubling until ``k`` of them are absent from the row) besides the row's own."""
    n, p = contrib.n_rows, contrib.n_features
    k = min(int(k), p)
    decision = np.asarray(decision, dtype=np.int64)
    if n == 0 or k == 0:
        return np.zeros(n + 1, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    d_of = decision[contrib.rows]
    rows, cols = [contrib.rows], [contrib.cols]
    vals = [contrib.values[np.arange(len(d_of)), d_of] + contrib.offset[d_of, contrib.cols]]
    for d in np.unique(decision):
        order = np.argsort(-np.abs(contrib.offset[d]), kind="stable")
        rank = np.empty(p, np.int64)
        rank[order] = np.arange(p)
        mine = d_of == d
        entry_rows, entry_rank = contrib.rows[mine], rank[contrib.cols[mine]]
        pending = np.flatnonzero(decision == d)
        g = min(p, 2 * k)
        while len(pending):
            local = np.full(n, -1, np.int64)
            local[pending] = np.arange(len(pending))
            hit = (local[entry_rows] >= 0) & (entry_rank < g)
            taken = np.zeros((len(pending), g), dtype=np.bool_)
            taken[local[entry_rows[hit]], entry_rank[hit]] = True
            done = (g - taken.sum(axis=1) >= k) | (g == p)
            r, c = np.nonzero(~taken[done])
            rows.append(pending[done][r])
            cols.append(order[c])
            vals.append(contrib.offset[d, order[c]])
            pending, g = pending[~done], min(p, 2 * g)
    row, col, val = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    sort = np.lexsort((col, -np.abs(val), row))
    row, col, val = row[sort], col[sort], val[sort]
    first = np.searchsorted(row, np.arange(n))
    keep = np.arange(len(row)) - first[row] < k
    counts = np.bincount(row[keep], minlength=n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, col[keep], val[keep]


def explanation_column(estimator: Estimator, batch: pa.RecordBatch | pa.Table,
                       index: np.ndarray, k: int) -> pa.Array:
    """The :data:`~batchml.signature.EXPLANATION_COLUMN` values for ``batch``: per row the
    ``k`` largest contributions (:func:`top_contributions`) to the decision of the row's
    predicted class ``index`` (a position in ``classes_``; a binary model's single decision,
    the positive class's logit, for every row)."""
    from .estimators._arrays import from_numpy, strings

    index = np.asarray(index, dtype=np.int64)
    names: pa.Array | None = None
    offsets: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    done = 0
    for start in range(0, batch.num_rows, CHUNK_ROWS):
        contrib = estimator.contributions(batch.slice(start, CHUNK_ROWS))
        if names is None:
            names = contrib.features if isinstance(contrib.features, pa.Array) else \
                strings([str(f) for f in contrib.features])
        chosen = index[start:start + contrib.n_rows] if len(contrib.decisions) > 1 else \
            np.zeros(contrib.n_rows, np.int64)
        off, col, val = top_contributions(contrib, chosen, k)
        offsets.append(off[(1 if start else 0):] + done)
        done += int(off[-1])
        cols.append(col)
        vals.append(val)
    if names is None:  # no rows
        return pa.array([], EXPLANATION_ARROW_TYPE)
    feature = names.take(from_numpy(np.concatenate(cols)))
    if feature.type != pa.string():
        feature = feature.cast(pa.string())
    entries = pa.StructArray.from_arrays(
        [feature, from_numpy(np.concatenate(vals).astype(np.float64))],
        fields=list(EXPLANATION_ARROW_TYPE.value_type))
    return pa.ListArray.from_arrays(from_numpy(np.concatenate(offsets).astype(np.int32)),
                                    entries, type=EXPLANATION_ARROW_TYPE)


def _short(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return _plain(value)
