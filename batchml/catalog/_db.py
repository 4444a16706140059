"""The one place that opens DuckDB connections to the catalog, and its migrations.

Opening a DuckDB database costs ~30 ms, far more than a catalog query, so a process keeps its
connection (and the inter-process lock of :mod:`._locking`) while it is busy and lets both go
once it has been idle for ``idle_s`` or has held them for ``max_hold_s``. Other processes wait on
the lock file, never on DuckDB's own lock, so no DuckDB lock error reaches the user. Reads share
the lock with other readers; writes hold it alone for one transaction each.

Inside :meth:`Database.hold` (a worker's batch) the connection is kept however long the holder
is idle, and given up only when another process says it waits (the ``.waiting`` lock file) and
it has been held for ``hold_max_s``: reopening costs ~50 ms, more than scoring a small file.

Every committed change is published to a read-only copy for people (:mod:`.publication`):
DuckDB would let no batchml process write while a person's session has this file open.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from ..errors import CatalogBusy, CatalogError
from ._locking import FileLock
from .migrations import apply as apply_migrations
from .migrations import current_version
from .publication import Publication, published_path


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (what every catalog timestamp stores)."""
    return datetime.now(UTC)


class Databases:
    """The open catalog files of a process: one :class:`Database` per file.

    This is process-wide on purpose (:data:`PROCESS_DATABASES`, made once below), not state
    of one :class:`~batchml.catalog.Catalog`: two ``Catalog`` objects on one file in one
    process must share a single connection and lock holder. DuckDB refuses a second connection
    to a file that one of the process already has open with another configuration (read-only
    next to writable), and two holders of the lock file in one process would wait on each
    other (a nested write would deadlock until its timeout). Interpreter exit (publish what is
    pending, close) and ``fork`` (the child forgets the parent's connections and locks) act on
    it through :meth:`close_all` and :meth:`after_fork_in_child`.
    """

    def __init__(self) -> None:
        self._by_path: dict[Path, Database] = {}
        self._lock = threading.Lock()
        self._live: weakref.WeakSet[Database] = weakref.WeakSet()

    def open(self, path: Path, *, lock_timeout_s: float = 60.0, publish_to: Path | None = None,
             publish_interval_s: float = 1.0) -> Database:
        """The shared instance for ``path`` (one lock holder per file).

        Changes are published to ``publish_to`` (default: ``x.readonly.duckdb`` beside
        ``x.duckdb``) at most once per ``publish_interval_s``."""
        key = Path(path).expanduser().absolute()
        with self._lock:
            db = self._by_path.get(key)
            if db is None or db._pid != os.getpid():
                db = self._by_path[key] = Database(key, lock_timeout_s=lock_timeout_s)
                self._live.add(db)
            db.lock_timeout_s = max(db.lock_timeout_s, lock_timeout_s)
            if publish_to is not None:
                db.publication.target = Path(publish_to).expanduser().absolute()
            db.publication.interval_s = publish_interval_s
            return db

    def close_all(self) -> None:
        """At interpreter exit: publish pending changes, close every connection and wait for
        the publisher and reaper threads to end.

        The wait matters: a daemon thread still inside DuckDB when the interpreter finalises
        is ended by ``pthread_exit`` as it takes the GIL back, which unwinds through DuckDB's
        C++ frames and aborts the process ("terminate called without an active exception")."""
        for db in list(self._live):
            if db._pid == os.getpid():
                with contextlib.suppress(Exception):  # best effort at interpreter exit
                    db.shutdown()

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the inherited connections and lock descriptors without
        unlocking or closing what the parent still uses."""
        for db in list(self._live):
            db._forget_after_fork()
        self._by_path.clear()
        self._lock = threading.Lock()


class Database:
    """Connections to one catalog file, serialised across processes by a lock file.

    Use :meth:`Databases.open` (``PROCESS_DATABASES.open(path)``) to get the process-wide
    instance for a path.
    """

    idle_s = 0.05
    max_hold_s = 0.5
    hold_max_s = 1.0

    def __init__(self, path: Path, *, lock_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.publication = Publication(published_path(self.path))
        self._publisher: threading.Thread | None = None
        self._flock = FileLock(self.path.with_name(self.path.name + ".lock"))
        self._intent = FileLock(self.path.with_name(self.path.name + ".wlock"))
        self._waiting = FileLock(self.path.with_name(self.path.name + ".waiting"))
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writable = False
        self._mutex = threading.RLock()
        self._depth = 0
        self._held_since = 0.0
        self._last_used = 0.0
        self._pid = os.getpid()
        self._reaper: threading.Thread | None = None
        self._stopping = threading.Event()  # set at interpreter exit: threads end, none start
        self._holds = 0
        self._holds_lock = threading.Lock()
        self._yield_until = 0.0
        self._checked_exists = False
        # run ids seen completed on the open connection (runs are facts once ended); cleared
        # whenever a connection opens, so a replaced file never answers from it
        self.completed_runs: set[str] = set()

    # --- holding and releasing -----------------------------------------------------------

    def _connect(self, writable: bool) -> duckdb.DuckDBPyConnection:
        # Foreign holders (a user's duckdb CLI) bypass our lock file: retry DuckDB's lock error.
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=not writable,
                                     config={"threads": 2})
                con.execute("SET TimeZone = 'UTC'")
                return con
            except duckdb.IOException as exc:
                locked = "lock" in str(exc).lower()
                if locked and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                if locked:
                    raise CatalogBusy(
                        f"The catalog {self.path} is held open by {_holder(str(exc))}, so "
                        f"batchml cannot {'write' if writable else 'read'} it; DuckDB lets "
                        "no process write a file that another process has open, even "
                        "read-only.",
                        hint=f"Close that session and open the published copy "
                             f"{self.publication.target} instead: batchml refreshes it after "
                             "every change and never waits for its readers.",
                    ) from exc
                raise CatalogError(
                    f"Cannot open the catalog {self.path}: {exc}",
                    hint="Check the path and permissions, or run `batchml doctor`.",
                ) from exc

    def _release(self) -> None:
        if self._con is not None:
            if self._writable and self._depth == 0 and self.publication.due():
                self._publish(self._con)  # still writable and locked: no reopen for it
            try:
                self._con.close()
            finally:
                self._con = None
        self._flock.release()

    # --- publication ---------------------------------------------------------------------

    def _changed(self) -> None:
        """A write committed: publish it once the debounce interval allows (caller holds
        ``_mutex``)."""
        self.publication.changed()
        if self._stopping.is_set():
            return  # shutdown() publishes what is pending itself
        if self._publisher is None or not self._publisher.is_alive():
            self._publisher = threading.Thread(target=self._publish_loop, daemon=True,
                                               name="batchml-catalog-publisher")
            self._publisher.start()

    def _publish_loop(self) -> None:
        while True:
            self._stopping.wait(max(self.publication.wait_s(), 0.005))
            with self._mutex:
                if not self.publication.pending or self._stopping.is_set():
                    self._publisher = None
                    return
                if self.publication.wait_s() > 0:
                    continue
                try:
                    with self._use(writable=True) as con:
                        self._publish(con)
                except Exception as exc:  # the catalog busy or gone: try again later
                    self.publication.failed(exc)

    def _publish(self, con: duckdb.DuckDBPyConnection) -> None:
        """Stamp, checkpoint and copy the catalog to its published copy (under the write
        lock, outside any transaction). Never raises: a failed copy stays pending."""
        try:
            with contextlib.suppress(duckdb.CatalogException):  # before migration 0003
                con.execute(
                    "INSERT OR REPLACE INTO publication VALUES (1, ?, ?, ?, ?)",
                    [utcnow(), str(self.path), self.publication.interval_s, _version()])
            con.execute("CHECKPOINT")  # the whole catalog in the file, the WAL emptied
            self.publication.copy(self.path)
        except Exception as exc:
            self.publication.failed(exc)

    def publish_if_stale(self) -> None:
        """Schedule a publication when the copy is missing or older than the catalog (a
        process was killed before it published its last change)."""
        try:
            source = max(p.stat().st_mtime for p in (self.path, Path(f"{self.path}.wal"))
                         if p.exists())
        except ValueError:
            return  # no catalog yet
        try:
            published = self.publication.target.stat().st_mtime
        except FileNotFoundError:
            published = 0.0
        if source > published:
            with self._mutex:
                self._changed()

    def publish(self) -> Path:
        """Publish the read-only copy now (whatever the debounce interval); return its path."""
        self.publication.changed()
        with self._use(writable=True) as con:
            self._publish(con)
        if self.publication.pending:
            raise CatalogError(f"Could not publish the catalog to {self.publication.target}.",
                               hint="Check free space and permissions of that directory.")
        return self.publication.target

    def _acquire(self, writable: bool, strict: bool = False) -> duckdb.DuckDBPyConnection:
        if self._holds and not strict:
            writable = True  # a holder writes soon: one connection for reads and writes
        now = time.monotonic()
        if self._con is not None and self._depth == 0:
            mismatch = writable != self._writable if strict else writable and not self._writable
            held_long = not self._holds and now - self._held_since > self.max_hold_s
            if mismatch or held_long or self._yield_to_waiter(now):
                self._release()
                if not mismatch:  # let the waiting process in before taking the lock again
                    time.sleep(0.002)
        if self._con is None and now < self._yield_until:
            time.sleep(self._yield_until - now)  # the reaper let a waiter in: give it a moment
        if self._con is None:
            if writable:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # while waiting, say so: the holder in another process lets go at its next step
            self._waiting.acquire(exclusive=False, timeout_s=self.lock_timeout_s)
            try:
                if writable:
                    self._intent.acquire(exclusive=True, timeout_s=self.lock_timeout_s)
                    try:
                        self._flock.acquire(exclusive=True, timeout_s=self.lock_timeout_s)
                    finally:
                        self._intent.release()
                else:
                    deadline = time.monotonic() + self.lock_timeout_s
                    while not self._intent.is_free() and time.monotonic() < deadline:
                        time.sleep(0.001)  # writers first
                    self._flock.acquire(exclusive=False, timeout_s=self.lock_timeout_s)
            finally:
                self._waiting.release()
            try:
                self.completed_runs = set()
                self._con = self._connect(writable)
            except BaseException:
                self._flock.release()
                raise
            self._writable = writable
            self._held_since = time.monotonic()
            self._start_reaper()
        elif writable != self._writable and (writable or strict):
            raise CatalogError("A catalog write and a read-only read were nested on one thread.")
        return self._con

    def _start_reaper(self) -> None:
        if self._stopping.is_set():
            return  # shutdown() closes the connection itself
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="batchml-catalog-reaper",
                                            daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            self._stopping.wait(0.005)
            with self._mutex:
                if self._con is None or self._stopping.is_set():
                    self._reaper = None
                    return
                if self._depth:
                    continue
                now = time.monotonic()
                idle = not self._holds and now - self._last_used > self.idle_s
                waiter = not idle and self._yield_to_waiter(now)
                if idle or waiter:
                    self._release()
                    if waiter:
                        self._yield_until = time.monotonic() + 0.005
                    self._reaper = None
                    return

    def _yield_to_waiter(self, now: float) -> bool:
        """Should the idle connection go to another process now? When one waits, yes; inside
        :meth:`hold` only once it has been held ``hold_max_s``, so a batch (claim, score,
        record) keeps one connection instead of reopening it around every reader's visit."""
        if self._holds and now - self._held_since < self.hold_max_s:
            return False
        return not self._waiting.nobody_else()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the connection across the statements of this block (a worker's batch): not
        let go after ``idle_s`` idle or ``max_hold_s`` held, and to a waiting process only
        once it has been held ``hold_max_s`` (then at the next step between statements)."""
        with self._holds_lock:  # not the connection's mutex: never waits for the catalog
            self._holds += 1
        try:
            yield
        finally:
            with self._holds_lock:
                self._holds -= 1
                self._last_used = time.monotonic()

    def _forget_after_fork(self) -> None:
        # The child inherits the parent's lock descriptors and connection object: drop both
        # without unlocking or closing what the parent still uses.
        self._flock.forget()
        self._intent.forget()
        self._waiting.forget()
        self._con = None
        self._depth = 0
        self._holds = 0
        self._holds_lock = threading.Lock()
        self._reaper = None
        self._publisher = None
        self._stopping = threading.Event()
        self.publication.pending = False  # the parent publishes its own changes
        self._mutex = threading.RLock()

    def close(self) -> None:
        """Close the connection and release the lock now."""
        with self._mutex:
            if self._depth == 0:
                self._release()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """For interpreter exit: stop the publisher and reaper threads (waiting until they
        have left DuckDB), publish what is pending, close the connection."""
        self._stopping.set()
        for thread in (self._publisher, self._reaper):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout_s)
        with self._mutex:
            if self.publication.pending:
                with self._use(writable=True) as con:
                    self._publish(con)
            if self._depth == 0:
                self._release()

    @contextmanager
    def _use(self, writable: bool, strict: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._mutex:
            con = self._acquire(writable, strict)
            self._depth += 1
            try:
                yield con
            finally:
                self._depth -= 1
                self._last_used = time.monotonic()

    # --- public --------------------------------------------------------------------------

    @contextmanager
    def read(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reading, shared with other reading processes.

        A process may reuse its writable connection for reads; ``read_only=True`` insists on a
        connection DuckDB itself opened read-only (for SQL typed by a user).
        """
        if not self._checked_exists:  # one stat per process, not one per read
            if not self.path.exists():
                self.migrate()
            self._checked_exists = True
        with self._use(writable=False, strict=read_only) as con:
            yield con

    @contextmanager
    def write(self, *, single: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A writable connection inside one transaction; committed when the block ends.

        ``single=True`` says the block writes with one statement (reads before it are fine):
        it then commits on its own (DuckDB's autocommit), without the BEGIN and COMMIT round
        trips; the write lock still keeps the block's statements together. Nested in another
        write, every statement is part of the outer transaction."""
        with self._use(writable=True) as con:
            if self._depth > 1 or single:
                yield con
                if self._depth == 1:
                    self._changed()
                return
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            self._changed()

    def migrate(self) -> list[str]:
        """Apply every migration the file lacks, all in one transaction; return their names."""
        with self.write() as con:
            return apply_migrations(con)

    def schema_version(self) -> int:
        """The highest migration version recorded in the file (0 for an empty file)."""
        with self.read() as con:
            return current_version(con)


def _holder(message: str) -> str:
    """Who holds a DuckDB file, from DuckDB's lock error ("... (PID 123)") and /proc."""
    match = re.search(r"\(PID (\d+)\)", message)
    if not match:
        return "another program"
    pid = match.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmd = ""
    return f"process {pid} ({cmd[:120]})" if cmd else f"process {pid}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchml")
    except PackageNotFoundError:
        return "unknown"


PROCESS_DATABASES = Databases()
"""This process's open catalog files (see :class:`Databases` for why it is process-wide)."""

atexit.register(PROCESS_DATABASES.close_all)
os.register_at_fork(after_in_child=PROCESS_DATABASES.after_fork_in_child)
