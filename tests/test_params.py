"""Inference parameters (issue 19 items 2-3): specs, refusals with their messages, the
precedence of the override levels, and the estimator contract (predict / predict_proba /
output_columns take ``params``; threshold, explain and batch_size are built in)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
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


# --- the batch levels: deployment < inbox settings < batch, recorded in the catalog ---------------


def _home(catalog_url: str, tmp_path: Path) -> Any:
    from testhelp import make_tagged_home

    url = catalog_url if "://" in catalog_url else None
    return make_tagged_home(tmp_path / "data", tmp_path / "home", train_rows=600, valid_rows=200,
                            catalog_url=url)


def _input(tmp_path: Path, name: str, rows: int = 40, seed: int = 5) -> str:
    from batchml.synthetic import synthetic_reviews

    path = tmp_path / f"{name}.parquet"
    synthetic_reviews(rows, seed=seed).drop(columns=["labels"]).to_parquet(path)
    return str(path)


def _worker(settings: Any, uris: list[str], out: Path, **kw: Any) -> Any:
    from batchml import Catalog
    from batchml.scoring import Outbox
    from batchml.sources import ListSource
    from batchml.worker import Worker

    return Worker(Catalog.from_settings(settings), ListSource(uris), settings,
                  outbox=Outbox(str(out)), **kw)


def _scored(report: Any) -> pd.DataFrame:
    (outcome,) = report.outcomes
    assert outcome.status == "scored", outcome.error
    return pd.read_parquet(outcome.output_uri)


def test_batch_levels_precedence_and_the_catalog_record(catalog_url: str,
                                                        tmp_path: Path) -> None:
    from batchml import Catalog

    settings = _home(catalog_url, tmp_path)
    cases = [  # (deployment, inbox settings, batch, expected threshold)
        (None, {}, None, None),
        ({"threshold": 0.2}, {}, None, 0.2),
        ({"threshold": 0.2, "batch_size": 7}, {"threshold": 0.4}, None, 0.4),
        ({"threshold": 0.2}, {"threshold": "0.4"}, {"threshold": "0.7", "explain": "2"}, 0.7),
    ]
    recorded = {}
    for i, (deployment, inbox, batch, expected) in enumerate(cases):
        s = settings.model_copy(update={"params": inbox})
        worker = _worker(s, [_input(tmp_path, f"in{i}", seed=10 + i)], tmp_path / "out",
                         params=batch, deployment_params=deployment)
        worker.discover()
        report = worker.run_batch()
        model = worker.model.estimator
        if expected is None:
            expected = model.threshold
        assert report.params["threshold"] == expected
        frame = _scored(report)
        np.testing.assert_array_equal(frame["label"].to_numpy(),
                                      (frame["proba"] >= expected).astype(int).to_numpy())
        assert ("explanation" in frame.columns) == bool(batch)
        if i == 2:
            assert report.params["batch_size"] == 7
        recorded[report.batch_id] = report.params
    catalog = Catalog.from_settings(settings)
    rows = catalog.sql("SELECT batch_id, params FROM prediction_batches")
    assert {r.batch_id: json.loads(r.params) for r in rows.itertuples()} == recorded
    view = catalog.sql("SELECT batch_id, params FROM prediction_outputs")
    assert {r.batch_id: json.loads(r.params) for r in view.itertuples()} == recorded
    batches = catalog.backend.recent_batches(10)
    assert {r.batch_id: json.loads(r.params) for r in batches.itertuples()} == recorded


@pytest.mark.parametrize(("layers", "message"), [
    ({"params": {"treshold": "0.3"}},
     "Unknown inference parameter 'treshold' from the batch (--param)."),
    ({"deployment_params": {"threshold": 3}},
     "Inference parameter 'threshold' from the deployment (flow parameter params) is 3.0 "
     "(above the maximum); it accepts a float in [0, 1]."),
    ({"inbox": {"batch_size": "lots"}},
     "Inference parameter 'batch_size' from the inbox settings (BATCHML_PARAMS) is 'lots' "
     "(not an integer)"),
])
def test_a_bad_value_is_refused_before_any_file_is_claimed(
        module_tagged_home: Any, tmp_path: Path, layers: dict[str, Any], message: str) -> None:
    settings = module_tagged_home.model_copy(update={"params": layers.pop("inbox", {})})
    uri = _input(tmp_path, "bad")
    worker = _worker(settings, [uri], tmp_path / "out", **layers)
    worker.discover()
    with pytest.raises(InvalidParams) as info:
        worker.run_batch()
    assert message in str(info.value)
    (row,) = [r for r in worker.ledger.files().itertuples() if r.source_uri == uri]
    assert row.state == "discovered" and row.attempts == 0  # not claimed, not quarantined
    assert not list((tmp_path / "out").glob("**/*.parquet"))


# --- online: per request, in both protocols; coalescing only with equal params ------------------

TEXTS = [f"review number {i}: {'lovely soft fabric' if i % 3 else 'ripped after a wash'}"
         for i in range(48)]


def test_coalescing_keeps_requests_with_other_params_apart(module_tagged_home: Any) -> None:
    import asyncio

    from batchml import Catalog
    from batchml.online import ModelFollower, OnlineScorer
    from batchml.resolve import ModelRef
    from batchml.scoring import ModelCache

    s = module_tagged_home
    cat = Catalog.from_settings(s)
    follower = ModelFollower(cat, ModelRef.parse(f"tag:{s.model_tag}", flow=s.train_flow),
                             ModelCache(cat, flow=s.train_flow))
    scorer = OnlineScorer(follower, batch_rows=256, batch_wait_ms=50.0)
    choices: list[dict[str, Any] | None] = [None, {"threshold": 0.0}, {"threshold": 1.0},
                                            {"threshold": 0.0, "batch_size": 1}]
    params = [choices[i % 4] for i in range(len(TEXTS))]

    async def run() -> list[pa.Table]:
        scorer.start()
        try:
            return [out for _, out in await asyncio.gather(
                *(scorer.score(pa.table({"review": [t]}), p)
                  for t, p in zip(TEXTS, params, strict=True)))]
        finally:
            await scorer.stop()

    outs = asyncio.run(run())
    estimator = follower.current().model.estimator
    proba = estimator.predict_proba(pd.DataFrame({"review": TEXTS}))[:, 1]
    for out, p, pr in zip(outs, params, proba, strict=True):
        threshold = (p or {}).get("threshold", estimator.threshold)
        assert out.column("label")[0].as_py() == int(pr >= threshold), (p, pr)
    assert 4 <= scorer.model_calls < len(TEXTS)  # coalesced, but never across params


@pytest.fixture(scope="module")
def api(module_tagged_home: Any) -> Any:
    from fastapi.testclient import TestClient

    from batchml.api import create_app

    settings = module_tagged_home.model_copy(update={"api_log_predictions": False})
    app = create_app(settings, f"tag:{settings.model_tag}")
    with TestClient(app) as client:
        yield client, app, settings


def _v2(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "review", "shape": [len(TEXTS[:6])],
                                        "datatype": "BYTES", "data": TEXTS[:6]}]}
    if params is not None:
        body["parameters"] = params
    return body


def _v2_labels(response: Any) -> list[Any]:
    return next(o["data"] for o in response.json()["outputs"] if o["name"] == "label")


def test_http_params_in_both_protocols(api: Any) -> None:
    client, app, settings = api
    name = app.state.api.model_name
    split = {"dataframe_split": {"columns": ["review"], "data": [[t] for t in TEXTS[:6]]}}
    default = [p["label"] for p in client.post("/invocations", json=split).json()["predictions"]]
    for threshold, expected in ((0.0, [1] * 6), (1.0, [0] * 6)):
        r = client.post("/invocations", json={**split, "params": {"threshold": threshold}})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == expected
        r = client.post(f"/v2/models/{name}/infer", json=_v2(name, {"threshold": threshold}))
        assert r.status_code == 200, r.text
        assert _v2_labels(r) == expected
    # protocol parameters are not the model's; none given: the model's defaults
    r = client.post(f"/v2/models/{name}/infer", json=_v2(name, {"binary_data_output": False}))
    assert _v2_labels(r) == default
    # explain per request: the explanation column
    r = client.post("/invocations", json={**split, "params": {"explain": 2}})
    assert r.status_code == 200, r.text
    assert all(len(p["explanation"]) == 2 for p in r.json()["predictions"])


@pytest.mark.parametrize(("params", "message"), [
    ({"treshold": 0.3}, "Unknown inference parameter 'treshold' from the request. The model's "
                        "parameters are: threshold (a float in [0, 1]"),
    ({"threshold": 2}, "Inference parameter 'threshold' from the request is 2.0 (above the "
                       "maximum); it accepts a float in [0, 1]."),
    ({"threshold": "0.3"}, "Inference parameter 'threshold' from the request is '0.3' (str)"),
    ({"batch_size": -1}, "'batch_size' from the request is -1 (below the minimum)"),
])
def test_http_refusals_are_400s_in_each_protocols_shape(api: Any, params: dict[str, Any],
                                                        message: str) -> None:
    client, app, _ = api
    name = app.state.api.model_name
    r = client.post("/invocations", json={"instances": TEXTS[:2], "params": params})
    assert r.status_code == 400
    assert r.json()["error_code"] == "BAD_REQUEST" and message in r.json()["message"]
    r = client.post(f"/v2/models/{name}/infer", json=_v2(name, params))
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_openapi_and_metadata_list_the_parameters(api: Any) -> None:
    client, app, _ = api
    name = app.state.api.model_name
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/invocations"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    params = body["properties"]["params"]["anyOf"][0]
    assert params["properties"]["threshold"]["maximum"] == 1.0
    assert params["additionalProperties"] is False
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    v2_params = infer["properties"]["parameters"]["properties"]
    assert {"binary_data_output", "threshold", "explain", "batch_size"} <= set(v2_params)
    meta = client.get(f"/v2/models/{name}").json()
    declared = meta["parameters"]["inference_parameters"]
    assert declared["threshold"]["type"] == "float"
    assert declared["explain"]["default"] == 0


def test_online_requests_record_their_params(module_tagged_home: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from batchml import Catalog
    from batchml.api import create_app

    settings = module_tagged_home.model_copy(update={"home": tmp_path / "home2",
                                                     "api_log_predictions": True})
    catalog = Catalog.from_settings(module_tagged_home)
    with TestClient(create_app(settings, f"tag:{settings.model_tag}", catalog=catalog)) as c:
        name = c.app.state.api.model_name  # type: ignore[attr-defined]
        assert c.post("/invocations", json={"instances": TEXTS[:3],
                                            "params": {"threshold": 0.25}}).status_code == 200
        assert c.post(f"/v2/models/{name}/infer", json=_v2(name)).status_code == 200
    logged = pd.read_parquet(tmp_path / "home2" / "online")
    by_protocol = {p: json.loads(v) for p, v in zip(logged["protocol"], logged["params"],
                                                          strict=True)}
    assert by_protocol["mlflow"]["threshold"] == 0.25
    assert by_protocol["v2"]["threshold"] == catalog.latest_run(
        settings.train_flow, tag=settings.model_tag).load_model().threshold
    assert set(by_protocol["v2"]) == {"threshold", "explain", "batch_size"}


# --- the command line and the deployment's flow parameter -------------------------------------


@pytest.mark.parametrize(("args", "env", "code", "expected"), [
    (["--param", "threshold=0.0"], {"BATCHML_PARAMS": '{"threshold": 1.0, "batch_size": 5}'},
     0, {"threshold": 0.0, "batch_size": 5, "explain": 0}),
    (["--explain", "2"], {"BATCHML_PARAMS": '{"threshold": 1.0}'},
     0, {"threshold": 1.0, "batch_size": 0, "explain": 2}),
    (["--param", "threshold=high"], {}, 1,
     "Inference parameter 'threshold' from the batch (--param) is 'high' (not a number); it "
     "accepts a float in [0, 1]."),
    (["--param", "threshold"], {}, 1, "Inference parameter 'threshold' from the batch "
                                      "(--param) is not NAME=VALUE."),
    ([], {"BATCHML_PARAMS": '{"treshold": 1}'}, 1,
     "Unknown inference parameter 'treshold' from the inbox settings (BATCHML_PARAMS)."),
], ids=["param-over-settings", "explain-shorthand", "bad-value", "not-an-assignment",
        "bad-setting"])
def test_predict_param_option_and_settings(module_tagged_home: Any, tmp_path: Path,
                                           args: list[str], env: dict[str, str], code: int,
                                           expected: Any) -> None:
    from typer.testing import CliRunner

    from batchml import Catalog
    from batchml.catalog import Ledger
    from batchml.cli import app

    source = _input(tmp_path, "cli")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", source, "--output", str(out), *args,
                                      "--home", str(module_tagged_home.home)],
                                env={"COLUMNS": "200", **env})
    assert result.exit_code == code, result.output
    catalog = Catalog.from_settings(module_tagged_home)
    if code:
        assert expected in " ".join(result.output.split())
        assert not list(out.rglob("*.parquet"))
        # refused before any file was claimed: nothing quarantined, nothing in the ledger
        assert source not in set(Ledger(catalog).files()["source_uri"])
        return
    (output,) = out.rglob("*.parquet")
    frame = pd.read_parquet(output)
    np.testing.assert_array_equal(frame["label"], (frame["proba"] >= expected["threshold"]))
    batch_id = frame["batch_id"].iloc[0]
    recorded = catalog.sql("SELECT params FROM prediction_batches WHERE batch_id = ?",
                           [batch_id])["params"].iloc[0]
    assert json.loads(recorded) == expected
    import pyarrow.parquet as pq

    assert json.loads(pq.read_schema(output).metadata[b"batchml.params"]) == expected


def test_the_deployment_flow_parameter(module_tagged_home: Any, tmp_path: Path) -> None:
    """A real Prefect flow run of the prediction flow with the deployment's ``params``, under
    BATCHML_PARAMS; a bad one fails the run before any file is claimed."""
    from prefect.testing.utilities import prefect_test_harness

    from batchml.flows.predict import predict_flow

    settings = module_tagged_home.model_copy(update={"params": {"batch_size": 3},
                                                     "outbox": str(tmp_path / "outbox")})
    with prefect_test_harness(server_startup_timeout=120):
        result = predict_flow(files=[_input(tmp_path, "flow", seed=21)], settings=settings,
                              params={"threshold": 0.0, "batch_size": 9})
        assert result["params"] == {"threshold": 0.0, "batch_size": 3, "explain": 0}
        (scored,) = result["files"]
        assert (pd.read_parquet(scored["output"])["label"] == 1).all()
        bad = _input(tmp_path, "flow-bad", seed=22)
        with pytest.raises(InvalidParams, match="'threshold' from the deployment \\(flow "
                                                "parameter params\\) is 7.0"):
            predict_flow(files=[bad], settings=settings, params={"threshold": 7})
    from batchml import Catalog
    from batchml.catalog import Ledger

    states = Ledger(Catalog.from_settings(settings)).files()
    (state,) = states.loc[states["source_uri"] == bad, "state"]
    assert state == "discovered"  # never claimed, never quarantined


def test_watch_refuses_bad_settings_at_start(module_tagged_home: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from batchml.cli import app

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _input(inbox, "waiting")
    result = CliRunner().invoke(app, ["watch", str(inbox), "--once",
                                      "--home", str(module_tagged_home.home)],
                                env={"COLUMNS": "200",
                                     "BATCHML_PARAMS": '{"threshold": -0.5}'})
    assert result.exit_code == 1, result.output
    assert ("Inference parameter 'threshold' from the inbox settings (BATCHML_PARAMS) is -0.5 "
            "(below the minimum)") in " ".join(result.output.split())
    assert "watching" not in result.output
    assert [p.name for p in inbox.iterdir()] == ["waiting.parquet"]  # not quarantined


def test_a_file_scored_in_pieces_uses_the_batch_params(module_tagged_home: Any,
                                                       tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from batchml.pieces import score_in_pieces

    path = tmp_path / "big.parquet"
    from batchml.synthetic import synthetic_reviews

    pq.write_table(pa.Table.from_pandas(synthetic_reviews(3_000, seed=8).drop(
        columns=["labels"]), preserve_index=False), path, row_group_size=500)
    worker = _worker(module_tagged_home, [str(path)], tmp_path / "out",
                     params={"threshold": "0.0"})
    result = score_in_pieces(worker, rows_per_piece=1_000)
    assert (result["status"], result["rows"]) == ("scored", 3_000)
    parts = json.loads(Path(result["output"]).read_text())["parts"]
    assert len(parts) == 3
    labels = pd.concat([pd.read_parquet(p["uri"]) for p in parts])["label"]
    assert (labels == 1).all()  # threshold 0: every row positive, in every piece
    bad = _worker(module_tagged_home, [str(path)], tmp_path / "out",
                  params={"threshold": "2"})
    with pytest.raises(InvalidParams, match="'threshold' from the batch"):
        score_in_pieces(bad, rows_per_piece=1_000)


def test_models_loaded_from_the_catalog_take_params_per_call(module_tagged_home: Any) -> None:
    from batchml import Catalog

    s = module_tagged_home
    run = Catalog.from_settings(s).latest_run(s.train_flow, tag=s.model_tag)
    model = run.load_model()
    frame = pd.DataFrame({"review": TEXTS})
    proba = model.predict_proba(frame)[:, 1]
    assert model.signature.param("threshold").default == model.threshold  # trained one
    for threshold in (0.0, 0.5, 1.0):
        np.testing.assert_array_equal(model.predict(frame, params={"threshold": threshold}),
                                      (proba >= threshold).astype(int))
    np.testing.assert_allclose(model.predict_proba(frame, params={"batch_size": 5})[:, 1], proba)
    with pytest.raises(InvalidParams, match="'explain' from the call is 'x' \\(str\\)"):
        model.predict(frame, params={"explain": "x"})


def test_serve_refuses_bad_settings_at_start(module_tagged_home: Any, tmp_path: Path) -> None:
    import asyncio

    from batchml.service import Service

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _input(inbox, "waiting")
    settings = module_tagged_home.model_copy(update={"inbox": str(inbox),
                                                     "params": {"explain": "many"}})
    with pytest.raises(InvalidParams, match="'explain' from the inbox settings "
                                            "\\(BATCHML_PARAMS\\) is 'many' \\(not an integer\\)"):
        asyncio.run(Service(settings).run())
    assert [p.name for p in inbox.iterdir()] == ["waiting.parquet"]  # not quarantined
