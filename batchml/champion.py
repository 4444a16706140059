"""Champion and challenger: what a training run whose gate passed does in the model registry.

:func:`batchml.training.train` calls :func:`settle` after it has tagged and completed a run
when it is given a :class:`ChampionPolicy` (:func:`~batchml.training.train_from_settings`,
behind ``batchml train``, the training flow and the nightly training of ``batchml serve``,
always gives one, from ``BATCHML_MODEL_NAME``, ``BATCHML_PROMOTION`` and
``BATCHML_PROMOTION_MARGIN``):

1. **Register.** The winner becomes the next version of the registered model. Registering the
   same run's model again returns its version, so a retry adds nothing.
2. **Compare.** When ``NAME@champion`` is set, that version's model is loaded and scored on the
   same validation rows the candidates were evaluated on (as training prepared them), with the
   same metric function (:func:`batchml.evaluation.evaluate`), at its own saved decision
   threshold: as it scores in production. Both go into the run: metrics ``champion.<metric>``
   and ``champion.version``, key ``registry`` of ``gate.json`` and a section of ``gate.md``.
   (A binary candidate's threshold was chosen on these rows and the champion's on its own
   validation data, so threshold-dependent metrics such as accuracy favour the new version a
   little; ROC AUC, the default primary metric, and log loss do not depend on a threshold.)
3. **Challenger.** ``challenger`` moves to the new version, compare-and-set against the holder
   read before the comparison, with the numbers as its reason.
4. **Promotion.** With ``auto``, ``champion`` moves to the new version when there is no
   champion yet or the new version beats it on the gate's primary metric by more than the
   margin, compare-and-set against the champion that was compared: if someone moved it
   meanwhile, the move fails with :class:`~batchml.errors.AliasConflict`, which is recorded
   in the report and logged, and the other process's choice stands. A champion that cannot be
   scored on this validation data (other input columns or classes, unreadable bytes) is not
   replaced automatically: the report says why. With ``manual``, champion is left to
   ``batchml models promote``.

A conflict never fails the training run; a catalog that cannot be reached does (the run stays
completed and tagged, and ``settle`` on the same run later picks up where it stopped).
"""

from __future__ import annotations

import json
import logging
import math
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .catalog.registry import CHALLENGER, CHAMPION, check_registry_name
from .errors import AliasConflict, ConfigError, DataError
from .evaluation import better, evaluate

if TYPE_CHECKING:
    import pandas as pd

    from .catalog import Run
    from .catalog.registry import ModelVersion, RegisteredModel
    from .settings import Settings

log = logging.getLogger("batchml.champion")

PROMOTION_MODES = ("auto", "manual")
MOVED, UNCHANGED, CONFLICT = "moved", "unchanged", "conflict"
COMPARED_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "precision", "recall", "f1",
                    "f1_macro", "log_loss", "threshold")
"""The metrics the report puts side by side (those :func:`~batchml.evaluation.evaluate` gives)."""


def default_model_name(label: str) -> str:
    """The registered model's name when ``BATCHML_MODEL_NAME`` is unset: the label column's
    name, with each run of characters a model name cannot hold replaced by ``-`` and trimmed
    to 128 characters (``"labels"``, ``"segment"``, ``"is churned?"`` -> ``"is-churned"``;
    ``"model"`` if nothing is left).

    Why the label: it names what the model predicts, whatever the domain; it stays the same
    from one nightly run to the next (a dataset file's name need not: ``train-2026-11-24``);
    and two models that predict different things in one catalog get different names, so
    neither is ever compared with, or promoted over, the other."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(label)).lstrip("_.-")[:128].rstrip("-")
    return name if name and name not in (".", "..") else "model"


@dataclass(frozen=True)
class ChampionPolicy:
    """Which registered model a passing run adds a version to and how champion moves.

    ``before_promotion(model, version)`` is called after the comparison, right before the
    compare-and-set that would promote ``version``: a hook for audits and for tests (another
    process moving champion in that window)."""

    model_name: str
    promotion: str = "auto"
    margin: float = 0.0
    before_promotion: Callable[[RegisteredModel, ModelVersion], None] | None = field(
        default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_registry_name("model", self.model_name)
        if self.promotion not in PROMOTION_MODES:
            raise ConfigError(f"Unknown promotion mode {self.promotion!r}.",
                              hint=f"Use one of {', '.join(PROMOTION_MODES)} "
                                   "(BATCHML_PROMOTION).")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int | float) \
                or not math.isfinite(self.margin):
            raise ConfigError(f"The promotion margin must be a finite number, got "
                              f"{self.margin!r}.", hint="BATCHML_PROMOTION_MARGIN=0.01, say.")

    @classmethod
    def from_settings(cls, settings: Settings, label: str) -> ChampionPolicy:
        """The policy ``settings`` set for a training whose label column is ``label``."""
        return cls(settings.model_name or default_model_name(label), settings.promotion,
                   settings.promotion_margin)

    def settle(self, run: Run, data: Any, results: Sequence[Any],
               decision: Any) -> ChampionOutcome:
        """:func:`settle` for a run :func:`batchml.training.train` recorded: ``data`` its
        ``TrainingData``, ``results`` its candidates, ``decision`` the gate's."""
        winner = next(r for r in results if r.name == decision.winner)
        return settle(run, self, candidate=winner.name, metrics=winner.metrics,
                      metric=decision.metric, valid_x=data.valid_x, valid_y=data.valid_y)


@dataclass(frozen=True)
class AliasChange:
    """One alias move a training run asked for: ``moved``, ``unchanged`` (it already pointed
    there) or ``conflict`` (another process had moved it; ``holder`` holds it now)."""

    alias: str
    expected: int | None
    target: int
    outcome: str
    detail: str
    holder: int | None


@dataclass
class ChampionOutcome:
    """What :func:`settle` did: the version registered, the champion compared (its metrics on
    the same validation rows, or why it could not be scored), the verdict and the moves."""

    model: str
    version: int
    run_id: str
    candidate: str
    metric: str
    score: float
    rows: int
    promotion: str
    margin: float
    metrics: dict[str, float] = field(default_factory=dict)
    champion_version: int | None = None
    champion_run_id: str | None = None
    champion_score: float | None = None
    champion_metrics: dict[str, float] = field(default_factory=dict)
    champion_confusion_matrix: list[list[int]] | None = None
    champion_error: str | None = None
    wins: bool | None = None
    promoted: bool = False
    verdict: str = ""
    moves: list[AliasChange] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.version}"

    @property
    def conflicts(self) -> list[AliasChange]:
        return [m for m in self.moves if m.outcome == CONFLICT]

    def summary(self) -> str:
        """One line for people: registered, compared, promoted or why not."""
        return (f"registered {self.ref}; "
                + ("promoted to champion" if self.promoted else "champion not moved")
                + f": {self.verdict}"
                + "".join(f"; {m.alias} conflict: {m.detail}" for m in self.conflicts))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The report's section (appended to ``gate.md``)."""
        lines = [f"## Registry: `{self.ref}`", "",
                 f"- registered: version {self.version} of `{self.model}` (candidate "
                 f"`{self.candidate}` of run {self.run_id})",
                 f"- promotion: {self.promotion}, margin {self.margin:g} on `{self.metric}`",
                 "- champion compared: " + ("none (no champion yet)"
                                            if self.champion_version is None else
                                            f"version {self.champion_version} (run "
                                            f"{self.champion_run_id}), scored on the same "
                                            f"{self.rows} validation rows"),
                 f"- verdict: {'promoted: ' if self.promoted else 'not promoted: '}"
                 f"{self.verdict}"]
        if self.champion_error:
            lines.append(f"- champion could not be scored: {_cell(self.champion_error)}")
        if self.champion_metrics:
            lines += ["", f"| metric | version {self.version} (this run) | champion version "
                          f"{self.champion_version} |", "|---|---|---|"]
            lines += [f"| {k} | {_num(self.metrics.get(k))} | {_num(self.champion_metrics.get(k))}"
                      " |" for k in COMPARED_METRICS
                      if k in self.metrics or k in self.champion_metrics]
        lines += ["", "| alias | expected | to | outcome | detail |", "|---|---|---|---|---|"]
        lines += [f"| {m.alias} | {_shown(m.expected)} | {m.target} | {m.outcome} | "
                  f"{_cell(m.detail)} |" for m in self.moves]
        return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _shown(v: int | None) -> str:
    return "unset" if v is None else str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, float | int) and not isinstance(v, bool)}


def score_version(version: ModelVersion, valid_x: pd.DataFrame,
                  valid_y: pd.Series) -> dict[str, Any]:
    """``version``'s model on validation rows as training prepared them (cleaned text, the
    feature columns): :func:`~batchml.evaluation.evaluate` at the model's saved decision
    threshold. :class:`DataError` when it cannot read these rows (a missing input column, a
    label that is not one of its classes)."""
    import pandas as pd

    estimator = version.load()
    inputs = list(estimator.signature.input_names)
    missing = [c for c in inputs if c not in valid_x.columns]
    if missing:
        raise DataError(f"the validation data lacks column(s) {missing} that {version.ref} "
                        f"reads (it has {list(valid_x.columns)})")
    classes = list(estimator.classes_)
    unseen = sorted(set(pd.unique(valid_y).tolist()) - set(classes), key=str)
    if unseen:
        raise DataError(f"validation labels {unseen} are not classes of {version.ref} "
                        f"({classes})")
    proba = estimator.predict_proba(valid_x[inputs])
    return evaluate(valid_y, proba, classes, threshold=estimator.threshold)


def settle(run: Run, policy: ChampionPolicy, *, candidate: str, metrics: Mapping[str, Any],
           metric: str, valid_x: pd.DataFrame, valid_y: pd.Series) -> ChampionOutcome:
    """Register ``run``'s model ``candidate`` (whose validation ``metrics`` the gate passed on
    ``metric``) under ``policy.model_name``, compare it with the champion on ``valid_x`` /
    ``valid_y``, move challenger and, by the policy, champion (module docstring). Records the
    comparison in the run's metrics and gate report; returns what it did."""
    model = run.catalog.model(policy.model_name)
    version = model.register(run, model=candidate,
                             description=f"{candidate}, winner of training run {run.id}")
    champion = model.alias(CHAMPION)  # the compare-and-set targets: read before comparing
    challenger = model.alias(CHALLENGER)
    own = _numeric(metrics)
    out = ChampionOutcome(model.name, version.version, run.id, candidate, metric,
                          float(own[metric]), len(valid_x), policy.promotion,
                          float(policy.margin), metrics=own)
    if champion is not None:
        out.champion_version, out.champion_run_id = champion.version, champion.run_id
    if champion is not None and champion != version:
        try:
            scored = score_version(champion, valid_x, valid_y)
        except Exception as exc:  # an incompatible or unreadable champion: no auto promotion
            out.champion_error = "".join(traceback.format_exception_only(exc)).strip()
        else:
            out.champion_metrics = _numeric(scored)
            out.champion_confusion_matrix = scored.get("confusion_matrix")
            out.champion_score = out.champion_metrics.get(metric, math.nan)
            out.wins = better(metric, out.score, out.champion_score, policy.margin)
        recorded = {f"champion.{k}": v for k, v in out.champion_metrics.items()}
        run.log_metrics({"champion.version": float(champion.version), **recorded})
    promote = _verdict(out, champion, version)
    out.moves.append(_move(model, CHALLENGER, version, expect=challenger,
                           reason=_challenger_reason(out)))
    if promote:
        if policy.before_promotion is not None:
            policy.before_promotion(model, version)
        move = _move(model, CHAMPION, version, expect=champion,
                     reason=f"auto promotion by training run {run.id}: {out.verdict}")
        out.moves.append(move)
        out.promoted = move.outcome == MOVED
    _record(run, out)
    return out


def _verdict(out: ChampionOutcome, champion: ModelVersion | None,
             version: ModelVersion) -> bool:
    """Set ``out.verdict``; True when champion should move to ``version`` now."""
    how = f"`batchml models promote {out.model} {out.version}`"
    new = f"version {out.version} {out.metric}={out.score:.4f}"
    if champion is None:
        if out.promotion == "manual":
            out.verdict = (f"promotion is manual and there is no champion yet; promote "
                           f"with {how}")
            return False
        out.verdict = f"no champion yet: {new} (gate passed) becomes the first"
        return True
    if champion == version:
        out.verdict = f"version {out.version} already holds champion (a retried run)"
        return False
    if out.champion_error is not None:
        out.verdict = (f"champion version {champion.version} could not be scored on this "
                       f"validation data, so nothing shows {new} is better; champion stays "
                       f"version {champion.version} (compare with `batchml models compare "
                       f"{out.model} {champion.version} {out.version}`, promote with {how})")
        return False
    old = f"champion version {champion.version} {out.metric}={out.champion_score:.4f}"
    compared = (f"{new} {'beats' if out.wins else 'does not beat'} {old} by more than the "
                f"margin {out.margin:g} on the same {out.rows} validation rows")
    if out.promotion == "manual":
        out.verdict = f"{compared}; promotion is manual: promote with {how}"
        return False
    out.verdict = compared if out.wins else \
        f"{compared}; champion stays version {champion.version}"
    return bool(out.wins)


def _challenger_reason(out: ChampionOutcome) -> str:
    text = (f"training run {out.run_id} ({out.candidate}): {out.metric}={out.score:.4f} on "
            f"{out.rows} validation rows")
    if out.champion_version is None or out.champion_version == out.version:
        return text + "; no other champion to compare with"
    if out.champion_error is not None:
        return text + f"; champion version {out.champion_version} could not be scored on them"
    return text + (f"; champion version {out.champion_version}: "
                   f"{out.metric}={out.champion_score:.4f} on the same rows")


def _move(model: RegisteredModel, alias: str, version: ModelVersion, *,
          expect: ModelVersion | None, reason: str) -> AliasChange:
    """Compare-and-set ``alias`` from ``expect`` to ``version``; a conflict is returned (and
    logged), never raised: another process's move stands."""
    expected = None if expect is None else expect.version
    if expected == version.version:
        return AliasChange(alias, expected, version.version, UNCHANGED,
                           f"{model.name}@{alias} already points at version {version.version}",
                           expected)
    try:
        model.set_alias(alias, version, expect=expect, reason=reason)
    except AliasConflict as exc:
        log.warning("%s@%s not moved to version %s: %s", model.name, alias, version.version,
                    exc)
        return AliasChange(alias, expected, version.version, CONFLICT, str(exc), exc.current)
    log.info("%s@%s: version %s -> %s (%s)", model.name, alias, _shown(expected),
             version.version, reason)
    return AliasChange(alias, expected, version.version, MOVED, reason, version.version)


def _record(run: Run, out: ChampionOutcome) -> None:
    """Add the outcome to the run's gate report: key ``registry`` of ``gate.json``, a section
    at the end of ``gate.md`` (both rewritten whole)."""
    names = run.artifacts
    report = json.loads(run.fetch_artifact("gate.json")) if "gate.json" in names else {}
    report["registry"] = out.to_dict()
    run.log_artifact("gate.json", json.dumps(report, indent=2, default=str).encode(),
                     kind="report")
    text = run.fetch_artifact("gate.md").decode() if "gate.md" in names else ""
    text = text.split("\n## Registry: ", 1)[0].rstrip("\n")  # a retry replaces its section
    run.log_artifact("gate.md", (text + "\n\n" + out.markdown()).lstrip("\n").encode(),
                     kind="report")
