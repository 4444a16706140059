"""Logging a Python model (``batchml log-model``, :meth:`Catalog.log_model`): a run and a
registered version, like a trained model.

:func:`log_python_model` reads the code and artifacts into a bundle, loads it here exactly as
scoring will (private folder, private module names: a model that cannot import, build or load
is refused now, not at 3 a.m.), infers the signature from ``input_example`` (its columns are
the inputs; the outputs come from calling ``predict`` once), records the environment, and
logs a run of the training flow with the bundle as its primary model. Then:

- with ``validation`` (a labelled frame) and ``classes``: the gate checks of training
  (well-formed, varying probabilities; more than one class and every class predicted;
  balanced accuracy above chance) run on it; the run is tagged and registered only when they
  pass (a failed gate registers nothing, as in training);
- without validation data: the gate is not evaluated (recorded as the run's param
  ``gate=not evaluated``); the run is not tagged and is registered, so aliases can point at it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .estimators import python_bundle
from .estimators.python_model import (
    PythonEstimator,
    PythonModel,
    as_frame,
    as_proba,
    infer_outputs,
)
from .params import ParamSpec, merge_specs
from .signature import Signature, infer_signature, normalise_classes

if TYPE_CHECKING:
    import pandas as pd

    from .catalog import Catalog, Run
    from .catalog.registry import ModelVersion
    from .gate import CheckResult

MODEL_NAME = "model"
"""The name of the model inside its run (``models/model.pymodel.zip``)."""


@dataclass
class LoggedModel:
    """What logging a Python model made: the run, its registered version (None when the gate
    failed), whether the gate ran and passed, and its checks."""

    run: Run
    version: ModelVersion | None
    gate: str  # passed | failed | not evaluated
    checks: list[CheckResult] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def class_ref(python_model: Any, top: str) -> str:
    """``module:Class`` for a class, an instance of a class without state, or a string."""
    if isinstance(python_model, str):
        ref = python_model
    else:
        cls = python_model if isinstance(python_model, type) else type(python_model)
        if not isinstance(python_model, type) and vars(python_model):
            raise ConfigError(
                f"The {cls.__name__} instance holds state ({', '.join(sorted(vars(python_model)))}"
                "), which would not travel with the model: batchml builds the class with no "
                "arguments and calls load_context.",
                hint="Pass the class, and load state from artifacts in load_context().")
        if not (isinstance(cls, type) and issubclass(cls, PythonModel)):
            raise ConfigError(f"{cls!r} is not a subclass of batchml.PythonModel.",
                              hint="Subclass batchml.PythonModel and implement predict().")
        if cls.__module__ == "__main__" or cls.__module__.split(".")[0] != top:
            raise ConfigError(f"Class {cls.__qualname__} lives in module {cls.__module__!r}, "
                              f"not in the shipped code (module {top!r}).",
                              hint="Define the class in the code file you pass as code=, "
                                   f"import it from there, or pass '{top}:ClassName'.")
        ref = f"{cls.__module__}:{cls.__qualname__}"
    if ":" not in ref:
        raise ConfigError(f"Model class {ref!r} is not 'module:Class'.",
                          hint=f"For example {top}:MyModel.")
    return ref


_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


def param_specs(params: Mapping[str, Any] | Iterable[ParamSpec] | None) -> list[ParamSpec]:
    """The model's own inference parameters: :class:`~batchml.params.ParamSpec` values, or a
    mapping of name -> default (the type read from the default: bool, int, float or str)."""
    if params is None:
        return []
    if isinstance(params, Mapping):
        specs = []
        for name, default in params.items():
            kind = _TYPES.get(type(default))
            if kind is None:
                raise ConfigError(f"Parameter {name!r} has default {default!r} "
                                  f"({type(default).__name__}).",
                                  hint="Give a bool, int, float or str default, or a "
                                       "batchml.params.ParamSpec.")
            specs.append(ParamSpec(str(name), kind, default))
        return specs
    specs = list(params)
    for spec in specs:
        if not isinstance(spec, ParamSpec):
            raise ConfigError(f"{spec!r} is not a ParamSpec.",
                              hint="Pass params={name: default} or [ParamSpec(...), ...].")
    return specs


def _frame(data: Any, what: str) -> pd.DataFrame:
    import pandas as pd

    if isinstance(data, str | Path):
        data = pd.read_parquet(data)
    if not isinstance(data, pd.DataFrame) or len(data) == 0:
        raise ConfigError(f"The {what} must be a DataFrame (or a parquet path) with rows.",
                          hint="Pass a few typical input rows.")
    return data.reset_index(drop=True)


def build(code: str | Path, python_model: Any, *, input_example: Any,
          artifacts: Mapping[str, str | Path] | None = None, classes: Iterable[Any] = (),
          params: Mapping[str, Any] | Iterable[ParamSpec] | None = None,
          requirements: Sequence[str] = (),
          signature: Signature | None = None) -> PythonEstimator:
    """The model, loaded here as scoring will load it, with its signature and bundle."""
    files = python_bundle.collect(code, artifacts)
    top = files.manifest["code"]["module"]
    ref = class_ref(python_model, top)
    files.manifest["model_class"] = ref
    files.manifest["environment"] = python_bundle.environment(
        requirements, python_bundle.code_imports(files.files, top))
    example = _frame(input_example, "input example")
    est = PythonEstimator.activate(files, strict=True)
    known = tuple(normalise_classes(classes)) if classes else ()
    base = signature or infer_signature(example, [str(c) for c in example.columns], known or
                                        ["_"])
    est.classes_ = list(known)
    declared = merge_specs(est.inference_params(), base.params if signature else (),
                           param_specs(params))
    draft = Signature(inputs=base.inputs, outputs=base.outputs if known else (),
                      classes=known, params=declared)
    est._signature = draft
    if est._context is not None:
        est._context.params = draft.param_defaults
    result = est.call(example)
    if known:
        as_proba(result, len(example), list(known), ref)
        outputs = draft.outputs
    else:
        outputs = signature.outputs if signature and signature.outputs else \
            infer_outputs(as_frame(result, len(example), ref), ref)
    est.seal(files, Signature(inputs=draft.inputs, outputs=outputs, classes=known,
                              params=declared))
    return est


def gate_checks(est: PythonEstimator, frame: pd.DataFrame, labels: pd.Series
                ) -> tuple[list[CheckResult], dict[str, float]]:
    """Training's gate checks on labelled validation data, and its metrics."""
    import numpy as np

    from .evaluation import evaluate
    from .gate import holdout_check, prediction_checks, probability_checks
    from .training import TrainingConfig

    # training's documented defaults for these checks (TrainingConfig needs training data)
    default: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    proba = est.predict_proba(frame)
    predicted = np.asarray(est.labels_from_proba(proba))
    checks = probability_checks(proba)
    checks += prediction_checks(predicted, labels, est.classes_, default['min_class_rows'])
    checks.append(holdout_check(predicted, labels, est.classes_, default['holdout_margin'],
                                default['threshold_folds']))
    metrics = {k: float(v) for k, v in evaluate(labels, proba, est.classes_,
                                                threshold=est.threshold).items()
               if isinstance(v, int | float)}
    return checks, metrics


def log_python_model(catalog: Catalog, *, name: str, code: str | Path, python_model: Any,
                     input_example: Any, artifacts: Mapping[str, str | Path] | None = None,
                     classes: Iterable[Any] = (),
                     params: Mapping[str, Any] | Iterable[ParamSpec] | None = None,
                     requirements: Sequence[str] = (), signature: Signature | None = None,
                     validation: Any = None, label_column: str = "label",
                     alias: str | None = None, flow: str = "train",
                     tag: str = "deployment_candidate",
                     description: str | None = None) -> LoggedModel:
    """Log a :class:`~batchml.PythonModel` as a run of ``flow`` and register it as the next
    version of ``name`` (see the module docstring for the gate); ``alias`` is then moved to
    that version (compare-and-set against what it held). Returns a :class:`LoggedModel`."""
    from .catalog.registry import check_registry_name
    from .gate import FAIL

    check_registry_name("model name", name)
    if alias is not None:
        check_registry_name("alias", alias)
    est = build(code, python_model, input_example=input_example, artifacts=artifacts,
                classes=classes, params=params, requirements=requirements,
                signature=signature)
    checks: list[CheckResult] = []
    metrics: dict[str, float] = {}
    if validation is not None:
        if not est.is_classifier:
            raise ConfigError("Validation data gates a model with classes; this model "
                              "declares none.",
                              hint="Pass classes=[...] (predict returns probabilities), or "
                                   "log it without validation data.")
        vframe = _frame(validation, "validation data")
        if label_column not in vframe.columns:
            raise ConfigError(f"The validation data has no label column {label_column!r}.",
                              hint=f"It has: {', '.join(map(str, vframe.columns))}.")
        checks, metrics = gate_checks(est, vframe.drop(columns=[label_column]),
                                      vframe[label_column])
    failed = [c for c in checks if c.outcome == FAIL]
    gate = "not evaluated" if validation is None else ("failed" if failed else "passed")
    manifest = est._manifest
    run = catalog.create_run(flow, params={
        "source": "log_model", "model_class": manifest["model_class"], "gate": gate,
        "python": manifest["environment"]["python"], "registered_model": name},
        metrics={k: v for k, v in metrics.items() if k == k.strip()})
    try:
        run.log_model(MODEL_NAME, est, primary=True)
        run.log_artifact("python_model.json", json.dumps(
            {k: v for k, v in manifest.items() if k != "estimator"}, indent=1,
            sort_keys=True).encode())
        if checks:
            run.log_artifact("gate.json", json.dumps(
                [{"name": c.name, "outcome": c.outcome, "detail": c.detail} for c in checks],
                indent=1, default=str).encode())
    except BaseException as exc:
        run.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    run.finish("completed")
    reasons = [f"check {c.name} failed: {c.detail}" for c in failed]
    if gate == "failed":
        return LoggedModel(run, None, gate, checks, reasons)
    if gate == "passed":
        run.add_tag(tag, note="python model passed the gate")
    model = catalog.create_model(name, description=description)
    version = model.register(run, model=MODEL_NAME)
    if alias is not None:
        model.promote(version, alias=alias, reason=f"logged as {version.ref} ({gate} gate)")
    return LoggedModel(run, version, gate, checks, reasons)
