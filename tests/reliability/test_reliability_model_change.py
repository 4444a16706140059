"""3. The model changes mid-stream: while files flow through a worker, the tag moves from the
old run to a new one. Every output's ``model_run_id`` column equals its batch's model run in the
catalog, and no batch that started after the tag was removed from the old run used that run.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import relhelp

from batchml import Catalog
from batchml.scoring import Outbox
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

pytestmark = [pytest.mark.reliability,
              pytest.mark.parametrize("rel_backend", relhelp.BOTH, indirect=True)]


def catalog_view(cat: Catalog) -> pd.DataFrame:
    return cat.sql(
        "SELECT f.source_uri, f.output_uri, bf.batch_id, bf.model_run_id AS file_model,"
        " b.model_run_id AS batch_model, b.started_at FROM files f"
        " JOIN batch_files bf ON bf.file_id = f.file_id AND bf.batch_id = f.batch_id"
        " JOIN prediction_batches b ON b.batch_id = bf.batch_id WHERE f.state = 'scored'")


def untagged_at(cat: Catalog, run_id: str) -> datetime:
    hist = cat.sql("SELECT removed_at FROM tags WHERE run_id = ? AND tag = ? AND removed_at"
                   " IS NOT NULL ORDER BY removed_at DESC LIMIT 1", [run_id, relhelp.TAG])
    return hist["removed_at"].iloc[0]


def check_lineage(cat: Catalog, old: str, removed_at: datetime) -> pd.DataFrame:
    rows = catalog_view(cat)
    for _, row in rows.iterrows():
        out = pd.read_parquet(row["output_uri"], columns=["model_run_id", "batch_id"])
        assert set(out["model_run_id"]) == {row["batch_model"]} == {row["file_model"]}, row
        assert set(out["batch_id"]) == {row["batch_id"]}, row
        assert f"/{row['batch_model'].replace('/', '-')}/" in row["output_uri"]
    late = rows[rows["started_at"] > removed_at]
    assert (late["batch_model"] != old).all(), late[late["batch_model"] == old]
    return rows


SWITCH = 8  # the file whose batch is mid-write when the tag moves


def test_tag_moves_while_files_flow(home: Any, rel_base: Any) -> None:
    """The tag moves while a batch that started with the old model is writing a file.

    Ordered by events, not by a large file outlasting a probe: the worker's outbox has a
    commit guard (a hook in the scoring path, before an output is put in place) that, for
    file ``SWITCH``, sets ``writing`` and blocks on ``moved``. The test lands files
    0..SWITCH, waits for ``writing`` (that batch claimed its model and wrote the output),
    moves the tag, sets ``moved``, and only then lands the rest: so the batch of file SWITCH
    used the old model, and every file landed after it was claimed in a batch that started
    after the tag moved."""
    old, new = rel_base.old_run, rel_base.new_run
    cat = Catalog.from_settings(home)
    inbox, outbox = Path(home.inbox), Path(home.outbox)
    src = DirectorySource(inbox, quarantine_dir=home.quarantine)
    writing, moved = threading.Event(), threading.Event()

    def hold_the_switch_file(key: str) -> None:
        if f"m-{SWITCH:03d}-" in key:
            writing.set()
            assert moved.wait(60), "the tag was never moved"

    worker = Worker(cat, src, home,
                    outbox=Outbox(str(outbox), commit_guard=hold_the_switch_file))
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            worker.run(stop, idle_s=0.2, limit=4)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    n = 24
    frames = [synthetic_reviews(100, seed=i) for i in range(n)]
    names = []
    for i, frame in enumerate(frames):
        names.append(str(relhelp.land(inbox / f"m-{i:03d}.parquet", frame)))
        if i == SWITCH:
            # file SWITCH is being written out by a batch that started with the old model
            # (its commit waits for `moved`): move the tag now, mid-batch
            assert writing.wait(60), "the switch file was never being written"
            cat.run(new).add_tag(relhelp.TAG, note="reliability: new model")
            cat.run(old).remove_tag(relhelp.TAG)
            moved.set()
        time.sleep(0.05)
    deadline = time.monotonic() + 120
    while len(relhelp.committed_outputs(outbox)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(30)
    src.close()
    assert not errors, errors
    removed_at = untagged_at(cat, old)
    rows = check_lineage(cat, old, removed_at)
    assert sorted(rows["source_uri"]) == sorted(names)
    used = rows.groupby("batch_model")["source_uri"].count().to_dict()
    assert set(used) == {old, new}, used  # the switch really happened mid-stream
    model_of = dict(zip(rows["source_uri"], rows["batch_model"], strict=True))
    assert model_of[names[SWITCH]] == old  # its batch began before the move, ended after it
    assert {model_of[u] for u in names[SWITCH + 1:]} == {new}
    by_input = relhelp.outputs_by_input(outbox)
    assert all(len(v) == 1 for v in by_input.values()) and len(by_input) == n
    print(f"\n[model-change] files={n} old={old}:{used[old]} new={new}:{used[new]} "
          "mismatches=0")


def test_batch_started_after_untag_never_uses_untagged_model(home: Any, rel_base: Any) -> None:
    old, new = rel_base.old_run, rel_base.new_run
    cat = Catalog.from_settings(home)
    inbox = Path(home.inbox)
    relhelp.land(inbox / "race.parquet", synthetic_reviews(30, seed=3))
    worker = Worker(cat, DirectorySource(inbox, quarantine_dir=home.quarantine,
                                         use_events=False), home)
    worker.discover()

    def move_tag(_claimed: list[Any]) -> None:  # what another process may do at this moment
        cat.run(new).add_tag(relhelp.TAG)
        cat.run(old).remove_tag(relhelp.TAG)

    report = worker.run_batch(on_claimed=move_tag)
    assert [o.status for o in report.outcomes] == ["scored"]
    check_lineage(cat, old, untagged_at(cat, old))
