"""``batchml serve``: the embedded default. One process watches the inbox, scores arrivals
through the prediction flow, runs the training flow on its nightly cron, and shuts down cleanly.

Without ``PREFECT_API_URL`` it starts and owns a Prefect server on 127.0.0.1 (state under the
batchml home) and stops it on exit: Prefect's temporary in-process server cannot fire cron
schedules. With ``PREFECT_API_URL`` set it uses that server.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Backoff, BatchMLError, CatalogError, ConfigError
from .settings import Settings

if TYPE_CHECKING:
    from .metrics import MetricsServer, ServiceMetrics
    from .sources import Source
    from .worker import Worker

log = logging.getLogger("batchml.service")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment for Prefect processes owned by batchml: state under the batchml home."""
    home = settings.home / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    return {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
            "PREFECT_RUNNER_POLL_FREQUENCY": "5"}


@contextlib.contextmanager
def prefect_settings(settings: Settings, *, api_url: str | None = None) -> Iterator[None]:
    """Prefect's settings for batchml's own use of Prefect, in this context only: its state
    under the batchml home (:func:`prefect_env`, each unless the environment already sets it)
    and ``api_url`` as the API.

    ``os.environ`` is never written: Prefect reads these from its settings context, and passes
    its current settings on to the processes it starts (the temporary server, flow runs of a
    runner), so they see them too."""
    import prefect.settings as ps  # imports Prefect, which sets up its logging

    wanted = {k: v for k, v in prefect_env(settings).items() if k not in os.environ}
    if api_url is not None:
        wanted["PREFECT_API_URL"] = api_url
    # Prefect set its loggers' levels at import, from the environment: the level chosen
    # here goes on them directly (its handlers stay as they are) and comes off at the end
    level = wanted.get("PREFECT_LOGGING_LEVEL")
    loggers = [logging.getLogger(n) for n in _PREFECT_LOGGERS] if level else []
    before = [lg.level for lg in loggers]
    try:
        with ps.temporary_settings(updates={getattr(ps, k): v for k, v in wanted.items()}):
            for lg in loggers:
                lg.setLevel(str(level))
            yield
    finally:
        for lg, was in zip(loggers, before, strict=True):
            lg.setLevel(was)


_PREFECT_LOGGERS = ("prefect", "prefect.extra", "prefect.client", "prefect.infrastructure")
"""The loggers whose level Prefect's logging config sets from ``PREFECT_LOGGING_LEVEL``."""


@contextlib.contextmanager
def local_prefect_server(settings: Settings, *, timeout_s: float = 120) -> Iterator[str]:
    """Start ``prefect server start`` on a free loopback port; yield its API URL; stop it."""
    import httpx

    port = _free_port()
    env = {**os.environ, **prefect_env(settings), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log_path = settings.home / "prefect" / "server.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ConfigError(f"The Prefect server exited at start (code {proc.returncode}).",
                                  hint=f"See {log_path}.")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ConfigError(f"The Prefect server did not answer within {timeout_s:g} s.",
                                  hint=f"See {log_path}.")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Heartbeat:
    """What the service writes to ``HOME/service.json`` for ``batchml status``."""

    path: Path

    def write(self, **fields: Any) -> None:
        data = {"pid": os.getpid(), "updated_at": time.time(), **fields}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, default=str))
        os.replace(tmp, self.path)

    def read(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.path.read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def service_state(settings: Settings) -> dict[str, Any]:
    """Is a service up (heartbeat fresh and its pid alive)? With what it last said."""
    beat = Heartbeat(settings.home / "service.json").read()
    if not beat:
        return {"up": False}
    alive = True
    try:
        os.kill(int(beat["pid"]), 0)
    except (OSError, ValueError, KeyError):
        alive = False
    fresh = time.time() - float(beat.get("updated_at", 0)) < 60
    return {**beat, "up": alive and fresh}


class ApiThread:
    """The HTTP API (:func:`batchml.api.create_app`) under uvicorn in a thread of this process,
    for ``batchml serve --api``: its own event loop, so a batch on the service's loop never
    delays a request, nor a burst of requests a batch. The service owns the signals (uvicorn
    listens to none off the main thread) and stops it with :meth:`stop`."""

    def __init__(self, settings: Settings, model: str | None = None, *,
                 metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics  # served at /metrics (create_app's own when None)
        self.server: Any = None
        self.error: BaseException | None = None
        self.url: str | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._stopping = False

    def bind(self) -> str:
        """Take ``api_host:api_port`` now (before the slow parts of start-up, so a port in
        use fails at once); return the URL. Raises :class:`ConfigError` when it is taken."""
        if self._sock is not None:
            assert self.url is not None
            return self.url
        host, port = self.settings.api_host, self.settings.api_port
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"batchml serve --api cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}.",
                              hint="Free that port, or set BATCHML_API_PORT / "
                                   "BATCHML_API_HOST.") from exc
        self._sock = sock
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{int(sock.getsockname()[1])}"
        return self.url

    def start(self, timeout_s: float = 120.0) -> str:
        """Bind (unless :meth:`bind` did), load the model and serve; return the URL once it
        answers. Raises :class:`ConfigError` when the address is taken or it cannot start."""
        import uvicorn

        from .api import create_app

        url = self.bind()
        app = create_app(self.settings, self.model, metrics=self.metrics)
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False,
            timeout_graceful_shutdown=10))
        self._thread = threading.Thread(target=self._run, args=(self._sock,), daemon=True,
                                        name="batchml-api")
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"The HTTP API did not start on {url}"
                                  + (f": {self.error!r}" if self.error else "") + ".",
                                  hint="See the log above.")
            time.sleep(0.02)
        return url

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[sock]))
        except BaseException as exc:  # SystemExit from uvicorn when its start-up fails
            self.error = exc
            log.error("the HTTP API stopped: %r", exc)
        finally:
            sock.close()

    @property
    def failed(self) -> bool:
        """Did the API stop without being asked to?"""
        return (self._thread is not None and not self._thread.is_alive()
                and not self._stopping)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking connections, finish the requests in flight, close the prediction log."""
        self._stopping = True
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the HTTP API did not stop within %s s", timeout_s)
        elif self._sock is not None:  # bound, never served
            self._sock.close()


class FlowThread:
    """Prefect flow runs in a thread of their own, on its own event loop, with one Prefect
    client of each kind for every flow run (without them each flow run builds new clients: an
    SSL context, a version check, new connections; ~0.3 s before the flow's body starts,
    measured).

    Why a thread: Prefect's flow engine swaps in its own SIGTERM handler while a flow runs in
    the main thread, and that handler crashes the flow run and exits the process (status 1) in
    the middle of a batch. Off the main thread it cannot install one, so SIGTERM stays the
    service's: the batch in flight finishes and is recorded, then the service stops."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._jobs: asyncio.Queue[tuple[Any, dict[str, Any], Any] | None] | None = None
        self._ready = threading.Event()
        # the caller's context: Prefect's settings (which API, which home) are context variables
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._main,),
                                        name="batchml-flows", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise BatchMLError(f"Prefect's clients did not start within {timeout_s:.0f} s; "
                               "check that the Prefect API answers (`batchml doctor`).")

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        from prefect.context import AsyncClientContext, SyncClientContext

        self._jobs = asyncio.Queue()
        with SyncClientContext.get_or_create():
            async with AsyncClientContext.get_or_create():
                self._ready.set()
                while (job := await self._jobs.get()) is not None:
                    flow, kwargs, future = job
                    try:  # inline, not a new task: the flow sees the client contexts
                        future.set_result(await flow(**kwargs))
                    except BaseException as exc:  # handed to the caller, who decides
                        future.set_exception(exc)

    async def run(self, flow: Any, **kwargs: Any) -> Any:
        """Run ``flow(**kwargs)`` (an async flow) on the flow thread and wait for its end."""
        import concurrent.futures

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._put, (flow, kwargs, future))
        return await asyncio.wrap_future(future)

    def _put(self, job: tuple[Any, dict[str, Any], Any] | None) -> None:
        assert self._jobs is not None
        self._jobs.put_nowait(job)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._put, None)
            self._thread.join(timeout_s)


class Service:
    """The embedded service: a watcher feeding the prediction flow plus a nightly trainer,
    and with ``api=True`` the HTTP API beside them (:class:`ApiThread`)."""

    def __init__(self, settings: Settings, *, batch_limit: int = 250,
                 idle_s: float = 1.0, api: bool = False,
                 metrics: ServiceMetrics | None = None) -> None:
        from .metrics import ServiceMetrics

        self.settings = settings
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        """What the worker scored, the model, the queue (:mod:`batchml.metrics`): at the HTTP
        API's ``/metrics`` with ``api``, else on ``BATCHML_METRICS_PORT`` when set."""
        self.metrics_server: MetricsServer | None = None
        self.api = ApiThread(settings, metrics=self.metrics) if api else None
        self.batch_limit = batch_limit
        self.idle_s = idle_s
        self.stop_event: asyncio.Event | None = None
        self.heartbeat = Heartbeat(settings.home / "service.json")
        self.batches = 0
        self.files = 0
        self._last_error: str | None = None

    def bind_metrics(self) -> str | None:
        """Serve ``/metrics`` on ``BATCHML_METRICS_HOST:BATCHML_METRICS_PORT`` unless the HTTP
        API serves them or the port is 0; return its URL. Raises :class:`ConfigError` when the
        port is taken (called before Prefect starts, so that fails at once)."""
        if self.metrics_server is None and self.api is None and self.settings.metrics_port:
            from .metrics import MetricsServer

            self.metrics_server = MetricsServer(self.metrics, self.settings.metrics_host,
                                                self.settings.metrics_port)
            log.info("metrics on %s", self.metrics_server.url)
        return self.metrics_server.url if self.metrics_server is not None else None

    def request_stop(self) -> None:
        """Ask the service to finish the current batch and exit."""
        if self.stop_event is not None:
            self.stop_event.set()

    async def run(self, api_url: str | None = None) -> None:
        """Run until :meth:`request_stop` (or SIGINT/SIGTERM)."""
        from .flows.predict import make_batch_flow
        from .worker import Worker

        self.stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.bind_metrics()
        worker = Worker.for_source(self.settings)
        try:  # the inference parameters (BATCHML_PARAMS) against the model: refused at start
            worker.check_params()
        except BaseException:
            worker.source.close()
            worker.close()
            raise
        worker.metrics = self.metrics
        self.metrics.attach_catalog(worker.catalog)
        if worker.scorer is not None:
            worker.scorer.start()  # the scorer process imports while the service starts
        source = worker.source
        batch_flow = make_batch_flow(worker)
        runner_task = await self._start_trainer()
        if worker.scorer is not None:  # "running" once files can be scored
            await asyncio.to_thread(worker.scorer.wait_ready)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        flows = FlowThread()
        try:
            await asyncio.to_thread(flows.start)
            if self.api is not None:
                await asyncio.to_thread(self.api.start)
                log.info("HTTP API on %s", self.api.url)
            self.heartbeat.write(state="running", inbox=source.uri,
                                 outbox=self.settings.outbox, prefect_api_url=api_url,
                                 api_url=self.api_url, batches=0, files=0)
            log.info("serving %s -> %s", source.uri, self.settings.outbox)
            await self._loop(worker, flows, batch_flow, source, api_url)
        finally:
            await asyncio.to_thread(flows.stop)
            if self.api is not None:  # first: no new requests; the log flushed
                await asyncio.to_thread(self.api.stop)
            source.close()
            worker.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
                self.metrics_server = None
            if runner_task is not None:
                runner_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner_task
            self.heartbeat.write(state="stopped", batches=self.batches, files=self.files)

    @property
    def api_url(self) -> str | None:
        """Where the HTTP API answers (``serve --api``), else None."""
        return self.api.url if self.api is not None else None

    async def _loop(self, worker: Worker, flows: FlowThread, batch_flow: Any, source: Source,
                    api_url: str | None) -> None:
        """Discover, score a micro-batch (one flow run; up to ``batch_limit`` files, so a
        burst is a handful of flow runs), report, and idle when there is nothing to do."""
        assert self.stop_event is not None
        backoff = Backoff(base=self.idle_s)
        while not self.stop_event.is_set():
            if self.api is not None and self.api.failed:
                raise BatchMLError(f"The HTTP API on {self.api_url} stopped by itself"
                                   + (f" ({self.api.error!r})" if self.api.error else "")
                                   + "; stopping the service.")
            result: dict[str, Any] = {"files": []}
            transient = False
            # one catalog connection from discovery until the batch is recorded
            worker.hold_catalog()
            try:
                new = await asyncio.to_thread(worker.discover)
                if len(new) > 0 or await asyncio.to_thread(worker.has_pending):
                    if worker.model is None:
                        # resolve first: no flow run while there is no model to score with
                        await asyncio.to_thread(worker.cache.resolve, worker.ref)
                    result = await flows.run(batch_flow, limit=self.batch_limit)
            except BatchMLError as exc:
                if not exc.transient:
                    raise
                result["error"] = str(exc)
                # the catalog's server away (a restart, a partition): back off, then retry
                transient = isinstance(exc, CatalogError)
            finally:
                worker.release_catalog()
            scored = len(result["files"])
            if scored:
                self.batches += 1
                self.files += scored
                for f in result["files"]:
                    log.info("file %s", f["status"], extra={
                        "file": f["file"], "status": f["status"], "rows": f["rows"],
                        "output": f["output"], "error": f["error"],
                        "batch_id": result["batch_id"], "model_run": result["model_run_id"]})
            if result.get("error") != self._last_error:
                self._last_error = result.get("error")
                if self._last_error:
                    log.warning("waiting: %s", self._last_error)
            scorer = worker.scorer
            self.heartbeat.write(state="running", inbox=source.uri,
                                 outbox=self.settings.outbox, prefect_api_url=api_url,
                                 api_url=self.api_url, batches=self.batches, files=self.files,
                                 waiting=result.get("error"),
                                 scorer_pid=scorer.pid if scorer else None,
                                 scorer_deaths=len(scorer.deaths) if scorer else None)
            if transient:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), backoff.failed())
                continue
            backoff.succeeded()
            if not scored:
                await self._idle(source)

    async def _idle(self, source: Source) -> None:
        assert self.stop_event is not None
        waiter = asyncio.ensure_future(asyncio.to_thread(source.wait, self.idle_s))
        stopper = asyncio.ensure_future(self.stop_event.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()

    async def _start_trainer(self) -> asyncio.Task[None] | None:
        s = self.settings
        if not (s.train_uri and s.valid_uri):
            log.info("no BATCHML_TRAIN_URI/BATCHML_VALID_URI: nightly training is off")
            return None
        from prefect.runner import Runner

        from .flows.train import train_flow

        deployment = await train_flow.ato_deployment(
            name="nightly", cron=s.train_cron, parameters=trainer_parameters(s))
        runner = Runner(name="batchml-trainer", limit=1)
        await runner.aadd_deployment(deployment)
        return asyncio.create_task(runner.start())


def trainer_parameters(settings: Settings) -> dict[str, Any]:
    """The nightly training deployment's parameters. They carry the resolved ``settings``:
    the flow run, in a process of Prefect's runner, gets them as its ``settings`` parameter
    (no ``BATCHML_*`` environment is needed there)."""
    s = settings
    return {"train_uri": s.train_uri, "valid_uri": s.valid_uri, "text_column": s.text_column,
            "feature_columns": s.feature_columns or None, "label": s.label_column,
            "smoke_uri": s.smoke_path, "settings": s}


def serve(settings: Settings, *, api: bool = False) -> None:
    """Run the embedded service in the foreground until Ctrl-C or SIGTERM; with ``api`` the
    HTTP API too, on ``settings.api_host:api_port`` (:class:`ApiThread`).

    The settings go down explicitly (the service, its worker, the trainer's parameters);
    Prefect's through :func:`prefect_settings`; ``os.environ`` is left as it was."""
    service = Service(settings, api=api)  # its metrics registry: this process's one
    if service.api is not None:
        service.api.bind()  # a port in use fails now, not after Prefect's start-up
    service.bind_metrics()
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        asyncio.run(service.run(api_url))
        return
    with local_prefect_server(settings) as url, prefect_settings(settings, api_url=url):
        asyncio.run(service.run(url))
