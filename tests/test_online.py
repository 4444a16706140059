"""`OnlineScorer` micro-batching over a real trained model: concurrent requests share model
calls and each gets exactly its own rows back; a lone request is scored at once (no wait for
company); coalescing off means one call per request."""

from __future__ import annotations

import asyncio

import pandas as pd
import pyarrow as pa
import pytest

from batchml import Catalog, Settings
from batchml.online import ModelFollower, OnlineScorer
from batchml.resolve import ModelRef
from batchml.scoring import ModelCache

TEXTS = [f"review number {i}: {'lovely soft fabric' if i % 3 else 'ripped after a wash'}"
         for i in range(64)]


async def _score_all(scorer: OnlineScorer, tables: list[pa.Table]) -> list[pa.Table]:
    scorer.start()
    try:
        return [out for _, out in await asyncio.gather(*(scorer.score(t) for t in tables))]
    finally:
        await scorer.stop()


@pytest.fixture
def follower(module_tagged_home: Settings) -> ModelFollower:
    cat = Catalog.from_settings(module_tagged_home)
    ref = ModelRef.parse(f"tag:{module_tagged_home.model_tag}",
                         flow=module_tagged_home.train_flow)
    return ModelFollower(cat, ref, ModelCache(cat, flow=module_tagged_home.train_flow))


def _expected(follower: ModelFollower) -> list[str]:
    model = follower.current().model.estimator
    return [str(x) for x in model.predict(pd.DataFrame({"review": TEXTS}))]


@pytest.mark.parametrize(("batch_rows", "wait_ms", "most_calls"), [
    (256, 50.0, 63),  # coalesced: fewer calls than requests
    (0, 2.0, 64),     # off: one call per request
], ids=["coalescing", "off"])
def test_concurrent_requests_get_their_own_rows(follower: ModelFollower, batch_rows: int,
                                                wait_ms: float, most_calls: int) -> None:
    scorer = OnlineScorer(follower, batch_rows=batch_rows, batch_wait_ms=wait_ms)
    tables = [pa.table({"review": [t]}) for t in TEXTS]
    outs = asyncio.run(_score_all(scorer, tables))
    assert [str(o.column("label")[0].as_py()) for o in outs] == _expected(follower)
    assert all(o.num_rows == 1 for o in outs)
    assert 1 <= scorer.model_calls <= most_calls
    if batch_rows == 0:
        assert scorer.model_calls == len(TEXTS)


def test_batch_rows_bounds_a_model_call(follower: ModelFollower) -> None:
    scorer = OnlineScorer(follower, batch_rows=8, batch_wait_ms=50.0)
    tables = [pa.table({"review": TEXTS[i:i + 4]}) for i in range(0, 64, 4)]
    outs = asyncio.run(_score_all(scorer, tables))
    labels = [str(v) for o in outs for v in o.column("label").to_pylist()]
    assert labels == _expected(follower)
    assert scorer.model_calls >= 64 // 8  # never more than 8 rows (two requests) per call


def test_a_lone_request_does_not_wait_for_company(follower: ModelFollower) -> None:
    """With a huge wait, sequential requests still answer at once: the wait applies only
    when the last call coalesced several requests (load)."""
    scorer = OnlineScorer(follower, batch_rows=256, batch_wait_ms=60_000.0)

    async def sequential() -> int:
        scorer.start()
        try:
            for t in TEXTS[:5]:
                await asyncio.wait_for(scorer.score(pa.table({"review": [t]})), 30)
            return scorer.model_calls
        finally:
            await scorer.stop()

    assert asyncio.run(sequential()) == 5
