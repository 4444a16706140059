"""`batchml serve-api` spoken to by clients nobody here wrote, over a real uvicorn server on
loopback: MLflow's own scoring-server client and payload helpers (mlflow-skinny), and Triton's
``tritonclient.http`` (the Open Inference Protocol v2, JSON and the binary tensor extension,
both ways). Predictions must equal the model's own; errors must come back in each protocol's
shape, readable by its client."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_api import TEXTS, _Server, api_home  # noqa: F401  (api_home: a fixture)

from batchml import Catalog, Settings
from batchml.api import create_app
from batchml.api import inference_v2 as v2

mlflow_client = pytest.importorskip("mlflow.pyfunc.scoring_server.client")
tritonhttp = pytest.importorskip("tritonclient.http")
tritonutils = pytest.importorskip("tritonclient.utils")

# one non-ASCII text: utf-8 through JSON, CSV and the binary BYTES encoding
REVIEWS = [*TEXTS, "très belle robe, taille parfaite 👗"]
FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]


@pytest.fixture(scope="module")
def text_server(api_home: Settings) -> Iterator[tuple[str, int]]:  # noqa: F811
    settings = api_home.model_copy(update={"api_log_predictions": False})
    with _Server(create_app(settings, "reviews@champion")) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


@pytest.fixture(scope="module")
def expected(api_home: Settings) -> pd.DataFrame:  # noqa: F811
    """The model's own answers for REVIEWS (version 1, loaded from the registry)."""
    cat = Catalog.from_settings(api_home)
    try:
        model = cat.model("reviews").version(1).load()
        frame = pd.DataFrame({"review": REVIEWS})
        proba = np.asarray(model.predict_proba(frame))
        return pd.DataFrame({"label": [str(x) for x in model.predict(frame)],
                             "proba": proba.max(axis=1)})
    finally:
        cat.close()


# --- MLflow: ScoringServerClient, dump_input_data, the documented payloads ------------------


def _labels(predictions: Any) -> list[str]:
    frame = predictions if isinstance(predictions, pd.DataFrame) else pd.DataFrame(predictions)
    return [str(x) for x in frame["label"]]


def test_mlflow_client_invoke_dataframe_and_params(text_server: tuple[str, int],
                                                   expected: pd.DataFrame) -> None:
    client = mlflow_client.ScoringServerClient(*text_server)
    client.ping()
    from batchml import __version__

    assert client.get_version() == __version__
    frame = pd.DataFrame({"review": REVIEWS})
    for params in (None, {"batch_size": 2}):  # the labels: the model's own threshold
        response = client.invoke(frame, params=params)
        got = response.get_predictions()  # MLflow's own reading of the answer
        assert isinstance(got, pd.DataFrame) and len(got) == len(REVIEWS)
        assert _labels(got) == list(expected["label"])
        np.testing.assert_allclose(got["proba"], expected["proba"], rtol=1e-9)
    # dict of numpy arrays ({"inputs": {...}}), a list ({"inputs": [...]}), a 1-d array
    for data in ({"review": np.array(REVIEWS)}, REVIEWS, np.array(REVIEWS)):
        assert _labels(client.invoke(data).get_predictions()) == list(expected["label"])


def test_mlflow_documented_payloads(text_server: tuple[str, int],
                                    expected: pd.DataFrame) -> None:
    """The request bodies MLflow's docs build (pandas' own JSON and CSV writers, MLflow's
    dump_input_data and convert_input_example_to_serving_input), posted as documented."""
    from mlflow.models import convert_input_example_to_serving_input
    from mlflow.utils.proto_json_utils import dump_input_data

    frame = pd.DataFrame({"review": REVIEWS})
    split = json.loads(frame.to_json(orient="split"))  # with "index", as pandas writes it
    records = json.loads(frame.to_json(orient="records"))
    bodies: dict[str, tuple[str, str]] = {
        "to_json split": (json.dumps({"dataframe_split": split}), "application/json"),
        "to_json records": (json.dumps({"dataframe_records": records}), "application/json"),
        "instances": (json.dumps({"instances": records}), "application/json"),
        "inputs columns": (json.dumps({"inputs": {"review": REVIEWS}}), "application/json"),
        "dump_input_data": (dump_input_data(frame), "application/json"),
        "dump_input_data inputs_key": (dump_input_data(REVIEWS, inputs_key="instances"),
                                       "application/json"),
        "serving_input frame": (convert_input_example_to_serving_input(frame),
                                "application/json"),
        "serving_input dict": (convert_input_example_to_serving_input(
            {"review": np.array(REVIEWS)}), "application/json"),
        "charset": (dump_input_data(frame), "application/json; charset=utf-8"),
        "csv": (frame.to_csv(index=False), "text/csv"),
    }
    base = "http://{}:{}".format(*text_server)
    with httpx.Client(base_url=base, timeout=30) as http:
        for what, (body, content_type) in bodies.items():
            r = http.post("/invocations", content=body.encode(),
                          headers={"content-type": content_type})
            assert r.status_code == 200, (what, r.text)
            assert _labels(r.json()["predictions"]) == list(expected["label"]), what


def test_mlflow_client_errors_in_mlflows_shape(text_server: tuple[str, int]) -> None:
    """A bad request through MLflow's client fails with the server's body, which parses as an
    MLflow REST error (RestException: the error code, the HTTP status, the message)."""
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    client = mlflow_client.ScoringServerClient(*text_server)
    shape = set(json.loads(MlflowException("x", error_code=BAD_REQUEST).serialize_as_json()))
    cases = [(pd.DataFrame({"text": ["x"]}), "column 'review' is missing"),
             (pd.DataFrame({"review": [3]}), "column 'review' has type int64"),
             ({"review": np.array(["a", "b"]), "stars": np.array([1])},
              "different lengths")]
    for data, message in cases:
        with pytest.raises(Exception, match=r"error code 400") as info:
            client.invoke(data)
        body = json.loads(re.search(r"response: (\{.*\})\)$", str(info.value), re.S)[1])
        assert {"error_code", "message"} <= set(body) <= shape
        error = RestException(body)
        assert error.error_code == "BAD_REQUEST" and error.get_http_status_code() == 400
        assert message in error.message


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tabular model (logistic regression on synthetic customers, features with missing
    values, a string label) registered as churn/1 and served."""
    from batchml import training as tr
    from batchml.synthetic import synthetic_tabular

    root = tmp_path_factory.mktemp("tabular")
    names = {0: "low", 1: "mid", 2: "high"}
    for split, (n, seed) in {"train": (600, 0), "valid": (300, 1)}.items():
        frame = synthetic_tabular(n, seed=seed, classes=3)
        frame["tier"] = frame.pop("segment").map(names)
        frame.to_parquet(root / f"{split}.parquet")
    settings = Settings(home=root / "home", api_log_predictions=False)
    cat = Catalog.from_settings(settings)
    run = tr.train(cat, tr.TrainingConfig(
        train_uri=str(root / "train.parquet"), valid_uri=str(root / "valid.parquet"),
        feature_columns=FEATURES, label="tier", candidates=["tabular_logreg"],
        baseline_margin=-1)).run
    cat.model("churn").register(run, model="tabular_logreg")
    rows = synthetic_tabular(40, seed=5, classes=3)[FEATURES]
    model = cat.model("churn").version(1).load()
    labels = [str(x) for x in model.predict(rows)]
    cat.close()
    with _Server(create_app(settings, "churn/1")) as url:
        host, port = url.removeprefix("http://").split(":")
        yield {"host": host, "port": int(port), "rows": rows, "labels": labels}


def test_mlflow_client_tabular_with_missing_values(tabular: dict[str, Any]) -> None:
    """NaN floats (MLflow's encoder writes them as the bare NaN token), None strings and
    int64 columns from a DataFrame, through the client and as CSV with empty cells."""
    rows: pd.DataFrame = tabular["rows"]
    assert rows.isna().any().any(), "the sample should hold missing values"
    client = mlflow_client.ScoringServerClient(tabular["host"], tabular["port"])
    got = client.invoke(rows).get_predictions()
    assert _labels(got) == tabular["labels"]
    r = httpx.post(f"http://{tabular['host']}:{tabular['port']}/invocations",
                   content=rows.to_csv(index=False), headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert _labels(r.json()["predictions"]) == tabular["labels"]


# --- Triton: tritonclient.http -------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(text_server: tuple[str, int]) -> Iterator[Any]:
    client = tritonhttp.InferenceServerClient("{}:{}".format(*text_server),
                                              network_timeout=30.0)
    yield client
    client.close()


def _review_input(binary: bool, shape: list[int] | None = None) -> Any:
    data = np.array(REVIEWS, dtype=np.object_)
    if shape is not None:
        data = data.reshape(shape)
    tensor = tritonhttp.InferInput("review", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def test_triton_health_and_metadata(triton: Any) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    assert triton.is_model_ready("reviews")
    assert triton.is_model_ready("reviews", model_version="2")
    assert not triton.is_model_ready("reviews", model_version="9")
    assert not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("reviews")
    assert meta["name"] == "reviews" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "review", "datatype": "BYTES", "shape": [-1]}]
    assert {"label": "INT64", "proba": "FP64"}.items() <= \
        {o["name"]: o["datatype"] for o in meta["outputs"]}.items()
    assert triton.get_model_metadata("reviews", model_version="2")["versions"] == ["2"]
    for name, version, message in (("nope", "", "No model 'nope' here"),
                                   ("reviews", "9", "has no version '9'")):
        with pytest.raises(tritonutils.InferenceServerException, match=message) as info:
            triton.get_model_metadata(name, model_version=version)
        assert info.value.status() == "404"


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
def test_triton_infer_bytes_input(triton: Any, expected: pd.DataFrame,
                                  binary_in: bool) -> None:
    labels = np.array([int(x) for x in expected["label"]])
    # no outputs named: tritonclient asks for every output in binary (binary_data_output)
    result = triton.infer("reviews", [_review_input(binary_in)], request_id="r-1")
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_version"] == "1"
    assert all("binary_data_size" in o["parameters"] and "data" not in o
               for o in response["outputs"])
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    np.testing.assert_allclose(result.as_numpy("proba"), expected["proba"], rtol=1e-12)
    assert result.as_numpy("proba").dtype == np.float64

    # named outputs: JSON for one, binary (tritonclient's default) for the other
    result = triton.infer("reviews", [_review_input(binary_in, [len(REVIEWS), 1])], outputs=[
        tritonhttp.InferRequestedOutput("label", binary_data=False),
        tritonhttp.InferRequestedOutput("proba")])
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(by_name) == {"label", "proba"}
    assert by_name["label"]["data"] == labels.tolist()
    assert by_name["proba"]["parameters"]["binary_data_size"] == 8 * len(REVIEWS)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    np.testing.assert_allclose(result.as_numpy("proba"), expected["proba"], rtol=1e-12)

    # all JSON: no binary part, no header-length header
    result = triton.infer("reviews", [_review_input(binary_in)], outputs=[
        tritonhttp.InferRequestedOutput("label", binary_data=False)])
    assert result.get_response()["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [len(REVIEWS)],
         "data": labels.tolist()}]


def test_triton_infer_explicit_version(triton: Any, expected: pd.DataFrame) -> None:
    result = triton.infer("reviews", [_review_input(True)], model_version="2")
    assert result.get_response()["model_version"] == "2"
    assert [str(x) for x in result.as_numpy("label")] == list(expected["label"])


@pytest.mark.parametrize(("tensor", "status", "message"), [
    (("text", ["x"], "BYTES"), "400",
     "column 'review' is missing; the model expects string"),
    (("review", [1.5], "FP64"), "400", "column 'review' has type float64 but the model "
                                       "expects string"),
    (("review", [], "BYTES"), "400", "The request holds no rows"),
], ids=["missing-column", "wrong-type", "no-rows"])
def test_triton_bad_input_raises_with_the_column_message(
        triton: Any, tensor: tuple[str, list[Any], str], status: str, message: str) -> None:
    name, values, datatype = tensor
    dtype = np.object_ if datatype == "BYTES" else np.float64
    data = np.array(values, dtype=dtype)
    for binary in (False, True):
        tensor_in = tritonhttp.InferInput(name, list(data.shape), datatype)
        tensor_in.set_data_from_numpy(data, binary_data=binary)
        with pytest.raises(tritonutils.InferenceServerException) as info:
            triton.infer("reviews", [tensor_in])
        assert info.value.status() == status
        assert message in info.value.message()


def test_triton_unknown_model_and_version_raise_404(triton: Any) -> None:
    for name, version, message in (("nope", "", "No model 'nope' here"),
                                   ("reviews", "9", "has no version '9'")):
        with pytest.raises(tritonutils.InferenceServerException, match=message) as info:
            triton.infer(name, [_review_input(False)], model_version=version)
        assert info.value.status() == "404"


def test_triton_decodes_every_binary_output_type() -> None:
    """Each datatype the server can answer in binary (BYTES with non-ASCII text, INT64, FP64,
    BOOL), decoded by tritonclient's own InferResult; a column with nulls, or of structs (an
    explanation), stays JSON."""
    why = [[{"feature": "fit", "contribution": 0.5}]] * 3
    outputs = pa.table({"label": ["high", "très", "👗"], "count": pa.array([1, -2, 3]),
                        "proba": [0.25, 0.5, 1.0], "flag": [True, False, True],
                        "maybe": pa.array([1.0, None, 2.0]), "explanation": why})
    request = {"id": "x", "parameters": {"binary_data_output": True}}
    content, header = v2.encode_response(*v2.infer_response("m", "1", outputs, request))
    assert header is not None
    result = tritonhttp.InferResult.from_response_body(content, header_length=header)
    assert [x.decode() for x in result.as_numpy("label")] == ["high", "très", "👗"]
    np.testing.assert_array_equal(result.as_numpy("count"), [1, -2, 3])
    np.testing.assert_array_equal(result.as_numpy("proba"), [0.25, 0.5, 1.0])
    np.testing.assert_array_equal(result.as_numpy("flag"), [True, False, True])
    maybe = next(o for o in result.get_response()["outputs"] if o["name"] == "maybe")
    assert maybe["data"] == [1.0, None, 2.0] and "parameters" not in maybe
    explained = next(o for o in result.get_response()["outputs"]
                     if o["name"] == "explanation")
    assert explained["data"] == why and "parameters" not in explained
    # nothing asked in binary: the whole answer is JSON, no header length
    content, header = v2.encode_response(*v2.infer_response("m", "1", outputs, {}))
    assert header is None and json.loads(content)["outputs"][0]["data"] == ["high", "très",
                                                                             "👗"]


def test_triton_client_on_unknown_v2_paths_reads_the_error(text_server: tuple[str, int]
                                                           ) -> None:
    """A path no v2 route has answers in the protocol's {"error": ...} shape (FastAPI's
    {"detail": ...} is not decodable by tritonclient)."""
    base = "http://{}:{}".format(*text_server)
    r = httpx.get(f"{base}/v2/models/reviews/config")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = httpx.get(f"{base}/v2/models/reviews/infer")
    assert r.status_code == 405 and set(r.json()) == {"error"}
    assert set(httpx.get(f"{base}/no/such/path").json()) == {"detail"}  # outside /v2
