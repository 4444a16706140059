"""One huge file scored in row-group pieces on a Dask LocalCluster through Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from batchml import Catalog, Settings
from batchml.pieces import plan_pieces
from batchml.synthetic import write_reviews


def test_plan_pieces_groups_row_groups(tmp_path: Path) -> None:
    path = write_reviews(tmp_path / "big.parquet", 10_000, row_group_size=1_000)
    pieces = plan_pieces(path, rows_per_piece=3_000)
    assert [p.rows for p in pieces] == [3000, 3000, 3000, 1000]
    assert [g for p in pieces for g in p.row_groups] == list(range(10))


def test_large_file_scored_in_parallel_pieces(tagged_home: Settings, tmp_path: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from batchml.flows.pieces import score_large_file_flow

    settings = tagged_home
    big = write_reviews(tmp_path / "big.parquet", 40_000, seed=3, row_group_size=5_000)
    assert pq.ParquetFile(big).metadata.num_row_groups == 8
    with prefect_test_harness(server_startup_timeout=120):
        result = score_large_file_flow(file=str(big), rows_per_piece=10_000, settings=settings)
        again = score_large_file_flow(file=str(big), rows_per_piece=10_000, settings=settings)
    assert result["status"] == "scored" and result["rows"] == 40_000
    assert again["status"] == "nothing to do"  # exactly once
    manifest = json.loads(Path(result["output"]).read_text())
    assert len(manifest["parts"]) == 4 and manifest["rows"] == 40_000
    parts = pd.concat(pd.read_parquet(p["uri"]) for p in manifest["parts"])
    assert parts["row_index"].tolist() == list(range(40_000))  # global row numbers, no gaps
    source = pd.read_parquet(big)
    assert parts["review_id"].tolist() == source["review_id"].tolist()
    row = Catalog.from_settings(settings).sql(
        "SELECT state, rows, output_uri FROM files WHERE source_uri = ?", [str(big)]).iloc[0]
    assert (row["state"], row["rows"]) == ("scored", 40_000)


def _worker(settings: Settings, file: Path):  # type: ignore[no-untyped-def]
    from batchml.sources import ListSource
    from batchml.worker import Worker

    return Worker(Catalog.from_settings(settings), ListSource([str(file)]), settings)


def _state(settings: Settings, file: Path) -> dict[str, object]:
    catalog = Catalog.from_settings(settings)
    row = catalog.sql("SELECT state, claimed_by, error, batch_id FROM files "
                      "WHERE source_uri = ?", [str(file)]).iloc[0].to_dict()
    batches = catalog.sql("SELECT status, error FROM prediction_batches ORDER BY started_at")
    return {**row, "batches": batches.to_dict("records")}


def test_in_process_pieces_score_once(tagged_home: Settings, tmp_path: Path) -> None:
    from batchml.pieces import score_in_pieces

    big = write_reviews(tmp_path / "big.parquet", 9_000, seed=4, row_group_size=1_000)
    result = score_in_pieces(_worker(tagged_home, big), rows_per_piece=3_000)
    assert (result["status"], result["rows"]) == ("scored", 9_000)
    manifest = json.loads(Path(result["output"]).read_text())
    assert [p["rows"] for p in manifest["parts"]] == [3_000, 3_000, 3_000]
    state = _state(tagged_home, big)
    assert state["state"] == "scored" and state["claimed_by"] is None
    assert [b["status"] for b in state["batches"]] == ["completed"]  # type: ignore[attr-defined]
    again = score_in_pieces(_worker(tagged_home, big), rows_per_piece=3_000)
    assert again["status"] == "nothing to do"


def _failing_on(index: int, exc: BaseException, outbox_root: object):  # type: ignore[no-untyped-def]
    """A piece mapper scoring every piece in this process but failing piece ``index``."""
    from batchml.pieces import score_piece
    from batchml.scoring import Outbox

    def map_pieces(pieces, path, record, model, batch_id):  # type: ignore[no-untyped-def]
        outbox = Outbox(str(outbox_root))
        results: list[object] = []
        for piece in pieces:
            if piece.index == index:
                results.append(exc)
            else:
                results.append(score_piece(path, record, model, outbox, batch_id, piece))
        return results

    return map_pieces


def test_a_failed_piece_quarantines_the_file_and_leaves_no_parts(tagged_home: Settings,
                                                                  tmp_path: Path) -> None:
    from batchml.pieces import score_in_pieces

    big = write_reviews(tmp_path / "big.parquet", 8_000, seed=5, row_group_size=1_000)
    mapper = _failing_on(2, ValueError("piece 2 of big.parquet: bad bytes in row group 4"),
                         tagged_home.outbox)
    result = score_in_pieces(_worker(tagged_home, big), rows_per_piece=2_000, map_pieces=mapper)
    assert result["status"] == "quarantined"
    assert "bad bytes in row group 4" in result["error"]
    state = _state(tagged_home, big)
    # before: the batch stayed 'running' and the claim stayed held
    assert state["state"] == "quarantined" and state["claimed_by"] is None
    assert [b["status"] for b in state["batches"]] == ["completed"]  # type: ignore[attr-defined]
    left = [p for p in Path(tagged_home.outbox).rglob("part-*.parquet")]
    assert left == []  # the three pieces that were written are removed
    assert not list(Path(tagged_home.outbox).rglob("_manifest.json"))


def test_a_transient_piece_failure_gives_the_file_back(tagged_home: Settings,
                                                       tmp_path: Path) -> None:
    from batchml.errors import BatchMLError, StorageUnavailable
    from batchml.pieces import score_in_pieces

    big = write_reviews(tmp_path / "big.parquet", 6_000, seed=6, row_group_size=1_000)
    mapper = _failing_on(1, StorageUnavailable("outbox did not answer (503)"), tagged_home.outbox)
    try:
        score_in_pieces(_worker(tagged_home, big), rows_per_piece=2_000, map_pieces=mapper)
    except BatchMLError as exc:
        assert "stays pending" in str(exc) and "503" in str(exc)
    else:
        raise AssertionError("a transient failure must be raised for the flow to retry")
    state = _state(tagged_home, big)
    assert state["state"] == "discovered" and state["claimed_by"] is None
    (batch,) = state["batches"]  # type: ignore[misc]
    assert batch["status"] == "failed" and "503" in batch["error"]
    assert not list(Path(tagged_home.outbox).rglob("part-*.parquet"))
    # the outage over, the same file is scored once
    result = score_in_pieces(_worker(tagged_home, big), rows_per_piece=2_000)
    assert (result["status"], result["rows"]) == ("scored", 6_000)
