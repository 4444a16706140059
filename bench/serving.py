"""A ``batchml serve`` subprocess for B2 and B3, and polling its catalog from outside."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import Context, batchml_cli


class ServeProcess:
    """``batchml serve`` in its own session with its own BATCHML_HOME (a tagged sklearn model).

    Started once per benchmark run and shared by B2 and B3; stopped with SIGTERM.
    """

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.inbox = (home / "inbox").resolve()
        self.outbox = (home / "outbox").resolve()
        self.catalog_path = home / "catalog.duckdb"
        self.log_path = home / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_s = 0.0
        self.stop_s: float | None = None
        self.stop_code: int | None = None
        self._catalog: Any = None

    def start(self, timeout_s: float = 300) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([*batchml_cli(), "serve"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        beat = self.home / "service.json"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"batchml serve exited {self.proc.returncode} at start:\n"
                                   + self.log_path.read_text()[-4000:])
            with contextlib.suppress(FileNotFoundError, ValueError):
                if json.loads(beat.read_text()).get("state") == "running":
                    break
            if time.perf_counter() - start > timeout_s:
                self.stop()
                raise RuntimeError(f"batchml serve not running after {timeout_s:g} s:\n"
                                   + self.log_path.read_text()[-4000:])
            time.sleep(0.1)
        self.start_s = time.perf_counter() - start

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            from batchml import Catalog

            self._catalog = Catalog(self.catalog_path, lock_timeout_s=120)
        return self._catalog

    def sql(self, query: str, params: list[Any] | None = None) -> Any:
        return self.catalog.sql(query, params)

    def close_catalog(self) -> None:
        if self._catalog is not None:
            self._catalog.db.close()

    def scored(self, uri: str) -> bool:
        frame = self.sql("SELECT count(*) AS n FROM batch_files WHERE source_uri = ?"
                         " AND status = 'scored'", [uri])
        return bool(frame["n"].iloc[0])

    def wait_scored(self, uri: str, *, timeout_s: float, every_s: float = 0.05) -> float | None:
        """Poll (at most every ``every_s``) until the file's batch_files row is 'scored';
        return the time it was seen (perf_counter) or None on timeout."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            tick = time.perf_counter()
            if self.scored(uri):
                return time.perf_counter()
            self._check_alive()
            time.sleep(max(0.0, every_s - (time.perf_counter() - tick)))
        return None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"batchml serve died ({self.proc.returncode}):\n"
                               + self.log_path.read_text()[-4000:])

    def stop(self, timeout_s: float = 90) -> None:
        self.close_catalog()
        if self.proc is None or self.proc.poll() is not None:
            return
        start = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.stop_code = self.proc.wait(timeout=timeout_s)
            self.stop_s = time.perf_counter() - start
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.stop_code = None
        # the Prefect server it owns lives in the same session: make sure it is gone too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def serve_for(ctx: Context) -> ServeProcess:
    """The shared ``batchml serve`` of this run (started on first use, stopped by the
    runner at the end)."""

    def make() -> ServeProcess:
        home, env = ctx.fresh_home("sklearn_text", "serve")
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        svc = ServeProcess(home, env)
        svc.start()
        ctx.log(f"  batchml serve up in {svc.start_s:.1f} s (own Prefect server)")
        ctx.on_close(lambda: (svc.stop(), ctx._cache.pop("serve", None)))
        return svc

    svc: ServeProcess = ctx.cached("serve", make)
    svc._check_alive()
    return svc


def land(src: Path, inbox: Path, name: str) -> Path:
    """Copy ``src`` into the inbox under a hidden temp name (not timed); return that path.
    The caller renames it to ``inbox/name`` to land it atomically."""
    import shutil

    tmp = inbox / f".{name}.tmp"
    shutil.copyfile(src, tmp)
    return tmp
