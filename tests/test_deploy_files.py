"""The deploy files: Docker cannot run here, so check them by construction."""

from __future__ import annotations

import re
from pathlib import Path

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
    nightly = next(d for d in spec["deployments"] if d["name"] == "train-nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    # the gate's smoke examples are a parameter of the deployment, from BATCHML_SMOKE_PATH
    assert nightly["parameters"]["smoke_uri"] == "{{ $BATCHML_SMOKE_PATH }}"
    import inspect

    train_flow = flows["train-nightly"]
    assert set(nightly["parameters"]) <= set(inspect.signature(train_flow.fn).parameters)


def test_compose_services_and_environment() -> None:
    spec = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = spec["services"]
    assert {"postgres", "prefect-server", "minio", "worker", "bridge", "deployer"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in ("worker", "bridge", "deployer"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["BATCHML_S3_ENDPOINT_URL"] == "http://minio:9000"
    from batchml import Settings

    declared = {f"BATCHML_{n.upper()}" for n in Settings.model_fields} | {"BATCHML_PROJECT_DIR"}
    for key in services["worker"]["environment"]:
        if key.startswith("BATCHML_"):
            assert key in declared, f"{key} is not a batchml setting"


def test_dockerfile_installs_pinned_and_runs_serve() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "pip install -c constraints.txt ." in text
    assert 'CMD ["batchml", "serve"]' in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for path in line.split()[:-1]:
            assert (ROOT / path).exists(), path
