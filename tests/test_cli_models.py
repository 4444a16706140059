"""``batchml models ...`` on a real catalog (a home with trained runs), and the library under
``compare`` (:func:`batchml.comparison.compare_versions`): every command's output, the alias
history, a lost compare-and-set race, the refusals with their messages, and a comparison whose
agreement and confusion matrices are checked against both models' own predictions, on reviews
and on a multi-class table whose label is not called ``labels``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from batchml import Catalog, Settings
from batchml import training as tr
from batchml.cli import app
from batchml.comparison import compare_versions, version_metrics
from batchml.datasets import clean_text_column
from batchml.errors import BatchMLError, DataError, RegistryError
from batchml.synthetic import synthetic_tabular

runner = CliRunner()


@pytest.fixture(scope="module")
def home(module_tagged_home: Settings) -> dict[str, Any]:
    """The tagged home (run 1: TF-IDF + logistic regression) plus a second run on the same
    reviews (counts + naive Bayes), so two versions disagree on some rows."""
    data = module_tagged_home.home / "data"
    catalog = Catalog.from_settings(module_tagged_home)
    first = catalog.latest_run("train", tag="deployment_candidate")
    second = tr.train(catalog, tr.TrainingConfig(
        train_uri=str(data / "train.parquet"), valid_uri=str(data / "valid.parquet"),
        text_column="review", candidates=["sklearn_text_nb"])).run
    return {"settings": module_tagged_home, "catalog": catalog, "runs": (first.id, second.id),
            "valid": data / "valid.parquet"}


@pytest.fixture
def name(request: pytest.FixtureRequest, home: dict[str, Any]) -> str:
    """A registered model of its own for each test (the catalog is shared by the module):
    version 1 from the first run, version 2 from the second."""
    model = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:100]
    registry = home["catalog"].model(model)
    for run_id in home["runs"]:
        registry.register(run_id)
    return model


def models(home: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, ["models", *args, "--home", str(home["settings"].home)],
                         env={"BATCHML_VALID_URI": None, **(env or {})})  # type: ignore[dict-item]


def ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_register_list_show_versions(home: dict[str, Any]) -> None:
    first, second = home["runs"]
    assert ok(models(home, "register", "cli-reviews", first)).strip() == \
        f"cli-reviews/1: run {first}, model sklearn_text"
    assert "cli-reviews/1" in ok(models(home, "register", "cli-reviews", first))  # idempotent
    assert ok(models(home, "register", "cli-reviews", second, "--description",
                     "naive bayes")).strip() == f"cli-reviews/2: run {second}, model sklearn_text_nb"
    ok(models(home, "promote", "cli-reviews", "1"))
    ok(models(home, "alias", "cli-reviews", "challenger", "2"))
    home["catalog"].create_model("cli-reviews", description="sentiment of reviews",
                                 tags={"team": "ml"})

    listed = {r["name"]: r for r in json_lines(ok(models(home, "list", "--format", "json")))}
    assert listed["cli-reviews"]["latest"] == 2
    assert listed["cli-reviews"]["aliases"] == "challenger=2, champion=1"
    assert listed["cli-reviews"]["description"] == "sentiment of reviews"
    table = ok(models(home, "list"))
    assert "registered models" in table and "challenger=2, champion=1" in table

    shown = ok(models(home, "show", "cli-reviews"))
    assert "cli-reviews: sentiment of reviews" in shown
    assert "tags: team=ml" in shown and "aliases: challenger=2, champion=1" in shown
    v1 = home["catalog"].model("cli-reviews").version(1)
    row = next(line for line in shown.splitlines() if f"│ {first} " in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:5] == ["1", first, "completed", "sklearn_text", "champion"]
    assert f"{version_metrics(v1)['roc_auc']:.4g}" in cells  # key metrics from the run
    # the newest version's inference parameters (batchml.params)
    assert "inference parameters (version 2)" in shown
    assert "a float in [0, 1]" in shown and "batch_size" in shown
    assert "@" in shown  # created by user@host

    rows = json_lines(ok(models(home, "versions", "cli-reviews", "--format", "json")))
    assert [(r["version"], r["run"], r["aliases"], r["description"]) for r in rows] == [
        (1, first, "champion", None), (2, second, "challenger", "naive bayes")]


def test_alias_moves_rollback_and_history(home: dict[str, Any], name: str) -> None:
    assert ok(models(home, "promote", name, "1", "--reason", "first")).strip() == \
        f"{name}@champion: - → 1 (move 1: first)"
    assert ok(models(home, "alias", name, "champion", "2", "--expect", "1", "--reason",
                     "better")).strip() == f"{name}@champion: 1 → 2 (move 2: better)"
    # a reason is shown as written, never read as rich markup
    assert ok(models(home, "rollback", name, "--reason", "[v2] misbehaves [/b]")).strip() == \
        f"{name}@champion: 2 → 1 (move 3: [v2] misbehaves [/b])"
    ok(models(home, "alias", name, "challenger", "2"))  # no --expect: the holder read now
    assert ok(models(home, "alias", name, "challenger", "none", "--expect", "2", "--reason",
                     "retired")).strip() == f"{name}@challenger: 2 → - (move 2: retired)"
    assert home["catalog"].model(name).aliases == {"champion": 1}

    moves = json_lines(ok(models(home, "history", name, "--format", "json")))
    assert [(m["alias"], m["seq"], m["from_version"], m["to_version"], m["reason"])
            for m in moves] == [
        ("champion", 1, None, 1, "first"), ("champion", 2, 1, 2, "better"),
        ("champion", 3, 2, 1, "[v2] misbehaves [/b]"), ("challenger", 1, None, 2, None),
        ("challenger", 2, 2, None, "retired")]
    champion = [m for m in moves if m["alias"] == "champion"]
    assert [m["valid_to"] for m in champion[:-1]] == [m["valid_from"] for m in champion[1:]]
    assert champion[-1]["valid_to"] is None and all("@" in m["moved_by"] for m in moves)

    table = ok(models(home, "history", name))
    for header in ("seq", "alias", "from → to", "valid_from", "valid_to", "moved_by", "reason"):
        assert header in table
    assert "[v2] misbehaves [/b]" in table
    rows = [line for line in table.splitlines() if "→" in line and "from → to" not in line]
    assert [[c.strip() for c in r.strip("│ ").split("│")][:3] for r in rows] == [
        ["1", "champion", "- → 1"], ["2", "champion", "1 → 2"], ["3", "champion", "2 → 1"],
        ["1", "challenger", "- → 2"], ["2", "challenger", "2 → -"]]
    only = ok(models(home, "history", name, "--alias", "challenger"))
    assert "challenger" in only and "champion" not in only


def test_a_lost_race_exits_1_naming_the_holder(home: dict[str, Any], name: str) -> None:
    model = home["catalog"].model(name)
    ok(models(home, "promote", name, "1"))
    model.set_alias("champion", 2, expect=1, reason="another process")  # meanwhile
    result = models(home, "alias", name, "champion", "1", "--expect", "1")
    assert result.exit_code == 1
    assert (f"error: {name}@champion is held by version 2, not version 1 as this move "
            "expected: another process moved it meanwhile.") in result.stderr
    assert f"`batchml models history {name}` and move it again naming --expect 2" in \
        result.stderr
    assert "Traceback" not in result.output
    assert [m.to_version for m in model.history("champion")] == [1, 2]  # nothing recorded


@pytest.mark.parametrize(("args", "message"), [
    (["show", "nope"], "No registered model 'nope'."),
    (["history", "nope"], "No registered model 'nope'."),
    (["show", "../x"], "Invalid model name '../x'."),
    (["alias", "{name}", "a/b", "1"], "Invalid alias name 'a/b'."),
    (["alias", "{name}", "champion", "9", "--expect", "1"], "has no version 9."),
    (["alias", "{name}", "champion", "x"], "Version 'x' is not a version number."),
    (["alias", "{name}", "champion", "2", "--expect", "one"],
     "--expect 'one' is not a version number."),
    (["alias", "{name}", "champion", "2", "--expect", "none"],
     "@champion is held by version 1, not unset"),
    (["promote", "{name}", "5"], "has no version 5."),
    (["rollback", "{name}"], "has had one holder only (version 1)"),
    (["rollback", "{name}", "--alias", "challenger"], "@challenger is not set"),
    (["delete-version", "{name}", "1"], "is held by alias(es) champion"),
    (["delete-version", "{name}", "7"], "has no version 7."),
    (["register", "{name}", "train/99"], "No run 'train/99'"),
    (["register", "{name}", "train/1", "--model", "nope"], "has no model named 'nope'"),
    (["compare", "{name}", "1", "5"], "has no version 5."),
    (["compare", "nope", "1", "2"], "No registered model 'nope'."),
    (["compare", "{name}", "1", "2", "--label", "stars"],
     "The comparison data has no label column 'stars'"),
    (["compare", "{name}", "1", "2", "--data", "/nonexistent/valid.parquet"],
     "/nonexistent/valid.parquet does not exist."),
], ids=["unknown-model", "history-unknown", "path-name", "bad-alias", "missing-version",
        "bad-version", "bad-expect", "conflict", "promote-missing", "rollback-single",
        "rollback-unset", "delete-held", "delete-missing", "register-missing-run",
        "register-missing-model", "compare-missing-version", "compare-unknown-model",
        "compare-bad-label", "compare-missing-data"])
def test_refusals_print_the_reason_and_exit_1(home: dict[str, Any], name: str,
                                              args: list[str], message: str) -> None:
    model = home["catalog"].model(name)
    model.promote(1)
    before = model.history()
    result = models(home, *(a.replace("{name}", name) for a in args))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.output
    assert model.history() == before and model.alias("champion").version == 1


def test_delete_version_and_deleted_listing(home: dict[str, Any], name: str) -> None:
    assert ok(models(home, "delete-version", name, "2")).strip() == f"{name}/2 deleted"
    assert [r["version"] for r in json_lines(ok(models(home, "versions", name, "--format",
                                                       "json")))] == [1]
    rows = json_lines(ok(models(home, "versions", name, "--deleted", "--format", "json")))
    assert [(r["version"], r["deleted_at"] is None) for r in rows] == [(1, True), (2, False)]
    assert "deleted_at" in ok(models(home, "versions", name, "--deleted"))


def _by_hand(home: dict[str, Any], name: str, frame: pd.DataFrame) -> list[np.ndarray]:
    """Both versions' predictions, from the models themselves (text cleaned as training
    cleans it)."""
    x = frame[["review"]].assign(review=clean_text_column(frame["review"]).fillna(""))
    return [np.asarray(home["catalog"].model(name).version(v).load().predict(x))
            for v in (1, 2)]


def test_compare_cli_matches_both_models_predictions(home: dict[str, Any], name: str,
                                                     tmp_path: Path) -> None:
    valid = pd.read_parquet(home["valid"])
    p1, p2 = _by_hand(home, name, valid)
    same = int((p1 == p2).sum())
    assert 0 < same < len(valid)  # the two models do disagree somewhere

    # default data: the validation file the second version's run trained with
    shown = ok(models(home, "compare", name, "1", "2"))
    assert f"scored on {home['valid']}: {len(valid)} rows, label column 'labels'" in shown
    assert (f"agreement: {same / len(valid):.4f} ({same} of {len(valid)} rows get the same "
            f"label; {len(valid) - same} differ)") in shown
    v1, v2 = (home["catalog"].model(name).version(v) for v in (1, 2))
    row = next(line for line in shown.splitlines() if line.startswith("│ roc_auc "))
    assert [c.strip() for c in row.strip("│ ").split("│")][1:3] == [
        f"{version_metrics(v)['roc_auc']:.4g}" for v in (v1, v2)]
    for v, pred in ((1, p1), (2, p2)):
        block = shown.split(f"{name}/{v} confusion matrix")[1].splitlines()
        rows = [line for line in block if line.startswith("│")][:2]
        counts = [[int(c) for c in line.strip("│ ").split("│")[1:]] for line in rows]
        assert counts == [[int(((valid["labels"] == t) & (pred == p)).sum()) for p in (0, 1)]
                          for t in (0, 1)]
        assert sum(map(sum, counts)) == len(valid)

    # BATCHML_VALID_URI wins over the run's file; --data over both
    valid.head(120).to_parquet(tmp_path / "head.parquet")
    valid.tail(80).to_parquet(tmp_path / "tail.parquet")
    env = {"BATCHML_VALID_URI": str(tmp_path / "head.parquet")}
    assert ": 120 rows" in ok(models(home, "compare", name, "1", "2", env=env))
    assert ": 80 rows" in ok(models(home, "compare", name, "1", "2", "--data",
                                    str(tmp_path / "tail.parquet"), env=env))


def test_compare_versions_on_reviews(home: dict[str, Any], name: str) -> None:
    valid = pd.read_parquet(home["valid"])
    p1, p2 = _by_hand(home, name, valid)
    result = compare_versions(home["catalog"], name, 1, 2, valid, "labels")
    assert result.rows == len(valid) and result.labels == [0, 1]
    assert result.agreement == pytest.approx(float(np.mean(p1 == p2)), abs=0)
    assert result.disagreements == int((p1 != p2).sum())
    for scores, pred in ((result.a, p1), (result.b, p2)):
        assert np.array_equal(scores.predictions.astype(int), pred)
        assert sum(map(sum, scores.confusion)) == len(valid)
        assert scores.accuracy == pytest.approx(float(np.mean(pred == valid["labels"])))
    assert result.a.accuracy == pytest.approx(result.a.recorded["accuracy"])  # as training
    assert sum(map(sum, result.cross)) == len(valid)
    assert [m for m, _, _ in result.metrics][:2] == ["accuracy", "balanced_accuracy"]


def test_compare_versions_on_a_multiclass_table(home: dict[str, Any], tmp_path: Path) -> None:
    names = {0: "low", 1: "mid", 2: "high"}
    for split, (n, seed) in {"train": (600, 0), "valid": (240, 1)}.items():
        frame = synthetic_tabular(n, seed=seed, classes=3)
        frame["tier"] = frame.pop("segment").map(names)
        frame.to_parquet(tmp_path / f"{split}.parquet")
    catalog, model = home["catalog"], home["catalog"].model("tiers")
    features = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    for candidate, params in (("tabular_logreg", {}), ("tabular_rf", {"n_estimators": 20})):
        run = tr.train(catalog, tr.TrainingConfig(
            train_uri=str(tmp_path / "train.parquet"), valid_uri=str(tmp_path / "valid.parquet"),
            feature_columns=features, label="tier", candidates=[candidate],
            candidate_params={candidate: params}, baseline_margin=-1)).run
        model.register(run, model=candidate)
    valid = pd.read_parquet(tmp_path / "valid.parquet")
    result = compare_versions(catalog, "tiers", 1, 2, valid, "tier")
    preds = [np.asarray(model.version(v).load().predict(valid[features])) for v in (1, 2)]
    assert result.labels == ["high", "low", "mid"]
    assert result.agreement == float(np.mean(preds[0] == preds[1]))
    for scores, pred in ((result.a, preds[0]), (result.b, preds[1])):
        assert list(scores.predictions) == list(pred)
        assert sum(map(sum, scores.confusion)) == len(valid)
        assert [sum(row) for row in scores.confusion] == [
            int((valid["tier"] == t).sum()) for t in result.labels]
    # the CLI finds the label column the runs trained with (not BATCHML_LABEL_COLUMN)
    shown = ok(models(home, "compare", "tiers", "1", "2"))
    assert f": {len(valid)} rows, label column 'tier'" in shown
    assert f"agreement: {result.agreement:.4f}" in shown


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda f: f.head(0), DataError, "The comparison data has no rows."),
    (lambda f: f.drop(columns=["review"]), DataError,
     "lacks column(s) 'review' that {name}/1 reads"),
    (lambda f: f.assign(labels=None), DataError, "rows with no label in 'labels'"),
    (lambda f: f.rename(columns={"labels": "y"}), DataError, "has no label column 'labels'"),
], ids=["empty", "missing-input", "no-labels", "no-label-column"])
def test_compare_versions_refuses_unusable_data(home: dict[str, Any], name: str, change: Any,
                                                error: type[BatchMLError], message: str) -> None:
    frame = change(pd.read_parquet(home["valid"]))
    with pytest.raises(error, match=re.escape(message.format(name=name))):
        compare_versions(home["catalog"], name, 1, 2, frame, "labels")


@pytest.mark.parametrize(("model", "v1", "v2", "message"), [
    ("nope", 1, 2, "No registered model 'nope'."),
    ("{name}", 1, 7, "has no version 7."),
    ("a/b", 1, 2, "Invalid model name 'a/b'."),
], ids=["unknown-model", "unknown-version", "bad-name"])
def test_compare_versions_refuses_unknown_versions(home: dict[str, Any], name: str, model: str,
                                                   v1: int, v2: int, message: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(message)):
        compare_versions(home["catalog"], model.format(name=name), v1, v2,
                         pd.read_parquet(home["valid"]), "labels")
