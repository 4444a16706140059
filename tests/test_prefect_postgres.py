"""Prefect on PostgreSQL for real: `prefect server start` with its database on the session's
throwaway PostgreSQL server, the prediction deployment from deploy/prefect.yaml on a process
work pool, two `prefect worker start` processes, and the batchml catalog in another database
of the same PostgreSQL server. Six files, two flow runs (one on each worker), each file scored
exactly once."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import psutil
import psycopg
import psycopg.sql

from batchml.synthetic import synthetic_reviews

if TYPE_CHECKING:
    from pgserver import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "batchml"  # the work pool deploy/prefect.yaml names
DEPLOYMENT = "predict/predict-on-landing"
WORKERS = ("worker-a", "worker-b")
FILES = 6
RUNS = 2  # one per worker: each runs one flow run at a time
PER_RUN = 3  # RUNS * PER_RUN == FILES: every run claims exactly its share
T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str,
             step: float = 0.25) -> T:
    """Poll ``predicate`` until it returns something other than None, up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of this process without any Prefect, batchml or libpq settings (none
    may leak in from the caller), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "BATCHML_", "PG"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


class Processes:
    """Processes this test starts, each in its own process group; :meth:`stop_all` ends the
    groups (SIGTERM, then SIGKILL) and any descendant that left its group (the process
    worker starts flow runs in new sessions), and says whether anything was left."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path
              ) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc, out))
        return proc

    def stop_all(self) -> list[str]:
        descendants: list[psutil.Process] = []
        for _, proc, _ in self.procs:
            with contextlib.suppress(psutil.Error):
                descendants += psutil.Process(proc.pid).children(recursive=True)
        for _, proc, _ in reversed(self.procs):  # workers first, the server last
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            # the group's other members (uvicorn under `prefect server start`, ...)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for _, _, out in self.procs:
            out.close()
        left = [f"{p.pid} {p.name()}" for p in alive]
        for name, proc, _ in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 0)
                left.append(f"process group of {name}")
        return left


def land(inbox: Path, n: int) -> list[Path]:
    """Write ``n`` parquet files into ``inbox`` the safe way (temp name, then rename), their
    mtimes a minute old so the directory source sees them settled."""
    inbox.mkdir(parents=True, exist_ok=True)
    landed = []
    old = time.time() - 60
    for i in range(n):
        tmp = inbox / f".in-{i}.parquet.tmp"
        synthetic_reviews(40 + i, seed=100 + i).to_parquet(tmp)
        os.utime(tmp, (old, old))
        path = inbox / f"in-{i}.parquet"
        tmp.rename(path)
        landed.append(path)
    return landed


def test_two_workers_score_through_prefect_on_postgres(pg_server: PostgresServer,
                                                       tmp_path: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker
    from testhelp import free_port, make_tagged_home

    started = time.monotonic()
    marks: dict[str, float] = {}
    tag = uuid.uuid4().hex[:10]
    prefect_db, catalog_db = f"prefect_{tag}", f"batchml_{tag}"
    prefect_url = pg_server.create_database(prefect_db)  # postgresql://batchml@127.0.0.1:P/..
    pg_server.create_database(catalog_db)
    # the catalog's password (trust authentication ignores it) must never reach Prefect
    password = "pgPw" + secrets.token_urlsafe(20)
    procs = Processes()
    try:
        # 1. the Prefect server on PostgreSQL: migrates its empty database at start
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        server_home = tmp_path / "prefect-server"
        server_home.mkdir()
        (tmp_path / "deployer").mkdir()
        server = procs.start("prefect server", [
            str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            clean_env(PREFECT_HOME=str(server_home), PREFECT_UI_ENABLED="false",
                      PREFECT_LOGGING_LEVEL="WARNING",
                      PREFECT_API_DATABASE_CONNECTION_URL=prefect_url.replace(
                          "postgresql://", "postgresql+asyncpg://", 1)),
            tmp_path / "server.log")

        # 2. meanwhile: a tagged model in the catalog database, six files in the inbox
        t = time.monotonic()
        settings = make_tagged_home(tmp_path / "data", tmp_path / "trainer",
                                    catalog_url=pg_server.url(catalog_db, password=password))
        assert settings.catalog_url == pg_server.url(catalog_db)  # the password moved out
        assert settings.catalog_password is not None
        assert settings.catalog_password.get_secret_value() == password
        marks["train"] = time.monotonic() - t
        inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
        landed = land(inbox, FILES)

        def healthy() -> bool | None:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            with contextlib.suppress(Exception):
                import httpx

                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    return True
            return None

        wait_for(healthy, 120, "the Prefect server's /api/health")
        marks["server up"] = time.monotonic() - started

        with SyncPrefectClient(api) as client:
            client.create_work_pool(WorkPoolCreate(
                name=POOL, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))

            # 3. two workers (one flow run at a time each), each with its own homes; what
            # they share is the catalog (PostgreSQL) and the artifact, inbox and outbox roots
            batchml_env = {
                "BATCHML_CATALOG_URL": str(settings.catalog_url),  # no password in it
                "BATCHML_CATALOG_PASSWORD": password,  # the worker's own secret
                "BATCHML_ARTIFACT_ROOT": str(settings.artifact_root),
                "BATCHML_INBOX": str(inbox), "BATCHML_OUTBOX": str(outbox),
                "BATCHML_QUARANTINE": str(tmp_path / "quarantine"),
                "BATCHML_PROJECT_DIR": str(ROOT)}
            assert ":" not in batchml_env["BATCHML_CATALOG_URL"].split("//")[1].split("@")[0]
            health_ports = {name: free_port() for name in WORKERS}
            for name in WORKERS:
                (tmp_path / name / "prefect").mkdir(parents=True)
                procs.start(name, [str(BIN / "prefect"), "worker", "start", "--pool", POOL,
                                   "--name", name, "--limit", "1", "--with-healthcheck"],
                            clean_env(**batchml_env, PREFECT_API_URL=api,
                                      PREFECT_HOME=str(tmp_path / name / "prefect"),
                                      BATCHML_HOME=str(tmp_path / name),
                                      PREFECT_WORKER_QUERY_SECONDS="1",
                                      PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
                                      PREFECT_WORKER_WEBSERVER_PORT=str(health_ports[name]),
                                      PREFECT_LOGGING_LEVEL="INFO"),
                            tmp_path / f"{name}.log")

            # 4. the prediction deployment, from the real deploy file
            t = time.monotonic()
            deployed = subprocess.run(
                [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "predict-on-landing",
                 "--prefect-file", str(ROOT / "deploy" / "prefect.yaml")],
                env=clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "deployer"),
                              BATCHML_PROJECT_DIR=str(ROOT), PREFECT_LOGGING_LEVEL="WARNING"),
                cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            marks["deploy"] = time.monotonic() - t
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            assert deployment.work_pool_name == POOL

            def both_online() -> bool | None:
                online = {w.name for w in client.read_workers_for_work_pool(POOL)
                          if w.status == "ONLINE"}
                return True if set(WORKERS) <= online else None

            wait_for(both_online, 90, "both workers to come online in the pool")

            def both_healthy() -> bool | None:  # the check compose's worker service uses
                import httpx

                with contextlib.suppress(httpx.HTTPError):
                    if all(httpx.get(f"http://127.0.0.1:{p}/health", timeout=2).status_code
                           == 200 for p in health_ports.values()):
                        return True
                return None

            wait_for(both_healthy, 30, "both workers' /health to answer 200")

            # 5. two flow runs of the deployment, three files each
            t = time.monotonic()
            runs = [client.create_flow_run_from_deployment(
                deployment.id, parameters={"limit": PER_RUN}) for _ in range(RUNS)]
            run_ids = {str(r.id) for r in runs}

            def all_final() -> list[Any] | None:
                now = [client.read_flow_run(r.id) for r in runs]
                return now if all(r.state and r.state.is_final() for r in now) else None

            final = wait_for(all_final, 180, "the flow runs to finish")
            marks["runs"] = time.monotonic() - t
            assert [r.state.type.value for r in final] == ["COMPLETED"] * RUNS, [
                (r.name, r.state.type.value, r.state.message) for r in final]
            assert {r.deployment_id for r in final} == {deployment.id}

        # 6. the catalog: every file scored exactly once, one output each, one batch per run
        with psycopg.connect(pg_server.url(catalog_db)) as cat:
            files = cat.execute("SELECT source_uri, state, attempts, output_uri, batch_id"
                                " FROM files ORDER BY source_uri").fetchall()
            done = cat.execute("SELECT file_id, count(*) FROM batch_files WHERE status ="
                               " 'scored' GROUP BY file_id").fetchall()
            batches = cat.execute("SELECT batch_id, prefect_flow_run_id, status, files"
                                  " FROM prediction_batches").fetchall()
        assert [f[0] for f in files] == sorted(str(p) for p in landed)
        assert {f[1] for f in files} == {"scored"}, files
        assert {f[2] for f in files} == {1}, files  # no file claimed twice
        assert len(done) == FILES and {n for _, n in done} == {1}, done
        outputs = sorted(outbox.rglob("*.parquet"))
        assert len(outputs) == FILES, outputs
        assert sorted({f[3] for f in files}) == sorted(str(p) for p in outputs)
        # each flow run claimed its three files in one batch, stamped with its flow run id
        assert sorted(b[1] for b in batches) == sorted(run_ids), batches
        assert {(b[2], b[3]) for b in batches} == {("completed", PER_RUN)}, batches
        assert {f[4] for f in files} == {b[0] for b in batches}

        # 7. which worker ran which flow run: its own log says it submitted the run (and not
        # that the server refused it because the other worker had it already)
        split = {}
        for name in WORKERS:
            log = (tmp_path / f"{name}.log").read_text(errors="replace")
            took = set(re.findall(rf"Worker '{name}' submitting flow run '([0-9a-f-]+)'", log))
            took -= set(re.findall(r"Aborted submission of flow run '([0-9a-f-]+)'", log))
            split[name] = took
        print(f"\n[prefect-postgres] runs per worker: "
              f"{ {n: len(s) for n, s in split.items()} }")
        assert set().union(*split.values()) == run_ids, split
        assert not set.intersection(*split.values()), split  # no run ran twice
        # each worker runs one flow run at a time (--limit 1) and a run lasts seconds (a new
        # process importing the stack), so with both runs queued at once and both workers
        # polling every second, the second run goes to the worker that is not busy
        assert all(split.values()), split

        # 8. Prefect's state really is in PostgreSQL (and no SQLite file appeared)
        with psycopg.connect(prefect_url) as db:
            tables = {r[0] for r in db.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public'").fetchall()}
            assert {"flow_run", "deployment", "work_pool", "worker", "log",
                    "alembic_version"} <= tables, sorted(tables)
            stored = {str(r[0]) for r in db.execute(
                "SELECT id FROM flow_run WHERE deployment_id = %s",
                [deployment.id]).fetchall()}
            assert stored == run_ids
            workers = {r[0] for r in db.execute("SELECT name FROM worker").fetchall()}
            assert set(WORKERS) <= workers
        assert not list(tmp_path.rglob("*.db")), list(tmp_path.rglob("*.db"))
        # the catalog password is nowhere in Prefect's database (parameters, job variables,
        # logs, events: every row of every table, as text) nor in the catalog's
        for db in (prefect_db, catalog_db):
            with psycopg.connect(pg_server.url(db)) as conn:
                names = [r[0] for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema ="
                    " 'public' AND table_type = 'BASE TABLE'").fetchall()]
                searched = 0
                for name in names:
                    table = psycopg.sql.Identifier(name)
                    rows, hits = conn.execute(psycopg.sql.SQL(
                        "SELECT count(*), count(*) FILTER (WHERE strpos(t::text, %s) > 0)"
                        " FROM {} AS t").format(table), [password]).fetchone() or (0, 0)
                    searched += rows
                    assert hits == 0, f"the catalog password leaked into {db}.{name}"
            assert searched > 0
    finally:
        left = procs.stop_all()
        for db in (prefect_db, catalog_db):
            pg_server.drop_database(db)
    assert not left, f"left running: {left}"
    marks["total"] = time.monotonic() - started
    print("[prefect-postgres] " + " ".join(f"{k}={v:.1f}s" for k, v in marks.items()))
