"""The gate: tag only when the winner beats the baseline by the margin and fails no check."""

from __future__ import annotations

import math

import pytest

from batchml.gate import CheckResult
from batchml.training import (
    CandidateResult,
    TrainingConfig,
    choose_winner,
    decide,
)


def result(name: str, auc: float | None, error: str | None = None) -> CandidateResult:
    metrics = {} if auc is None else {"roc_auc": auc, "log_loss": 1 - auc}
    return CandidateResult(name, None, metrics, 0.1, error=error)


CONFIG = TrainingConfig(train_uri="t", valid_uri="v", text_column="review", baseline_margin=0.05)
PASS = [CheckResult("predictions_vary", {"rows": 10}, {0: 5, 1: 5}, "pass", "2 classes"),
        CheckResult("smoke_examples", {"examples": 0}, None, "skip", "no smoke examples")]
FAIL = [PASS[0], CheckResult("smoke_examples", {"examples": 2}, "1 of 2 right", "fail",
                             "smoke test failed on 1 of 2 examples: 'poor fit' expected 0 got 1")]


def test_winner_is_best_and_ties_are_deterministic() -> None:
    results = [result("baseline", 0.5), result("b", 0.9), result("a", 0.9), result("c", 0.8)]
    assert choose_winner(results, "roc_auc").name == "a"  # type: ignore[union-attr]
    assert choose_winner(list(reversed(results)), "roc_auc").name == "a"  # type: ignore[union-attr]
    lower = [result("baseline", 0.5), result("x", 0.7), result("y", 0.6)]
    assert choose_winner(lower, "log_loss").name == "x"  # type: ignore[union-attr]


def test_nan_and_failed_candidates_never_win() -> None:
    results = [result("baseline", 0.5), result("a", math.nan), result("b", None, "boom"),
               result("c", 0.6)]
    assert choose_winner(results, "roc_auc").name == "c"  # type: ignore[union-attr]


def test_tagged_when_it_beats_the_baseline_and_fails_no_check() -> None:
    d = decide([result("baseline", 0.5), result("m", 0.9)], PASS, CONFIG)
    assert d.tagged and d.winner == "m"
    assert "beats the baseline" in d.reasons[0] and "predictions_vary" in d.reasons[0]
    assert d.checks == PASS  # a skipped check (no smoke file) does not block the tag


@pytest.mark.parametrize(("results", "smoke", "reason"), [
    ([result("baseline", 0.5), result("m", 0.53)], PASS,
     "m roc_auc=0.5300 does not beat the baseline 0.5000 by the margin 0.05"),
    ([result("baseline", 0.5), result("m", 0.9)], FAIL,
     "check smoke_examples failed: smoke test failed on 1 of 2 examples: 'poor fit' "
     "expected 0 got 1"),
    ([result("baseline", 0.5), result("m", None, "ValueError: x")], None,
     "no candidate produced a roc_auc: m: ValueError: x"),
    ([result("baseline", None, "boom"), result("m", 0.9)], PASS,
     "the baseline failed"),
    ([result("baseline", 0.5), result("m", 0.9)], None, "the gate checks did not run"),
])
def test_not_tagged_with_the_reason(results, smoke, reason: str) -> None:
    d = decide(results, smoke, CONFIG)
    assert not d.tagged
    assert any(reason in r for r in d.reasons), d.reasons


def test_config_needs_exactly_one_kind_of_input() -> None:
    from batchml.errors import DataError

    with pytest.raises(DataError, match="exactly one"):
        TrainingConfig(train_uri="t", valid_uri="v")
    with pytest.raises(DataError, match="exactly one"):
        TrainingConfig(train_uri="t", valid_uri="v", text_column="r", feature_columns=["a"])


def test_threshold_maximises_balanced_accuracy_on_validation() -> None:
    import numpy as np

    from batchml.evaluation import choose_threshold, evaluate

    y = [0, 0, 0, 1, 1]
    pos = np.array([0.1, 0.2, 0.32, 0.3, 0.35])
    proba = np.column_stack([1 - pos, pos])
    # 0.25 catches both positives and one false alarm: balanced accuracy 5/6 (0.5 gives 0.5)
    assert choose_threshold(y, proba, [0, 1]) == pytest.approx(0.25)
    assert choose_threshold(y, proba, [0, 1], "fixed") == 0.5
    assert choose_threshold(y, proba, [0, 1], "f1") == pytest.approx(0.25)
    flat = np.full((5, 2), 0.5)
    assert choose_threshold(y, flat, [0, 1]) == 0.5  # nothing to separate: keeps 0.5
    assert choose_threshold([0, 1, 2], np.eye(3), [0, 1, 2]) is None  # multi-class
    at = evaluate(y, proba, [0, 1], threshold=0.25)
    assert at["threshold"] == 0.25 and at["balanced_accuracy"] == pytest.approx(5 / 6)
    assert at["f1_macro"] == pytest.approx(np.mean([0.8, 0.8]))
    at_half = evaluate(y, proba, [0, 1])
    assert at_half["threshold"] == 0.5 and at_half["balanced_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Unknown threshold objective"):
        choose_threshold(y, proba, [0, 1], "accuracy")
