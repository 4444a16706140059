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

    from flows.pieces import score_large_file_flow

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
