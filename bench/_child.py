"""Work the benchmarks run in a fresh child process: ``python -m bench._child COMMAND JSON``.

Each command prints one JSON line with its measurements. Commands:

``prepare-models``  train keras_nbow and sklearn_text once, put each in a template batchml home
                    as a tagged run, save the model bytes, and measure warm predict throughput.
``floor``           the plain script: pyarrow read + the model's predict_proba + pyarrow write.
``iofloor``         pyarrow read + write of one float column (no model).
``service``         the warm path: Worker.run_batch in-process with a warm ModelCache.
``train``           batchml.training.train on synthetic reviews.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()

BATCH_ROWS = 65_536


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load(flavor: str, model_file: str) -> Any:
    from batchml.estimators import load_estimator

    return load_estimator(flavor, Path(model_file).read_bytes())


def prepare_models(p: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa

    from batchml import Catalog, Settings
    from batchml.estimators import make_estimator
    from batchml.synthetic import synthetic_reviews

    out = Path(p["dir"])
    train = synthetic_reviews(int(p["n_train"]), seed=1)
    calib = pa.Table.from_pandas(synthetic_reviews(int(p["n_calibrate"]), seed=99)[["review"]],
                                 preserve_index=False).combine_chunks().to_batches()[0]
    answer: dict[str, Any] = {}
    for name in ("keras_nbow", "sklearn_text"):
        start = time.perf_counter()
        est = make_estimator(name, text_column="review").fit(train[["review"]], train["labels"])
        fit_s = time.perf_counter() - start
        home = out / name / "home"
        catalog = Catalog.from_settings(Settings(home=home))
        run = catalog.create_run("train", params={"bench": True, "candidate": name})
        run.log_model(name, est, primary=True)
        run.finish()
        run.add_tag("deployment_candidate")
        catalog.db.close()
        model_file = out / name / f"model{est.file_suffix}"
        model_file.write_bytes(est.to_bytes())
        est.predict_proba(calib.slice(0, 64))  # warm: keras traces its function once
        start = time.perf_counter()
        est.predict_proba(calib)
        predict_s = time.perf_counter() - start
        answer[name] = {"flavor": est.flavor, "run_id": run.id, "fit_s": fit_s,
                        "catalog": str(home / "catalog.duckdb"),
                        "artifacts": str(home / "artifacts"), "model_file": str(model_file),
                        "rows_per_s": calib.num_rows / predict_s}
    return answer


def floor(p: dict[str, Any]) -> dict[str, Any]:
    """Plain scoring of each input: stream record batches, predict_proba, write a parquet
    with the id and the probability. Times each file after one tiny warm-up call."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    est = _load(p["flavor"], p["model_file"])
    text = est.signature.input_names[0]
    first = pq.ParquetFile(p["inputs"][0])
    est.predict_proba(next(first.iter_batches(batch_size=64, columns=[text])))
    startup_s = time.perf_counter() - _T0
    seconds, rows_done = [], []
    out_dir = Path(p["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu0 = _cpu()

    def score(batch: Any) -> Any:
        proba = est.predict_proba(batch.select([text]))
        return pa.table({"review_id": batch.column("review_id"),
                         "proba": pa.array(proba[:, -1].astype(np.float64))})

    for i, path in enumerate(p["inputs"]):
        start = time.perf_counter()
        target = out_dir / f"floor-{i}.parquet"
        rows = _rewrite(path, target, score)
        seconds.append(time.perf_counter() - start)
        rows_done.append(rows)
        if not p.get("keep"):
            target.unlink(missing_ok=True)
    return {"seconds": seconds, "rows": rows_done, "startup_s": startup_s,
            "cpu_s": _cpu() - cpu0}


def _rewrite(source: Any, target: Path, transform: Any) -> int:
    """Stream ``source`` (memory-mapped) by record batches through ``transform`` into
    ``target`` (zstd); return the rows read. The floors' plain read-transform-write loop."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(source, memory_map=True)
    writer = None
    rows = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):
        table = transform(batch)
        if writer is None:
            writer = pq.ParquetWriter(target, table.schema, compression="zstd")
        writer.write_table(table)
        rows += batch.num_rows
    if writer is not None:
        writer.close()
    return rows


def iofloor(p: dict[str, Any]) -> dict[str, Any]:
    """Read every column of the input and write one float column per batch: the I/O alone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    seconds = []
    rows = 0
    for rep in range(int(p["reps"])):
        start = time.perf_counter()
        target = Path(p["out_dir"]) / f"io-{rep}.parquet"
        rows = _rewrite(p["input"], target, lambda batch: pa.table({"value": pc.cast(
            pc.utf8_length(batch.column("review")), pa.float64())}))
        seconds.append(time.perf_counter() - start)
        target.unlink(missing_ok=True)
    return {"seconds": seconds, "rows": rows}


def service(p: dict[str, Any]) -> dict[str, Any]:
    """The warm path: one long-lived Worker (catalog, ModelCache) scoring the file again and
    again under new names (hard links), as ``batchml serve`` does for each micro-batch."""
    from batchml import Catalog, Settings
    from batchml.sources import ListSource
    from batchml.worker import Worker

    home = Path(p["home"])
    settings = Settings(home=home, artifact_root=p["artifacts"])
    catalog = Catalog.from_settings(settings)
    links = home / "inputs"
    links.mkdir(parents=True, exist_ok=True)

    def link(src: str, name: str) -> str:
        target = links / name
        try:
            os.link(src, target)
        except OSError:
            import shutil

            shutil.copy2(src, target)
        return str(target)

    worker = Worker(catalog, ListSource([]), settings)

    def score(path: str) -> tuple[float, float, Any]:
        worker.source = ListSource([path])
        worker.discover()
        cpu0 = _cpu()
        start = time.perf_counter()
        report = worker.run_batch(limit=10)
        seconds = time.perf_counter() - start
        cpu = _cpu() - cpu0
        if not report.outcomes or report.outcomes[0].status != "scored":
            raise RuntimeError(f"not scored: {report.table()} {report.error}")
        return seconds, cpu, report

    score(link(p["warm_input"], "warm.parquet"))  # loads the model, warms the catalog
    seconds, cpus, rows = [], [], 0
    for rep in range(int(p["reps"])):
        s, c, report = score(link(p["input"], f"rep{rep}.parquet"))
        seconds.append(s)
        cpus.append(c)
        rows = report.rows
        for o in report.outcomes:  # keep the disk free: outputs are checked, not kept
            if o.output_uri:
                Path(o.output_uri).unlink(missing_ok=True)
    return {"seconds": seconds, "cpu_s": cpus, "rows": rows}


def train(p: dict[str, Any]) -> dict[str, Any]:
    from batchml import Catalog, open_store
    from batchml.synthetic import write_reviews
    from batchml.training import TrainingConfig
    from batchml.training import train as run_training

    home = Path(p["dir"])
    home.mkdir(parents=True, exist_ok=True)
    train_uri = write_reviews(home / "train.parquet", int(p["n_train"]), seed=1)
    valid_uri = write_reviews(home / "valid.parquet", int(p["n_valid"]), seed=2)
    catalog = Catalog(home / "catalog.duckdb", store=open_store(str(home / "artifacts")))
    config = TrainingConfig(train_uri=str(train_uri), valid_uri=str(valid_uri),
                            text_column="review")
    start = time.perf_counter()
    outcome = run_training(catalog, config)
    total = time.perf_counter() - start
    metrics = outcome.run.metrics
    candidates = [r.name for r in outcome.results]
    return {"total_s": total, "tagged": outcome.decision.tagged,
            "winner": outcome.decision.winner,
            "seconds": {c: metrics.get(f"{c}.seconds") for c in candidates},
            "errors": {r.name: r.error for r in outcome.results if r.error},
            "roc_auc": {c: metrics.get(f"{c}.roc_auc") for c in candidates}}


COMMANDS = {"prepare-models": prepare_models, "floor": floor, "iofloor": iofloor,
            "service": service, "train": train}


def main() -> None:
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    if os.environ.get("BENCH_PROFILE"):
        from pyinstrument import Profiler

        profiler = Profiler()
        profiler.start()
        answer = COMMANDS[command](payload)
        profiler.stop()
        Path(os.environ["BENCH_PROFILE"]).write_text(profiler.output_text(show_all=False))
    else:
        answer = COMMANDS[command](payload)
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
