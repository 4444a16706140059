"""Champion and challenger through the real training path (issue 17 items 1 and 5): a run whose
gate passes registers its winner as the next version; the champion is scored on the same
validation rows with the gate's metric function and recorded in the run and its gate report;
challenger follows every new version; champion moves by the policy (auto beyond the margin,
manual never), compare-and-set against the version compared, so a champion someone moved
meanwhile is a recorded conflict, never overwritten. Reviews (text) and a multi-class table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.metrics import log_loss, roc_auc_score
from typer.testing import CliRunner

from batchml import Catalog, Settings
from batchml import training as tr
from batchml.champion import ChampionPolicy, default_model_name
from batchml.errors import ConfigError, RegistryError
from batchml.synthetic import synthetic_reviews, synthetic_tabular

FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small synthetic reviews (600 / 200 rows) and a 3-class table (600 / 200 rows)."""
    d = tmp_path_factory.mktemp("data")
    synthetic_reviews(600, seed=1).to_parquet(d / "train.parquet")
    synthetic_reviews(200, seed=2).to_parquet(d / "valid.parquet")
    synthetic_tabular(600, seed=0).to_parquet(d / "table_train.parquet")
    synthetic_tabular(200, seed=1).to_parquet(d / "table_valid.parquet")
    return d


def reviews(data: Path, *candidates: str, **kw: Any) -> tr.TrainingConfig:
    return tr.TrainingConfig(train_uri=str(data / "train.parquet"),
                             valid_uri=str(data / "valid.parquet"), text_column="review",
                             candidates=list(candidates), **kw)


def table(data: Path, *candidates: str, **kw: Any) -> tr.TrainingConfig:
    return tr.TrainingConfig(train_uri=str(data / "table_train.parquet"),
                             valid_uri=str(data / "table_valid.parquet"), label="segment",
                             feature_columns=FEATURES, candidates=list(candidates), **kw)


def gate_report(run: Any) -> tuple[dict[str, Any], str]:
    return json.loads(run.fetch_artifact("gate.json")), run.fetch_artifact("gate.md").decode()


def self_scored(version: Any, config: tr.TrainingConfig) -> tuple[np.ndarray, np.ndarray, Any]:
    """The version's probabilities on the validation rows, prepared as training prepares them,
    with the labels and the model (scored here, not by batchml.champion)."""
    prepared = tr.load_training_data(config)
    model = version.load()
    return model.predict_proba(prepared.valid_x), prepared.valid_y.to_numpy(), model


def test_first_training_registers_v1_and_makes_it_champion(data: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, model_name="reviews")
    config = reviews(data, "sklearn_text")
    outcome = tr.train_from_settings(settings, config)
    run, decision = outcome.run, outcome.decision
    assert decision.tagged and "deployment_candidate" in run.tags  # the tag works as before
    model = Catalog.from_settings(settings).model("reviews")
    [v1] = model.versions()
    assert (v1.version, v1.run_id, v1.model_name) == (1, run.id, decision.winner)
    assert model.aliases == {"champion": 1, "challenger": 1}
    score = f"roc_auc={decision.winner_score:.4f}"
    [champion] = model.history("champion")
    assert (champion.from_version, champion.to_version) == (None, 1)
    assert champion.reason == (f"auto promotion by training run {run.id}: no champion yet: "
                               f"version 1 {score} (gate passed) becomes the first")
    assert score in model.history("challenger")[0].reason
    assert not [k for k in run.metrics if k.startswith("champion.")]  # nothing to compare
    report, markdown = gate_report(run)
    assert report["registry"]["version"] == 1 and report["registry"]["promoted"]
    assert report["registry"]["champion_version"] is None
    assert report["decision"]["tagged"]  # the gate's own report is still there
    assert "## Registry: `reviews/1`" in markdown and "- champion compared: none" in markdown
    assert outcome.champion is not None
    assert outcome.champion.summary().startswith("registered reviews/1; promoted to champion")

    # settling the same run again (a retry) registers nothing and moves nothing
    again = ChampionPolicy.from_settings(settings, config.label).settle(
        run, tr.load_training_data(config), outcome.results, decision)
    assert again.version == 1 and [m.outcome for m in again.moves] == ["unchanged"]
    assert again.verdict == "version 1 already holds champion (a retried run)"
    assert len(model.versions()) == 1 and len(model.history()) == 2
    assert gate_report(run)[1].count("## Registry:") == 1


@pytest.mark.parametrize(("margin", "promoted"), [(10.0, False), (-10.0, True)],
                         ids=["huge-margin-keeps-champion", "negative-margin-promotes"])
def test_second_training_scores_the_champion_on_the_same_validation_data(
        data: Path, catalog: Any, margin: float, promoted: bool) -> None:
    """On both catalog backends: v2 is compared with champion v1 on the same rows (checked
    against scoring v1 here), challenger moves to v2, champion only beyond the margin."""
    first = tr.train(catalog, reviews(data, "sklearn_text_nb"),
                     champion=ChampionPolicy("reviews"))
    config = reviews(data, "sklearn_text")
    second = tr.train(catalog, config, champion=ChampionPolicy("reviews", margin=margin))
    model = catalog.model("reviews")
    v1, v2 = model.versions()
    assert (v1.run_id, v2.run_id) == (first.run.id, second.run.id)

    proba, y, champion_model = self_scored(v1, config)
    assert len(y) == 200
    expected_auc = roc_auc_score(y == champion_model.classes_[1], proba[:, 1])
    expected_accuracy = np.mean(champion_model.labels_from_proba(proba) == y)
    metrics = second.run.metrics
    assert metrics["champion.version"] == 1
    assert metrics["champion.roc_auc"] == pytest.approx(expected_auc, abs=1e-12)
    assert metrics["champion.accuracy"] == pytest.approx(expected_accuracy, abs=1e-12)
    assert metrics["champion.log_loss"] == pytest.approx(
        log_loss(y, proba, labels=champion_model.classes_), abs=1e-9)
    assert metrics["champion.threshold"] == champion_model.threshold  # as it scores live

    outcome = second.champion
    assert outcome is not None
    assert (outcome.version, outcome.champion_version, outcome.rows) == (2, 1, 200)
    assert outcome.champion_score == pytest.approx(expected_auc, abs=1e-12)
    new, old = f"{second.decision.winner_score:.4f}", f"{expected_auc:.4f}"
    report, markdown = gate_report(second.run)
    assert report["registry"]["champion_metrics"]["roc_auc"] == pytest.approx(expected_auc)
    assert report["registry"]["champion_confusion_matrix"] is not None
    assert "champion compared: version 1 (run train/1), scored on the same 200 validation " \
           "rows" in markdown
    assert f"| roc_auc | {new} | {old} |" in markdown

    assert model.alias("challenger") == v2
    challenger = model.history("challenger")[-1]
    assert (challenger.from_version, challenger.to_version) == (1, 2)
    assert challenger.reason == (f"training run {second.run.id} (sklearn_text): "
                                 f"roc_auc={new} on 200 validation rows; champion version 1: "
                                 f"roc_auc={old} on the same rows")
    assert outcome.promoted is promoted and outcome.wins is promoted
    compared = (f"version 2 roc_auc={new} {'beats' if promoted else 'does not beat'} champion "
                f"version 1 roc_auc={old} by more than the margin {margin:g} on the same 200 "
                "validation rows")
    moves = model.history("champion")
    if promoted:
        assert model.alias("champion") == v2
        assert [(m.from_version, m.to_version) for m in moves] == [(None, 1), (1, 2)]
        assert moves[-1].reason == f"auto promotion by training run {second.run.id}: {compared}"
    else:
        assert model.alias("champion") == v1 and len(moves) == 1
        assert outcome.verdict == f"{compared}; champion stays version 1"
        assert "not promoted: " + outcome.verdict in markdown


def test_manual_promotion_never_moves_champion(data: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, model_name="reviews", promotion="manual",
                        promotion_margin=-10.0)
    first = tr.train_from_settings(settings, reviews(data, "sklearn_text_nb"))
    model = Catalog.from_settings(settings).model("reviews")
    assert model.aliases == {"challenger": 1}
    assert first.champion is not None and not first.champion.promoted
    assert first.champion.verdict == ("promotion is manual and there is no champion yet; "
                                      "promote with `batchml models promote reviews 1`")
    model.promote(1, reason="a person looked")  # what `batchml models promote` does
    second = tr.train_from_settings(settings, reviews(data, "sklearn_text"))
    assert second.champion is not None and second.champion.wins  # it would win, but manual
    assert second.run.metrics["champion.version"] == 1 and "champion.roc_auc" in \
        second.run.metrics
    assert model.aliases == {"champion": 1, "challenger": 2}
    assert [m.reason for m in model.history("champion")] == ["a person looked"]
    assert second.champion.verdict.endswith(
        "; promotion is manual: promote with `batchml models promote reviews 2`")


def test_a_champion_moved_meanwhile_is_a_recorded_conflict(
        data: Path, duckdb_catalog: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Someone promotes another version between the comparison and the promotion (the hook
    runs exactly there): the promotion's compare-and-set fails, is recorded in the report and
    the log, and their choice stands."""
    catalog = duckdb_catalog
    first = tr.train(catalog, reviews(data, "sklearn_text", "sklearn_text_nb"),
                     champion=ChampionPolicy("reviews"))
    assert first.decision.winner == "sklearn_text"
    calls: list[tuple[str, int]] = []

    def someone_else(model: Any, version: Any) -> None:
        calls.append((model.name, version.version))
        theirs = model.register(first.run, model="sklearn_text_nb")  # version 3
        model.set_alias("champion", theirs, expect=1, reason="a person promoted version 3")

    policy = ChampionPolicy("reviews", margin=-10.0, before_promotion=someone_else)
    with caplog.at_level(logging.WARNING, logger="batchml.champion"):
        second = tr.train(catalog, reviews(data, "sklearn_text"), champion=policy)
    model = catalog.model("reviews")
    assert calls == [("reviews", 2)]
    assert model.alias("champion").version == 3  # type: ignore[union-attr]
    assert [(m.from_version, m.to_version) for m in model.history("champion")] == [
        (None, 1), (1, 3)]
    assert model.alias("challenger").version == 2  # type: ignore[union-attr]
    outcome = second.champion
    assert outcome is not None and not outcome.promoted and outcome.wins
    [conflict] = outcome.conflicts
    assert (conflict.alias, conflict.expected, conflict.target, conflict.holder) == (
        "champion", 1, 2, 3)
    assert conflict.detail.startswith("reviews@champion is held by version 3, not version 1 "
                                      "as this move expected")
    report, markdown = gate_report(second.run)
    assert report["registry"]["moves"][-1]["outcome"] == "conflict"
    assert report["registry"]["moves"][-1]["holder"] == 3
    assert "| champion | 1 | 2 | conflict | reviews@champion is held by version 3" in markdown
    assert "champion not moved" in outcome.summary() and "champion conflict" in \
        outcome.summary()
    assert [r.getMessage() for r in caplog.records if r.name == "batchml.champion"] == [
        f"reviews@champion not moved to version 2: {conflict.detail}"]
    assert second.run.status == "completed"  # a lost race never fails the training


@pytest.mark.parametrize("champion_first", [False, True], ids=["no-model-yet", "with-champion"])
def test_a_failed_gate_registers_nothing(data: Path, duckdb_catalog: Any,
                                         champion_first: bool) -> None:
    catalog = duckdb_catalog
    if champion_first:
        tr.train(catalog, reviews(data, "sklearn_text"), champion=ChampionPolicy("reviews"))
    before = catalog.model("reviews").history() if champion_first else []
    failed = tr.train(catalog, reviews(data, "sklearn_text_nb", baseline_margin=1.0),
                      champion=ChampionPolicy("reviews", margin=-10.0))
    assert not failed.decision.tagged and failed.champion is None
    assert "registry" not in gate_report(failed.run)[0]
    assert not [k for k in failed.run.metrics if k.startswith("champion.")]
    assert catalog.backend.versions_of_run(failed.run.id) == []
    if champion_first:
        model = catalog.model("reviews")
        assert len(model.versions()) == 1 and model.history() == before
    else:
        assert catalog.registered_models() == []


def test_tabular_model_named_after_its_label_and_a_tie_keeps_the_champion(
        data: Path, tmp_path: Path) -> None:
    """A 3-class table, default settings: the model is named after the label column
    (``segment``); retraining the same candidate on the same data scores exactly the
    champion's score, and a tie is not a win at margin 0."""
    settings = Settings(home=tmp_path)
    config = table(data, "tabular_logreg")
    first = tr.train_from_settings(settings, config)
    second = tr.train_from_settings(settings, config)
    model = Catalog.from_settings(settings).model("segment")
    assert [v.run_id for v in model.versions()] == [first.run.id, second.run.id]
    proba, y, champion_model = self_scored(model.version(1), config)
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro",
                             labels=champion_model.classes_)
    assert second.run.metrics["champion.roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert second.run.metrics["champion.roc_auc"] == second.decision.winner_score
    assert "champion.threshold" not in second.run.metrics  # multi-class: no threshold
    assert second.champion is not None and second.champion.wins is False
    assert model.aliases == {"champion": 1, "challenger": 2}


def test_a_champion_that_cannot_read_the_new_data_is_not_replaced(data: Path,
                                                                  duckdb_catalog: Any) -> None:
    """One name, a table model as champion, a text model next: the champion cannot be scored
    on the reviews, so nothing shows the new version is better; it stays challenger."""
    catalog = duckdb_catalog
    tr.train(catalog, table(data, "tabular_logreg"), champion=ChampionPolicy("shared"))
    second = tr.train(catalog, reviews(data, "sklearn_text"),
                      champion=ChampionPolicy("shared", margin=-10.0))
    outcome = second.champion
    assert outcome is not None and not outcome.promoted and outcome.wins is None
    assert "the validation data lacks column(s) ['tenure_months'" in str(outcome.champion_error)
    assert outcome.verdict.startswith("champion version 1 could not be scored on this "
                                      "validation data")
    assert catalog.model("shared").aliases == {"champion": 1, "challenger": 2}
    assert second.run.metrics["champion.version"] == 1
    assert "champion could not be scored" in gate_report(second.run)[1]


def test_batchml_train_prints_what_the_registry_did(data: Path, tmp_path: Path) -> None:
    from batchml.cli import app

    result = CliRunner().invoke(app, [
        "train", "--train", str(data / "train.parquet"), "--valid", str(data / "valid.parquet"),
        "--candidates", "sklearn_text", "--no-prefect", "--home", str(tmp_path)],
        env={"BATCHML_MODEL_NAME": "cli-reviews", "BATCHML_PROMOTION": "manual"})
    assert result.exit_code == 0, result.output
    assert "train/1: registered cli-reviews/1; champion not moved: promotion is manual" in \
        result.output
    assert Catalog(tmp_path / "catalog.duckdb").model("cli-reviews").aliases == {
        "challenger": 1}


@pytest.mark.parametrize(("label", "name"), [
    ("labels", "labels"), ("segment", "segment"), ("is churned?", "is-churned"),
    ("_private", "private"), ("Ünïcode label", "n-code-label"), ("???", "model"),
    ("x" * 200, "x" * 128)])
def test_default_model_name_comes_from_the_label(label: str, name: str,
                                                 tmp_path: Path) -> None:
    assert default_model_name(label) == name
    assert ChampionPolicy.from_settings(Settings(home=tmp_path), label).model_name == name


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert (s.model_name, s.promotion, s.promotion_margin) == (None, "auto", 0.0)
    monkeypatch.setenv("BATCHML_MODEL_NAME", "reviews")
    monkeypatch.setenv("BATCHML_PROMOTION", "manual")
    monkeypatch.setenv("BATCHML_PROMOTION_MARGIN", "-0.02")
    s = Settings(home=tmp_path)
    assert (s.model_name, s.promotion, s.promotion_margin) == ("reviews", "manual", -0.02)
    assert ChampionPolicy.from_settings(s, "labels") == ChampionPolicy("reviews", "manual",
                                                                       -0.02)
    monkeypatch.setenv("BATCHML_MODEL_NAME", "")  # empty: the derived default
    assert Settings(home=tmp_path).model_name is None


@pytest.mark.parametrize(("env", "message"), [
    ({"BATCHML_MODEL_NAME": "a/b"}, r"model_name\n  Value error, Invalid model name 'a/b'"),
    ({"BATCHML_MODEL_NAME": "x" * 129}, "Invalid model name 'xxx"),
    ({"BATCHML_PROMOTION": "sometimes"}, r"promotion\n  Input should be 'auto' or 'manual'"),
    ({"BATCHML_PROMOTION_MARGIN": "nan"}, r"promotion_margin\n  Input should be a finite"),
    ({"BATCHML_PROMOTION_MARGIN": "a lot"}, r"promotion_margin\n  Input should be a valid"),
], ids=["path-name", "long-name", "mode", "nan-margin", "text-margin"])
def test_invalid_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           env: dict[str, str], message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=message):
        Settings(home=tmp_path)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"model_name": "a b"}, RegistryError, "Invalid model name 'a b'"),
    ({"model_name": "m", "promotion": "sometimes"}, ConfigError,
     "Unknown promotion mode 'sometimes'. Use one of auto, manual"),
    ({"model_name": "m", "margin": float("inf")}, ConfigError,
     "The promotion margin must be a finite number, got inf"),
], ids=["name", "mode", "margin"])
def test_invalid_policies_are_refused(kwargs: dict[str, Any], error: type[Exception],
                                      message: str) -> None:
    with pytest.raises(error, match=message):
        ChampionPolicy(**kwargs)
