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
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..errors import BatchMLError, DataError, ModelNotFound, RunCannotScore
from ..limits import Limits
from ..online import ModelFollower, OnlineScorer, RequestTooLarge, Served
from ..resolve import ModelRef
from . import inference_v2 as v2
from . import mlflow_protocol as mlflow

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..settings import Settings

log = logging.getLogger("batchml.api")

_ERRORS = {400: {"description": "Bad input: the message names the column and what to do"},
           413: {"description": "The body or the rows exceed the configured limits"},
           415: {"description": "Unsupported media type"},
           503: {"description": "No model to serve yet (e.g. the alias is not set)"},
           504: {"description": "The request took longer than api_timeout_s"}}


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


def create_app(settings: Settings, model: str | None = None, *,
               catalog: Catalog | None = None, prediction_log: Any = None) -> FastAPI:
    """The API for ``model`` (a reference: ``NAME@ALIAS``, ``NAME/3``, a run id,
    ``tag:NAME``; default ``settings.model``, then ``settings.model_tag``)."""
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
    from .page import add_page

    add_page(app, state)
    return app


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
    if isinstance(exc, DataError | BatchMLError):
        return 400
    return 500


async def _scored(state: ApiState, scorer: OnlineScorer, table: pa.Table,
                  protocol: str) -> tuple[Served, pa.Table]:
    start = time.perf_counter()
    served, outputs = await asyncio.wait_for(scorer.score(table),
                                             timeout=state.settings.api_timeout_s)
    if state.prediction_log is not None:
        state.prediction_log.append(served=served, inputs=table, outputs=outputs,
                                    latency_ms=(time.perf_counter() - start) * 1000,
                                    protocol=protocol)
    return served, outputs


def _mlflow_routes(app: FastAPI, state: ApiState) -> None:
    async def ping() -> Response:
        try:
            await asyncio.to_thread(state.follower.current)
        except BatchMLError:
            return Response("\n", status_code=503, media_type="application/json")
        return Response("\n", status_code=200, media_type="application/json")

    app.get("/ping", summary="MLflow: is a model loaded", responses={503: _ERRORS[503]})(ping)
    app.get("/health", summary="MLflow: is a model loaded",
            responses={503: _ERRORS[503]})(ping)

    @app.get("/version", summary="MLflow: the server's version")
    async def version() -> Response:
        from .. import __version__

        return Response(__version__, media_type="application/json")

    @app.post("/invocations", summary="MLflow scoring protocol",
              responses={k: _ERRORS[k] for k in (400, 413, 415, 503, 504)})
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
            if mime == "text/csv":
                table = mlflow.parse_csv(body, {s.name: _arrow(s.type) for s in sig.inputs})
            else:
                table, params_given = mlflow.parse_json(body, sig.input_names)
                if params_given:
                    log.info("ignoring params %s: the model takes no inference parameters",
                             sorted(params_given))
            _, outputs = await _scored(state, state.scorer, table, "mlflow")
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
        if not state.ref.registered or not version.isdigit():
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

    @app.get("/v2", summary="v2: server metadata")
    async def server_metadata() -> dict[str, Any]:
        from .. import __version__

        return {"name": "batchml", "version": __version__, "extensions": []}

    @app.get("/v2/health/live", summary="v2: the server is live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="v2: a model is loaded",
             responses={503: _ERRORS[503]})
    async def ready() -> JSONResponse:
        try:
            await asyncio.to_thread(state.follower.current)
        except BatchMLError:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/v2/models/{name}", summary="v2: model metadata",
             responses={404: {"description": "No such model"}, 503: _ERRORS[503]})
    async def model_metadata(name: str) -> JSONResponse:
        try:
            served = await asyncio.to_thread(state.follower.current)
            check_name(name)
        except _Unknown as exc:
            return error(str(exc), 404)
        except BatchMLError as exc:
            return error(str(exc), _status(exc))
        sig = served.model.signature
        probe = await asyncio.to_thread(state.scorer.output_types, served)
        versions = [served.label.rpartition("/")[2]]
        return JSONResponse(v2.metadata(state.model_name, versions, sig, probe))

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

    app.get("/v2/models/{name}/ready", summary="v2: the model is ready",
            responses={404: {"description": "No such model"}, 503: _ERRORS[503]})(model_ready)
    app.get("/v2/models/{name}/versions/{version}/ready", summary="v2: the version is ready",
            responses={404: {"description": "No such model or version"},
                       503: _ERRORS[503]})(model_ready)

    async def infer(name: str, request: Request, version: str | None = None) -> JSONResponse:
        try:
            check_name(name)
            scorer = await scorer_for(version)
            body = await read_body(request, state.max_body)
            length = request.headers.get(v2.HEADER_LENGTH)
            table, req = v2.parse_infer(body, int(length) if length and length.isdigit()
                                        else None)
            served, outputs = await _scored(state, scorer, table, "v2")
            return JSONResponse(v2.infer_response(
                state.model_name, served.label.rpartition("/")[2], outputs, req))
        except _Unknown as exc:
            return error(str(exc), 404)
        except TimeoutError:
            return error(f"The request took longer than {state.settings.api_timeout_s} s.",
                         504)
        except BatchMLError as exc:
            return error(str(exc), _status(exc))

    app.post("/v2/models/{name}/infer", summary="v2: infer",
             responses={404: {"description": "No such model"},
                        **{k: _ERRORS[k] for k in (400, 413, 503, 504)}})(infer)
    app.post("/v2/models/{name}/versions/{version}/infer", summary="v2: infer with a version",
             responses={404: {"description": "No such model or version"},
                        **{k: _ERRORS[k] for k in (400, 413, 503, 504)}})(infer)


class _Unknown(LookupError):
    pass


class _UnknownModel(_Unknown):
    def __init__(self, name: str, served: str) -> None:
        super().__init__(f"No model {name!r} here; this server serves {served!r}.")


class _UnknownVersion(_Unknown):
    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"Model {name!r} has no version {version!r} to serve.")
