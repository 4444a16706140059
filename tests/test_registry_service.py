"""A service that scores with ``NAME@ALIAS`` follows the alias: a move takes effect at the next
batch, without a restart; a batch in flight finishes on the version it started with; no output
mixes versions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from batchml import Catalog, Settings
from batchml.sources import ListSource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

BATCHML = str(Path(sys.executable).parent / "batchml")


def _two_versions(settings: Settings) -> tuple[Catalog, Any, Any]:
    """The tagged run as reviews/1 and a second run with the same model as reviews/2
    (different run ids, so every output says which version scored it); champion -> 1."""
    cat = Catalog.from_settings(settings)
    first = cat.latest_run(settings.train_flow, tag=settings.model_tag)
    name, info = next((n, m) for n, m in first.models.items() if m["is_primary"])
    second = cat.create_run(settings.train_flow)
    cat.backend.record_model(second.id, name, flavor=info["flavor"],
                             signature=info["signature"], artifact=info["artifact"],
                             primary=True)
    for art, meta in first.artifacts.items():
        cat.backend.record_artifact(second.id, art, uri=meta["uri"], sha256=meta["sha256"],
                                    size=meta["bytes"], kind=meta["kind"])
    second.finish()
    model = cat.model("reviews")
    v1, v2 = model.register(first), model.register(second)
    model.set_alias("champion", v1, expect=None, reason="first")
    return cat, v1, v2


def _wait_for(pred: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _outputs(outbox: Path) -> list[Path]:
    return sorted(p for p in outbox.rglob("*.parquet") if not p.name.startswith("."))


def test_a_batch_in_flight_finishes_on_its_version(tagged_home: Settings,
                                                   tmp_path: Path) -> None:
    cat, v1, v2 = _two_versions(tagged_home)
    files = []
    for i in range(6):
        path = tmp_path / f"in-{i}.parquet"
        synthetic_reviews(50, seed=i).to_parquet(path)
        files.append(str(path))
    worker = Worker(cat, ListSource(files), tagged_home, model="reviews@champion")
    worker.discover()
    moved = []

    def move(claimed: list[Any]) -> None:  # the alias moves after this batch was claimed
        moved.append(cat.model("reviews").set_alias("champion", v2, expect=v1))

    first = worker.run_batch(limit=3, on_claimed=move)
    second = worker.run_batch(limit=3)
    assert moved and first.model_run_id == v1.run_id and second.model_run_id == v2.run_id
    assert first.model_version == "reviews/1@champion"
    assert second.model_version == "reviews/2@champion"
    for report, version in ((first, v1), (second, v2)):
        assert len(report.outcomes) == 3
        for o in report.outcomes:
            assert set(pq.read_table(o.output_uri.removeprefix("file://"),
                                     columns=["model_run_id"])["model_run_id"].to_pylist()
                       ) == {version.run_id}


def _land(frame: pd.DataFrame, path: Path) -> None:
    """Land a file whole (written aside, then renamed in), as a producer should: a file
    written in place can be discovered half-written and then again as a new version."""
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp)
    tmp.rename(path)


def test_watch_follows_the_alias_without_a_restart(tagged_home: Settings) -> None:
    """`batchml watch --model reviews@champion` while files keep landing: the files scored
    before the move are version 1's and every batch started after it is version 2's (the
    claim resolves the alias in its transaction, so the switch is at the next batch)."""
    cat, v1, v2 = _two_versions(tagged_home)
    cat.close()
    inbox, outbox = Path(tagged_home.inbox), Path(tagged_home.outbox)
    inbox.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    env.update(BATCHML_HOME=str(tagged_home.home), BATCHML_ISOLATE_SCORING="false")
    proc = subprocess.Popen([BATCHML, "watch", str(inbox), "--model", "reviews@champion"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frames = [synthetic_reviews(40, seed=i) for i in range(4)]
    try:
        for i in range(5):  # one at a time, each scored before the next lands
            _land(frames[i % 4], inbox / f"a-{i}.parquet")
            _wait_for(lambda n=i + 1: len(_outputs(outbox)) >= n)
        move = Catalog.from_settings(tagged_home).model("reviews").set_alias(
            "champion", v2, expect=v1, reason="the service must follow")
        for i in range(15):  # a steady stream after the move, not waiting for outputs
            _land(frames[i % 4], inbox / f"b-{i}.parquet")
            time.sleep(0.05)  # the landing rate of the stream, not a wait for a result
        _wait_for(lambda: len(_outputs(outbox)) >= 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    by_input: dict[str, set[str]] = {}
    for out in _outputs(outbox):
        table = pq.read_table(out, columns=["model_run_id", "source_uri"]
                              if "source_uri" in pq.read_schema(out).names
                              else ["model_run_id"])
        runs = set(table["model_run_id"].to_pylist())
        assert len(runs) == 1, f"{out} mixes versions: {runs}"
        by_input[out.name] = runs
    cat = Catalog.from_settings(tagged_home)
    batches = cat.sql("SELECT started_at, model_run_id, model_version, model_alias, files"
                      " FROM prediction_batches WHERE files > 0 ORDER BY started_at")
    before = batches[batches["started_at"] < pd.Timestamp(move.valid_from)]
    after = batches[batches["started_at"] > pd.Timestamp(move.valid_from)]
    assert set(before["model_version"]) == {1} and before["files"].sum() == 5
    assert set(after["model_version"]) == {2} and after["files"].sum() == 15
    assert set(batches["model_alias"]) == {"champion"}
    assert set(after["model_run_id"]) == {v2.run_id}
    # no poll of the alias is involved: the first claim after the move resolves the new
    # version, so the delay is only the next file's discovery (printed, not asserted: timing)
    first_after = (after["started_at"].iloc[0] - pd.Timestamp(move.valid_from)).total_seconds()
    print(f"\n[alias-follow] first batch on version 2 started {first_after:.3f} s after the "
          f"move; batches before {len(before)}, after {len(after)}")
    files = cat.sql("SELECT f.source_uri, b.model_version FROM batch_files bf"
                    " JOIN prediction_batches b ON b.batch_id = bf.batch_id"
                    " JOIN files f ON f.file_id = bf.file_id")
    versions = {Path(u).name[0]: set() for u in files["source_uri"]}
    for uri, version in files.itertuples(index=False):
        versions[Path(uri).name[0]].add(version)
    assert versions == {"a": {1}, "b": {2}}
