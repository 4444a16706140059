"""The deploy files: Docker cannot run here, so check them by construction."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def test_prefect_yaml_entrypoints_exist_and_name_real_flows() -> None:
    spec = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"train-nightly", "predict-on-landing", "bridge"} <= names
    from prefect.flows import Flow, load_flow_from_entrypoint

    flows = {}
    for dep in spec["deployments"]:
        # as `prefect deploy` and the worker load it: the file is a thin re-export of a flow
        # of batchml.flows, so the entry point must resolve to that very flow object
        path, func = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}")
        assert isinstance(flow, Flow), dep["entrypoint"]
        assert flow.fn.__module__.startswith("batchml.flows."), dep["entrypoint"]
        flows[dep["name"]] = flow
    predict = next(d for d in spec["deployments"] if d["name"] == "predict-on-landing")
    (trigger,) = predict["triggers"]
    assert trigger["expect"] == ["batchml.file.landed"]
    assert trigger["parameters"] == {"file": "{{ event.resource.id }}"}
    assert predict["concurrency_limit"] >= 1
    # the deployment's inference parameters: a flow parameter (batchml.params)
    assert predict["parameters"] == {"params": {}}
    import inspect as _inspect

    assert set(predict["parameters"]) <= set(
        _inspect.signature(flows["predict-on-landing"].fn).parameters)
    nightly = next(d for d in spec["deployments"] if d["name"] == "train-nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    # the gate's smoke examples are a parameter of the deployment, from BATCHML_SMOKE_PATH
    assert nightly["parameters"]["smoke_uri"] == "{{ $BATCHML_SMOKE_PATH }}"
    import inspect

    train_flow = flows["train-nightly"]
    assert set(nightly["parameters"]) <= set(inspect.signature(train_flow.fn).parameters)
    backfill = next(d for d in spec["deployments"] if d["name"] == "backfill")
    assert backfill["entrypoint"] == "flows/backfill.py:backfill_flow"
    assert set(backfill["parameters"]) <= set(inspect.signature(flows["backfill"].fn).parameters)


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's variable substitution, for the forms the compose file uses: ``${NAME}``,
    ``${NAME:-default}`` (the default when NAME is unset or empty) and ``$$`` (a literal $)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1)) or (m.group(3) or "")

    return re.sub(r"\$\$|\$\{(\w+)(:-([^}]*))?\}", sub, value)


def compose_spec() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def test_compose_services_and_environment() -> None:
    spec = compose_spec()
    services = spec["services"]
    assert {"postgres", "catalog-db", "prefect-server", "minio", "create-bucket", "worker",
            "bridge", "deployer"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in ("worker", "bridge", "deployer"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["BATCHML_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["BATCHML_CATALOG_URL"].startswith("postgresql://"), name
        assert "BATCHML_CATALOG_PASSWORD" in env, name
        # started once Prefect answers, the bucket and the catalog's database exist
        assert services[name]["depends_on"] == {
            "prefect-server": {"condition": "service_healthy"},
            "create-bucket": {"condition": "service_completed_successfully"},
            "catalog-db": {"condition": "service_completed_successfully"}}, name
    from batchml import Settings

    declared = {f"BATCHML_{n.upper()}" for n in Settings.model_fields} | {"BATCHML_PROJECT_DIR"}
    for key in services["worker"]["environment"]:
        if key.startswith("BATCHML_"):
            assert key in declared, f"{key} is not a batchml setting"


def test_compose_prefect_and_catalog_share_one_postgres_in_two_databases() -> None:
    from urllib.parse import urlsplit

    services = compose_spec()["services"]
    prefect = urlsplit(interpolate(
        services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]))
    catalog = urlsplit(services["worker"]["environment"]["BATCHML_CATALOG_URL"])
    assert prefect.scheme == "postgresql+asyncpg" and catalog.scheme == "postgresql"
    # the same server: the compose service `postgres`, its port
    assert (prefect.hostname, prefect.port) == (catalog.hostname, catalog.port) == (
        "postgres", 5432)
    assert "postgres" in services and services["postgres"]["image"].startswith("postgres:")
    # ... two databases, two roles: Prefect's is the server's own, the catalog's is made by
    # catalog-db
    pg_env = services["postgres"]["environment"]
    assert prefect.path == f"/{pg_env['POSTGRES_DB']}" and prefect.username == pg_env[
        "POSTGRES_USER"]
    assert catalog.path != prefect.path and catalog.username != prefect.username
    db, role = catalog.path.lstrip("/"), catalog.username
    script = interpolate(services["catalog-db"]["command"][0])
    assert f"CREATE DATABASE {db} OWNER {role}" in script
    assert f"CREATE ROLE {role} LOGIN" in script
    assert services["catalog-db"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # the catalog URL carries no password (batchml reads BATCHML_CATALOG_PASSWORD), and it
    # parses as batchml's setting
    assert catalog.password is None
    from batchml import Settings

    url = services["worker"]["environment"]["BATCHML_CATALOG_URL"]
    settings = Settings(catalog_url=url, catalog_password=None)
    assert settings.catalog_url == url and settings.catalog_password is None
    # the catalog's password is the same secret for catalog-db and batchml's processes, and
    # it never goes to the Prefect server
    secret = services["worker"]["environment"]["BATCHML_CATALOG_PASSWORD"]
    assert secret.startswith("${BATCHML_CATALOG_PASSWORD")
    assert services["catalog-db"]["environment"]["CATALOG_PASSWORD"] == secret
    server = services["prefect-server"]
    assert not [k for k in server["environment"] if k.startswith("BATCHML_")]
    assert "BATCHML_CATALOG_PASSWORD" not in yaml.safe_dump(server)


def test_compose_workers_on_a_process_pool() -> None:
    services = compose_spec()["services"]
    deployments = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    assert len(pools) == 1
    (pool,) = pools
    worker = services["worker"]
    assert worker["command"].startswith(f"prefect worker start --pool {pool} ")
    # its health is the worker's own webserver (tests/test_prefect_postgres.py uses it too)
    assert "--with-healthcheck" in worker["command"].split()
    assert "http://localhost:8080/health" in " ".join(worker["healthcheck"]["test"])
    assert int(interpolate(str(worker["deploy"]["replicas"]))) >= 2
    assert int(interpolate(str(worker["deploy"]["replicas"]), {"BATCHML_WORKERS": "5"})) == 5
    deployer = " ".join(services["deployer"]["command"].split())
    assert f"prefect work-pool create {pool} --type process" in deployer
    assert "batchml init" in deployer  # the catalog's tables before anything else
    assert "prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml" in deployer
    # workers share nothing on disk any more: the catalog is in PostgreSQL, files in MinIO
    for name in ("worker", "bridge", "deployer"):
        assert "volumes" not in services[name], name
        env = services[name]["environment"]
        for key in ("BATCHML_INBOX", "BATCHML_OUTBOX", "BATCHML_ARTIFACT_ROOT"):
            assert env[key].startswith("s3://"), (name, key)


def psql_program() -> str:
    import shutil
    from glob import glob

    found = shutil.which("psql") or next(iter(sorted(glob("/usr/lib/postgresql/*/bin/psql"),
                                                     reverse=True)), None)
    if not found:
        pytest.fail("psql is missing: install Debian's postgresql package (`make test` does)")
    return found


def test_compose_catalog_db_script_on_a_real_postgres(tmp_path: Path) -> None:
    """Run catalog-db's script as compose would (its environment, sh -c) on a fresh server,
    twice: the role and database appear once, owned as the catalog URL says, and a second run
    (every `docker compose up`) changes nothing but the password."""
    import os
    from urllib.parse import urlsplit

    import psycopg
    from pgserver import PostgresServer

    services = compose_spec()["services"]
    service = services["catalog-db"]
    assert service["entrypoint"] == ["sh", "-c"]
    script = interpolate(service["command"][0])
    catalog = urlsplit(services["worker"]["environment"]["BATCHML_CATALOG_URL"])
    db, role = catalog.path.lstrip("/"), str(catalog.username)
    admin_role = service["environment"]["PGUSER"]
    with PostgresServer() as server:
        # as in compose: the script runs as the server's superuser (Prefect's role); the
        # throwaway server's own superuser is called like the catalog's role, so rename it
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {admin_role} SUPERUSER LOGIN")
        with psycopg.connect(server.url().replace("batchml@", f"{admin_role}@"),
                             autocommit=True) as conn:
            conn.execute(f"ALTER ROLE batchml RENAME TO bootstrap_{os.getpid()}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({k: interpolate(str(v)) for k, v in service["environment"].items()})
        env.update(PGHOST="127.0.0.1", PGPORT=str(server.port), PGDATABASE="postgres",
                   PATH=f"{os.path.dirname(psql_program())}:{env.get('PATH', '')}")
        hashes = []
        for password in ("first-Secret", "second-Secret"):
            run = subprocess.run(["sh", "-c", script], env={**env, "CATALOG_PASSWORD": password},
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stdout + run.stderr
            with psycopg.connect(server.url().replace("batchml@", f"{admin_role}@")) as conn:
                rows = conn.execute(
                    "SELECT r.rolcanlogin, r.rolsuper, pg_get_userbyid(d.datdba), a.rolpassword"
                    " FROM pg_roles r JOIN pg_authid a USING (oid), pg_database d"
                    " WHERE r.rolname = %s AND d.datname = %s", [role, db]).fetchall()
            assert [r[:3] for r in rows] == [(True, False, role)], rows
            assert rows[0][3] and password not in rows[0][3]  # stored hashed
            hashes.append(rows[0][3])
        assert hashes[0] != hashes[1]  # the second run set the new password
        # the catalog's role may create its tables in its database, as `batchml init` does
        with psycopg.connect(server.url(db)) as conn:  # trust: as role `batchml`
            conn.execute("CREATE TABLE probe (x int)")
            assert conn.execute("SELECT current_user").fetchone() == (role,)


def test_dockerfile_installs_pinned_and_runs_serve() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "pip install -c constraints.txt ." in text
    assert 'CMD ["batchml", "serve"]' in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for path in line.split()[:-1]:
            assert (ROOT / path).exists(), path
