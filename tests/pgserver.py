"""A real, throwaway PostgreSQL server for the tests.

``PostgresServer`` runs Debian's (or any) PostgreSQL server programs: ``initdb`` into a fresh
temporary directory, ``pg_ctl start`` on a free port on 127.0.0.1 with trust authentication for
the superuser ``batchml``, durability switched off (fsync, synchronous_commit,
full_page_writes) because the data is thrown away. Each start uses a new directory and a new
port, so a server left behind by a crashed run never blocks the next one; such leftovers (their
owning process gone) are stopped and removed by the next start.

initdb refuses to run as root; when the tests run as root, the server programs run as the
``postgres`` system user (``runuser``, else ``setpriv``) in a directory under /tmp (pytest's own
temporary directories are 0700 root) chowned to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

PROGRAMS = ("initdb", "pg_ctl", "postgres")
DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "batchml"
HOST = "127.0.0.1"
DIR_PREFIX = "batchml-pg-"
OWNER_FILE = "owner.pid"  # the pid of the process that started the server in this directory
RUN_AS = "postgres"  # the system user the server runs as when the tests run as root

INSTALL_HINT = (
    "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found on PATH nor under "
    f"{DEBIAN_GLOB}/. Install Debian's postgresql package (`apt-get install -y postgresql`) or "
    "run `make test`, which installs it."
)


class PostgresServerError(RuntimeError):
    """The server programs are missing or the server failed to start, restart or stop."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: PATH first, else the newest
    /usr/lib/postgresql/<version>/bin (Debian does not put them on PATH)."""
    found = [shutil.which(name) for name in PROGRAMS]
    if all(found):
        dirs = {Path(p).parent for p in found if p}
        if len(dirs) == 1:
            return dirs.pop()
        # spread over several PATH directories: pg_ctl finds postgres beside itself (after
        # resolving symlinks), so use pg_ctl's real directory if postgres and initdb are there
        real = Path(os.path.realpath(found[1] or "")).parent
        if all((real / name).is_file() for name in PROGRAMS):
            return real

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates = [
        path for path in Path("/").glob(DEBIAN_GLOB.lstrip("/"))
        if all(os.access(path / name, os.X_OK) for name in PROGRAMS)
    ]
    if not candidates:
        raise PostgresServerError(INSTALL_HINT)
    return max(candidates, key=version)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1; use as a context manager or call
    :meth:`start` and :meth:`stop`."""

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.bindir = find_bindir()
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.base: Path | None = None  # the temporary directory (data, socket, log)
        self._run_as_root = os.geteuid() == 0
        self._prefix: list[str] = self._user_prefix() if self._run_as_root else []

    # ---------------------------------------------------------------- paths and commands

    @property
    def datadir(self) -> Path:
        return self._base() / "data"

    @property
    def sockdir(self) -> Path:
        return self._base() / "sock"

    @property
    def logfile(self) -> Path:
        return self._base() / "server.log"

    def _base(self) -> Path:
        if self.base is None:
            raise PostgresServerError("the server is not started")
        return self.base

    @staticmethod
    def _user_prefix() -> list[str]:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            raise PostgresServerError(
                f"running as root, and initdb refuses root, but there is no {RUN_AS!r} system "
                "user to run the server as: install Debian's postgresql package "
                "(`apt-get install -y postgresql`), which creates it") from None
        if shutil.which("runuser"):
            return ["runuser", "-u", RUN_AS, "--"]
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={RUN_AS}", f"--regid={RUN_AS}", "--init-groups", "--"]
        raise PostgresServerError(
            "running as root, and initdb refuses root: neither runuser nor setpriv (util-linux) "
            f"is available to run the server as {RUN_AS!r}")

    def _run(self, program: str, args: Sequence[str], *, check: bool = True,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        # PG* variables of the caller (PGDATA, PGPORT, PGHOST, ...) must not leak in
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        cmd = [*self._prefix, str(self.bindir / program), *args]
        proc = subprocess.run(cmd, cwd=self._base(), env=env, capture_output=True, text=True,
                              timeout=timeout or self.start_timeout + 30, check=False)
        if check and proc.returncode != 0:
            raise PostgresServerError(
                f"{shlex.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                f"{self._log_tail()}")
        return proc

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return "\n--- server log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _server_options(self) -> str:
        assert self.port is not None
        return (f"-p {self.port} -k {shlex.quote(str(self.sockdir))} "
                f"-c listen_addresses={HOST} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200")

    def _pg_ctl(self, action: str, *extra: str, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", [action, "-D", str(self.datadir), "-l", str(self.logfile),
                                    "-t", str(int(self.start_timeout)), *extra], check=check)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PostgresServer:
        """initdb into a fresh temporary directory and start the server on a free port; returns
        once a connection succeeds."""
        if self.base is not None:
            raise PostgresServerError(f"already started in {self.base}")
        parent = "/tmp" if self._run_as_root and os.path.isdir("/tmp") else None
        reap_orphans(Path(parent or tempfile.gettempdir()), self)
        self.base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))
        try:
            (self.base / OWNER_FILE).write_text(f"{os.getpid()}\n")
            self.sockdir.mkdir()
            if self._run_as_root:
                user = pwd.getpwnam(RUN_AS)
                for path in (self.base, self.sockdir):
                    os.chown(path, user.pw_uid, user.pw_gid)
            self._run("initdb", ["-D", str(self.datadir), "-U", SUPERUSER, "-A", "trust",
                                 "--no-sync", "-E", "UTF8", "--no-locale"])
            # the port is free when picked but another process may take it before the server
            # binds it: then pick another
            for attempt in range(5):
                self.port = _free_port()
                proc = self._pg_ctl("start", "-w", "-o", self._server_options(), check=False)
                if proc.returncode == 0:
                    break
                if attempt == 4 or "could not bind" not in self._log_tail(10):
                    raise PostgresServerError(
                        f"pg_ctl start failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                        f"{self._log_tail()}")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # an interpreter that exits without stop() leaves nothing
        return self

    def _wait_ready(self) -> None:
        """pg_ctl -w returned once the postmaster said it accepts connections; confirm with a
        real connection (a few quick retries, bounded by start_timeout)."""
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=5):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresServerError(
                        f"the server on port {self.port} accepts no connection: {exc}"
                        f"{self._log_tail()}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def restart(self) -> None:
        """pg_ctl restart -m fast: ends every session, keeps the data and the port."""
        self._pg_ctl("restart", "-m", "fast", "-w", "-o", self._server_options())
        self._wait_ready()

    def stop(self) -> None:
        """Stop the server (fast, else immediate) and remove its temporary directory."""
        if self.base is None:
            return
        atexit.unregister(self.stop)
        try:
            if (self.datadir / "postmaster.pid").exists():
                proc = self._pg_ctl("stop", "-m", "fast", "-w", check=False)
                if proc.returncode != 0:
                    self._pg_ctl("stop", "-m", "immediate", "-w", check=False)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
            self.port = None

    def __enter__(self) -> PostgresServer:
        if self.base is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The postmaster's process id (changes with :meth:`restart`)."""
        return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])

    # ---------------------------------------------------------------- databases and sessions

    def url(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        """postgresql://batchml@127.0.0.1:PORT/dbname (the password is ignored by trust
        authentication but lands in the URL when given)."""
        if self.port is None:
            raise PostgresServerError("the server is not started")
        auth = SUPERUSER if password is None else f"{SUPERUSER}:{quote(password, safe='')}"
        return f"postgresql://{auth}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """A new autocommit connection to the ``postgres`` database as the superuser."""
        return psycopg.connect(self.url(), autocommit=True, application_name="pgserver-admin")

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a unique name when None); return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its sessions first (DROP DATABASE ... WITH (FORCE))."""
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    def terminate_backends(self, dbname: str | None = None,
                           application_name: str | None = None) -> int:
        """pg_terminate_backend on every other client session (of ``dbname`` and/or with
        ``application_name`` when given); waits up to 10 s for each to end; returns how many
        ended."""
        query = """
            SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000))
            FROM pg_stat_activity
            WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
              AND (%(db)s::text IS NULL OR datname = %(db)s::text)
              AND (%(app)s::text IS NULL OR application_name = %(app)s::text)
        """
        with self.admin() as conn:
            row = conn.execute(query, {"db": dbname, "app": application_name}).fetchone()
        return int(row[0]) if row else 0


def reap_orphans(parent: Path, server: PostgresServer) -> None:
    """Stop and remove the servers in ``parent`` left by a process that no longer runs (a test
    run killed before its teardown). Never touches a directory whose owner is alive."""
    for base in parent.glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((base / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if _alive(owner):
            continue
        with contextlib.suppress(Exception):
            if (base / "data" / "postmaster.pid").exists():
                subprocess.run(
                    [*server._prefix, str(server.bindir / "pg_ctl"), "stop", "-D",
                     str(base / "data"), "-m", "immediate", "-w", "-t", "30"],
                    cwd=base, capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)
