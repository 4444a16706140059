"""The Prefect flows are thin wiring: real flow runs on a temporary Prefect server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batchml import Catalog, Settings
from batchml.synthetic import synthetic_reviews


@pytest.fixture(scope="module")
def prefect_server():  # type: ignore[no-untyped-def]
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def artifacts_of(flow_run_id: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read() -> dict[str, object]:
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return {a.key: a for a in found}

    return asyncio.run(read())


def test_train_then_predict_flows(prefect_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from batchml.flows.predict import predict_flow
    from batchml.flows.train import train_flow

    synthetic_reviews(1200, seed=1).to_parquet(tmp_path / "train.parquet")
    synthetic_reviews(400, seed=2).to_parquet(tmp_path / "valid.parquet")
    settings = Settings(home=tmp_path / "home")
    result = train_flow(train_uri=str(tmp_path / "train.parquet"),
                        valid_uri=str(tmp_path / "valid.parquet"), text_column="review",
                        candidates=["sklearn_text", "sklearn_text_nb"], settings=settings)
    assert result["tagged"], result["reasons"]
    run = Catalog.from_settings(settings).run(result["run_id"])
    assert run.prefect_flow_run_id
    found = artifacts_of(run.prefect_flow_run_id)
    assert {"candidates", "gate-decision"} <= set(found)
    assert "tagged **deployment candidate**" in str(found["gate-decision"].data)  # type: ignore[attr-defined]
    # the gate passed: the winner is version 1 of the model named after the label, champion
    assert result["registry"].startswith("registered labels/1; promoted to champion")
    assert "## Registry: `labels/1`" in str(found["gate-decision"].data)  # type: ignore[attr-defined]

    files = []
    for i in range(3):
        path = tmp_path / f"in{i}.parquet"
        synthetic_reviews(25, seed=30 + i).to_parquet(path)
        files.append(str(path))
    out = predict_flow(files=files, settings=settings)
    assert out["model_run_id"] == run.id
    assert [f["status"] for f in out["files"]] == ["scored"] * 3
    batch = Catalog.from_settings(settings).sql(
        "SELECT prefect_flow_run_id, files, rows FROM prediction_batches WHERE batch_id = ?",
        [out["batch_id"]]).iloc[0]
    assert (batch["files"], batch["rows"]) == (3, 75)
    assert "prediction-batch" in artifacts_of(batch["prefect_flow_run_id"])
    again = predict_flow(files=files, settings=settings)
    assert again["files"] == []  # exactly once


def test_train_flow_with_a_smoke_file(prefect_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    import pandas as pd

    from batchml.flows.train import train_flow

    synthetic_reviews(800, seed=1).to_parquet(tmp_path / "train.parquet")
    synthetic_reviews(300, seed=2).to_parquet(tmp_path / "valid.parquet")
    pd.DataFrame({"review": ["a wonderful flattering dress, love it",
                             "awful cheap fabric, returned it"],
                  "labels": [1, 0]}).to_parquet(tmp_path / "smoke.parquet")
    settings = Settings(home=tmp_path / "home")
    result = train_flow(train_uri=str(tmp_path / "train.parquet"),
                        valid_uri=str(tmp_path / "valid.parquet"), text_column="review",
                        candidates=["sklearn_text"], smoke_uri=str(tmp_path / "smoke.parquet"),
                        settings=settings)
    assert result["tagged"], result["reasons"]
    run = Catalog.from_settings(settings).run(result["run_id"])
    assert run.params["smoke_uri"] == str(tmp_path / "smoke.parquet")
    report = json.loads(run.fetch_artifact("gate.json"))
    assert [s["passed"] for s in report["smoke"]] == [True, True]
    found = artifacts_of(run.prefect_flow_run_id)  # type: ignore[arg-type]
    markdown = str(found["gate-decision"].data)  # type: ignore[attr-defined]
    assert "## Smoke examples" in markdown and "| smoke_examples |" in markdown
    assert "decision threshold:" in markdown
