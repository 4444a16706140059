"""The scorer process: files are scored in a long-lived child process, so a file that kills
its scorer (the OOM killer, a crash in native code) cannot kill the service.

The worker (the parent) keeps claims, leases and the catalog; the child only reads an input,
scores it with a model it loaded itself from the artifact store (sha256-checked; it never
opens the catalog, and inherits none of the parent's file descriptors, so it never holds the
catalog's lock) and writes the output. One file at a time goes over a socket pair: the parent
sends the file's local path, its ledger record, the model to use and the batch id; the child
asks the parent before it commits an output (is the claim still held?) and answers with the
:class:`~batchml.scoring.FileOutcome` or the exception it raised.

The child (:mod:`batchml.scorer_child`) is started with
``python -m batchml.scorer_child FD`` (a fresh interpreter: the parent has
threads, so it is not forked) and keeps its models warm between files. When it dies, the
parent sees EOF on the socket, reaps it with ``os.wait4`` and raises :class:`ScorerDied`
naming the signal and the peak memory; the next file starts a new child.

Memory guard: while a file is scored the parent samples the child's resident memory
(``/proc/PID/status``, every ``poll_s``) and SIGKILLs it above ``memory_limit_mb``. Peak memory
is the child's ``VmHWM`` sampled that way, or ``ru_maxrss`` from ``wait4`` when that is larger
than the parent's own peak at spawn (below it, ``ru_maxrss`` may be the parent's, inherited
through ``vfork``/``exec``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BatchMLError, StorageUnavailable, is_transient
from .limits import Limits

if TYPE_CHECKING:
    from .catalog import FileRecord
    from .layout import Partition
    from .scoring import FileOutcome, LoadedModel
    from .settings import Settings

log = logging.getLogger("batchml.scorer")

BASELINE_MB = 512
"""Memory the scorer process needs besides the file's data (interpreter, pyarrow, numpy,
models): added to ``BATCHML_MEMORY_BUDGET_MB`` for the default memory limit."""


@dataclass(frozen=True)
class ModelSpec:
    """Where the child finds a model: the run, its primary model and the artifact's bytes."""

    run_id: str
    name: str
    flavor: str
    artifact_uri: str
    sha256: str
    threshold: float | None = None  # BATCHML_DECISION_THRESHOLD, as the parent's ModelCache
    reference: Any = None  # the model's DriftReference (batchml.drift), None without one


@dataclass(frozen=True)
class ScorerConfig:
    """What the child needs to know, resolved from the settings by the parent."""

    outbox: str
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    batch_rows: int = 65_536
    budget_bytes: int = 2**30
    memory_limit_mb: float | None = None
    fault_kill_marker: str | None = None
    fault_alloc_marker: str | None = None
    s3_health_dir: str | None = None  # where the child's S3 call counts go (batchml status)
    limits: Limits | None = None  # memory budget and text limits (None: the budget above)
    id_column: str | None = None  # carried through to outputs (BATCHML_ID_COLUMN)
    drift: bool = False  # count each file against the model's drift reference (BATCHML_DRIFT)

    @classmethod
    def from_settings(cls, settings: Settings, outbox: str) -> ScorerConfig:
        """The scorer of ``batchml serve`` / ``watch``: limit ``BATCHML_SCORER_MEMORY_MB``,
        by default the memory budget plus :data:`BASELINE_MB` (``0``: no guard)."""
        from .store import HEALTH_DIR

        limit = settings.scorer_memory_mb
        if limit is None:
            limit = settings.memory_budget_mb + BASELINE_MB
        return cls(outbox=outbox, s3_endpoint_url=settings.s3_endpoint_url,
                   s3_region=settings.s3_region, batch_rows=settings.batch_rows,
                   budget_bytes=settings.memory_budget_mb * 2**20,
                   memory_limit_mb=float(limit) or None,
                   fault_kill_marker=settings.fault_kill_marker or None,
                   fault_alloc_marker=settings.fault_alloc_marker or None,
                   s3_health_dir=str(settings.home / HEALTH_DIR),
                   limits=Limits.from_settings(settings), id_column=settings.id_column,
                   drift=settings.drift)


@dataclass(frozen=True)
class Death:
    """How a scorer process ended while it scored a file."""

    pid: int
    signal: int | None
    exit_code: int | None
    peak_mb: float
    guard_limit_mb: float | None = None  # set when the memory guard killed it

    def describe(self) -> str:
        """``killed by signal 9 (SIGKILL) from the memory guard (limit 300 MB); peak memory
        312 MB``."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = "unknown"
            how = f"killed by signal {self.signal} ({name})"
        else:
            how = f"exited with code {self.exit_code}"
        if self.guard_limit_mb is not None:
            how += f" from the memory guard (limit {self.guard_limit_mb:.0f} MB)"
        return f"{how}; peak memory {self.peak_mb:.0f} MB"


class ScorerDied(BatchMLError, RuntimeError):
    """The scorer process died while it scored a file (signal, out of memory, crash)."""

    def __init__(self, death: Death, uri: str) -> None:  # noqa: D107
        self.death = death
        super().__init__(f"The scorer process died while scoring {uri}: {death.describe()}.",
                         hint="The file is tried again, and quarantined as poison after "
                              "BATCHML_POISON_ATTEMPTS attempts.")

    def __reduce__(self) -> Any:
        return (_died, (self.death, self.message))


def _died(death: Death, message: str) -> ScorerDied:
    exc = ScorerDied.__new__(ScorerDied)
    exc.death = death
    BatchMLError.__init__(exc, message)
    return exc


class ScorerUnavailable(BatchMLError, RuntimeError):
    """The scorer process could not start (it died before it was ready)."""

    transient = True  # files wait: it is not their fault


class CommitRefused(Exception):
    """The parent said the file's claim is no longer held: nothing was committed."""


class Scorer:
    """The parent's side: a scorer child started on first use and after every death."""

    def __init__(self, config: ScorerConfig, spec_for: Callable[[LoadedModel], ModelSpec], *,
                 poll_s: float = 0.05) -> None:
        """``spec_for`` tells the child where a model's bytes are (the parent reads the
        catalog; the child never does)."""
        self.config = config
        self.spec_for = spec_for
        self.poll_s = poll_s
        self.deaths: list[Death] = []
        self.starts = 0
        self.last_start_s: float | None = None  # from spawn until the child said ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._spawned_at = 0.0
        self._parent_hwm_kb = 0

    @property
    def pid(self) -> int | None:
        """The running child's pid (None before the first file or after a death)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child now (it imports while the parent does other work)."""
        if self._proc is not None:
            return
        parent_sock, child_sock = socket.socketpair()
        self._parent_hwm_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._spawned_at = time.perf_counter()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "batchml.scorer_child", str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()], stdin=subprocess.DEVNULL,
                start_new_session=True)  # Ctrl-C in a terminal reaches the parent only
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._ready = False
        self.starts += 1
        self._conn.send(("init", self.config))

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Start the child if needed and wait until it has imported (False if it died or
        took longer): a worker should not claim files it cannot score yet."""
        self.start()
        assert self._conn is not None
        if self._ready:
            return True
        try:
            if not self._conn.poll(timeout):
                return False
            kind, *_ = self._conn.recv()  # the child's first message is always "ready"
        except (EOFError, OSError):
            self._reap(0, guard=False)
            return False
        self._ready = kind == "ready"
        self.last_start_s = time.perf_counter() - self._spawned_at
        return self._ready

    def close(self) -> None:
        """Stop the child (asks it, then kills it if it does not go within 5 s)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def score(self, path: Path, record: FileRecord, model: LoadedModel, batch_id: str, *,
              reprocess: bool = False,
              still_held: Callable[[], bool] | None = None,
              params: dict[str, Any] | None = None,
              partition: Partition | None = None) -> FileOutcome:
        """Score one file in the child; what :func:`~batchml.scoring.score_file` returns
        (committed into ``partition`` when given: the hive layout).

        Raises what the child raised (a transient error stays transient), :class:`ScorerDied`
        when the child dies meanwhile, :class:`CommitRefused` when ``still_held`` said no
        before the output was committed, :class:`ScorerUnavailable` when no child starts.
        ``params``: the resolved inference parameters, as for ``score_file``."""
        request = ("score", {"path": str(path), "record": record,
                             "model": self.spec_for(model), "batch_id": batch_id,
                             "reprocess": reprocess, "params": params,
                             "partition": partition})
        for _ in range(2):  # a child that died while idle is replaced once, for free
            self.start()
            assert self._conn is not None and self._proc is not None
            # VmHWM only grows: sampled before the file, it bounds the peak of a child that
            # dies before the first sample below
            hwm_kb = _memory_kb(self._proc.pid)[1]
            try:
                self._conn.send(request)
                break
            except OSError:
                self._reap(sampled_kb=hwm_kb, guard=False)
        else:
            raise ScorerUnavailable("The scorer process keeps dying before it gets a file.",
                                    hint="See the service's log for the scorer's error.")
        return self._wait(record, still_held, hwm_kb)

    def _wait(self, record: FileRecord, still_held: Callable[[], bool] | None,
              hwm_kb: int) -> FileOutcome:
        assert self._conn is not None and self._proc is not None
        conn, pid = self._conn, self._proc.pid
        limit = self.config.memory_limit_mb
        check_failed: Exception | None = None
        while True:
            try:
                if not conn.poll(self.poll_s):
                    rss_kb, hwm = _memory_kb(pid)
                    hwm_kb = max(hwm_kb, hwm)
                    if limit and rss_kb > limit * 1024:
                        hwm_kb = max(hwm_kb, _memory_kb(pid)[1])
                        os.kill(pid, signal.SIGKILL)
                        raise ScorerDied(self._reap(hwm_kb, guard=True), record.source_uri)
                    continue
                kind, *body = conn.recv()
            except (EOFError, OSError):
                was_ready = self._ready
                death = self._reap(hwm_kb, guard=False)
                if not was_ready:
                    raise ScorerUnavailable(
                        f"The scorer process did not start ({death.describe()}).",
                        hint="See the service's log for its error; files stay pending."
                    ) from None
                raise ScorerDied(death, record.source_uri) from None
            if kind == "ready":
                self._ready = True
                self.last_start_s = time.perf_counter() - self._spawned_at
            elif kind == "commit?":
                # always answer, and keep waiting for this file's end, even when the check
                # itself fails: otherwise the child would read the next request as its answer
                # and the next file would get this one's outcome
                try:
                    held = still_held() if still_held is not None else True
                except Exception as exc:
                    check_failed, held = exc, False
                conn.send(("commit", bool(held)))
            elif check_failed is not None:  # the file's end: refused, as answered above
                raise check_failed
            elif kind == "done":
                return body[0]  # type: ignore[no-any-return]
            elif kind == "refused":
                raise CommitRefused(record.source_uri)
            elif kind == "raised":
                raise _unpack(body[0])

    def _reap(self, sampled_kb: int, *, guard: bool) -> Death:
        """Collect the dead child (or kill it if it only closed its socket); forget it."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        assert proc is not None
        if conn is not None:
            conn.close()
        try:
            deadline = time.monotonic() + 2.0
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:  # it closed the socket but lives on
                    os.kill(proc.pid, signal.SIGKILL)
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.005)
        except ChildProcessError:  # reaped elsewhere: no status, no rusage
            status, maxrss = 0, 0
        else:
            maxrss = usage.ru_maxrss
            proc.returncode = os.waitstatus_to_exitcode(status)
        # ru_maxrss at or below the parent's peak at spawn may be the parent's (vfork/exec)
        peak_kb = max(sampled_kb, maxrss if maxrss > self._parent_hwm_kb else 0)
        death = Death(proc.pid, os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                      os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                      peak_kb / 1024, self.config.memory_limit_mb if guard else None)
        self.deaths.append(death)
        log.warning("scorer process %d %s; starting a new one", proc.pid, death.describe())
        self.start()  # it imports while the parent records the death
        return death


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB; zeros once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


def _pack(exc: BaseException) -> bytes:
    """An exception as bytes the parent can load: itself, or a stand-in of the same kind."""
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        text = f"{type(exc).__name__}: {exc}"
        stand_in: Exception = StorageUnavailable(text) if is_transient(exc) else \
            RuntimeError(text)
        return pickle.dumps(stand_in)


def _unpack(data: bytes) -> BaseException:
    exc = pickle.loads(data)
    return exc if isinstance(exc, BaseException) else RuntimeError(repr(exc))
