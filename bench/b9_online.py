"""B9: online scoring over HTTP (``batchml serve-api``) under load from a second process.

The benchmark makes its own data and models in a child (``python -m bench.b9_online prepare``):
a scikit-learn text model (``sklearn_text`` on synthetic reviews) and a tabular one
(``tabular_logreg`` on synthetic customers: 5 features, 3 classes), each trained by
``batchml.training.train`` into its own batchml home, registered and aliased ``champion``;
plus a pool of 1-row request bodies for each (MLflow's ``dataframe_split``, as MLflow's client
sends a DataFrame) and the floor: the model's own ``predict_proba`` on one row in process.

For each model and each server configuration a fresh ``batchml serve-api --model
NAME@champion`` runs on loopback (prediction log off; one uvicorn worker, as the CLI starts
it): with micro-batching (``api_batch_rows=256``, ``api_batch_wait_ms=2``: the defaults) and
without (``api_batch_rows=0``: every request is one model call). The load comes from another
process (``python -m bench.b9_online load``): an asyncio HTTP/1.1 client with N keep-alive
connections, each sending its next 1-row ``POST /invocations`` as soon as the last answered
(closed loop), like ``wrk``: raw sockets, so the client's own cost stays small on a 2-core
machine. Each run is bounded in count and time (warm-up requests first, not counted). Every
answer must be a 200 holding one prediction, else the benchmark fails.

When MLflow's scoring server can run here (mlflow-skinny: ``mlflow.pyfunc``), the same model is
saved as a pyfunc (a ``PythonModel`` calling the batchml estimator: the same predict_proba) and
served the way ``mlflow models serve`` serves it (``uvicorn mlflow.pyfunc.scoring_server.app:app``,
one worker); the same load runs against it, the figures beside batchml's.

Figures per model: p50 / p95 / p99 latency (ms) and throughput (requests/s) at 1 and 32
clients, with and without micro-batching; the ratio of throughput with / without at 32 clients.
Targets (issue 18): p50 <= 5 ms at 1 client; at 32 clients throughput with micro-batching >= 5x
without, p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    PYTHON,
    ROOT,
    Context,
    Figure,
    batchml_cli,
    clean_env,
    figure,
    percentile,
    run_child,
)

MODELS = {"text": "reviews", "tabular": "customers"}
WHAT = {"text": "text model (sklearn_text)", "tabular": "tabular model (tabular_logreg, 5 "
                                                        "features)"}
FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
MODES = {"batching": {"BATCHML_API_BATCH_ROWS": "256", "BATCHML_API_BATCH_WAIT_MS": "2"},
         "plain": {"BATCHML_API_BATCH_ROWS": "0"}}
MODE_WHAT = {"batching": "micro-batching (256 rows, 2 ms)", "plain": "no micro-batching",
             "mlflow": "MLflow scoring server"}
POOL = 512  # distinct 1-row bodies per model


# --- the runner's side ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (Linux), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


class Server:
    """A server subprocess on a free loopback port, up once ``GET /ping`` answers 200."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{' '.join(self.argv[:4])} did not come up:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def cpu_s(self) -> float | None:
        ticks = _cpu_ticks(self.proc.pid) if self.proc else None
        return ticks / os.sysconf("SC_CLK_TCK") if ticks is not None else None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load(url: str, bodies: Path, *, clients: int, requests: int, max_s: float, warmup: int,
         server: Server) -> dict[str, Any]:
    """One closed-loop load run from a child process; its answer plus the server's CPU."""
    before = server.cpu_s()
    result = run_child([PYTHON, "-m", "bench.b9_online", "load", json.dumps({
        "url": url, "bodies": str(bodies), "clients": clients, "requests": requests,
        "max_s": max_s, "warmup": warmup})], env=clean_env(), timeout_s=max_s * 4 + 120).check()
    answer = result.json()
    after = server.cpu_s()
    answer["server_cores"] = ((after - before) / answer["wall_s"]
                              if before is not None and after is not None else None)
    answer["client_cores"] = result.cpu_s / result.wall_s if result.wall_s else None
    if answer["errors"]:
        raise RuntimeError(f"B9: {answer['errors']} of {answer['count']} requests to {url} "
                           f"failed, e.g. {answer['first_error']}")
    return answer


def run(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    prep, _ = child_b9("prepare", {"dir": str(ctx.dir("b9")), "train_rows": s["b9_train_rows"],
                                   "pool": POOL}, timeout_s=1800)
    ctx.log(f"  B9 trained both models in {prep['seconds']:.0f} s; floor (1-row "
            "predict_proba in process): " + ", ".join(
                f"{m} {prep[m]['floor_ms']:.3f} ms" for m in MODELS))
    mlflow_ok = bool(s.get("b9_mlflow", True)) and prep.get("mlflow_error") is None
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    for kind, name in MODELS.items():
        info = prep[kind]
        configs: list[tuple[str, list[str], dict[str, str]]] = []
        for mode, env in MODES.items():
            configs.append((mode, [*batchml_cli(), "serve-api", "--model", f"{name}@champion",
                                   "--port", "{port}"],
                            clean_env(BATCHML_HOME=info["home"],
                                      BATCHML_API_LOG_PREDICTIONS="false", **env)))
        if mlflow_ok:
            configs.append(("mlflow", [PYTHON, "-m", "uvicorn", "--host", "127.0.0.1", "--port",
                                       "{port}", "--workers", "1", "--log-level", "warning",
                                       "mlflow.pyfunc.scoring_server.app:app"],
                            clean_env(__pyfunc_model_path__=info["pyfunc"])))
        for mode, argv, env in configs:
            with Server(argv, env, ctx.dir("b9", "logs") / f"{kind}-{mode}.log") as server:
                for clients in s["b9_clients"]:
                    r = load(server.url + "/invocations", Path(info["bodies"]), clients=clients,
                             requests=s["b9_requests"][str(clients)], max_s=s["b9_max_s"],
                             warmup=s["b9_warmup"], server=server)
                    results[kind, mode, clients] = r
                    lat = r["latencies_ms"]
                    ctx.log(f"  B9 {kind} {mode} {clients} client(s): {r['count']:,} requests "
                            f"in {r['wall_s']:.1f} s, {r['count'] / r['wall_s']:,.0f} req/s, "
                            f"p50 {percentile(lat, 50):.2f} p95 {percentile(lat, 95):.2f} "
                            f"p99 {percentile(lat, 99):.2f} ms; server "
                            f"{r['server_cores'] or 0:.2f} cores, client "
                            f"{r['client_cores'] or 0:.2f}")
    return figures(results, prep, s["b9_clients"],
                   mlflow_note=None if mlflow_ok else prep.get("mlflow_error", "disabled"))


def child_b9(command: str, payload: dict[str, Any], *, timeout_s: float) -> tuple[Any, Any]:
    result = run_child([PYTHON, "-m", "bench.b9_online", command, json.dumps(payload)],
                       env=clean_env(), timeout_s=timeout_s).check()
    return result.json(), result


def figures(results: dict[tuple[str, str, int], dict[str, Any]], prep: dict[str, Any],
            clients: list[int], *, mlflow_note: str | None) -> list[Figure]:
    out: list[Figure] = []
    one, many = clients[0], clients[-1]

    def stats(r: dict[str, Any]) -> str:
        lat = r["latencies_ms"]
        return (f"{r['count']:,} requests in {r['wall_s']:.1f} s, {_rps(r):,.0f} req/s; p50 "
                f"{percentile(lat, 50):.2f}, p95 {percentile(lat, 95):.2f}, p99 "
                f"{percentile(lat, 99):.2f} ms; server {r['server_cores'] or 0:.2f} cores busy,"
                f" client {r['client_cores'] or 0:.2f}")

    for kind in MODELS:
        floor_ms = prep[kind]["floor_ms"]
        what = WHAT[kind]
        modes = [m for m in ("batching", "plain", "mlflow") if (kind, m, one) in results]
        for mode in modes:  # latency at one client
            r = results[kind, mode, one]
            lat = r["latencies_ms"]
            batchml = mode != "mlflow"
            p50 = percentile(lat, 50)
            out.append(figure(
                "B9", f"{kind}.{mode}.c{one}.p50",
                f"{what}: latency p50, {one} client, {MODE_WHAT[mode]}", lat, "ms",
                floor=floor_ms, target="<= 5 ms" if batchml else "",
                met=p50 <= 5 if batchml else None,
                notes=stats(r) + f"; floor: 1-row predict_proba in process {floor_ms:.3f} ms"))
        for mode in modes:  # throughput and tail at 32 clients
            r = results[kind, mode, many]
            out.append(figure(
                "B9", f"{kind}.{mode}.c{many}.rps",
                f"{what}: throughput, {many} clients, {MODE_WHAT[mode]}", [_rps(r)], "req/s",
                notes=stats(r)))
        for mode in modes:
            r = results[kind, mode, many]
            p99 = percentile(r["latencies_ms"], 99)
            batching = mode == "batching"
            out.append(figure(
                "B9", f"{kind}.{mode}.c{many}.p99",
                f"{what}: latency p99, {many} clients, {MODE_WHAT[mode]}", [p99], "ms",
                target="<= 50 ms" if batching else "", met=p99 <= 50 if batching else None,
                notes=f"p50 {percentile(r['latencies_ms'], 50):.2f} ms, p95 "
                      f"{percentile(r['latencies_ms'], 95):.2f} ms"))
        with_b, without = _rps(results[kind, "batching", many]), \
            _rps(results[kind, "plain", many])
        ratio = with_b / without
        notes = f"{with_b:,.0f} / {without:,.0f} req/s"
        if (kind, "mlflow", many) in results:
            notes += f"; MLflow scoring server {_rps(results[kind, 'mlflow', many]):,.0f} req/s"
        out.append(figure(
            "B9", f"{kind}.batching_ratio.c{many}",
            f"{what}: throughput with / without micro-batching, {many} clients", [ratio], "x",
            target=">= 5x", met=ratio >= 5, notes=notes))
    if mlflow_note:
        out.append(figure("B9", "mlflow.skipped", "MLflow scoring server not measured", [0],
                          "-", notes=mlflow_note))
    return out


def _rps(r: dict[str, Any]) -> float:
    return float(r["count"] / r["wall_s"])


# --- prepare: data, models, request bodies, the floor (a child process) --------------------


def prepare(p: dict[str, Any]) -> dict[str, Any]:
    import shutil

    import numpy as np
    import pyarrow as pa

    from batchml import Catalog, Settings
    from batchml import training as tr
    from batchml.synthetic import synthetic_reviews, synthetic_tabular

    root = Path(p["dir"])
    n, pool = int(p["train_rows"]), int(p["pool"])
    start = time.perf_counter()
    answer: dict[str, Any] = {}
    frames = {"text": (synthetic_reviews(n, seed=1), synthetic_reviews(n // 4, seed=2),
                       synthetic_reviews(pool, seed=3)),
              "tabular": (synthetic_tabular(n, seed=1), synthetic_tabular(n // 4, seed=2),
                          synthetic_tabular(pool * 2, seed=3))}
    for kind, (train, valid, rows) in frames.items():
        shutil.rmtree(root / kind, ignore_errors=True)
        data, home = root / kind / "data", root / kind / "home"
        data.mkdir(parents=True, exist_ok=True)
        train.to_parquet(data / "train.parquet")
        valid.to_parquet(data / "valid.parquet")
        if kind == "text":
            config = tr.TrainingConfig(train_uri=str(data / "train.parquet"),
                                       valid_uri=str(data / "valid.parquet"),
                                       text_column="review", candidates=["sklearn_text"])
            inputs = rows[["review"]]
        else:
            config = tr.TrainingConfig(train_uri=str(data / "train.parquet"),
                                       valid_uri=str(data / "valid.parquet"),
                                       feature_columns=FEATURES, label="segment",
                                       candidates=["tabular_logreg"], baseline_margin=-1)
            inputs = rows[FEATURES].dropna().head(pool)  # complete rows: the same in any format
        catalog = Catalog.from_settings(Settings(home=home))
        run = tr.train(catalog, config).run
        model = catalog.model(MODELS[kind])
        model.register(run)
        model.set_alias("champion", 1, expect=None)
        estimator = model.version(1).load()
        catalog.close()
        bodies = root / kind / "bodies.jsonl"
        with bodies.open("w") as fh:
            for i in range(len(inputs)):  # what MLflow's client sends for a 1-row DataFrame
                row = inputs.iloc[[i]]
                fh.write(json.dumps({"dataframe_split": json.loads(
                    row.to_json(orient="split", index=False))}) + "\n")
        table = pa.Table.from_pandas(inputs, preserve_index=False)
        one = [table.slice(i, 1).to_batches()[0] for i in range(min(200, len(inputs)))]
        for b in one[:20]:
            estimator.predict_proba(b)
        times = []
        for b in one:
            t0 = time.perf_counter()
            estimator.predict_proba(b)
            times.append((time.perf_counter() - t0) * 1000)
        answer[kind] = {"home": str(home), "bodies": str(bodies), "rows": len(inputs),
                        "floor_ms": float(np.median(times)), "run_id": run.id}
        try:
            answer[kind]["pyfunc"] = str(save_pyfunc(root / kind / "pyfunc", estimator))
        except Exception as exc:  # MLflow not installed or not able to save: no comparison
            answer["mlflow_error"] = f"{type(exc).__name__}: {exc}"[:300]
    answer["seconds"] = time.perf_counter() - start
    return answer


def save_pyfunc(path: Path, estimator: Any) -> Path:
    """``estimator`` (a batchml flavor) as an MLflow pyfunc model: its bytes as the artifact,
    a ``PythonModel`` whose predict calls its ``predict_proba`` (label and probability, as
    batchml answers)."""
    import shutil

    import mlflow.pyfunc

    flavor = estimator.flavor

    class BatchmlModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined, misc]
        def load_context(self, context):  # type: ignore[no-untyped-def]  # noqa: ANN001
            from batchml.estimators import load_estimator

            data = Path(context.artifacts["model"]).read_bytes()
            self.estimator = load_estimator(flavor, data)

        # no type hints: MLflow would read them as the model's input type
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # noqa: ANN001
            import numpy as np
            import pandas as pd

            proba = np.asarray(self.estimator.predict_proba(model_input))
            labels = np.asarray(self.estimator.classes_)[proba.argmax(axis=1)]
            return pd.DataFrame({"label": labels, "proba": proba.max(axis=1)})

    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_file = path.parent / f"model{estimator.file_suffix}"
    model_file.write_bytes(estimator.to_bytes())
    mlflow.pyfunc.save_model(str(path), python_model=BatchmlModel(),
                             artifacts={"model": str(model_file)}, pip_requirements=[])
    return path


# --- load: a closed-loop HTTP/1.1 client (a child process) ----------------------------------


async def _load(p: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    url = urlsplit(p["url"])
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/"
    bodies = [line.strip().encode() for line in Path(p["bodies"]).read_text().splitlines()
              if line.strip()]
    requests = [b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
    clients, total, warmup = int(p["clients"]), int(p["requests"]), int(p["warmup"])
    max_s = float(p["max_s"])
    latencies: list[float] = []
    state: dict[str, Any] = {"sent": 0, "errors": 0, "first_error": None, "warm": 0,
                             "start": 0.0, "stop_at": 0.0}
    go = asyncio.Event()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  request: bytes) -> tuple[int, bytes]:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    def check(status: int, body: bytes) -> None:
        ok = status == 200 and len(json.loads(body).get("predictions", [])) == 1
        if not ok:
            state["errors"] += 1
            if state["first_error"] is None:
                state["first_error"] = f"{status}: {body[:300]!r}"

    async def client(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in range(max(1, warmup // clients)):  # warm, not counted
                check(*await one(reader, writer, requests[(k + i * clients) % len(requests)]))
            state["warm"] += 1
            if state["warm"] == clients:  # the last one warm starts the clock for all
                state["start"] = time.perf_counter()
                state["stop_at"] = state["start"] + max_s
                go.set()
            await go.wait()
            while state["sent"] < total and time.perf_counter() < state["stop_at"]:
                i = state["sent"]
                state["sent"] += 1
                t0 = time.perf_counter()
                status, body = await one(reader, writer, requests[i % len(requests)])
                latencies.append((time.perf_counter() - t0) * 1000)
                check(status, body)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - state["start"]
    return {"count": len(latencies), "wall_s": wall, "latencies_ms": latencies,
            "errors": state["errors"], "first_error": state["first_error"],
            "clients": clients, "timed_out": len(latencies) < total}


def main() -> None:
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    if command == "prepare":
        answer = prepare(payload)
    elif command == "load":
        answer = asyncio.run(_load(payload))
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
