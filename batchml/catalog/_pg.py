"""The one place that opens PostgreSQL connections to the catalog, and its migrations.

A process keeps a small psycopg pool per catalog URL. Connections are in autocommit mode: a
read is one statement; a write is one explicit transaction (:meth:`PgConnections.write`), so no
connection is ever left idle inside a transaction. :meth:`PgConnections.hold` pins one
connection to the calling thread for a block (a worker's batch), and nested writes inside a
:meth:`write` block join it (savepoints), as they do on DuckDB.

There is no lock file and no lock held across a batch: claims are row locks taken with
``FOR UPDATE SKIP LOCKED`` inside one short transaction, and leases in the rows say who holds
a file. A connection the server dropped (restart, ``pg_terminate_backend``, a network
partition) is thrown away by the pool; the statement in flight raises
:class:`~batchml.errors.CatalogUnavailable` (transient: the worker gives the batch back and
tries again), and its transaction was rolled back by the server, so nothing half-done stays.

Errors never show the password: :func:`redact` takes it out of every URL in a message.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import CatalogBusy, CatalogError, CatalogUnavailable, ConfigError
from .migrations import migrations

_PASSWORD_IN_URL = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@")
_PASSWORD_IN_DSN = re.compile(r"(password\s*=\s*)(\S+)", re.I)


def redact(text: str) -> str:
    """``text`` with the password of every PostgreSQL URL or ``password=`` pair replaced by
    ``***``."""
    return _PASSWORD_IN_DSN.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", text))


def display_url(url: str) -> str:
    """The URL as messages show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# SQLSTATEs that say the settings are wrong, not that the server is away: retrying cannot help.
_TERMINAL_CONNECT = {
    "3D000": "the database does not exist: create it (createdb NAME) or fix the URL",
    "28P01": "the password was refused: fix the password (or use a .pgpass file / PGPASSWORD)",
    "28000": "the server refused this user: check the user name and pg_hba.conf",
    "42501": "this user may not use the database: GRANT it CONNECT and CREATE",
}
# SQLSTATEs of a transaction that lost a race and can simply run again.
_RETRYABLE = {"40001", "40P01", "55P03"}


class PgConnections:
    """The pooled connections of one PostgreSQL catalog in this process."""

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0, pool_size: int = 4,
                 lock_timeout_s: float = 60.0, application_name: str = "batchml",
                 password: str | None = None) -> None:
        self.url = url
        self._password = password
        self.shown = display_url(url)
        self.connect_timeout_s = connect_timeout_s
        self.pool_size = pool_size
        self.lock_timeout_s = lock_timeout_s
        self.application_name = application_name
        self._pool: Any = None
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"PgConnections({self.shown!r})"

    # --- opening ------------------------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        extra = {"password": self._password} if self._password else {}
        return {**extra, "autocommit": True,
                "connect_timeout": max(1, round(self.connect_timeout_s)),
                "application_name": self.application_name,
                # timestamps come back in UTC; a statement never waits on a lock for ever
                "options": f"-c timezone=UTC -c lock_timeout={int(self.lock_timeout_s * 1000)}"}

    def check(self) -> None:
        """Connect once, outside the pool, so a wrong URL, a refused connection or a missing
        database is one clear error now (not a pool retrying in the background)."""
        import psycopg

        try:
            with psycopg.connect(self.url, **self._kwargs()) as con:
                con.execute("SELECT 1")
        except psycopg.Error as exc:
            raise self._error(exc, "connect to") from None

    def _get_pool(self) -> Any:
        if self._pool is not None and self._pid == os.getpid():
            return self._pool
        with self._guard:
            if self._pool is None or self._pid != os.getpid():
                from psycopg_pool import ConnectionPool

                # a forked child never touches its parent's sockets: it opens its own pool
                self._pid = os.getpid()
                self._local = threading.local()
                self._pool = ConnectionPool(
                    self.url, min_size=1, max_size=self.pool_size, kwargs=self._kwargs(),
                    open=True, timeout=self.connect_timeout_s, name="batchml-catalog",
                    # a connection the server dropped (restart) is found and replaced at
                    # checkout, so the first statement after a restart does not fail
                    check=ConnectionPool.check_connection,
                    reconnect_timeout=max(30.0, self.connect_timeout_s))
        return self._pool

    def close(self) -> None:
        """Close the pool (the next use opens a new one)."""
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    # --- using --------------------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A connection for some statements: the one this thread holds, else one from the
        pool. Connection trouble becomes :class:`CatalogUnavailable`."""
        import psycopg
        from psycopg_pool import PoolTimeout

        held = getattr(self._local, "con", None)
        if held is not None and not held.closed:
            with self._translate():
                yield held
            return
        pool = self._get_pool()
        checkout = ExitStack()
        try:
            con = checkout.enter_context(pool.connection())
        except PoolTimeout as exc:
            raise CatalogUnavailable(
                f"No connection to the PostgreSQL catalog {self.shown} within "
                f"{self.connect_timeout_s:g} s ({redact(str(exc))}).",
                hint="Check that the server is up and reachable from this host (pg_isready); "
                     "batchml retries with backoff and loses nothing meanwhile.") from None
        except psycopg.Error as exc:  # raised while the pool opened or checked the connection
            raise self._error(exc, "use") from None
        # the pool's own context gives the connection back (and throws a broken one away)
        with checkout, self._translate():
            yield con

    @contextmanager
    def _translate(self) -> Iterator[None]:
        import psycopg

        try:
            yield
        except psycopg.Error as exc:
            sqlstate = getattr(exc, "sqlstate", None) or ""
            if isinstance(exc, psycopg.OperationalError) or sqlstate.startswith(("08", "57")) \
                    or sqlstate in _RETRYABLE:
                raise self._error(exc, "use") from None
            raise

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A connection for reading (each statement sees the latest committed data)."""
        with self.connection() as con:
            yield con

    @contextmanager
    def write(self) -> Iterator[Any]:
        """One transaction: every statement in the block commits once, or none does. Nested
        blocks on this thread join the outer transaction."""
        with self.connection() as con:
            depth = getattr(self._local, "depth", 0)
            if depth == 0 and getattr(self._local, "con", None) is None:
                self._local.con = con  # nested writes on this thread join this transaction
                pinned = True
            else:
                pinned = False
            self._local.depth = depth + 1
            try:
                with con.transaction():
                    yield con
            finally:
                self._local.depth = depth
                if pinned:
                    self._local.con = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep one connection for this thread across the statements of the block."""
        if getattr(self._local, "con", None) is not None:
            yield
            return
        with self.connection() as con:
            self._local.con = con
            try:
                yield
            finally:
                self._local.con = None

    def _error(self, exc: Exception, verb: str) -> CatalogError | ConfigError:
        sqlstate = getattr(exc, "sqlstate", None) or ""
        detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        if sqlstate in _TERMINAL_CONNECT:
            return ConfigError(f"Cannot {verb} the PostgreSQL catalog {self.shown}: {detail}.",
                               hint=_TERMINAL_CONNECT[sqlstate] + " (BATCHML_CATALOG_URL).")
        if sqlstate in _RETRYABLE:
            return CatalogBusy(f"The PostgreSQL catalog {self.shown} was busy: {detail}.",
                               hint="batchml retries this; if it persists, look for long "
                                    "transactions in pg_stat_activity.")
        if "password authentication failed" in str(exc) or "no password supplied" in str(exc):
            return ConfigError(f"Cannot {verb} the PostgreSQL catalog {self.shown}: {detail}.",
                               hint=_TERMINAL_CONNECT["28P01"] + " (BATCHML_CATALOG_URL).")
        if 'database "' in str(exc) and "does not exist" in str(exc):
            return ConfigError(f"Cannot {verb} the PostgreSQL catalog {self.shown}: {detail}.",
                               hint=_TERMINAL_CONNECT["3D000"] + " (BATCHML_CATALOG_URL).")
        return CatalogUnavailable(
            f"Cannot {verb} the PostgreSQL catalog {self.shown}: {detail}.",
            hint="Check that the server is up and reachable from this host (pg_isready); "
                 "batchml retries with backoff and loses nothing meanwhile.")

    # --- schema -------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply every migration the catalog lacks, in one transaction (concurrent openers
        wait on a transaction-scoped lock; the second finds nothing to do)."""
        applied: list[str] = []
        with self.write() as con:
            con.execute("SELECT pg_advisory_xact_lock(hashtext('batchml.migrate'))")
            con.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
                        " applied_at TIMESTAMPTZ NOT NULL)")
            done = {r[0] for r in con.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations("postgresql"):
                if version in done:
                    continue
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                            [version, name, datetime.now(UTC)])
                applied.append(f"{version:04d}_{name}")
        return applied

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""
        with self.read() as con:
            row = con.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0
            row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0) if row else 0
