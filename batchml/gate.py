"""The training gate: domain-free checks of the winning model, smoke examples, and the decision.

A run is tagged only when its winner beats the majority baseline by the margin **and** passes
every check that ran. The checks derive from the data and the model, so they hold for any
domain (reviews, logs, feature tables):

- ``probabilities_well_formed``: finite, within [0, 1], every row sums to 1;
- ``probabilities_vary``: not the same probabilities for every validation row;
- ``predictions_vary``: more than one class predicted on validation;
- ``every_class_predicted``: every class with enough validation rows is predicted somewhere;
- ``perturbation_stability``: predictions do not change under harmless edits (text: upper
  case, extra whitespace, HTML entities; numbers: a tiny relative jitter) on a sample;
- ``holdout_agreement``: balanced accuracy on validation, each row judged at a decision
  threshold chosen on the other folds (so no row's threshold saw its label), beats chance
  (1 / classes) by a margin;
- ``smoke_examples``: the user's own examples (``--smoke FILE``) are all predicted right
  (skipped when none are given).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .evaluation import better, choose_threshold, predicted_index

if TYPE_CHECKING:
    from .training import CandidateResult, TrainingConfig, TrainingData

BASELINE = "baseline"
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class SmokeResult:
    """One smoke example: what was expected, what the model said, and the probability it gave
    the expected label (``score``)."""

    example: Any
    expected: Any
    predicted: Any
    passed: bool
    score: float | None = None


@dataclass
class CheckResult:
    """One gate check: its name, its inputs (sample sizes, thresholds), what was observed and
    the outcome (``pass``, ``fail`` or ``skip``), with a sentence saying why."""

    name: str
    inputs: dict[str, Any]
    observed: Any
    outcome: str
    detail: str

    @property
    def failed(self) -> bool:
        """True when the check ran and failed (a skipped check never blocks the tag)."""
        return self.outcome == FAIL


@dataclass
class GateDecision:
    """Whether the run gets the tag, and why (or why not), with every check that ran."""

    winner: str | None
    tagged: bool
    metric: str
    winner_score: float | None
    baseline_score: float | None
    reasons: list[str]
    threshold: float | None = None
    checks: list[CheckResult] = field(default_factory=list)
    smoke: list[SmokeResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One line per candidate that was skipped (an optional extra not installed), with why."""


# --- smoke examples (read and checked by batchml.smoke) ----------------------------------


def smoke_check(estimator: Any, x: pd.DataFrame | None, expected: Sequence[Any] | None,
                source: str | None) -> tuple[CheckResult, list[SmokeResult]]:
    """Score the smoke examples; every one must get its expected label."""
    if x is None or expected is None or len(x) == 0:
        return CheckResult("smoke_examples", {"examples": 0}, None, SKIP,
                           "no smoke examples given (--smoke FILE or BATCHML_SMOKE_PATH)"), []
    proba = estimator.predict_proba(x)
    predicted = estimator.labels_from_proba(proba)
    classes = list(estimator.classes_)
    shown = x.iloc[:, 0] if x.shape[1] == 1 else pd.Series(x.to_dict("records"))
    results = [SmokeResult(_plain(ex), exp, _plain(p), _plain(p) == exp,
                           float(proba[i, classes.index(exp)]))
               for i, (ex, exp, p) in enumerate(zip(shown, expected, predicted, strict=True))]
    failed = [s for s in results if not s.passed]
    inputs = {"examples": len(results), "source": source,
              "threshold": getattr(estimator, "threshold", None)}
    observed = f"{len(results) - len(failed)} of {len(results)} right"
    if failed:
        detail = (f"smoke test failed on {len(failed)} of {len(results)} examples: "
                  + "; ".join(f"{_short(s.example)!r} expected {s.expected!r} got "
                              f"{s.predicted!r} (P(expected)={s.score:.3f})" for s in failed))
        return CheckResult("smoke_examples", inputs, observed, FAIL, detail), results
    return CheckResult("smoke_examples", inputs, observed, PASS,
                       f"all {len(results)} smoke examples predicted right"), results


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _short(v: Any, n: int = 80) -> Any:
    return v[:n] + "..." if isinstance(v, str) and len(v) > n else v


# --- checks derived from the data and the model ----------------------------------------------


def fold_ids(labels: pd.Series, folds: int, seed: int) -> np.ndarray:
    """A fold number (0 .. folds-1) for every validation row, stratified by class."""
    rng = np.random.default_rng(seed)
    values = labels.to_numpy()
    out = np.zeros(len(values), dtype=np.intp)
    for cls in pd.unique(values):
        rows = np.flatnonzero(values == cls)
        out[rng.permutation(rows)] = np.arange(len(rows)) % max(1, folds)
    return out


def out_of_fold_index(proba: np.ndarray, labels: pd.Series, classes: Sequence[Any], *,
                      objective: str, folds: int, seed: int) -> np.ndarray:
    """Predicted class positions on validation where no row's decision threshold was chosen
    on that row: binary thresholds are chosen on the other folds (cross-fitting); multi-class
    takes the most probable class (nothing is tuned on validation)."""
    if len(classes) != 2:
        return predicted_index(proba)
    fold = fold_ids(labels, folds, seed)
    out = np.zeros(len(proba), dtype=np.intp)
    for f in np.unique(fold):
        rest = fold != f
        threshold = choose_threshold(labels[rest], proba[rest], classes, objective)
        out[~rest] = predicted_index(proba[~rest], threshold)
    return out


def probability_checks(proba: np.ndarray) -> list[CheckResult]:
    """Well-formed probabilities (finite, within [0, 1], rows summing to 1) that vary."""
    n = len(proba)
    finite = bool(np.isfinite(proba).all())
    in_range = finite and bool(((proba >= -1e-9) & (proba <= 1 + 1e-9)).all())
    worst = float(np.abs(proba.sum(axis=1) - 1).max()) if finite and n else float("nan")
    ok = finite and in_range and worst <= 1e-4
    problems = [p for p, bad in (("non-finite values", not finite),
                                 ("values outside [0, 1]", finite and not in_range),
                                 (f"rows summing to 1 +- {worst:.2g}", finite and worst > 1e-4))
                if bad]
    well = CheckResult(
        "probabilities_well_formed", {"rows": n, "sum_tolerance": 1e-4},
        {"finite": finite, "in_range": in_range, "max_sum_error": worst}, PASS if ok else FAIL,
        f"{n} validation rows have finite probabilities in [0, 1] summing to 1" if ok
        else f"malformed probabilities on validation: {', '.join(problems)}")
    spread = float(np.ptp(proba, axis=0).max()) if finite and n else float("nan")
    varies = finite and spread > 1e-9
    vary = CheckResult(
        "probabilities_vary", {"rows": n, "min_spread": 1e-9}, spread,
        PASS if varies else FAIL,
        f"probabilities vary across validation rows (largest spread {spread:.3g})" if varies
        else "the model gives every validation row the same probabilities (a constant model)")
    return [well, vary]


def prediction_checks(predicted: np.ndarray, labels: pd.Series, classes: Sequence[Any],
                      min_class_rows: int) -> list[CheckResult]:
    """More than one class predicted, and every class with ``min_class_rows`` validation rows
    predicted at least once."""
    counts = pd.Series(predicted).value_counts()
    seen = {_plain(c): int(n) for c, n in counts.items()}
    distinct = len(seen)
    vary = CheckResult(
        "predictions_vary", {"rows": len(predicted)}, seen, PASS if distinct > 1 else FAIL,
        f"{distinct} classes predicted on validation" if distinct > 1
        else f"the model predicts {next(iter(seen), None)!r} for every validation row "
             "(a constant prediction)")
    support = labels.value_counts()
    needed = [_plain(c) for c in classes if int(support.get(c, 0)) >= min_class_rows]
    missing = [c for c in needed if c not in seen]
    every = CheckResult(
        "every_class_predicted", {"rows": len(predicted), "min_class_rows": min_class_rows,
                                  "classes": needed},
        {"never_predicted": missing}, FAIL if missing else PASS,
        f"classes {missing} are never predicted on validation" if missing
        else f"every class with >= {min_class_rows} validation rows is predicted")
    return [vary, every]


def _perturbations(frame: pd.DataFrame, text_column: str | None, jitter: float,
                   seed: int) -> dict[str, pd.DataFrame]:
    if text_column is not None:
        col = frame[text_column].astype(object)
        edits = {"upper case": lambda t: t.upper(),
                 "extra whitespace": lambda t: "  " + t.replace(" ", "   ") + " \n",
                 "html entities": lambda t: html.escape(t, quote=True)}
        return {name: frame.assign(**{text_column: col.map(
            lambda v, f=f: f(v) if isinstance(v, str) else v)}) for name, f in edits.items()}
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c].dtype)]
    if not floats:
        return {}
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for c in floats:
        out[c] = frame[c] * (1 + jitter * rng.choice([-1.0, 1.0], size=len(frame)))
    return {f"relative jitter {jitter:g}": out}


def stability_check(estimator: Any, valid_x: pd.DataFrame, *, text_column: str | None,
                    sample: int, min_agreement: float, jitter: float,
                    seed: int) -> CheckResult:
    """Predictions on a sample of validation rows agree with those on harmlessly edited copies
    (text: upper case, extra whitespace, HTML entities; float columns: tiny jitter)."""
    n = min(sample, len(valid_x))
    rows = valid_x.sample(n=n, random_state=seed) if n < len(valid_x) else valid_x
    rows = rows.reset_index(drop=True)
    inputs: dict[str, Any] = {"sample": n, "min_agreement": min_agreement}
    perturbed = _perturbations(rows, text_column, jitter, seed)
    if not perturbed or n == 0:
        return CheckResult("perturbation_stability", inputs, None, SKIP,
                           "no column to perturb harmlessly (no text, no float columns)")
    base = np.asarray(estimator.predict(rows))
    agreement = {name: float(np.mean(np.asarray(estimator.predict(x)) == base))
                 for name, x in perturbed.items()}
    inputs["perturbations"] = list(agreement)
    worst = min(agreement, key=lambda k: agreement[k])
    ok = agreement[worst] >= min_agreement
    return CheckResult(
        "perturbation_stability", inputs, agreement, PASS if ok else FAIL,
        f"predictions agree on >= {agreement[worst]:.1%} of {n} rows under every perturbation"
        if ok else f"only {agreement[worst]:.1%} of {n} predictions survive '{worst}' "
                   f"(need {min_agreement:.0%})")


def holdout_check(predicted: np.ndarray, labels: pd.Series, classes: Sequence[Any],
                  margin: float, folds: int) -> CheckResult:
    """Balanced accuracy of held-out predictions (each validation row judged at a threshold
    chosen on the other folds) beats chance (1 / classes) by ``margin``. An inverted model
    scores below chance, a label-shuffled one at chance."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    y = labels.to_numpy()
    chance = 1 / len(classes)
    need = chance + margin
    inputs = {"rows": len(y), "folds": folds if len(classes) == 2 else None,
              "chance": chance, "margin": margin, "min_balanced_accuracy": need}
    if len(pd.unique(y)) < 2:
        return CheckResult("holdout_agreement", inputs, None, SKIP,
                           "validation has fewer than two classes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        score = float(balanced_accuracy_score(y, np.asarray(predicted)))
    ok = score > need
    where = f"{len(y)} validation rows (thresholds chosen out of fold)" if len(classes) == 2 \
        else f"{len(y)} validation rows"
    return CheckResult(
        "holdout_agreement", inputs, score, PASS if ok else FAIL,
        f"balanced accuracy {score:.3f} on {where} beats chance {chance:.3f} by more than "
        f"{margin}" if ok else
        f"balanced accuracy {score:.3f} on {where} does not beat chance {chance:.3f} by "
        f"{margin}" + (" (below chance: inverted predictions?)" if score < chance - margin
                       else ""))


def run_checks(estimator: Any, data: TrainingData, config: TrainingConfig,
               valid_proba: np.ndarray | None = None) -> tuple[list[CheckResult],
                                                               list[SmokeResult]]:
    """Every gate check on the winner, in report order, and the smoke results."""
    proba = estimator.predict_proba(data.valid_x) if valid_proba is None else valid_proba
    predicted = np.asarray(estimator.labels_from_proba(proba))
    classes = list(estimator.classes_)
    held_out = np.asarray(classes, dtype=data.valid_y.to_numpy().dtype)[out_of_fold_index(
        proba, data.valid_y, classes, objective=config.threshold_objective,
        folds=config.threshold_folds, seed=config.seed)]
    checks = probability_checks(proba)
    checks += prediction_checks(predicted, data.valid_y, data.classes, config.min_class_rows)
    checks.append(stability_check(estimator, data.valid_x, text_column=config.text_column,
                                  sample=config.stability_sample,
                                  min_agreement=config.min_stability_agreement,
                                  jitter=config.numeric_jitter, seed=config.seed))
    checks.append(holdout_check(held_out, data.valid_y, classes, config.holdout_margin,
                                config.threshold_folds))
    smoke, results = smoke_check(estimator, data.smoke_x, data.smoke_y,
                                 config.smoke_uri or ("inline examples" if config.smoke_examples
                                                      else None))
    checks.append(smoke)
    return checks, results


# --- the decision ----------------------------------------------------------------------------


def choose_winner(results: Sequence[CandidateResult], metric: str) -> CandidateResult | None:
    """The best non-baseline candidate on ``metric``; ties go to the earlier name (sorted)."""
    ok = [r for r in results if r.name != BASELINE and r.error is None
          and not np.isnan(r.metrics.get(metric, np.nan))]
    best: CandidateResult | None = None
    for r in sorted(ok, key=lambda r: r.name):
        if best is None or better(metric, r.metrics[metric], best.metrics[metric]):
            best = r
    return best


def decide(results: Sequence[CandidateResult], checks: Sequence[CheckResult] | None,
           config: TrainingConfig, smoke: Sequence[SmokeResult] = ()) -> GateDecision:
    """Tag only when the winner beats the baseline by the margin and fails no check."""
    metric = config.primary_metric
    base = next((r for r in results if r.name == BASELINE and r.error is None), None)
    winner = choose_winner(results, metric)
    reasons: list[str] = []
    skipped = [f"{r.name}: {r.skipped}" for r in results if r.skipped]
    base_score = base.metrics.get(metric) if base else None
    if winner is None:
        reasons.append(f"no candidate produced a {metric}: "
                       + "; ".join(f"{r.name}: {r.error or 'skipped'}" for r in results
                                   if r.error or r.skipped))
        return GateDecision(None, False, metric, None, base_score, reasons, skipped=skipped)
    score = float(winner.metrics[metric])
    threshold = winner.metrics.get("threshold")
    if base_score is None:
        reasons.append("the baseline failed, so nothing shows the winner beats it")
    elif not better(metric, score, float(base_score), config.baseline_margin):
        reasons.append(f"{winner.name} {metric}={score:.4f} does not beat the baseline "
                       f"{base_score:.4f} by the margin {config.baseline_margin}")
    if checks is None:
        reasons.append("the gate checks did not run")
    else:
        reasons += [f"check {c.name} failed: {c.detail}" for c in checks if c.failed]
    decision = GateDecision(winner.name, False, metric, score, base_score, reasons, threshold,
                            list(checks or []), list(smoke), skipped)
    if not reasons:
        ran = [c for c in checks or [] if c.outcome == PASS]
        reasons.append(f"{winner.name} {metric}={score:.4f} beats the baseline "
                       f"{base_score:.4f} by more than {config.baseline_margin} and passed "
                       f"{len(ran)} checks ({', '.join(c.name for c in ran)})")
        decision.tagged = True
    return decision


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def decision_markdown(decision: GateDecision, run_id: str) -> str:
    """The gate decision as markdown for people (Prefect artifact, catalog artifact,
    ``batchml run show``): verdict, reasons, the threshold, every check, the smoke examples."""
    verdict = "tagged **deployment candidate**" if decision.tagged else "**not** tagged"
    threshold = "n/a (multi-class: most probable class)" if decision.threshold is None \
        else f"{decision.threshold:.4f} (chosen on validation)"
    lines = [f"# Training run {run_id}: {verdict}", "",
             f"- winner: `{decision.winner}`", f"- primary metric: `{decision.metric}`",
             f"- winner score: {decision.winner_score}",
             f"- baseline score: {decision.baseline_score}",
             f"- decision threshold: {threshold}"]
    lines += [f"- skipped candidate {s}" for s in decision.skipped]
    lines += ["", "## Why"]
    lines += [f"- {r}" for r in decision.reasons]
    if decision.checks:
        lines += ["", "## Checks", "", "| check | inputs | observed | outcome | detail |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c.name} | {_cell(c.inputs)} | {_cell(c.observed)} | {c.outcome} | "
                  f"{_cell(c.detail)} |" for c in decision.checks]
    if decision.smoke:
        lines += ["", "## Smoke examples", "", "| example | expected | predicted | "
                  "P(expected) | outcome |", "|---|---|---|---|---|"]
        lines += [f"| {_cell(_short(s.example))} | {s.expected} | {s.predicted} | "
                  f"{_cell(s.score)} | {'pass' if s.passed else 'fail'} |"
                  for s in decision.smoke]
    return "\n".join(lines) + "\n"

