"""B8: claims from several worker processes, on PostgreSQL and on one DuckDB file.

For each worker count (1, 2, 4, 8) and each backend: a fresh catalog (a new DuckDB file; a new
database on a throwaway PostgreSQL server, durable, see :func:`bench.common.postgres_server`)
holding one tagged ``train`` run and ``b8_files`` discovered files; then that many worker
processes (``python -m bench.b8_claims JSON``), started and warmed up (catalog opened, the
tagged model looked up) before a common go. Each loops as ``Worker.run_batch`` does per batch,
without a model and without reading any file:

1. ``Ledger.claim_batch(tag=..., expect_run_id=...)``: model chosen, up to ``b8_batch`` files
   claimed and their batch opened in one transaction (timed: the claim latency);
2. inside ``catalog.hold()`` (as ``run_batch``), ``b8_work_ms`` of fake work per file
   (``time.sleep``: no CPU taken from the catalog on a small machine);
3. ``Ledger.record_files(..., end=...)``: the outcomes and the batch's end, one transaction;

until a claim comes back empty. Transient catalog errors (``CatalogBusy``,
``CatalogUnavailable``) are counted and the call retried after 10 ms. Every file must be claimed
and recorded exactly once (each worker's claimed and recorded ids, and the ledger's
``batch_files`` rows, are checked), or the benchmark fails.

Figures: files/s (all files over the time from the first worker's go to the last worker's
end), claim latency p50 (p95 in the notes) per ``claim_batch`` call that claimed something,
catalog time per file at the largest worker count (claim + record time of all workers over the
files, lock waits included), retries, worker processes that exited abnormally after finishing
their loop (counted and shown with target 0; a worker that dies before writing its account
fails the benchmark), and the exactly-once check. PostgreSQL rows carry the
DuckDB figure of the same worker count as their floor: the ratio column reads PostgreSQL /
DuckDB.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import PYTHON, ROOT, Context, Figure, clean_env, figure, percentile, postgres_server

TAG = "deployment_candidate"
FLOW = "train"
LEASE_S = 300.0  # the default BATCHML_LEASE_S: no lease expires during a run
BACKENDS = {"duckdb": "DuckDB file", "pg": "PostgreSQL"}


# --- the runner's side ----------------------------------------------------------------------


def setup(url: str, files: int) -> str:
    """A catalog at ``url`` with one completed, tagged ``train`` run and ``files`` discovered
    files; returns the run id. The catalog is let go (DuckDB: published and closed), so the
    runner holds nothing while the workers run."""
    from datetime import UTC, datetime, timedelta

    from batchml import Catalog
    from batchml.catalog import FileRef, Ledger

    catalog = Catalog(url)
    run = catalog.create_run(FLOW, params={"model": "b8"})
    run.finish()
    run.add_tag(TAG)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    refs = [FileRef(f"file:///bench/b8/inbox/part-{i:05d}.parquet", size=10_000 + i,
                    mtime=t0 + timedelta(seconds=i)) for i in range(files)]
    new = Ledger(catalog).discover(refs)
    if len(new) != files:
        raise RuntimeError(f"discovered {len(new)} of {files} files")
    catalog.publish()
    catalog.close()
    return run.id


def check(url: str, files: int, outs: list[dict[str, Any]]) -> dict[str, int]:
    """Every file claimed and recorded exactly once: by the workers' own accounts and by the
    ledger. Raises when not; returns the counts."""
    from batchml import Catalog
    from batchml.catalog import Ledger

    claimed = Counter(fid for o in outs for fid in o["claimed"])
    recorded = Counter(fid for o in outs for fid in o["recorded"])
    catalog = Catalog(url)
    try:
        counts = Ledger(catalog).counts()
        with catalog.backend.transaction() as con:
            rows, distinct, batches = con.execute(
                "SELECT count(*), count(DISTINCT file_id), count(DISTINCT batch_id)"
                " FROM batch_files").fetchone()
            open_batches, batch_files = con.execute(
                "SELECT count(*) FILTER (WHERE status <> 'completed'), coalesce(sum(files), 0)"
                " FROM prediction_batches").fetchone()
    finally:
        catalog.close()
    result = {
        "claims_duplicated": sum(n - 1 for n in claimed.values() if n > 1),
        "records_duplicated": sum(n - 1 for n in recorded.values() if n > 1),
        "never_claimed": files - len(claimed), "never_recorded": files - len(recorded),
        "scored": counts.get("scored", 0), "batch_files": int(rows),
        "batch_files_distinct": int(distinct), "batches": int(batches),
        "batches_not_completed": int(open_batches), "batch_file_total": int(batch_files),
    }
    bad = (result["claims_duplicated"] or result["records_duplicated"]
           or result["never_claimed"] or result["never_recorded"]
           or not (result["scored"] == result["batch_files"] == result["batch_files_distinct"]
                   == result["batch_file_total"] == files)
           or result["batches_not_completed"])
    if bad:
        raise RuntimeError(f"B8: files not claimed and recorded exactly once: {result}")
    return result


def run_workers(url: str, model: str, workers: int, *, batch: int, work_ms: float,
                tmp: Path, timeout_s: float = 900) -> list[dict[str, Any]]:
    """Start ``workers`` processes on ``url``, wait until each is warm, say go, collect their
    JSON accounts."""
    procs: list[tuple[subprocess.Popen[str], Path, Path]] = []

    def failed(proc: subprocess.Popen[str], err: Path, what: str) -> RuntimeError:
        return RuntimeError(f"a B8 worker {what} ({proc.returncode}):\n"
                            f"{err.read_text(errors='replace')[-4000:]}")

    with contextlib.ExitStack() as stack:
        for i in range(workers):
            out, err = tmp / f"worker-{i}.json", tmp / f"worker-{i}.err"
            payload = {"url": url, "model": model, "batch": batch, "work_ms": work_ms,
                       "out": str(out)}
            proc = subprocess.Popen([PYTHON, "-m", "bench.b8_claims", json.dumps(payload)],
                                    env=clean_env(), cwd=ROOT, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE,
                                    stderr=stack.enter_context(err.open("w")), text=True,
                                    start_new_session=True)
            stack.callback(_reap, proc)
            procs.append((proc, out, err))
        for proc, _, err in procs:  # each says "ready" once its catalog is open and warm
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "ready":
                proc.wait(timeout=30)
                raise failed(proc, err, f"failed to start (said {line.strip()!r})")
        for proc, _, _ in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        outs = []
        for proc, out, err in procs:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if not out.exists():  # died before the end of its loop: nothing to measure
                raise failed(proc, err, "exited before its end")
            account = json.loads(out.read_text())
            # a worker that finished its loop and wrote its account but then exited abnormally
            # (seen: SIGABRT at interpreter exit on DuckDB) is counted and shown, not hidden
            account["returncode"] = rc
            if rc != 0:
                lines = err.read_text(errors="replace").strip().splitlines()
                account["exit_error"] = lines[0][:200] if lines else ""
            outs.append(account)
        return outs


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill a worker still running (the run failed or timed out) and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def one(url: str, files: int, workers: int, *, batch: int, work_ms: float,
        tmp: Path) -> dict[str, Any]:
    """One measured run: a fresh catalog at ``url``, ``workers`` processes until it is empty."""
    model = setup(url, files)
    outs = run_workers(url, model, workers, batch=batch, work_ms=work_ms, tmp=tmp)
    checked = check(url, files, outs)
    wall = max(o["end"] for o in outs) - min(o["go"] for o in outs)
    catalog_s = sum(sum(o["claims"]) + sum(o["empty"]) + sum(o["records"]) for o in outs)
    retries: Counter[str] = Counter()
    for o in outs:
        retries.update(o["retries"])
    return {
        "workers": workers, "files": files, "wall_s": wall, "files_per_s": files / wall,
        "claims": [v for o in outs for v in o["claims"]],
        "records": [v for o in outs for v in o["records"]],
        "catalog_ms_per_file": catalog_s * 1000 / files,
        "retries": dict(retries), "check": checked,
        "bad_exits": [f"{o['returncode']}: {o.get('exit_error', '')}" for o in outs
                      if o["returncode"] != 0],
        "per_worker_files": [len(o["recorded"]) for o in outs],
    }


def run(ctx: Context) -> list[Figure]:
    files = ctx.sizes["b8_files"]
    counts: list[int] = ctx.sizes["b8_workers"]
    batch = ctx.sizes["b8_batch"]
    work_ms = ctx.sizes["b8_work_ms"]
    reps = ctx.sizes["b8_reps"]
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        b: {n: [] for n in counts} for b in BACKENDS}
    with postgres_server() as server:
        ctx.log(f"  B8 PostgreSQL server {server.url()}")
        for rep in range(reps):
            for n in counts:
                for backend in BACKENDS:  # interleaved: drift on a shared machine hits both
                    name = f"r{rep}_w{n}"
                    url = (str(ctx.dir("b8") / f"{name}.duckdb") if backend == "duckdb"
                           else server.create_database(f"b8_{name}"))
                    r = one(url, files, n, batch=batch, work_ms=work_ms,
                            tmp=ctx.dir("b8", backend, name))
                    results[backend][n].append(r)
                    ctx.log(f"  B8 {BACKENDS[backend]}, {n} worker(s): "
                            f"{r['files_per_s']:,.0f} files/s, claim p50 "
                            f"{percentile(r['claims'], 50) * 1000:.1f} ms p95 "
                            f"{percentile(r['claims'], 95) * 1000:.1f} ms, catalog "
                            f"{r['catalog_ms_per_file']:.2f} ms/file, retries "
                            f"{sum(r['retries'].values())}"
                            + (f", abnormal exits {len(r['bad_exits'])}" if r["bad_exits"]
                               else ""))
    return figures(results, counts, files=files, batch=batch, work_ms=work_ms)


def figures(results: dict[str, dict[int, list[dict[str, Any]]]], counts: list[int], *,
            files: int, batch: int, work_ms: float) -> list[Figure]:
    out: list[Figure] = []
    floor: dict[str, float] = {}
    how = f"{files:,} files, {batch} per claim, {work_ms:g} ms fake work per file"
    for n in counts:
        for backend, label in BACKENDS.items():
            rs = results[backend][n]
            fps = [r["files_per_s"] for r in rs]
            one_worker = results[backend][counts[0]]
            scale = (percentile(fps, 50) / percentile([r["files_per_s"] for r in one_worker], 50)
                     if n != counts[0] else None)
            key = f"files_per_s.{n}"
            f = figure("B8", f"{backend}.{key}", f"files/s, {n} worker process(es), {label}",
                       fps, "files/s", floor=floor.get(key) if backend == "pg" else None,
                       notes=f"{how}; wall " + ", ".join(f"{r['wall_s']:.2f}" for r in rs)
                       + " s" + (f"; {scale:.2f}x {counts[0]} worker" if scale else ""))
            out.append(f)
            floor[key] = f.value
    for n in counts:
        for backend, label in BACKENDS.items():
            rs = results[backend][n]
            claims = [v * 1000 for r in rs for v in r["claims"]]
            records = [v * 1000 for r in rs for v in r["records"]]
            key = f"claim_p50.{n}"
            f = figure("B8", f"{backend}.{key}",
                       f"claim_batch latency p50, {n} worker process(es), {label}", claims,
                       "ms", floor=floor.get(key) if backend == "pg" else None,
                       notes=f"p95 {percentile(claims, 95):.1f} ms over {len(claims)} claims; "
                             f"record_files p50 {percentile(records, 50):.1f} ms p95 "
                             f"{percentile(records, 95):.1f} ms")
            out.append(f)
            floor[key] = f.value
    big = counts[-1]
    for backend, label in BACKENDS.items():
        rs = results[backend][big]
        key = f"catalog_ms_per_file.{big}"
        per_file = [r["catalog_ms_per_file"] for r in rs]
        pg = backend == "pg"
        f = figure("B8", f"{backend}.{key}",
                   f"catalog time per file (claim + record, lock waits included), {big} "
                   f"worker processes, {label}", per_file, "ms",
                   floor=floor.get(key) if pg else None, target="<= 5 ms" if pg else "",
                   met=percentile(per_file, 50) <= 5 if pg else None,
                   notes="claim_batch + record_files time of all workers / files")
        out.append(f)
        floor[key] = f.value
    for backend, label in BACKENDS.items():
        total: Counter[str] = Counter()
        per: list[str] = []
        for n in counts:
            c: Counter[str] = Counter()
            for r in results[backend][n]:
                c.update(r["retries"])
            total.update(c)
            if c:
                per.append(f"{n} workers: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        out.append(figure(
            "B8", f"{backend}.retries", f"transient catalog errors retried, all runs, {label}",
            [sum(total.values())], "errors",
            notes="; ".join(per) or "none (CatalogBusy / CatalogUnavailable)"))
    for backend, label in BACKENDS.items():
        exits: list[str] = []
        for n in counts:
            bad = [e for r in results[backend][n] for e in r["bad_exits"]]
            if bad:
                exits.append(f"{n} workers: {len(bad)} ({'; '.join(sorted(set(bad)))})")
        started = sum(n * len(results[backend][n]) for n in counts)
        out.append(figure(
            "B8", f"{backend}.bad_exits", "worker processes that exited abnormally after "
            f"finishing their loop and writing their account, all runs, {label}",
            [sum(len(r["bad_exits"]) for rs in results[backend].values() for r in rs)],
            "processes", target="0", met=not exits,
            notes=(f"of {started}; " + "; ".join(exits)) if exits else f"none of {started}"))
    dup = sum(r["check"]["claims_duplicated"] + r["check"]["records_duplicated"]
              for b in results.values() for rs in b.values() for r in rs)
    runs = sum(len(rs) for b in results.values() for rs in b.values())
    out.append(figure(
        "B8", "duplicates", "files claimed or recorded more than once, all runs, both backends",
        [dup], "files", target="0 (exactly once)", met=dup == 0,
        notes=f"{runs} runs of {files:,} files: every file claimed once, recorded once, one "
              "batch_files row, every batch completed"))
    return out


# --- the worker process ---------------------------------------------------------------------


def worker(p: dict[str, Any]) -> None:
    """One worker process: warm up, say ready, wait for go, claim-work-record until empty."""
    from batchml import Catalog
    from batchml.catalog import Ledger, worker_id
    from batchml.errors import CatalogError
    from batchml.scoring import FileOutcome

    catalog = Catalog(p["url"])
    ledger = Ledger(catalog)
    model, batch, work_s = p["model"], int(p["batch"]), float(p["work_ms"]) / 1000
    if catalog.latest_run(FLOW, tag=TAG).id != model:  # a worker loads its model first
        raise RuntimeError("the tagged model is not the one set up")
    name = worker_id()
    retries: Counter[str] = Counter()

    def retried(fn: Any, *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                return fn(*args, **kwargs)
            except CatalogError as exc:
                if not exc.transient:
                    raise
                retries[type(exc).__name__] += 1
                time.sleep(0.01)

    print("ready", flush=True)
    sys.stdin.readline()
    go = time.time()
    claims: list[float] = []
    empty: list[float] = []
    records: list[float] = []
    claimed: list[str] = []
    recorded: list[str] = []
    while True:
        t0 = time.perf_counter()
        claim = retried(ledger.claim_batch, name, limit=batch, lease_s=LEASE_S, tag=TAG,
                        flow=FLOW, expect_run_id=model)
        took = time.perf_counter() - t0
        if claim.model_run_id != model:
            raise RuntimeError(f"claim_batch chose {claim.model_run_id}, not {model}")
        if claim.batch_id is None:
            empty.append(took)
            break
        claims.append(took)
        claimed += [r.file_id for r in claim.records]
        start = time.perf_counter()
        with catalog.hold():  # as run_batch: one connection from the first file to the record
            outcomes = []
            for r in claim.records:
                w0 = time.perf_counter()
                time.sleep(work_s)  # the fake work
                outcomes.append(FileOutcome(
                    r.file_id, r.source_uri, "scored", model,
                    output_uri=f"file:///bench/b8/outbox/{r.file_id}.parquet", rows=1000,
                    positives=500, duration_ms=(time.perf_counter() - w0) * 1000))
            t1 = time.perf_counter()
            end = {"files": 0, "rows": 0, "error": None,
                   "duration_ms": (t1 - start) * 1000}
            done = retried(ledger.record_files, claim.batch_id, outcomes, name, end=end)
            records.append(time.perf_counter() - t1)
        recorded += sorted(done)
    Path(p["out"]).write_text(json.dumps({
        "name": name, "go": go, "end": time.time(), "claims": claims, "empty": empty,
        "records": records, "claimed": claimed, "recorded": recorded,
        "retries": dict(retries)}))
    catalog.close()


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
