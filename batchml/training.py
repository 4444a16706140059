"""Training: fit a baseline and candidates side by side, evaluate, smoke-test, and gate.

Every step is a plain function so it is testable without Prefect; ``flows/train.py`` wires the
same functions into Prefect tasks, and :func:`train` runs them with a thread pool.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .datasets import (
    check_classes,
    clean_text,
    fingerprint,
    prepare_training_frame,
    read_parquet,
)
from .errors import DataError
from .evaluation import better, confusion_plot, curve_plots, evaluate, history_plot

if TYPE_CHECKING:
    from .catalog import Catalog, Run
    from .estimators import Estimator

BASELINE = "baseline"
DEFAULT_TEXT_SMOKE = (
    ("poor fit its baggy in places where it isn't supposed to be.", 0),
    ("love it, very high quality and great value", 1),
)


@dataclass
class TrainingConfig:
    """What to train on and how to judge it. Mirrors the training flow's parameters."""

    train_uri: str
    valid_uri: str
    label: str = "labels"
    text_column: str | None = None
    feature_columns: list[str] | None = None
    candidates: list[str] | None = None
    smoke_examples: list[tuple[Any, Any]] | None = None
    primary_metric: str = "roc_auc"
    baseline_margin: float = 0.01
    tag: str = "deployment_candidate"
    seed: int = 0
    candidate_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.text_column is None) == (not self.feature_columns):
            raise DataError("Give exactly one of a text column or feature columns.",
                            hint="Use --text-column for text, --feature-columns a,b,c for tables.")


@dataclass
class TrainingData:
    """Cleaned training and validation data with its classes and fingerprint."""

    train_x: pd.DataFrame
    train_y: pd.Series
    valid_x: pd.DataFrame
    valid_y: pd.Series
    classes: list[Any]
    fingerprint: str


@dataclass
class CandidateResult:
    """One candidate's outcome: a fitted estimator and metrics, or the error."""

    name: str
    estimator: Estimator | None
    metrics: dict[str, Any]
    seconds: float
    error: str | None = None
    valid_proba: np.ndarray | None = None


@dataclass
class SmokeResult:
    """One smoke-test example."""

    example: Any
    expected: Any
    predicted: Any
    passed: bool


@dataclass
class GateDecision:
    """Whether the run gets the tag, and why (or why not)."""

    winner: str | None
    tagged: bool
    metric: str
    winner_score: float | None
    baseline_score: float | None
    reasons: list[str]


def load_training_data(config: TrainingConfig, *, s3: Any = None) -> TrainingData:
    """Read, check and clean the training and validation parquet."""
    train_frame, train_sha = read_parquet(config.train_uri, s3=s3)
    valid_frame, valid_sha = read_parquet(config.valid_uri, s3=s3)
    kw: dict[str, Any] = {"label": config.label, "text_column": config.text_column,
                          "feature_columns": config.feature_columns}
    train_x, train_y = prepare_training_frame(train_frame, **kw, what="training data")
    valid_x, valid_y = prepare_training_frame(valid_frame, **kw, what="validation data")
    classes = check_classes(train_y)
    unseen = sorted(set(pd.unique(valid_y).tolist()) - set(classes), key=str)
    if unseen:
        raise DataError(f"The validation data has labels the training data lacks: {unseen}.",
                        hint="Split the data so every class appears in training.")
    return TrainingData(train_x, train_y, valid_x, valid_y, classes,
                        fingerprint(train_sha, valid_sha))


def candidate_list(config: TrainingConfig, data: TrainingData) -> list[str]:
    """The baseline plus the requested candidates (default: every one that fits the data)."""
    from .estimators import candidate_names

    names = list(config.candidates or candidate_names(config.text_column is not None))
    if config.candidates is None and len(data.classes) > 2 and "keras_nbow" in names:
        names.remove("keras_nbow")  # binary only; asked for explicitly it fails with a reason
    return [BASELINE] + [n for n in names if n != BASELINE]


def fit_candidate(name: str, data: TrainingData, config: TrainingConfig) -> CandidateResult:
    """Fit and evaluate one candidate. Never raises: a failure is returned as the result."""
    from .estimators import make_estimator

    start = time.perf_counter()
    try:
        est = make_estimator(name, text_column=config.text_column,
                             feature_columns=config.feature_columns, seed=config.seed,
                             **config.candidate_params.get(name, {}))
        est.fit(data.train_x, data.train_y)
        proba = est.predict_proba(data.valid_x)
        metrics = evaluate(data.valid_y, proba, est.classes_)
        return CandidateResult(name, est, metrics, time.perf_counter() - start,
                               valid_proba=proba)
    except Exception as exc:  # one candidate failing must not stop the others
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return CandidateResult(name, None, {}, time.perf_counter() - start, error=detail)


def smoke_test(estimator: Estimator, config: TrainingConfig,
               data: TrainingData) -> list[SmokeResult]:
    """Score the smoke examples and compare with the expected labels.

    Text data defaults to the two obvious reviews of the tutorial; tabular data with no
    examples is checked for well-formed probabilities on a few validation rows.
    """
    examples = config.smoke_examples
    if examples is None and config.text_column is not None:
        examples = list(DEFAULT_TEXT_SMOKE)
    if not examples:
        sample = data.valid_x.head(5)
        proba = estimator.predict_proba(sample)
        ok = bool(np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-4))
        return [SmokeResult("5 validation rows", "finite probabilities summing to 1",
                            "ok" if ok else "malformed probabilities", ok)]
    if config.text_column is not None:
        frame = pd.DataFrame({config.text_column: [clean_text(str(e)) for e, _ in examples]})
    else:
        frame = pd.DataFrame([e for e, _ in examples])
    predicted = estimator.predict(frame)
    return [SmokeResult(ex, exp, _plain(p), _plain(p) == _plain(exp))
            for (ex, exp), p in zip(examples, predicted, strict=True)]


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def choose_winner(results: Sequence[CandidateResult], metric: str) -> CandidateResult | None:
    """The best non-baseline candidate on ``metric``; ties go to the earlier name (sorted)."""
    ok = [r for r in results if r.name != BASELINE and r.error is None
          and not np.isnan(r.metrics.get(metric, np.nan))]
    best: CandidateResult | None = None
    for r in sorted(ok, key=lambda r: r.name):
        if best is None or better(metric, r.metrics[metric], best.metrics[metric]):
            best = r
    return best


def decide(results: Sequence[CandidateResult], smoke: Sequence[SmokeResult] | None,
           config: TrainingConfig) -> GateDecision:
    """Tag only when the winner beats the baseline by the margin and passes the smoke test."""
    metric = config.primary_metric
    base = next((r for r in results if r.name == BASELINE and r.error is None), None)
    winner = choose_winner(results, metric)
    reasons: list[str] = []
    base_score = base.metrics.get(metric) if base else None
    if winner is None:
        reasons.append(f"no candidate produced a {metric}: "
                       + "; ".join(f"{r.name}: {r.error}" for r in results if r.error))
        return GateDecision(None, False, metric, None, base_score, reasons)
    score = float(winner.metrics[metric])
    if base_score is None:
        reasons.append("the baseline failed, so nothing shows the winner beats it")
    elif not better(metric, score, float(base_score), config.baseline_margin):
        reasons.append(f"{winner.name} {metric}={score:.4f} does not beat the baseline "
                       f"{base_score:.4f} by the margin {config.baseline_margin}")
    failed = [s for s in (smoke or []) if not s.passed]
    if smoke is None:
        reasons.append("the smoke test did not run")
    elif failed:
        reasons.append(f"smoke test failed on {len(failed)} of {len(smoke)} examples: "
                       + "; ".join(f"{s.example!r} expected {s.expected!r} got {s.predicted!r}"
                                   for s in failed))
    if not reasons:
        reasons.append(f"{winner.name} {metric}={score:.4f} beats the baseline "
                       f"{base_score:.4f} by more than {config.baseline_margin} and passed "
                       f"{len(smoke or [])} smoke examples")
        return GateDecision(winner.name, True, metric, score, base_score, reasons)
    return GateDecision(winner.name, False, metric, score, base_score, reasons)


def code_fingerprint() -> str:
    """sha256 over batchml's own source, so runs record which code trained them."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def summary_table(results: Sequence[CandidateResult], metric: str) -> list[dict[str, Any]]:
    """One row per candidate for tables and Prefect artifacts."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"candidate": r.name, "seconds": round(r.seconds, 2),
                               "status": "failed" if r.error else "ok"}
        for key in ("accuracy", "roc_auc", "precision", "recall", "f1", "log_loss"):
            v = r.metrics.get(key)
            row[key] = None if v is None else round(float(v), 4)
        row["error"] = r.error
        rows.append(row)
    return rows


def decision_markdown(decision: GateDecision, run_id: str) -> str:
    """The gate decision as markdown for people (Prefect artifact, catalog artifact)."""
    verdict = "tagged **deployment candidate**" if decision.tagged else "**not** tagged"
    lines = [f"# Training run {run_id}: {verdict}", "",
             f"- winner: `{decision.winner}`", f"- primary metric: `{decision.metric}`",
             f"- winner score: {decision.winner_score}",
             f"- baseline score: {decision.baseline_score}", "", "## Why"]
    lines += [f"- {r}" for r in decision.reasons]
    return "\n".join(lines) + "\n"


def record_training(run: Run, data: TrainingData, results: Sequence[CandidateResult],
                    smoke: Sequence[SmokeResult] | None, decision: GateDecision,
                    config: TrainingConfig) -> None:
    """Write everything into the catalog: metrics, models, plots, smoke results, the decision
    and, when the gate passed, the tag."""
    run.log_params({"candidates": [r.name for r in results], "classes": data.classes,
                    "train_rows": len(data.train_x), "valid_rows": len(data.valid_x)})
    all_metrics: dict[str, float] = {}
    for r in results:
        all_metrics[f"{r.name}.seconds"] = r.seconds
        for key, value in r.metrics.items():
            if isinstance(value, float | int):
                all_metrics[f"{r.name}.{key}"] = float(value)
    winner = next((r for r in results if r.name == decision.winner), None)
    if winner is not None:
        all_metrics.update({k: float(v) for k, v in winner.metrics.items()
                            if isinstance(v, float | int)})
    if smoke is not None:
        all_metrics["smoke_passed"] = float(sum(s.passed for s in smoke))
        all_metrics["smoke_total"] = float(len(smoke))
    run.log_metrics(all_metrics)
    for r in results:
        if r.estimator is not None:
            run.log_model(r.name, r.estimator, primary=r.name == decision.winner)
        if "confusion_matrix" in r.metrics:
            run.log_artifact(f"plots/confusion_{r.name}.png",
                             confusion_plot(r.metrics["confusion_matrix"], data.classes,
                                            f"{r.name}: confusion matrix"), kind="plot")
        history = getattr(r.estimator, "history", None)
        if history:
            run.log_artifact(f"plots/training_{r.name}.png",
                             history_plot(history, f"{r.name}: training"), kind="plot")
    probas = {r.name: r.valid_proba for r in results if r.valid_proba is not None}
    for name, png in curve_plots(data.valid_y, probas, data.classes).items():
        run.log_artifact(f"plots/{name}", png, kind="plot")
    report = {"decision": asdict(decision), "candidates": summary_table(results,
                                                                         decision.metric),
              "smoke": [asdict(s) for s in smoke or []],
              "confusion_matrices": {r.name: r.metrics.get("confusion_matrix")
                                     for r in results}}
    run.log_artifact("gate.json", json.dumps(report, indent=2, default=str).encode(),
                     kind="report")
    run.log_artifact("gate.md", decision_markdown(decision, run.id).encode(), kind="report")
    if decision.tagged:
        run.add_tag(config.tag, note=decision.reasons[0])


@dataclass
class TrainingOutcome:
    """What :func:`train` returns."""

    run: Run
    results: list[CandidateResult]
    smoke: list[SmokeResult] | None
    decision: GateDecision


def train(catalog: Catalog, config: TrainingConfig, *, flow: str = "train",
          prefect_flow_run_id: str | None = None, s3: Any = None,
          map_candidates: Callable[..., list[CandidateResult]] | None = None) -> TrainingOutcome:
    """Train, evaluate, smoke-test, gate and record one run. A crash marks the run failed.

    ``map_candidates(names, data, config)`` fits the candidates; the default runs them in
    parallel threads. The Prefect flow passes one that submits Prefect tasks instead.
    """
    run = catalog.create_run(flow, params=_config_params(config),
                             prefect_flow_run_id=prefect_flow_run_id,
                             code_fingerprint=code_fingerprint())
    try:
        data = load_training_data(config, s3=s3)
        run.set_data_fingerprint(data.fingerprint)
        names = candidate_list(config, data)
        results = (map_candidates or fit_in_threads)(names, data, config)
        winner = choose_winner(results, config.primary_metric)
        smoke = None
        if winner is not None and winner.estimator is not None:
            smoke = smoke_test(winner.estimator, config, data)
        decision = decide(results, smoke, config)
        record_training(run, data, results, smoke, decision, config)
        run.finish("completed")
        return TrainingOutcome(run, list(results), smoke, decision)
    except BaseException as exc:
        detail = "".join(traceback.format_exception_only(exc)).strip()
        run.finish("failed", error=detail)
        raise


def fit_in_threads(names: Sequence[str], data: TrainingData,
                   config: TrainingConfig) -> list[CandidateResult]:
    """Fit candidates in parallel threads (NumPy, scikit-learn and TensorFlow drop the GIL)."""
    with ThreadPoolExecutor(max_workers=min(4, len(names))) as pool:
        return list(pool.map(lambda n: fit_candidate(n, data, config), names))


def _config_params(config: TrainingConfig) -> dict[str, Any]:
    params = asdict(config)
    params["smoke_examples"] = [list(e) for e in config.smoke_examples or []] or None
    return params
