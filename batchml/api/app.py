"""The HTTP API of ``batchml serve-api``: one FastAPI app serving one model reference in two
protocols (MLflow's scoring protocol and the Open Inference Protocol v2).

The app holds no logic of its own beyond HTTP: :class:`~batchml.online.ModelFollower` keeps the
model current (a moved alias is served within ``refresh_s``), :class:`~batchml.online.
OnlineScorer` validates and micro-batches, :mod:`.mlflow_protocol` and :mod:`.inference_v2`
translate payloads. Bad input is a 400 (413 too large, 415 wrong media type) with a
column-level message, never a 500; a model that is not there yet is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BatchMLError, DataError, ModelError, ModelNotFound, RunCannotScore
from ..limits import Limits
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import ServiceMetrics
from ..online import ModelFollower, OnlineScorer, RequestTooLarge, Served
from ..resolve import ModelRef
from . import inference_v2 as v2
from . import mlflow_protocol as mlflow

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..settings import Settings

log = logging.getLogger("batchml.api")

_ERRORS = {400: {"description": "Bad input: the message names the column and what to do"},
           404: {"description": "No such model or version (or the reference names a run that "
                                "cannot score)"},
           413: {"description": "The body or the rows exceed the configured limits"},
           415: {"description": "Unsupported media type"},
           503: {"description": "No model to serve yet (e.g. the alias is not set)"},
           504: {"description": "The request took longer than api_timeout_s"}}


def _json(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """An OpenAPI response whose body is JSON of ``schema``."""
    out: dict[str, Any] = {"content": {"application/json": {"schema": schema}}}
    if description:
        out["description"] = description
    return out


def _errors(schema: dict[str, Any], *codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses ``codes``, each a JSON body of ``schema`` (the protocol's shape)."""
    return {k: {**_ERRORS[k], **_json(schema)} for k in codes}


_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}


class BodyTooLarge(DataError):
    """A request body over ``api_max_body_mb``."""


@dataclass
class ApiState:
    """What the routes share: the model follower, the scorer, the limits."""

    settings: Settings
    catalog: Catalog
    ref: ModelRef
    follower: ModelFollower
    scorer: OnlineScorer
    max_body: int
    prediction_log: Any = None
    """An object with ``append(served=, inputs=, outputs=, latency_ms=, protocol=)`` (see
    :mod:`batchml.api.prediction_log`), or None when logging is off."""
    version_scorers: dict[int, OnlineScorer] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """The name clients use in v2 URLs: the registered model's, else the run's model."""
        if self.ref.registered:
            return self.ref.name
        return self.follower.current().model.name


def _metrics_route(app: FastAPI, metrics: ServiceMetrics) -> None:
    async def prometheus() -> Response:
        body = await asyncio.to_thread(metrics.text)  # the catalog is read at collect time
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    app.get("/metrics", include_in_schema=False, response_model=None)(prometheus)


def create_app(settings: Settings, model: str | None = None, *,
               catalog: Catalog | None = None, prediction_log: Any = None,
               metrics: ServiceMetrics | None = None) -> FastAPI:
    """The API for ``model`` (a reference: ``NAME@ALIAS``, ``NAME/3``, a run id,
    ``tag:NAME``; default ``settings.model``, then ``settings.model_tag``). ``GET /metrics``
    serves ``metrics`` (``batchml serve --api``: the service's; default: the catalog's
    gauges only, see :mod:`batchml.metrics`)."""
    from ..catalog import Catalog
    from ..scoring import ModelCache

    ref = ModelRef.from_options(model=model, default_model=settings.model,
                                default_tag=settings.model_tag, flow=settings.train_flow)
    catalog = catalog or Catalog.from_settings(settings)
    cache = ModelCache(catalog, flow=settings.train_flow,
                       threshold=settings.decision_threshold)
    follower = ModelFollower(catalog, ref, cache)
    scorer = OnlineScorer(follower, limits=Limits.from_settings(settings),
                          max_rows=settings.api_max_rows, batch_rows=settings.api_batch_rows,
                          batch_wait_ms=settings.api_batch_wait_ms)
    if prediction_log is None and settings.api_log_predictions:
        from .prediction_log import PredictionLog

        prediction_log = PredictionLog.from_settings(settings, catalog=catalog)
    state = ApiState(settings, catalog, ref, follower, scorer,
                     int(settings.api_max_body_mb * 2**20), prediction_log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(follower.current)
        except (ModelNotFound, RunCannotScore) as exc:
            log.warning("no model to serve yet: %s", exc)
        follower.start()
        scorer.start()
        try:
            yield
        finally:
            await scorer.stop()
            follower.stop()
            if state.prediction_log is not None:
                await asyncio.to_thread(state.prediction_log.close)

    from .. import __version__

    app = FastAPI(title="batchml", version=__version__, lifespan=lifespan,
                  description=f"Online scoring of {ref} in MLflow's scoring protocol and the "
                              "Open Inference Protocol v2.")
    app.state.api = state
    if settings.api_cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.api_cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    _mlflow_routes(app, state)
    _v2_routes(app, state)
    metrics = metrics if metrics is not None else ServiceMetrics()
    metrics.attach_catalog(catalog)  # the service's own catalog when it attached it first
    _metrics_route(app, metrics)
    _openapi_examples(app, state)
    from .page import add_page

    add_page(app, state)
    return app


def _openapi_examples(app: FastAPI, state: ApiState) -> None:
    """/openapi.json with request examples for the model served now (its input columns): the
    documented request scores as it stands."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        schema = copy.deepcopy(base())
        try:
            sig = state.follower.current().model.signature
        except BatchMLError:  # no model yet: no example
            return schema
        paths = schema.get("paths", {})
        values = {"name": state.model_name,
                  "version": state.follower.current().label.rpartition("/")[2]}
        for path, item in paths.items():
            if path.startswith("/v2/models/"):
                for op in item.values():
                    for param in op.get("parameters", []):
                        if param.get("name") in values:
                            param["example"] = values[param["name"]]
        from ..params import json_schema

        params = json_schema(sig.params)
        for path, make in (("/invocations", mlflow.example),
                           ("/v2/models/{name}/infer", v2.example),
                           ("/v2/models/{name}/versions/{version}/infer", v2.example)):
            body = paths.get(path, {}).get("post", {}).get("requestBody")
            if body:
                content = body["content"]["application/json"]
                content["example"] = make(sig)
                # the served model's inference parameters, named with their limits
                props = _resolve_ref(schema, content["schema"]).setdefault("properties", {})
                if path == "/invocations":
                    props["params"] = {"anyOf": [params, {"type": "null"}]}
                else:
                    held = props.get("parameters", {})
                    props["parameters"] = {**held, "properties": {
                        **held.get("properties", {}), **params["properties"]}}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _resolve_ref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or the component it ``$ref``-s (``#/components/schemas/...``)."""
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    out: Any = schema
    for part in ref[2:].split("/"):
        out = out[part]
    return dict(out) if not isinstance(out, dict) else out


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is {int(declared):,} bytes; at most {limit:,} "
                           "are accepted.", hint="Split it, or raise BATCHML_API_MAX_BODY_MB.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is over {limit:,} bytes.",
                               hint="Split it, or raise BATCHML_API_MAX_BODY_MB.")
        chunks.append(chunk)
    return b"".join(chunks)


def _status(exc: Exception) -> int:
    if isinstance(exc, BodyTooLarge | RequestTooLarge):
        return 413
    if isinstance(exc, ModelNotFound):
        return 503
    if isinstance(exc, RunCannotScore):
        return 404
    if isinstance(exc, ModelError):  # the model's own failure (a Python model's predict)
        return 500
    if isinstance(exc, DataError | BatchMLError):
        return 400
    return 500


async def _scored(state: ApiState, scorer: OnlineScorer, table: pa.Table,
                  protocol: str, params: dict[str, Any] | None = None
                  ) -> tuple[Served, pa.Table]:
    start = time.perf_counter()
    served, outputs = await asyncio.wait_for(scorer.score(table, params),
                                             timeout=state.settings.api_timeout_s)
    if state.prediction_log is not None:
        state.prediction_log.append(served=served, inputs=table, outputs=outputs,
                                    latency_ms=(time.perf_counter() - start) * 1000,
                                    protocol=protocol,
                                    params=scorer.resolve_params(params, served))
    return served, outputs


def _mlflow_routes(app: FastAPI, state: ApiState) -> None:
    # The bodies are MLflow's ("\n", the bare version), as text/plain: MLflow labels them
    # application/json, which they are not; its client reads only the status and the text.
    async def ping() -> Response:
        try:
            await asyncio.to_thread(state.follower.current)
        except BatchMLError:
            return Response("\n", status_code=503, media_type="text/plain")
        return Response("\n", status_code=200, media_type="text/plain")

    ping_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "A model is loaded", **_TEXT},
        503: {**_ERRORS[503], **_TEXT}}
    app.get("/ping", summary="MLflow: is a model loaded", response_model=None,
            responses=ping_responses)(ping)
    app.get("/health", summary="MLflow: is a model loaded", response_model=None,
            responses=ping_responses)(ping)

    @app.get("/version", summary="MLflow: the server's version", response_model=None,
             responses={200: {"description": "The version", **_TEXT}})
    async def version() -> Response:
        from .. import __version__

        return Response(__version__, media_type="text/plain")

    @app.post("/invocations", summary="MLflow scoring protocol", response_model=None,
              responses={200: _json(mlflow.PREDICTIONS_SCHEMA, "The predictions, one per row"),
                         **_errors(mlflow.ERROR_SCHEMA, 400, 404, 413, 415, 503, 504)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": mlflow.REQUEST_SCHEMA},
                  "text/csv": {"schema": mlflow.CSV_SCHEMA}}}})
    async def invocations(request: Request) -> Response:
        mime, _, params = (request.headers.get("content-type") or "").partition(";")
        mime = mime.strip().lower()
        if mime not in mlflow.CONTENT_TYPES:
            return JSONResponse(mlflow.error(
                f"Unsupported content type {mime or '(none)'!r}; send one of "
                f"{', '.join(mlflow.CONTENT_TYPES)}."), status_code=415)
        if "charset" in params.lower() and "utf-8" not in params.lower():
            return JSONResponse(mlflow.error("Only UTF-8 bodies are accepted."),
                                status_code=415)
        try:
            body = await read_body(request, state.max_body)
            sig = (await asyncio.to_thread(state.follower.current)).model.signature
            inference: dict[str, Any] | None = None  # the request's inference parameters
            if mime == "text/csv":
                table = mlflow.parse_csv(body, {s.name: _arrow(s.type) for s in sig.inputs})
            else:
                table, inference = mlflow.parse_json(body, sig.input_names)
            _, outputs = await _scored(state, state.scorer, table, "mlflow",
                                       inference or None)
        except TimeoutError:
            return JSONResponse(mlflow.error("The request took longer than "
                                             f"{state.settings.api_timeout_s} s.",
                                             "REQUEST_TIMEOUT"), status_code=504)
        except BatchMLError as exc:
            return JSONResponse(mlflow.error(str(exc)), status_code=_status(exc))
        return JSONResponse(mlflow.predictions(outputs))


def _arrow(kind: str) -> pa.DataType:
    return {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
            "bool": pa.bool_()}[kind]


def _v2_routes(app: FastAPI, state: ApiState) -> None:
    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def check_name(name: str) -> None:
        if name != state.model_name:
            raise _UnknownModel(name, state.model_name)

    async def scorer_for(version: str | None) -> OnlineScorer:
        if version is None:
            return state.scorer
        served = await asyncio.to_thread(state.follower.current)
        if version in (served.label, served.label.rpartition("/")[2], served.model.run_id):
            return state.scorer
        if not state.ref.registered or not _digits(version):
            raise _UnknownVersion(state.model_name, version)
        number = int(version)
        scorer = state.version_scorers.get(number)
        if scorer is None:
            from ..scoring import ModelCache

            fixed = ModelFollower(state.catalog, ModelRef("version", state.ref.name, version),
                                  ModelCache(state.catalog, flow=state.settings.train_flow,
                                             threshold=state.settings.decision_threshold))
            try:
                await asyncio.to_thread(fixed.current)
            except RunCannotScore:
                raise _UnknownVersion(state.model_name, version) from None
            scorer = OnlineScorer(fixed, limits=state.scorer.limits,
                                  max_rows=state.scorer.max_rows, batch_rows=0)
            if len(state.version_scorers) >= 4:
                state.version_scorers.pop(next(iter(state.version_scorers)))
            state.version_scorers[number] = scorer
        return scorer

    @app.exception_handler(StarletteHTTPException)
    async def v2_http_errors(request: Request, exc: StarletteHTTPException) -> Response:
        """Under /v2 a route not found (a path no v2 endpoint has) or a method not allowed
        answers in the protocol's error shape, ``{"error": ...}``, which v2 clients read
        (tritonclient fails to decode FastAPI's ``{"detail": ...}``)."""
        if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
            return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))
        return await http_exception_handler(request, exc)

    @app.get("/v2", summary="v2: server metadata", response_model=None,
             responses={200: _json(v2.SERVER_METADATA_SCHEMA)})
    async def server_metadata() -> JSONResponse:
        from .. import __version__

        return JSONResponse({"name": "batchml", "version": __version__,
                             "extensions": ["binary_tensor_data"]})

    live_schema = {"type": "object", "required": ["live"],
                   "properties": {"live": {"type": "boolean"}}}
    ready_schema = {"type": "object", "required": ["ready"],
                    "properties": {"ready": {"type": "boolean"}}}

    @app.get("/v2/health/live", summary="v2: the server is live", response_model=None,
             responses={200: _json(live_schema)})
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready", summary="v2: a model is loaded", response_model=None,
             responses={200: _json(ready_schema), 503: {**_ERRORS[503], **_json(ready_schema)}})
    async def ready() -> JSONResponse:
        try:
            await asyncio.to_thread(state.follower.current)
        except BatchMLError:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    async def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        try:
            check_name(name)
            scorer = await scorer_for(version)
            served = await asyncio.to_thread(scorer.follower.current)
        except _Unknown as exc:
            return error(str(exc), 404)
        except BatchMLError as exc:
            return error(str(exc), _status(exc))
        sig = served.model.signature
        probe = await asyncio.to_thread(scorer.output_types, served)
        versions = [served.label.rpartition("/")[2]]
        return JSONResponse(v2.metadata(state.model_name, versions, sig, probe))

    metadata_responses = {200: _json(v2.METADATA_SCHEMA, "The model's inputs and outputs"),
                          **_errors(v2.ERROR_SCHEMA, 400, 404, 503)}
    app.get("/v2/models/{name}", summary="v2: model metadata", response_model=None,
            responses=metadata_responses)(model_metadata)
    app.get("/v2/models/{name}/versions/{version}", summary="v2: model metadata of a version",
            response_model=None, responses=metadata_responses)(model_metadata)

    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        try:
            check_name(name)
            scorer = await scorer_for(version)
            await asyncio.to_thread(scorer.follower.current)
        except _Unknown as exc:
            return error(str(exc), 404)
        except BatchMLError as exc:
            return JSONResponse({"name": name, "ready": False, "error": str(exc)},
                                status_code=_status(exc))
        return JSONResponse({"name": name, "ready": True})

    not_ready = {"anyOf": [v2.ERROR_SCHEMA, v2.READY_SCHEMA]}
    ready_responses = {200: _json(v2.READY_SCHEMA, "The model is ready"),
                       **_errors(not_ready, 400, 404, 503)}
    app.get("/v2/models/{name}/ready", summary="v2: the model is ready", response_model=None,
            responses=ready_responses)(model_ready)
    app.get("/v2/models/{name}/versions/{version}/ready", summary="v2: the version is ready",
            response_model=None, responses=ready_responses)(model_ready)

    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        try:
            check_name(name)
            scorer = await scorer_for(version)
            body = await read_body(request, state.max_body)
            length = request.headers.get(v2.HEADER_LENGTH)
            table, req = v2.parse_infer(body, int(length) if length and _digits(length)
                                        else None)
            served, outputs = await _scored(state, scorer, table, "v2",
                                            v2.model_parameters(req) or None)
            content, header = v2.encode_response(*v2.infer_response(
                state.model_name, served.label.rpartition("/")[2], outputs, req))
            if header is None:
                return Response(content, media_type="application/json")
            return Response(content, media_type="application/octet-stream",
                            headers={v2.HEADER_LENGTH: str(header)})
        except _Unknown as exc:
            return error(str(exc), 404)
        except TimeoutError:
            return error(f"The request took longer than {state.settings.api_timeout_s} s.",
                         504)
        except BatchMLError as exc:
            return error(str(exc), _status(exc))

    infer_responses = {
        200: {"description": "One tensor per output; with outputs asked in binary, the JSON "
                             f"({v2.HEADER_LENGTH} bytes) followed by their bytes",
              "content": {"application/json": {"schema": v2.RESPONSE_SCHEMA},
                          "application/octet-stream": {
                              "schema": {"type": "string", "format": "binary"}}}},
        **_errors(v2.ERROR_SCHEMA, 400, 404, 413, 503, 504)}
    infer_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": v2.REQUEST_SCHEMA}}}}
    app.post("/v2/models/{name}/infer", summary="v2: infer", response_model=None,
             responses=infer_responses, openapi_extra=infer_body)(infer)
    app.post("/v2/models/{name}/versions/{version}/infer", summary="v2: infer with a version",
             response_model=None, responses=infer_responses, openapi_extra=infer_body)(infer)


def _digits(text: str) -> bool:
    """Only ASCII digits (str.isdigit() also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


class _Unknown(LookupError):
    pass


class _UnknownModel(_Unknown):
    def __init__(self, name: str, served: str) -> None:
        super().__init__(f"No model {name!r} here; this server serves {served!r}.")


class _UnknownVersion(_Unknown):
    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"Model {name!r} has no version {version!r} to serve.")
