"""Inference parameters (issue 19 items 2-3): specs, refusals with their messages, the
precedence of the override levels, and the estimator contract (predict / predict_proba /
output_columns take ``params``; threshold, explain and batch_size are built in)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchml.errors import BatchMLError, InvalidParams, is_transient
from batchml.estimators import load_estimator, make_estimator
from batchml.estimators.base import call_output_columns
from batchml.params import (
    BATCH_SIZE,
    EXPLAIN,
    LEVELS,
    ParamLayer,
    ParamSpec,
    builtin_params,
    merge_specs,
    params_json,
    parse_assignments,
    resolve_params,
    specs_from_json,
    threshold_param,
)
from batchml.signature import Signature

SPECS = (threshold_param(0.6), EXPLAIN, BATCH_SIZE,
         ParamSpec("mode", "str", "fast", choices=("fast", "exact"), description="how"),
         ParamSpec("normalize", "bool", True),
         ParamSpec("scale", "float", 1.0, minimum=0.5))


# --- specs --------------------------------------------------------------------------------------


def test_spec_round_trip_and_accepts() -> None:
    for spec in SPECS:
        data = json.loads(json.dumps(spec.to_dict()))
        assert ParamSpec.from_dict(data) == spec
    assert SPECS[0].accepts() == "a float in [0, 1]"
    assert SPECS[3].accepts() == "a string, one of 'fast', 'exact'"
    assert SPECS[5].accepts() == "a float >= 0.5"
    assert BATCH_SIZE.accepts() == "an integer >= 0"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "1bad", "type": "int", "default": 1}, "is not an identifier"),
    ({"name": "x", "type": "decimal", "default": 1}, "use one of float, int, bool, str"),
    ({"name": "x", "type": "str", "default": "a", "minimum": 1}, "cannot have a range"),
    ({"name": "x", "type": "int", "default": 5, "maximum": 3}, "its default is refused"),
    ({"name": "x", "type": "str", "default": "c", "choices": ("a", "b")},
     "its default is refused"),
    ({"name": "x", "type": "str", "default": "a", "choices": ()}, "empty list of choices"),
])
def test_bad_specs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParamSpec(**kwargs)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("layer", "message"), [
    (ParamLayer("request", {"treshold": 0.3}),
     "Unknown inference parameter 'treshold' from the request. The model's parameters are: "
     "threshold (a float in [0, 1], default 0.6); explain"),
    (ParamLayer("request", {"threshold": 1.5}),
     "Inference parameter 'threshold' from the request is 1.5 (above the maximum); it accepts "
     "a float in [0, 1]."),
    (ParamLayer("request", {"threshold": "0.3"}),
     "Inference parameter 'threshold' from the request is '0.3' (str); it accepts a float in "
     "[0, 1]."),
    (ParamLayer("request", {"threshold": True}), "is true (bool); it accepts a float"),
    (ParamLayer("request", {"threshold": float("nan")}), "(not finite)"),
    (ParamLayer("call", {"explain": 2.5}),
     "Inference parameter 'explain' from the call is 2.5 (float); it accepts an integer in "
     "[0, 1000]."),
    (ParamLayer("call", {"explain": -1}), "is -1 (below the minimum)"),
    (ParamLayer("batch", {"batch_size": "ten"}, text=True),
     "Inference parameter 'batch_size' from the batch is 'ten' (not an integer); it accepts "
     "an integer >= 0."),
    (ParamLayer("batch", {"threshold": "high"}, text=True), "'high' (not a number)"),
    (ParamLayer("inbox settings", {"mode": "slow"}),
     "Inference parameter 'mode' from the inbox settings is 'slow' (not one of the choices); "
     "it accepts a string, one of 'fast', 'exact'."),
    (ParamLayer("deployment", {"normalize": "maybe"}, text=True),
     "'normalize' from the deployment is 'maybe' (not true or false)"),
    (ParamLayer("deployment", {"normalize": 1}), "is 1 (int); it accepts a boolean"),
    (ParamLayer("request", {"scale": 0.1}), "'scale' from the request is 0.1 (below the minimum)"),
    (ParamLayer("request", [("threshold", 0.3)]),  # type: ignore[arg-type]
     "Inference parameters from the request must be an object of name -> value, got list."),
])
def test_refusals_name_the_parameter_layer_and_what_it_accepts(layer: ParamLayer,
                                                                message: str) -> None:
    with pytest.raises(InvalidParams) as info:
        resolve_params(SPECS, [layer])
    assert message in str(info.value)
    assert isinstance(info.value, BatchMLError) and isinstance(info.value, ValueError)
    assert not is_transient(info.value)
    assert info.value.layer == layer.name


def test_no_parameters_at_all() -> None:
    with pytest.raises(InvalidParams, match="This model takes no inference parameters"):
        resolve_params((), [ParamLayer("request", {"x": 1})])


@pytest.mark.parametrize(("items", "expected"), [
    (["threshold=0.3"], {"threshold": "0.3"}),
    (["a=1", " b = x=y"], {"a": "1", "b": " x=y"}),
    ([], {}),
])
def test_parse_assignments(items: list[str], expected: dict[str, str]) -> None:
    assert parse_assignments(items) == expected


@pytest.mark.parametrize("item", ["threshold", "=0.3"])
def test_parse_assignments_refuses(item: str) -> None:
    with pytest.raises(InvalidParams, match="is not NAME=VALUE"):
        parse_assignments([item])


# --- precedence ---------------------------------------------------------------------------------


def test_precedence_across_every_level() -> None:
    # one value per level for threshold; each level also sets something only it sets
    values = {"deployment": 0.1, "inbox settings": 0.2, "batch": 0.3, "request": 0.4,
              "call": 0.5}
    assert list(values) == list(LEVELS)
    for top in range(len(LEVELS) + 1):
        layers = [ParamLayer(level, {"threshold": values[level]}) for level in LEVELS[:top]]
        expected = values[LEVELS[top - 1]] if top else 0.6
        assert resolve_params(SPECS, layers)["threshold"] == expected
    merged = resolve_params(SPECS, [
        ParamLayer("deployment", {"explain": 2, "mode": "exact"}),
        ParamLayer("inbox settings", {"explain": 3, "normalize": "false"}, text=True),
        ParamLayer("batch", {"batch_size": "7"}, text=True),
        ParamLayer("request", {"threshold": 0.4, "batch_size": None}),  # None: not set here
        ParamLayer("call", None)])
    assert merged == {"threshold": 0.4, "explain": 3, "batch_size": 7, "mode": "exact",
                      "normalize": False, "scale": 1.0}
    assert params_json(merged) == ('{"batch_size":7,"explain":3,"mode":"exact",'
                                   '"normalize":false,"scale":1.0,"threshold":0.4}')
    assert resolve_params(SPECS) == {s.name: s.default for s in SPECS}


def test_merge_specs_lets_a_flavor_replace_a_builtin() -> None:
    mine = ParamSpec("batch_size", "int", 32, minimum=1)
    merged = merge_specs(builtin_params(binary=False), (mine, SPECS[4]))
    assert [s.name for s in merged] == ["explain", "batch_size", "normalize"]
    assert merged[1] is mine


def test_signature_carries_specs() -> None:
    sig = Signature(inputs=(), classes=(0, 1), params=SPECS)
    again = Signature.from_dict(json.loads(json.dumps(sig.to_dict())))
    assert again == sig
    assert again.with_param_default("threshold", 0.25).param_defaults["threshold"] == 0.25
    with pytest.raises(InvalidParams, match="'threshold' from the default is 2.0"):
        sig.with_param_default("threshold", 2.0)
    assert specs_from_json({"threshold": 0.7, "explain": 2}) == (
        threshold_param(0.7), ParamSpec(**{**EXPLAIN.to_dict(), "default": 2}))


# --- estimators ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary_text() -> tuple[Any, pd.DataFrame]:
    rng = np.random.default_rng(0)
    words = np.array(["good", "great", "fine", "bad", "awful", "poor", "the", "a", "dress"])
    texts = [" ".join(rng.choice(words, 6)) for _ in range(300)]
    labels = [int(sum(w in ("good", "great", "fine") for w in t.split())
                  > sum(w in ("bad", "awful", "poor") for w in t.split())) for t in texts]
    frame = pd.DataFrame({"review": texts})
    est = make_estimator("sklearn_text", text_column="review").fit(frame, labels)
    est.set_threshold(0.55)
    return est, frame


def test_estimators_declare_and_honour_the_builtins(binary_text: tuple[Any, pd.DataFrame]
                                                    ) -> None:
    est, frame = binary_text
    assert est.signature.param_defaults == {"threshold": 0.55, "explain": 0, "batch_size": 0}
    assert est.inference_params() == est.signature.params
    proba = est.predict_proba(frame)
    np.testing.assert_array_equal(est.predict(frame), (proba[:, 1] >= 0.55).astype(int))
    # threshold from params drives the label, per call
    np.testing.assert_array_equal(est.predict(frame, params={"threshold": 0.9}),
                                  (proba[:, 1] >= 0.9).astype(int))
    # batch_size: the same probabilities, however the rows are cut (DataFrame and Arrow)
    table = pa.table({"review": frame["review"].tolist()})
    for data in (frame, table):
        np.testing.assert_allclose(est.predict_proba(data, params={"batch_size": 7}), proba)
    with pytest.raises(InvalidParams, match="'treshold' from the call"):
        est.predict(frame, params={"treshold": 0.2})
    # the specs travel with the model's bytes
    again = load_estimator(est.flavor, est.to_bytes())
    assert again.signature.params == est.signature.params
    assert again.threshold == 0.55


def test_a_flavor_hook_receives_the_resolved_params(binary_text: tuple[Any, pd.DataFrame]
                                                    ) -> None:
    est, frame = binary_text
    seen: list[tuple[int, dict[str, Any]]] = []
    base = type(est)

    class Recording(base):  # type: ignore[misc, valid-type]
        flavor_params = (ParamSpec("batch_size", "int", 50, minimum=1),
                         ParamSpec("normalize", "bool", True))

        def _predict_proba(self, x: pd.DataFrame, params: dict[str, Any]) -> np.ndarray:
            seen.append((len(x), dict(params)))
            return np.tile([0.5, 0.5], (len(x), 1))

        def output_columns(self, batch: Any, proba: np.ndarray, index: np.ndarray, *,
                           params: Any = None) -> dict[str, pa.Array]:
            cols = super().output_columns(batch, proba, index, params=params)
            cols["normalized"] = pa.array([bool((params or {})["normalize"])] * len(proba))
            return cols

    rec = Recording.from_bytes(est.to_bytes())
    # a saved signature's specs win over the class's: refresh them as training would
    rec._signature = replace(rec.signature, params=rec.inference_params())
    assert rec.signature.param_defaults["batch_size"] == 50
    rec.predict_proba(frame.iloc[:120], params={"normalize": False})
    assert [n for n, _ in seen] == [50, 50, 20]
    assert seen[0][1] == {"threshold": 0.55, "explain": 0, "batch_size": 50, "normalize": False}
    batch = pa.record_batch({"review": frame["review"].iloc[:3].tolist()})
    proba = np.tile([0.5, 0.5], (3, 1))
    cols = call_output_columns(rec, batch, proba, rec.label_index(proba),
                               rec.resolve_params({"normalize": False}))
    assert cols["normalized"].to_pylist() == [False] * 3
    # an override written before parameters existed is called without them
    plain = make_estimator("baseline", text_column="review").fit(frame, [0, 1] * 150)
    assert "label" in call_output_columns(plain, batch, proba, plain.label_index(proba), None)
