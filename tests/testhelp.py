"""Helpers the tests import by name (``from testhelp import ...``). They live here, not in
``conftest.py``: two conftest modules (tests/ and tests/reliability/) would make
``from conftest import ...`` depend on which one pytest loaded last."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_tagged_home(data: Path, home: Path, *, train_rows: int = 1200,
                     valid_rows: int = 300,
                     catalog_url: str | None = None):  # type: ignore[no-untyped-def]
    """Train a fast scikit-learn text model on synthetic reviews written to ``data`` and tag
    it in the batchml home ``home`` (its catalog at ``catalog_url`` when given); return its
    Settings."""
    from batchml import Catalog, Settings
    from batchml import training as tr
    from batchml.synthetic import synthetic_reviews

    data.mkdir(parents=True, exist_ok=True)
    synthetic_reviews(train_rows, seed=1).to_parquet(data / "train.parquet")
    synthetic_reviews(valid_rows, seed=2).to_parquet(data / "valid.parquet")
    settings = Settings(home=home, catalog_url=catalog_url)
    outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(
        train_uri=str(data / "train.parquet"), valid_uri=str(data / "valid.parquet"),
        text_column="review", candidates=["sklearn_text"]))
    assert outcome.decision.tagged, outcome.decision.reasons
    Catalog.from_settings(settings).close()
    return settings


