"""B12: the cost of drift per batch. The same files scored by the same model with drift off
and on (``score_file(..., drift=)``, in one warm process), for a text model and a tabular one;
the figure is the ratio of the median times (target <= 1.10).

The measuring runs in a fresh child (``python -m bench.b12_drift JSON``): it imports
scikit-learn to train its two models (``train()`` with one candidate each, so the runs carry
their ``drift_reference.json``), then alternates off / on per repetition so load on the
machine falls on both sides alike.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import PYTHON, Context, Figure, clean_env, figure, run_child

MODELS = {"text": "sklearn_text", "tabular": "tabular_logreg"}


def run(ctx: Context) -> list[Figure]:
    payload = {"rows": ctx.sizes["b12_rows"], "reps": ctx.sizes["b12_reps"],
               "train_rows": ctx.sizes["b12_train_rows"], "dir": str(ctx.dir("b12"))}
    result = run_child([PYTHON, "-m", "bench.b12_drift", json.dumps(payload)],
                       env=clean_env()).check()
    answer = result.json()
    figs: list[Figure] = []
    for kind, model in MODELS.items():
        off, on = answer[kind]["off"], answer[kind]["on"]
        rows = answer[kind]["rows"]
        floor = sorted(off)[len(off) // 2]
        ratio = sorted(on)[len(on) // 2] / floor
        ctx.log(f"  B12 {kind}: off {', '.join(f'{v:.2f}' for v in off)} s, on "
                f"{', '.join(f'{v:.2f}' for v in on)} s: ratio {ratio:.3f}")
        figs.append(figure("B12", f"drift.{kind}", f"{kind} ({model}) scoring with drift on, "
                           f"{rows:,} rows", on, "s", floor=floor, target="ratio <= 1.10",
                           met=ratio <= 1.10,
                           notes=f"{answer[kind]['metrics']} drift metrics per file; fastest "
                                 f"on / fastest off {min(on) / min(off):.3f}"))
        figs.append(figure("B12", f"floor.{kind}", f"{kind} ({model}) scoring with drift off, "
                           f"{rows:,} rows", off, "s"))
    return figs


def measure(p: dict[str, Any]) -> dict[str, Any]:
    """In the child: train both models, write the files, time scoring off and on."""
    from batchml import Catalog, Settings
    from batchml.catalog import FileRef
    from batchml.catalog.records import FileRecord
    from batchml.drift import DriftThresholds
    from batchml.drift_report import batch_drift
    from batchml.resolve import ModelRef
    from batchml.scoring import ModelCache, Outbox, score_file
    from batchml.synthetic import synthetic_reviews, synthetic_tabular
    from batchml.training import TrainingConfig, train

    root = Path(tempfile.mkdtemp(dir=p["dir"]))
    settings = Settings(home=root / "home")
    catalog = Catalog.from_settings(settings)
    answer: dict[str, Any] = {}
    for kind, candidate in MODELS.items():
        n = p["train_rows"]
        if kind == "text":
            make: Any = lambda rows, seed: synthetic_reviews(rows, seed=seed)  # noqa: E731
            cfg: dict[str, Any] = {"text_column": "review", "label": "labels"}
        else:
            make = lambda rows, seed: synthetic_tabular(rows, seed=seed)  # noqa: E731
            cfg = {"feature_columns": ["tenure_months", "monthly_charges", "support_calls",
                                       "plan", "region"], "label": "segment"}
        make(n, 1).to_parquet(root / f"{kind}-train.parquet")
        make(n // 4, 2).to_parquet(root / f"{kind}-valid.parquet")
        outcome = train(catalog, TrainingConfig(
            train_uri=str(root / f"{kind}-train.parquet"),
            valid_uri=str(root / f"{kind}-valid.parquet"), candidates=[candidate],
            tag=f"b12-{kind}", **cfg))
        model = ModelCache(catalog).resolve(ModelRef.for_run(outcome.run.id))
        assert model.reference is not None, "the run has no drift reference"
        path = root / f"{kind}-score.parquet"
        make(p["rows"], 3).to_parquet(path)
        stat = path.stat()
        ref = FileRef(str(path), size=stat.st_size)
        record = FileRecord(ref.file_id, str(path), None, stat.st_size, None, "claimed", 1)
        outbox = Outbox(str(root / f"{kind}-out"))
        times: dict[str, list[float]] = {"off": [], "on": []}
        score_file(path, record, model, outbox, "warm-up", drift=True)
        metrics = 0
        for rep in range(p["reps"]):
            for drift in (False, True) if rep % 2 == 0 else (True, False):
                start = time.perf_counter()
                out = score_file(path, record, model, outbox, f"b12-{rep}", drift=drift)
                if drift:  # the batch's metrics count too
                    _, rows, _ = batch_drift(model.reference, [out], DriftThresholds())
                    metrics = len(rows)
                times["on" if drift else "off"].append(time.perf_counter() - start)
                assert out.status == "scored", out.error
        answer[kind] = {**times, "rows": p["rows"], "metrics": metrics}
    return answer


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
