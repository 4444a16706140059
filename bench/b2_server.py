"""B2, server mode: drop-to-output latency through a triggered deployment, and through a
long-lived worker attached to the same Prefect server.

The production shape of deploy/prefect.yaml on loopback: ``prefect server start``, the
``predict-on-landing`` deployment (an event trigger) deployed from the real file, a process work
pool with one ``prefect worker``, and ``batchml bridge`` emitting one ``batchml.file.landed``
event per landed file. Files of 1,000 rows land one at a time (atomic rename); the latency runs
from the rename to the poll that first sees the file ``scored`` in the catalog. Every triggered
flow run is a new process that imports the stack, which is what this figure shows next to the
embedded ``batchml serve`` of B2.

Then the long-lived worker on the same server: ``batchml serve`` with ``PREFECT_API_URL`` (a
warm model cache; one flow run per micro-batch on that server, with its artifact), the same
drops; its flow runs and artifacts are counted on the server through its REST API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from .b2_latency import staged_files
from .common import PYTHON, ROOT, Context, Figure, batchml_cli, figure, percentile
from .serving import land


def run(ctx: Context) -> list[Figure]:
    from batchml import Catalog, Settings
    from batchml.service import local_prefect_server

    n = ctx.sizes.get("b2s_files", 4)
    files = staged_files(ctx, "srv", n + 1, 1_000, seed0=5_000)
    home, env = ctx.fresh_home("sklearn_text", "server")
    (home / "prefect").mkdir(exist_ok=True)
    settings = Settings(home=home)
    bin_dir = Path(PYTHON).parent
    t = time.perf_counter()
    with local_prefect_server(settings) as api_url:
        server_s = time.perf_counter() - t
        env = {**env, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home / "prefect"),
               "BATCHML_PROJECT_DIR": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "BATCHML_TRAIN_URI": "unused", "BATCHML_VALID_URI": "unused"}

        def cli(*args: str) -> None:
            out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True,
                                 timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(args[:3])} failed:\n{out.stdout}{out.stderr}")

        spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
        spec["deployments"] = [d for d in spec["deployments"]
                               if d["name"] == "predict-on-landing"]
        deploy_file = home / "prefect.yaml"
        deploy_file.write_text(yaml.safe_dump(spec))
        t = time.perf_counter()
        cli(str(bin_dir / "prefect"), "work-pool", "create", "batchml", "--type", "process")
        cli(str(bin_dir / "prefect"), "--no-prompt", "deploy", "--all",
            "--prefect-file", str(deploy_file))
        deploy_s = time.perf_counter() - t
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        try:
            for name, argv in (("worker", [str(bin_dir / "prefect"), "worker", "start",
                                           "--pool", "batchml"]),
                               ("bridge", [*batchml_cli(), "bridge"])):
                log = (home / f"{name}.log").open("ab")
                logs.append(log)
                procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))
            latencies, first, timeouts = _drop(files, home / "inbox", home, procs,
                                               Catalog(home / "catalog.duckdb",
                                                       lock_timeout_s=120))
        finally:
            for proc in procs:
                _stop(proc)
            for log in logs:
                log.close()
        attached = _attached(ctx, api_url, env, ROOT)
    ctx.log(f"  B2 server mode: p50 {percentile(latencies, 50):.1f} s over {len(latencies)} "
            f"files (first {first:.1f} s); server {server_s:.0f} s, deploy {deploy_s:.0f} s")
    note = f"{len(latencies)} files after 1 warm-up; one flow-run process per event"
    if timeouts:
        note += f"; {timeouts} timed out (counted as 300 s)"
    p50 = figure("B2", "server_p50", "server mode (event -> triggered deployment run) "
                 "drop-to-output p50", latencies, "s", notes=note)
    p50.samples = latencies
    return [
        p50,
        figure("B2", "server_first", "server mode: first file (worker's first flow run)",
               [first], "s"),
        figure("B2", "server_setup", "server mode: prefect server start + deploy",
               [server_s + deploy_s], "s",
               notes=f"server {server_s:.1f} s, deploy {deploy_s:.1f} s"),
        *attached,
    ]


def _attached(ctx: Context, api_url: str, env: dict[str, str], root: Path) -> list[Figure]:
    """Server mode with a long-lived worker: ``batchml serve`` attached to the same Prefect
    server (``PREFECT_API_URL``), warm model cache, one flow run on that server per
    micro-batch (with its table artifact). Drop-to-output p50, and Prefect's view checked:
    every batch's flow run and artifact are on the server."""
    import httpx

    from batchml import Catalog

    n = ctx.sizes.get("b2s_files", 4)
    files = staged_files(ctx, "srva", n + 1, 1_000, seed0=7_000)
    home, own = ctx.fresh_home("sklearn_text", "server-attached")
    env = {**{k: v for k, v in env.items() if not k.startswith("BATCHML_")}, **own,
           "PREFECT_HOME": str(home / "prefect")}
    log = (home / "serve.log").open("ab")
    proc = subprocess.Popen([*batchml_cli(), "serve"], env=env, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    catalog = Catalog(home / "catalog.duckdb", lock_timeout_s=120)
    try:
        latencies, first, timeouts = _drop(files, home / "inbox", home, [proc], catalog,
                                           names=("serve",))
        catalog = Catalog(home / "catalog.duckdb", lock_timeout_s=120)
        ids = [str(i) for i in catalog.sql(
            "SELECT prefect_flow_run_id FROM prediction_batches WHERE files > 0"
        )["prefect_flow_run_id"].dropna()]
        catalog.db.close()
    finally:
        _stop(proc)
        log.close()
    runs = httpx.post(f"{api_url}/flow_runs/count",
                      json={"flow_runs": {"id": {"any_": ids}}}, timeout=30).json()
    arts = httpx.post(f"{api_url}/artifacts/count",
                      json={"artifacts": {"flow_run_id": {"any_": ids}}}, timeout=30).json()
    p50 = percentile(latencies, 50)
    ctx.log(f"  B2 server mode, batchml serve attached: p50 {p50:.3f} s over "
            f"{len(latencies)} files (first {first:.1f} s); {runs} flow runs and {arts} "
            f"artifacts on the server for {len(ids)} batches")
    note = (f"{len(latencies)} files after 1 warm-up; batchml serve with PREFECT_API_URL: "
            f"{len(ids)} batches, {runs} of their flow runs and {arts} table artifacts found "
            "on the Prefect server")
    if timeouts:
        note += f"; {timeouts} timed out (counted as 300 s)"
    fig = figure("B2", "server_attached_p50", "server mode, long-lived worker (batchml "
                 "serve attached to the Prefect server) drop-to-output p50", latencies, "s",
                 target="<= 2 s", met=p50 <= 2.0 and not timeouts and runs == len(ids)
                 and arts == len(ids) and len(ids) > 0, notes=note)
    fig.samples = latencies
    return [fig, figure("B2", "server_attached_first", "server mode, long-lived worker: "
                        "first file (model load)", [first], "s")]


def _drop(files: list[Path], inbox: Path, home: Path, procs: list[Any],
          catalog: Any, names: tuple[str, ...] = ("worker", "bridge"),
          ) -> tuple[list[float], float, int]:
    inbox.mkdir(parents=True, exist_ok=True)
    latencies: list[float] = []
    first = 0.0
    timeouts = 0
    try:
        for i, src in enumerate(files):
            tmp = land(src, inbox, f"srv_{src.name}")
            target = inbox / f"srv_{src.name}"
            start = time.perf_counter()
            os.rename(tmp, target)
            seen = _wait_scored(catalog, str(target), procs, home, timeout_s=300,
                                names=names)
            latency = 300.0 if seen is None else seen - start
            timeouts += seen is None
            if i == 0:
                first = latency
            else:
                latencies.append(latency)
    finally:
        catalog.db.close()
    return latencies, first, timeouts


def _wait_scored(catalog: Any, uri: str, procs: list[Any], home: Path, *,
                 timeout_s: float, names: tuple[str, ...] = ("worker", "bridge"),
                 ) -> float | None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        n = catalog.sql("SELECT count(*) AS n FROM batch_files WHERE source_uri = ? AND "
                        "status = 'scored'", [uri])["n"].iloc[0]
        if n:
            return time.perf_counter()
        for proc, name in zip(procs, names, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n"
                                   + (home / f"{name}.log").read_text()[-3000:])
        catalog.db.close()  # let the flow runs write
        time.sleep(0.2)
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # flow-run children live in the same session
    proc.wait()
