"""B1, model only: the scikit-learn text models' fast path (:class:`LinearTextModel`) in rows/s.

Issue 21 item 2 (the text moonshot): bag-of-words / TF-IDF linear models scored at >= 500,000
rows/s on 2 cores. Both text flavors (``sklearn_text``: TF-IDF + logistic regression,
``sklearn_text_nb``: counts + multinomial NB) are trained in a fresh child
(``python -m bench.b1_text JSON``) on the benchmark's training rows; the child then times
``LinearTextModel.predict_proba`` on the string column of synthetic reviews already in memory
(no file I/O: that is the end-to-end figures' business), and as floor scikit-learn's own
pipeline ``predict_proba`` on up to 200,000 of the same rows, whose answers it must match to
1e-6 (else the benchmark fails).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

from .common import PYTHON, Context, Figure, figure, run_child, summary

TARGET_ROWS_S = 500_000
FLOOR_MAX_ROWS = 200_000
FLAVORS = ("sklearn_text", "sklearn_text_nb")


def run(ctx: Context) -> list[Figure]:
    """Figures ``text_model.<flavor>`` (rows/s, ratio to scikit-learn's pipeline)."""
    rows = int(ctx.sizes["b1_rows"]["sklearn_text"])
    reps = max(2, int(ctx.sizes["b1_reps"]["sklearn_text"]))
    result = run_child([PYTHON, "-m", "bench.b1_text", json.dumps({
        "n_train": ctx.sizes["model_train_rows"], "rows": rows, "reps": reps})],
        timeout_s=3600).check()
    ans = result.json()
    figures = []
    for name in FLAVORS:
        a = ans[name]
        samples = [rows / s for s in a["seconds"]]
        med = summary(samples)["median"]
        cores = summary([c / s for c, s in zip(a["cpu_s"], a["seconds"], strict=True)])["median"]
        ctx.log(f"  {name} model only: {med:,.0f} rows/s (sklearn {a['floor_rows_s']:,.0f}), "
                f"max |diff| {a['max_diff']:.1e}")
        figures.append(figure(
            "B1", f"text_model.{name}",
            f"{name} LinearTextModel.predict_proba only, {rows:,} rows in memory", samples,
            "rows/s", floor=a["floor_rows_s"], target=">= 500,000 rows/s (2 cores)",
            met=med >= TARGET_ROWS_S,
            notes=f"cores busy {cores:.2f}; {rows * len(samples) / sum(a['cpu_s']):,.0f} rows "
                  f"per CPU-second; floor: the scikit-learn pipeline's predict_proba on "
                  f"{a['floor_rows']:,} rows, max abs difference {a['max_diff']:.1e}"))
    return figures


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(p: dict[str, Any]) -> dict[str, Any]:
    """In the child: train both flavors, time the fast path and scikit-learn's pipeline."""
    import numpy as np
    import pyarrow as pa

    from batchml.estimators import make_estimator
    from batchml.synthetic import iter_review_batches, synthetic_reviews

    train = synthetic_reviews(int(p["n_train"]), seed=1)
    rows = int(p["rows"])
    column = pa.Table.from_batches(list(iter_review_batches(rows, seed=7))).column("review")
    column = column.combine_chunks()
    floor_n = min(rows, FLOOR_MAX_ROWS)
    floor_texts = column.slice(0, floor_n).to_pylist()
    answer: dict[str, Any] = {}
    for name in FLAVORS:
        est = make_estimator(name, text_column="review").fit(train[["review"]],
                                                             train["labels"])
        linear = est.linear  # type: ignore[attr-defined]
        if linear is None:
            raise RuntimeError(f"{name} has no linear export")
        linear.predict_proba(column.slice(0, 1_000))  # warm
        seconds, cpu = [], []
        for _ in range(int(p["reps"])):
            c0, t0 = _cpu(), time.perf_counter()
            linear.predict_proba(column)
            seconds.append(time.perf_counter() - t0)
            cpu.append(_cpu() - c0)
        start = time.perf_counter()
        expected = est.model.predict_proba(floor_texts)  # type: ignore[attr-defined]
        floor_s = time.perf_counter() - start
        diff = float(np.abs(linear.predict_proba(column.slice(0, floor_n)) - expected).max())
        if not diff <= 1e-6:
            raise RuntimeError(f"{name}: fast path differs from scikit-learn by {diff:.3g}")
        answer[name] = {"seconds": seconds, "cpu_s": cpu, "floor_rows": floor_n,
                        "floor_rows_s": floor_n / floor_s, "max_diff": diff}
    return answer


if __name__ == "__main__":
    sys.stdout.write(json.dumps(measure(json.loads(sys.argv[1]))) + "\n")
