"""``batchml serve``: the embedded default. One process watches the inbox, scores arrivals
through the prediction flow, runs the training flow on its nightly cron, and shuts down cleanly.

Without ``PREFECT_API_URL`` it starts and owns a Prefect server on 127.0.0.1 (state under the
batchml home) and stops it on exit: Prefect's temporary in-process server cannot fire cron
schedules. With ``PREFECT_API_URL`` set it uses that server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Backoff, BatchMLError, CatalogError, ConfigError
from .settings import Settings

if TYPE_CHECKING:
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


class Service:
    """The embedded service: a watcher feeding the prediction flow plus a nightly trainer."""

    def __init__(self, settings: Settings, *, batch_limit: int = 250,
                 idle_s: float = 1.0) -> None:
        self.settings = settings
        self.batch_limit = batch_limit
        self.idle_s = idle_s
        self.stop_event: asyncio.Event | None = None
        self.heartbeat = Heartbeat(settings.home / "service.json")
        self.batches = 0
        self.files = 0
        self._last_error: str | None = None

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
        worker = Worker.for_source(self.settings)
        if worker.scorer is not None:
            worker.scorer.start()  # the scorer process imports while the service starts
        source = worker.source
        batch_flow = make_batch_flow(worker)
        runner_task = await self._start_trainer()
        if worker.scorer is not None:  # "running" once files can be scored
            await asyncio.to_thread(worker.scorer.wait_ready)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        self.heartbeat.write(state="running", inbox=source.uri, outbox=self.settings.outbox,
                             prefect_api_url=api_url, batches=0, files=0)
        log.info("serving %s -> %s", source.uri, self.settings.outbox)
        from prefect.context import AsyncClientContext, SyncClientContext

        try:
            # One Prefect client of each kind for every flow run: without them each flow run
            # builds new clients (an SSL context, a version check, new connections; ~0.3 s
            # before the flow's body starts, measured), the sync one to read the server's
            # default result storage.
            with SyncClientContext.get_or_create():
                async with AsyncClientContext.get_or_create():
                    await self._loop(worker, batch_flow, source, api_url)
        finally:
            source.close()
            worker.close()
            if runner_task is not None:
                runner_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner_task
            self.heartbeat.write(state="stopped", batches=self.batches, files=self.files)

    async def _loop(self, worker: Worker, batch_flow: Any, source: Source,
                    api_url: str | None) -> None:
        """Discover, score a micro-batch (one flow run; up to ``batch_limit`` files, so a
        burst is a handful of flow runs), report, and idle when there is nothing to do."""
        assert self.stop_event is not None
        backoff = Backoff(base=self.idle_s)
        while not self.stop_event.is_set():
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
                    result = await batch_flow(limit=self.batch_limit)
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
                                 batches=self.batches, files=self.files,
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


def serve(settings: Settings) -> None:
    """Run the embedded service in the foreground until Ctrl-C or SIGTERM.

    The settings go down explicitly (the service, its worker, the trainer's parameters);
    Prefect's through :func:`prefect_settings`; ``os.environ`` is left as it was."""
    service = Service(settings)
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        asyncio.run(service.run(api_url))
        return
    with local_prefect_server(settings) as url, prefect_settings(settings, api_url=url):
        asyncio.run(service.run(url))
