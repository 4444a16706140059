"""Training end to end: baseline + candidates, gate both ways, everything in the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batchml import Catalog, Settings
from batchml import training as tr
from batchml.synthetic import synthetic_tabular

REVIEWS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / \
    "womens_clothing_reviews"


@pytest.fixture(scope="module")
def reviews_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, tr.TrainingOutcome]:
    """Baseline + every text candidate on the real clothing reviews."""
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(
        train_uri=str(REVIEWS / "train.parquet"), valid_uri=str(REVIEWS / "valid.parquet"),
        text_column="review", label="labels"))
    return settings, outcome


def test_clothing_reviews_beat_baseline_and_get_tagged(reviews_run) -> None:  # type: ignore[no-untyped-def]
    settings, outcome = reviews_run
    names = [r.name for r in outcome.results]
    assert names[0] == "baseline" and len(names) >= 4  # baseline + 3 candidates
    assert all(r.error is None for r in outcome.results), [r.error for r in outcome.results]
    d = outcome.decision
    assert d.tagged, d.reasons
    assert d.winner != "baseline" and d.winner_score > d.baseline_score + 0.1  # type: ignore[operator]
    assert all(s.passed for s in outcome.smoke or [])
    run = Catalog.from_settings(settings).latest_run("train", tag="deployment_candidate")
    assert run == outcome.run and run.successful
    for key in ("accuracy", "roc_auc", "precision", "recall", "f1", "log_loss",
                "balanced_accuracy", "f1_macro", "threshold",
                "baseline.roc_auc", f"{d.winner}.roc_auc", f"{d.winner}.threshold"):
        assert key in run.metrics, key
    assert run.metrics["roc_auc"] == pytest.approx(d.winner_score)
    assert run.metrics["baseline.roc_auc"] == pytest.approx(0.5)
    assert run.data_fingerprint and run.code_fingerprint
    primary = [n for n, m in run.models.items() if m["is_primary"]]
    assert primary == [d.winner]
    sig = run.models[d.winner]["signature"]
    assert [c["name"] for c in sig["inputs"]] == ["review"]
    plots = {n for n, a in run.artifacts.items() if a["kind"] == "plot"}
    assert {"plots/roc_curve.png", "plots/pr_curve.png",
            f"plots/confusion_{d.winner}.png"} <= plots
    assert any(n.startswith("plots/training_keras") for n in plots)
    for name in plots:
        assert run.fetch_artifact(name)[:8] == b"\x89PNG\r\n\x1a\n"
    gate = json.loads(run.fetch_artifact("gate.json"))
    assert gate["decision"]["tagged"] and gate["smoke"] == []  # no clothing sentences built in
    assert {c["name"]: c["outcome"] for c in gate["checks"]} == {
        "probabilities_well_formed": "pass", "probabilities_vary": "pass",
        "predictions_vary": "pass", "every_class_predicted": "pass",
        "perturbation_stability": "pass", "holdout_agreement": "pass",
        "smoke_examples": "skip"}
    assert gate["threshold"] == pytest.approx(run.metrics["threshold"])
    assert run.load_model().threshold == pytest.approx(run.metrics["threshold"])


def test_model_loads_in_a_plain_python_session(reviews_run) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    settings, outcome = reviews_run
    code = (
        "import sys, pandas as pd\n"
        "from batchml import Catalog\n"
        "run = Catalog(sys.argv[1]).latest_run('train', tag='deployment_candidate')\n"
        "model = run.load_model()\n"
        "df = pd.DataFrame({'review': ['love it, great fit and soft', 'poor quality, "
        "returned it']})\n"
        "print(run.id, model.predict(df).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(settings.catalog_file)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == outcome.run.id
    assert out.stdout.strip().endswith("[1, 0]")


def test_same_data_same_fingerprint_and_the_record_on_each_backend(  # type: ignore[no-untyped-def]
        reviews_run, catalog_url: str, tmp_path: Path) -> None:
    settings, outcome = reviews_run
    cat = Catalog(catalog_url, store=Catalog.from_settings(settings).store)
    again = tr.train(cat, tr.TrainingConfig(train_uri=str(REVIEWS / "train.parquet"),
                                            valid_uri=str(REVIEWS / "valid.parquet"),
                                            text_column="review", candidates=["sklearn_text"]))
    assert again.run.data_fingerprint == outcome.run.data_fingerprint
    # what training recorded reads back the same from this backend, through a new catalog
    run = Catalog(catalog_url, store=cat.store).latest_run("train", tag="deployment_candidate")
    assert run == again.run and run.successful and run.code_fingerprint
    assert "sklearn_text" in run.params["candidates"]
    assert {"accuracy", "roc_auc", "baseline.roc_auc", "sklearn_text.roc_auc"} <= set(run.metrics)
    assert [n for n, m in run.models.items() if m["is_primary"]] == ["sklearn_text"]
    assert run.models["sklearn_text"]["signature"]["inputs"][0]["name"] == "review"
    assert json.loads(run.fetch_artifact("gate.json"))["decision"]["tagged"]
    history = run.tag_history()
    assert list(history["tag"]) == ["deployment_candidate"] and history["removed_at"].isna().all()
    model = run.load_model()
    assert model.predict_proba(pd.DataFrame({"review": ["fits well", "tore at once"]})).shape \
        == (2, 2)


def test_shuffled_labels_are_not_tagged(tmp_path: Path, catalog_url: str) -> None:
    train = pd.read_parquet(REVIEWS / "train.parquet")
    train["labels"] = np.random.default_rng(0).permutation(train["labels"].to_numpy())
    train.to_parquet(tmp_path / "shuffled.parquet")
    settings = Settings(home=tmp_path, catalog_url=catalog_url)
    outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(
        train_uri=str(tmp_path / "shuffled.parquet"), valid_uri=str(REVIEWS / "valid.parquet"),
        text_column="review", candidates=["sklearn_text", "sklearn_text_nb"],
        baseline_margin=0.05))
    assert not outcome.decision.tagged
    run = Catalog.from_settings(settings).run(outcome.run.id)
    assert run.successful and run.tags == set()
    gate = json.loads(run.fetch_artifact("gate.json"))
    reasons = " ".join(gate["decision"]["reasons"])
    assert "does not beat the baseline" in reasons
    assert "check holdout_agreement failed" in reasons


def test_tabular_multiclass_training(tmp_path: Path) -> None:
    synthetic_tabular(1500, seed=0, classes=3).to_parquet(tmp_path / "train.parquet")
    synthetic_tabular(500, seed=1, classes=3).to_parquet(tmp_path / "valid.parquet")
    settings = Settings(home=tmp_path)
    features = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(
        train_uri=str(tmp_path / "train.parquet"), valid_uri=str(tmp_path / "valid.parquet"),
        feature_columns=features, label="segment",
        candidates=["tabular_logreg", "tabular_rf", "tabular_gb", "keras_nbow"]))
    by_name = {r.name: r for r in outcome.results}
    # a candidate that does not fit fails with its reason recorded; the others carry on
    assert "reads a text column, and none was given" in (by_name["keras_nbow"].error or "")
    for name in ("tabular_logreg", "tabular_rf", "tabular_gb"):
        assert by_name[name].error is None
        assert len(by_name[name].metrics["confusion_matrix"]) == 3
    assert outcome.decision.tagged, outcome.decision.reasons
    run = outcome.run
    model = run.load_model()
    proba = model.predict_proba(pd.read_parquet(tmp_path / "valid.parquet")[features])
    assert proba.shape == (500, 3)
    assert "keras_nbow.seconds" in run.metrics


def test_crash_marks_the_run_failed(tmp_path: Path, catalog_url: str) -> None:
    from batchml.errors import DataError

    settings = Settings(home=tmp_path, catalog_url=catalog_url)
    cat = Catalog.from_settings(settings)
    with pytest.raises(DataError, match="does not exist"):
        tr.train(cat, tr.TrainingConfig(train_uri=str(tmp_path / "nope.parquet"),
                                        valid_uri=str(tmp_path / "nope.parquet"),
                                        text_column="review"))
    run = cat.latest_run("train", successful=False)
    assert run.status == "failed" and "does not exist" in (run.error or "")


def test_single_class_training_data_fails_clearly(tmp_path: Path) -> None:
    from batchml.errors import DataError

    pd.DataFrame({"review": ["a", "b"], "labels": [1, 1]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match="single class"):
        tr.train(Catalog(tmp_path / "c.duckdb"), tr.TrainingConfig(
            train_uri=str(tmp_path / "t.parquet"), valid_uri=str(tmp_path / "t.parquet"),
            text_column="review"))
