"""The gate works for any domain: checks derived from the data, smoke files, the threshold.

A second text domain (machine logs) shares no word with the clothing reviews; broken models
(constant, label-shuffled, inverted) are refused with the check that caught them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchml import Catalog, Settings, gate
from batchml import training as tr
from batchml.errors import SmokeExamplesError
from batchml.synthetic import synthetic_tabular

NEUTRAL = [
    "node", "svc", "request", "shard", "pod", "session", "worker", "queue", "cache",
    "gateway", "replica", "handler", "cluster", "job", "batch", "upstream", "volume",
    "socket", "daemon", "scheduler"
]
BAD = [
    "timeout", "segfault", "oom", "killed", "refused", "panic", "corrupt", "degraded",
    "retrying", "unreachable", "throttled", "deadlock"
]
GOOD = [
    "ok", "healthy", "completed", "synced", "nominal", "accepted", "ready", "heartbeat",
    "flushed", "committed", "drained", "idle"
]


def machine_logs(n: int, seed: int, *, noise: float = 0.07) -> pd.DataFrame:
    """Made-up service log lines: ``message`` and ``incident`` (1 for ~30%), with a fraction
    ``noise`` of labels flipped (a good model reaches ROC AUC ~0.8-0.9). No clothing words."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.27).astype(np.int64)
    rows = []
    for label in y:
        words = list(rng.choice(NEUTRAL, size=rng.integers(4, 10)))
        strong, weak = (BAD, GOOD) if label else (GOOD, BAD)
        words += list(rng.choice(strong, size=rng.integers(1, 4)))
        words += list(rng.choice(weak, size=rng.integers(0, 2)))
        rng.shuffle(words)
        level = rng.choice(["INFO", "WARN", "DEBUG"])
        rows.append(f"{level} id={rng.integers(1000, 9999)} " + " ".join(words))
    y = np.where(rng.random(n) < noise, 1 - y, y)
    return pd.DataFrame({"message": rows, "incident": y})


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("logs")
    machine_logs(400, 1).to_parquet(d / "train.parquet")
    machine_logs(200, 2).to_parquet(d / "valid.parquet")
    machine_logs(150, 3).drop(columns="incident").to_parquet(d / "score1.parquet")
    machine_logs(150, 4).drop(columns="incident").to_parquet(d / "score2.parquet")
    return d


def home_catalog(tmp_path: Path) -> Catalog:
    return Catalog.from_settings(Settings(home=tmp_path / "home"))


def logs_config(d: Path, **kw: Any) -> tr.TrainingConfig:
    kw.setdefault("candidates", ["sklearn_text", "sklearn_text_nb"])
    return tr.TrainingConfig(train_uri=str(d / "train.parquet"),
                             valid_uri=str(d / "valid.parquet"), text_column="message",
                             label="incident", **kw)


@pytest.fixture(scope="module")
def logs_run(logs: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Settings, tr.TrainingOutcome]:
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    outcome = tr.train(Catalog.from_settings(settings), logs_config(
        logs, candidates=["sklearn_text", "sklearn_text_nb", "keras_nbow"]))
    return settings, outcome


# --- any domain gets tagged without a smoke file ----------------------------------------------


def test_second_domain_is_tagged_without_smoke_file(logs_run, logs: Path) -> None:  # type: ignore[no-untyped-def]
    settings, outcome = logs_run
    d = outcome.decision
    assert d.tagged, d.reasons
    winner = next(r for r in outcome.results if r.name == d.winner)
    assert 0.75 < winner.metrics["roc_auc"] < 0.95
    assert [c.name for c in d.checks] == [
        "probabilities_well_formed", "probabilities_vary", "predictions_vary",
        "every_class_predicted", "perturbation_stability", "holdout_agreement",
        "smoke_examples"]
    assert [c.outcome for c in d.checks] == ["pass"] * 6 + ["skip"]
    # every good candidate (linear, naive Bayes, keras) passes every check, not only the winner
    data = tr.load_training_data(logs_config(logs))
    for r in outcome.results:
        if r.name != "baseline":
            checks, _ = gate.run_checks(r.estimator, data, logs_config(logs))
            assert not [c for c in checks if c.failed], (r.name, checks)
    run = Catalog.from_settings(settings).run(outcome.run.id)
    report = json.loads(run.fetch_artifact("gate.json"))
    assert [c["name"] for c in report["checks"]] == [c.name for c in d.checks]
    assert all({"name", "inputs", "observed", "outcome", "detail"} <= set(c)
               for c in report["checks"])
    assert report["threshold"] == pytest.approx(winner.metrics["threshold"])
    md = run.fetch_artifact("gate.md").decode()
    assert "| perturbation_stability | sample=" in md and "decision threshold: 0." in md


def test_imbalanced_threshold_beats_the_baseline(logs_run) -> None:  # type: ignore[no-untyped-def]
    settings, outcome = logs_run
    run = outcome.run
    base = next(r for r in outcome.results if r.name == "baseline")
    assert base.metrics["balanced_accuracy"] == pytest.approx(0.5)
    for key in ("balanced_accuracy", "f1_macro", "threshold", "accuracy", "roc_auc", "f1"):
        assert key in run.metrics, key
    assert run.metrics["balanced_accuracy"] > 0.7
    threshold = run.metrics["threshold"]
    assert threshold != pytest.approx(0.5)
    # the threshold travels with the model
    model = run.load_model()
    assert model.threshold == pytest.approx(threshold)
    assert model.signature.param_defaults["threshold"] == pytest.approx(threshold)


def score_with_cli(settings: Settings, path: Path) -> pd.DataFrame:
    from batchml.cli import app

    result = CliRunner().invoke(app, ["predict", str(path), "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    (out,) = Path(settings.outbox).rglob(f"{path.stem}-*.parquet")  # type: ignore[arg-type]
    return pq.read_table(out).to_pandas()


def test_scoring_uses_the_threshold_and_the_setting_overrides_it(
        logs_run, logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings, outcome = logs_run
    threshold = outcome.run.metrics["threshold"]
    monkeypatch.delenv("BATCHML_DECISION_THRESHOLD", raising=False)
    scored = score_with_cli(settings, logs / "score1.parquet")
    assert ((scored["proba"] >= threshold).astype(int) == scored["label"]).all()
    between = (scored["proba"] >= threshold) != (scored["proba"] >= 0.5)
    assert between.any()  # the 0.5 cut would label these rows differently

    monkeypatch.setenv("BATCHML_DECISION_THRESHOLD", "0.9")
    scored = score_with_cli(settings, logs / "score2.parquet")
    assert ((scored["proba"] >= 0.9).astype(int) == scored["label"]).all()
    assert ((scored["proba"] >= threshold) != (scored["proba"] >= 0.9)).any()


def test_clothing_reviews_tagged_without_smoke_file(tmp_path: Path,
                                                    shared_testdata: Path) -> None:
    reviews = shared_testdata / "womens_clothing_reviews"
    outcome = tr.train(home_catalog(tmp_path), tr.TrainingConfig(
        train_uri=str(reviews / "train.parquet"), valid_uri=str(reviews / "valid.parquet"),
        text_column="review", candidates=["sklearn_text", "sklearn_text_nb"]))
    assert outcome.decision.tagged, outcome.decision.reasons
    assert outcome.smoke == []
    assert outcome.run.metrics["balanced_accuracy"] > 0.75


def test_tabular_domain_is_tagged(tmp_path: Path) -> None:
    synthetic_tabular(600, seed=0, classes=2).to_parquet(tmp_path / "train.parquet")
    synthetic_tabular(300, seed=1, classes=2).to_parquet(tmp_path / "valid.parquet")
    outcome = tr.train(home_catalog(tmp_path), tr.TrainingConfig(
        train_uri=str(tmp_path / "train.parquet"), valid_uri=str(tmp_path / "valid.parquet"),
        feature_columns=["tenure_months", "monthly_charges", "support_calls", "plan",
                         "region"], label="segment", candidates=["tabular_logreg"]))
    d = outcome.decision
    assert d.tagged, d.reasons
    stability = next(c for c in d.checks if c.name == "perturbation_stability")
    assert stability.outcome == "pass" and "relative jitter 1e-06" in stability.observed


# --- broken models are refused with the check that caught them ---------------------------------


class Fake:
    """A binary estimator scoring text with ``score(text) -> P(positive)``."""

    def __init__(self, score: Any, threshold: float = 0.5) -> None:
        self.score = score
        self.classes_ = [0, 1]
        self.threshold = threshold

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p = np.array([self.score(t) for t in x["message"]], dtype=float)
        return np.column_stack([1 - p, p])

    def labels_from_proba(self, proba: np.ndarray) -> np.ndarray:
        return (proba[:, 1] >= self.threshold).astype(np.int64)

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return self.labels_from_proba(self.predict_proba(x))


def incident_words(text: str) -> int:
    return sum(w in BAD for w in text.split()) - sum(w in GOOD for w in text.split())


def noise(text: str) -> float:
    """A score that depends only on the line's id: unrelated to the label, stable under edits."""
    return int(re.search(r"id=(\d+)", text, re.I).group(1)) % 997 / 997  # type: ignore[union-attr]


FAKES = {
    "good": Fake(lambda t: 0.9 if incident_words(t.lower()) > 0 else 0.1),
    "constant": Fake(lambda t: 0.7),
    "shuffled": Fake(noise),
    "inverted": Fake(lambda t: 0.1 if incident_words(t.lower()) > 0 else 0.9),
    "case-sensitive": Fake(lambda t: 0.9 if incident_words(t) > 0 else 0.1),
    "malformed": Fake(lambda t: float("nan")),
}


@pytest.mark.parametrize(("fake", "failing", "words"), [
    ("good", [], ""),
    ("constant", ["probabilities_vary", "predictions_vary", "every_class_predicted",
                  "holdout_agreement"], "a constant"),
    ("shuffled", ["holdout_agreement"], "does not beat chance 0.500"),
    ("inverted", ["holdout_agreement"], "inverted predictions?"),
    ("case-sensitive", ["perturbation_stability"], "survive 'upper case'"),
    ("malformed", ["probabilities_well_formed", "probabilities_vary", "predictions_vary",
                   "every_class_predicted", "holdout_agreement"], "non-finite values"),
])
def test_check_functions_name_what_is_broken(logs: Path, fake: str, failing: list[str],
                                             words: str) -> None:
    config = logs_config(logs)
    data = tr.load_training_data(config)
    checks, _ = gate.run_checks(FAKES[fake], data, config)
    assert [c.name for c in checks if c.failed] == failing
    results = [tr.CandidateResult("baseline", None, {"roc_auc": 0.5}, 0.1),
               tr.CandidateResult(fake, None, {"roc_auc": 0.9}, 0.1)]
    decision = gate.decide(results, checks, config)
    assert decision.tagged == (not failing)
    assert [r.split(":")[0] for r in decision.reasons if r.startswith("check ")] == \
        [f"check {name} failed" for name in failing]
    assert words in " ".join(decision.reasons)


def test_constant_model_refused_end_to_end(tmp_path: Path) -> None:
    """A feature with no information trains a constant model: refused, naming the checks."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 300), ("valid", 200)):
        pd.DataFrame({"x": np.zeros(n), "y": (rng.random(n) < 0.3).astype(np.int64)}
                     ).to_parquet(tmp_path / f"{name}.parquet")
    outcome = tr.train(home_catalog(tmp_path), tr.TrainingConfig(
        train_uri=str(tmp_path / "train.parquet"), valid_uri=str(tmp_path / "valid.parquet"),
        feature_columns=["x"], label="y", candidates=["tabular_logreg"], baseline_margin=-1))
    d = outcome.decision
    assert not d.tagged
    failed = {c.name for c in d.checks if c.failed}
    assert {"probabilities_vary", "predictions_vary", "holdout_agreement"} <= failed
    assert any("check predictions_vary failed" in r and "constant prediction" in r
               for r in d.reasons), d.reasons
    assert outcome.run.successful and outcome.run.tags == set()


def test_inverted_model_refused_end_to_end(tmp_path: Path, logs: Path) -> None:
    """Trained on flipped labels, judged on true ones: below chance on held-out rows."""
    flipped = pd.read_parquet(logs / "train.parquet")
    flipped["incident"] = 1 - flipped["incident"]
    flipped.to_parquet(tmp_path / "flipped.parquet")
    outcome = tr.train(home_catalog(tmp_path), tr.TrainingConfig(
        train_uri=str(tmp_path / "flipped.parquet"), valid_uri=str(logs / "valid.parquet"),
        text_column="message", label="incident", candidates=["sklearn_text"],
        baseline_margin=-1))  # even with no margin asked for, the checks refuse it
    d = outcome.decision
    assert not d.tagged
    assert any(r.startswith("check holdout_agreement failed") for r in d.reasons), d.reasons


# --- smoke files --------------------------------------------------------------------------------


def write_smoke(path: Path, rows: list[tuple[str, Any]], *, text: str = "message",
                label: str = "incident") -> Path:
    pd.DataFrame({text: [r[0] for r in rows], label: [r[1] for r in rows]}).to_csv(
        path, index=False)
    return path


OBVIOUS = [("ERROR worker panic oom killed timeout segfault", 1),
           ("INFO heartbeat ok healthy synced committed", 0)]


def test_smoke_file_through_the_cli(tmp_path: Path, logs: Path) -> None:
    from batchml.cli import app

    smoke = write_smoke(tmp_path / "smoke.csv", OBVIOUS)
    home = tmp_path / "home"
    result = CliRunner().invoke(app, [
        "train", "--no-prefect", "--train", str(logs / "train.parquet"),
        "--valid", str(logs / "valid.parquet"), "--text-column", "message",
        "--label", "incident", "--candidates", "sklearn_text", "--smoke", str(smoke),
        "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "tagged deployment_candidate" in result.output
    run = Catalog(home / "catalog.duckdb").latest_run("train", tag="deployment_candidate")
    report = json.loads(run.fetch_artifact("gate.json"))
    assert [s["expected"] for s in report["smoke"]] == [1, 0]
    assert all(s["passed"] and s["score"] > 0.5 for s in report["smoke"])
    smoke_check = next(c for c in report["checks"] if c["name"] == "smoke_examples")
    assert smoke_check["outcome"] == "pass" and smoke_check["inputs"]["source"] == str(smoke)
    assert run.metrics["smoke_passed"] == 2
    shown = CliRunner().invoke(app, ["run", "show", run.id, "--home", str(home)])
    assert shown.exit_code == 0 and "smoke_examples" in shown.output
    assert "holdout_agreement" in shown.output


def test_cli_training_without_prefect_honours_tag_and_flow_settings(
        tmp_path: Path, logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`batchml train --no-prefect` records the run under BATCHML_TRAIN_FLOW and tags it
    BATCHML_MODEL_TAG, as the flow does (it used to record 'train' / 'deployment_candidate'
    while printing the setting's tag)."""
    from batchml.cli import app

    monkeypatch.setenv("BATCHML_MODEL_TAG", "champion")
    monkeypatch.setenv("BATCHML_TRAIN_FLOW", "nightly-logs")
    home = tmp_path / "home"
    result = CliRunner().invoke(app, [
        "train", "--no-prefect", "--train", str(logs / "train.parquet"),
        "--valid", str(logs / "valid.parquet"), "--text-column", "message",
        "--label", "incident", "--candidates", "sklearn_text", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "tagged champion" in result.output
    catalog = Catalog(home / "catalog.duckdb")
    run = catalog.latest_run("nightly-logs", tag="champion")
    assert run.id.startswith("nightly-logs/") and "champion" in run.tags
    assert "deployment_candidate" not in run.tags


def test_failed_smoke_example_is_listed_with_its_score(tmp_path: Path, logs: Path) -> None:
    smoke = write_smoke(tmp_path / "smoke.csv", [*OBVIOUS, ("INFO heartbeat ok synced", 1)])
    outcome = tr.train(home_catalog(tmp_path), logs_config(
        logs, candidates=["sklearn_text"], smoke_uri=str(smoke)))
    d = outcome.decision
    assert not d.tagged
    (failed,) = [s for s in outcome.smoke if not s.passed]
    assert failed.example == "INFO heartbeat ok synced" and failed.predicted == 0
    assert failed.score is not None and failed.score < 0.5
    reason = next(r for r in d.reasons if r.startswith("check smoke_examples failed"))
    assert "'INFO heartbeat ok synced' expected 1 got 0 (P(expected)=0." in reason
    md = outcome.run.fetch_artifact("gate.md").decode()
    assert "## Smoke examples" in md and "| INFO heartbeat ok synced | 1 | 0 |" in md


@pytest.mark.parametrize(("content", "message"), [
    ("text,incident\nworker panic,1\n", r"smoke\.csv lacks column\(s\) 'message'"),
    ("message,incident\nworker panic,7\n", r"expect label 7 in column 'incident' \(row 0\), "
                                           r"which is not one of the training classes \[0, 1\]"),
    ("message,incident\n", r"smoke\.csv has no rows"),
    ("message,verdict\nworker panic,1\n", r"lacks column\(s\) 'incident'"),
])
def test_bad_smoke_file_stops_before_training(tmp_path: Path, logs: Path, content: str,
                                              message: str) -> None:
    smoke = tmp_path / "smoke.csv"
    smoke.write_text(content)
    catalog = home_catalog(tmp_path)
    with pytest.raises(SmokeExamplesError, match=message) as info:
        tr.train(catalog, logs_config(logs, smoke_uri=str(smoke)))
    assert str(smoke) in str(info.value) and info.value.hint
    assert isinstance(info.value, ValueError)
    assert catalog.runs("train") == []  # no run: nothing was trained


def test_unreadable_smoke_file_through_the_cli(tmp_path: Path, logs: Path) -> None:
    from batchml.cli import app

    smoke = tmp_path / "smoke.parquet"
    smoke.write_bytes(b"not parquet at all")
    result = CliRunner().invoke(app, [
        "train", "--no-prefect", "--train", str(logs / "train.parquet"),
        "--valid", str(logs / "valid.parquet"), "--text-column", "message",
        "--label", "incident", "--candidates", "sklearn_text", "--smoke", str(smoke),
        "--home", str(tmp_path / "home")])
    assert result.exit_code == 1
    assert f"The smoke-example file {smoke} cannot be read" in result.output
    assert Catalog(tmp_path / "home" / "catalog.duckdb").runs("train") == []


def test_smoke_file_on_s3(tmp_path: Path, logs: Path, s3_bucket: str, aws_env: str) -> None:
    from batchml.store import s3_client

    client = s3_client(aws_env, "us-east-1")
    smoke = write_smoke(tmp_path / "smoke.csv", OBVIOUS)
    client.put_object(Bucket=s3_bucket, Key="gate/smoke.csv", Body=smoke.read_bytes())
    outcome = tr.train(home_catalog(tmp_path), logs_config(
        logs, candidates=["sklearn_text"], smoke_uri=f"s3://{s3_bucket}/gate/smoke.csv"),
        s3=client)
    assert outcome.decision.tagged, outcome.decision.reasons
    assert [s.passed for s in outcome.smoke] == [True, True]
    with pytest.raises(SmokeExamplesError, match=f"s3://{s3_bucket}/gate/missing.csv cannot"):
        tr.train(home_catalog(tmp_path / "again"), logs_config(
            logs, smoke_uri=f"s3://{s3_bucket}/gate/missing.csv"), s3=client)


def test_nightly_training_passes_the_smoke_setting(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`batchml serve` builds its nightly deployment with BATCHML_SMOKE_PATH as smoke_uri."""
    import asyncio

    import prefect.runner

    from batchml.flows.train import train_flow
    from batchml.service import Service

    monkeypatch.setenv("BATCHML_SMOKE_PATH", "s3://bucket/smoke.csv")
    settings = Settings(home=tmp_path, train_uri="t.parquet", valid_uri="v.parquet")
    assert settings.smoke_path == "s3://bucket/smoke.csv"
    seen: dict[str, Any] = {}

    async def fake_deployment(**kw: Any) -> str:
        seen.update(kw["parameters"])
        return "deployment"

    class FakeRunner:
        def __init__(self, **kw: Any) -> None:
            pass

        async def aadd_deployment(self, deployment: str) -> None:
            seen["added"] = deployment

        async def start(self) -> None:
            return None

    monkeypatch.setattr(train_flow, "ato_deployment", fake_deployment)
    monkeypatch.setattr(prefect.runner, "Runner", FakeRunner)

    async def start() -> None:
        task = await Service(settings)._start_trainer()
        assert task is not None
        await task

    asyncio.run(start())
    assert seen["smoke_uri"] == "s3://bucket/smoke.csv" and seen["added"] == "deployment"
