"""Training: fit a baseline and candidates side by side, evaluate, check, and gate.

Every step is a plain function so it is testable without Prefect; ``flows/train.py`` wires the
same functions into Prefect tasks, and :func:`train` runs them with a thread pool. The gate's
checks and decision live in :mod:`batchml.gate`.
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
    fingerprint,
    prepare_training_frame,
    read_parquet,
)
from .drift_report import record_reference
from .errors import DataError, ExtraNotInstalled, SmokeExamplesError
from .evaluation import (
    THRESHOLD_OBJECTIVES,
    choose_threshold,
    confusion_plot,
    curve_plots,
    evaluate,
    history_plot,
)
from .explanations import record_explanation
from .gate import (
    BASELINE,
    CheckResult,
    GateDecision,
    SmokeResult,
    choose_winner,
    decide,
    decision_markdown,
    run_checks,
)
from .smoke import prepare_smoke, read_smoke_file

if TYPE_CHECKING:
    from .catalog import Catalog, Run
    from .champion import ChampionOutcome, ChampionPolicy
    from .estimators import Estimator
    from .limits import Limits
    from .settings import Settings

__all__ = ["BASELINE", "CandidateResult", "CheckResult", "GateDecision", "SmokeResult",
           "TrainingConfig", "TrainingData", "TrainingOutcome", "choose_winner", "decide",
           "decision_markdown", "recorded_candidates", "train", "train_from_settings"]


@dataclass
class TrainingConfig:
    """What to train on and how to judge it. Mirrors the training flow's parameters.

    Gate thresholds (see :mod:`batchml.gate`), with their defaults:

    - ``smoke_uri``: parquet or CSV of examples with the input columns and the expected label
      (the label column); None runs only the checks derived from the data.
    - ``threshold_objective`` ``"balanced_accuracy"``: what the binary decision threshold
      maximises on validation (``"f1"``, or ``"fixed"`` for 0.5).
    - ``threshold_folds`` 5: ``holdout_agreement`` judges each validation row at a threshold
      chosen on the other folds (the recorded threshold is chosen on all of validation).
    - ``holdout_margin`` 0.1: that balanced accuracy must exceed chance (1 / classes) by this.
    - ``stability_sample`` 200 rows, ``min_stability_agreement`` 0.95, ``numeric_jitter``
      1e-6 (relative): ``perturbation_stability``.
    - ``min_class_rows`` 5: ``every_class_predicted`` covers classes with this many
      validation rows.
    """

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
    smoke_uri: str | None = None
    threshold_objective: str = "balanced_accuracy"
    threshold_folds: int = 5
    holdout_margin: float = 0.1
    stability_sample: int = 200
    min_stability_agreement: float = 0.95
    numeric_jitter: float = 1e-6
    min_class_rows: int = 5

    def __post_init__(self) -> None:
        if (self.text_column is None) == (not self.feature_columns):
            raise DataError("Give exactly one of a text column or feature columns.",
                            hint="Use --text-column for text, --feature-columns a,b,c for tables.")
        self.smoke_uri = self.smoke_uri or None
        if self.threshold_objective not in THRESHOLD_OBJECTIVES:
            raise DataError(f"Unknown threshold objective {self.threshold_objective!r}.",
                            hint=f"Use one of {', '.join(THRESHOLD_OBJECTIVES)}.")
        if self.threshold_folds < 2:
            raise DataError(f"threshold_folds must be at least 2, got {self.threshold_folds}.",
                            hint="5 judges each validation row at a threshold chosen on 80%.")

    @property
    def inputs(self) -> list[str]:
        """The model's input columns."""
        return [self.text_column] if self.text_column else list(self.feature_columns or [])


@dataclass
class TrainingData:
    """Cleaned training and validation data with its classes and fingerprint."""

    train_x: pd.DataFrame
    train_y: pd.Series
    valid_x: pd.DataFrame
    valid_y: pd.Series
    classes: list[Any]
    fingerprint: str
    smoke_x: pd.DataFrame | None = None
    smoke_y: list[Any] | None = None


@dataclass
class CandidateResult:
    """One candidate's outcome: a fitted estimator and metrics, or the error."""

    name: str
    estimator: Estimator | None
    metrics: dict[str, Any]
    seconds: float
    error: str | None = None
    valid_proba: np.ndarray | None = None
    skipped: str | None = None
    """Why the candidate was not trained (its optional extra is not installed), if it was
    not: a skipped candidate is neither a failure nor a contender."""


def load_training_data(config: TrainingConfig, *, s3: Any = None,
                       limits: Limits | None = None) -> TrainingData:
    """Read, check and clean the training and validation parquet and the smoke examples.

    Bad smoke examples raise :class:`SmokeExamplesError` here, before anything is trained.
    """
    # each file held to the memory budget and text limits (default: the documented ones)
    train_frame, train_sha = read_parquet(config.train_uri, s3=s3, limits=limits)
    valid_frame, valid_sha = read_parquet(config.valid_uri, s3=s3, limits=limits)
    kw: dict[str, Any] = {"label": config.label, "text_column": config.text_column,
                          "feature_columns": config.feature_columns}
    train_x, train_y = prepare_training_frame(train_frame, **kw, what="training data")
    valid_x, valid_y = prepare_training_frame(valid_frame, **kw, what="validation data")
    classes = check_classes(train_y)
    unseen = sorted(set(pd.unique(valid_y).tolist()) - set(classes), key=str)
    if unseen:
        raise DataError(f"The validation data has labels the training data lacks: {unseen}.",
                        hint="Split the data so every class appears in training.")
    data = TrainingData(train_x, train_y, valid_x, valid_y, classes,
                        fingerprint(train_sha, valid_sha))
    data.smoke_x, data.smoke_y = load_smoke(config, classes, s3=s3)
    return data


def load_smoke(config: TrainingConfig, classes: list[Any], *,
               s3: Any = None) -> tuple[pd.DataFrame | None, list[Any] | None]:
    """The smoke inputs and expected labels from ``config.smoke_uri`` or
    ``config.smoke_examples`` (None, None when there are none)."""
    if config.smoke_uri:
        frame = read_smoke_file(config.smoke_uri, label=config.label, inputs=config.inputs,
                                s3=s3)
        where = config.smoke_uri
    elif config.smoke_examples:
        rows = [dict(e) if isinstance(e, dict) else
                {config.inputs[0]: e} if config.text_column else dict(e)
                for e, _ in config.smoke_examples]
        frame = pd.DataFrame(rows)
        frame[config.label] = [label for _, label in config.smoke_examples]
        missing = [c for c in config.inputs if c not in frame.columns]
        if missing:
            raise SmokeExamplesError(f"The inline smoke examples lack column(s) {missing}.",
                                     hint="Give each example every input column.")
        where = "the inline smoke examples"
    else:
        return None, None
    return prepare_smoke(frame, uri=where, label=config.label, inputs=config.inputs,
                         text_column=config.text_column, classes=classes)


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
        threshold = choose_threshold(data.valid_y, proba, est.classes_,
                                     config.threshold_objective)
        if threshold is not None:
            est.set_threshold(threshold)  # saved with the model: scoring uses it
        metrics = evaluate(data.valid_y, proba, est.classes_, threshold=threshold)
        return CandidateResult(name, est, metrics, time.perf_counter() - start,
                               valid_proba=proba)
    except ExtraNotInstalled as exc:  # e.g. encoder_minilm without batchml[transformers]
        return CandidateResult(name, None, {}, time.perf_counter() - start,
                               skipped=f"{exc.message} {exc.hint or ''}".strip())
    except Exception as exc:  # one candidate failing must not stop the others
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return CandidateResult(name, None, {}, time.perf_counter() - start, error=detail)


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
                               "status": "failed" if r.error else
                               "skipped" if r.skipped else "ok"}
        for key in ("accuracy", "balanced_accuracy", "roc_auc", "precision", "recall", "f1",
                    "f1_macro", "log_loss", "threshold"):
            v = r.metrics.get(key)
            row[key] = None if v is None else round(float(v), 4)
        row["error"] = r.error
        if r.skipped:
            row["skipped"] = r.skipped
        rows.append(row)
    return rows


def record_training(run: Run, data: TrainingData, results: Sequence[CandidateResult],
                    smoke: Sequence[SmokeResult] | None, decision: GateDecision,
                    config: TrainingConfig) -> None:
    """Write everything into the catalog: metrics, models, plots, the gate report (every
    check, the threshold, the smoke examples with scores) and, when the gate passed, the tag."""
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
    if smoke:
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
    report = {"decision": asdict(decision), "threshold": decision.threshold,
              "checks": [asdict(c) for c in decision.checks],
              "candidates": summary_table(results, decision.metric),
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
    champion: ChampionOutcome | None = None
    """What the registry did with a tagged run (:mod:`batchml.champion`), when asked."""


def train(catalog: Catalog, config: TrainingConfig, *, flow: str = "train",
          prefect_flow_run_id: str | None = None, s3: Any = None,
          map_candidates: Callable[..., list[CandidateResult]] | None = None,
          limits: Limits | None = None,
          champion: ChampionPolicy | None = None) -> TrainingOutcome:
    """Train, evaluate, check, gate and record one run. A crash marks the run failed.

    ``limits`` (memory budget per file, text values; see :mod:`batchml.limits`) apply to
    the training and validation files: ``Limits.from_settings(settings)``.

    Bad smoke examples (:class:`SmokeExamplesError`) are found before anything is trained and
    raised without recording a run: fix the file and train again. ``map_candidates(names,
    data, config)`` fits the candidates; the default runs them in parallel threads. The
    Prefect flow passes one that submits Prefect tasks instead.

    ``champion``: when the gate tags the run, register its winner as the next version of
    ``champion.model_name``, compare it with the champion on the same validation data and
    move challenger (and champion, by the policy): :mod:`batchml.champion`. None: no
    registry change (:func:`train_from_settings` always passes the settings' policy).
    """
    def new_run() -> Run:
        return catalog.create_run(flow, params=_config_params(config),
                                  prefect_flow_run_id=prefect_flow_run_id,
                                  code_fingerprint=code_fingerprint())

    try:
        data = load_training_data(config, s3=s3, limits=limits)
    except SmokeExamplesError:
        raise
    except BaseException as exc:
        new_run().finish("failed", error=_detail(exc))
        raise
    run = new_run()
    try:
        run.set_data_fingerprint(data.fingerprint)
        names = candidate_list(config, data)
        results = (map_candidates or fit_in_threads)(names, data, config)
        winner = choose_winner(results, config.primary_metric)
        checks: list[CheckResult] | None = None
        smoke: list[SmokeResult] = []
        if winner is not None and winner.estimator is not None:
            try:
                checks, smoke = run_checks(winner.estimator, data, config, winner.valid_proba)
            except Exception as exc:  # a check that crashes refuses the tag, with the reason
                checks = [CheckResult("checks", {}, None, "fail",
                                      f"the checks could not run: {_detail(exc)}")]
        decision = decide(results, checks, config, smoke)
        record_training(run, data, results, smoke, decision, config)
        explained = next((r.estimator for r in results if r.name == decision.winner), None)
        if explained is not None:  # explanation.json / .png (never fails the run)
            record_explanation(run, explained, data.valid_x, data.valid_y, seed=config.seed)
            won = next(r for r in results if r.name == decision.winner)
            record_reference(run, won.name, data.train_x,  # drift_reference.json
                             text_column=config.text_column, classes=list(explained.classes_),
                             valid_x=data.valid_x, valid_proba=won.valid_proba)
        run.finish("completed")
        outcome = TrainingOutcome(run, list(results), smoke, decision)
    except BaseException as exc:
        run.finish("failed", error=_detail(exc))
        raise
    if champion is not None and decision.tagged:  # registers only a completed run
        outcome.champion = champion.settle(run, data, results, decision)
    return outcome


def train_from_settings(settings: Settings, config: TrainingConfig, *, flow: str | None = None,
                        prefect_flow_run_id: str | None = None,
                        map_candidates: Callable[..., list[CandidateResult]] | None = None,
                        ) -> TrainingOutcome:
    """:func:`train` against what ``settings`` name: their catalog, their limits, and an S3
    client when the training, validation or smoke file is on S3, and their champion policy
    (``BATCHML_MODEL_NAME``, ``BATCHML_PROMOTION``, ``BATCHML_PROMOTION_MARGIN``). The run is
    recorded under ``flow`` (default: ``BATCHML_TRAIN_FLOW``)."""
    from .catalog import Catalog
    from .champion import ChampionPolicy
    from .limits import Limits

    s3 = None
    if any((u or "").startswith("s3://")
           for u in (config.train_uri, config.valid_uri, config.smoke_uri)):
        from .store import s3_client

        s3 = s3_client(settings.s3_endpoint_url, settings.s3_region)
    return train(Catalog.from_settings(settings), config, flow=flow or settings.train_flow,
                 prefect_flow_run_id=prefect_flow_run_id, s3=s3, map_candidates=map_candidates,
                 limits=Limits.from_settings(settings),
                 champion=ChampionPolicy.from_settings(settings, config.label))


CANDIDATE_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1", "threshold", "log_loss",
                     "seconds")


def recorded_candidates(run: Run) -> list[dict[str, Any]]:
    """The candidates of a recorded training run, one row each with its metrics (as
    :func:`record_training` wrote them: ``<candidate>.<metric>``), in training order."""
    metrics = run.metrics
    return [{"candidate": name, **{k: metrics.get(f"{name}.{k}") for k in CANDIDATE_METRICS}}
            for name in run.params.get("candidates", [])]


def _detail(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def fit_in_threads(names: Sequence[str], data: TrainingData,
                   config: TrainingConfig) -> list[CandidateResult]:
    """Fit candidates in parallel threads (NumPy, scikit-learn and TensorFlow drop the GIL)."""
    with ThreadPoolExecutor(max_workers=min(4, len(names))) as pool:
        return list(pool.map(lambda n: fit_candidate(n, data, config), names))


def _config_params(config: TrainingConfig) -> dict[str, Any]:
    params = asdict(config)
    params["smoke_examples"] = [list(e) for e in config.smoke_examples or []] or None
    return params
