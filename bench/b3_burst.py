"""B3: a burst of files dropped at once into the inbox of a running ``batchml serve``.

The files are written beforehand into a staging dir on the same filesystem and renamed into
the inbox back to back. The clock runs from the first rename until every file has a
'scored' batch_files row (polled every 0.5 s, closing the connection in between). Exactly once is then checked three ways: one batch_files row per
file, every ledger row 'scored', and exactly one output parquet per input in the outbox.

The floor is the plain script scoring a sample of the same files one after another in one
warm process (files/s).
"""

from __future__ import annotations

import os
import time

from .b2_latency import staged_files
from .common import Context, Figure, child, figure
from .serving import serve_for


def run(ctx: Context) -> list[Figure]:
    n = ctx.sizes["b3_files"]
    rows = 1_000
    reps = ctx.sizes["b3_reps"]
    info = ctx.models()["sklearn_text"]
    seconds, files_s, rows_s, once, extra = [], [], [], [], []
    floor_files_s = None
    svc = None
    for rep in range(reps):
        files = staged_files(ctx, f"burst{rep}", n, rows, seed0=10_000 + rep * n)
        if floor_files_s is None:
            sample = [str(p) for p in files[:min(n, 100)]]
            ans, _ = child("floor", {"flavor": info["flavor"], "model_file": info["model_file"],
                                     "inputs": sample, "out_dir": str(ctx.dir("b3", "floor"))})
            floor_files_s = len(sample) / sum(ans["seconds"])
        svc = serve_for(ctx)
        prefix = f"b3r{rep}_"
        targets = [svc.inbox / f"{prefix}{p.name}" for p in files]
        start = time.perf_counter()
        for src, target in zip(files, targets, strict=True):
            os.rename(src, target)  # same filesystem: atomic landing
        renamed = time.perf_counter() - start
        like = str(svc.inbox / prefix) + "%"
        deadline = start + max(600.0, 2.0 * n)
        done = 0
        while time.perf_counter() < deadline:
            tick = time.perf_counter()
            done = int(svc.sql("SELECT count(DISTINCT file_id) AS n FROM batch_files"
                               " WHERE status = 'scored' AND source_uri LIKE ?",
                               [like])["n"].iloc[0])
            if done >= n:
                break
            svc._check_alive()
            # every 0.5 s: a waiting reader makes the service drop and reopen its catalog
            # connection, so polling faster would slow down what it measures
            time.sleep(max(0.0, 0.5 - (time.perf_counter() - tick)))
        elapsed = time.perf_counter() - start
        svc.close_catalog()
        time.sleep(2.0)  # would a duplicate appear late? give the service a moment
        check = verify(svc, like, prefix, n)
        svc.close_catalog()
        ctx.log(f"  B3 rep {rep + 1}/{reps}: {done}/{n} files scored in {elapsed:.1f} s "
                f"(renames took {renamed * 1000:.0f} ms); exactly once: {check['exactly_once']}")
        seconds.append(elapsed)
        files_s.append(done / elapsed)
        rows_s.append(done * rows / elapsed)
        once.append(1.0 if check["exactly_once"] and done >= n else 0.0)
        extra.append(check)
        for target in targets:
            target.unlink(missing_ok=True)
    all_once = all(v == 1.0 for v in once)
    return [
        figure("B3", "seconds", f"burst: {n} files x {rows:,} rows dropped at once, until all "
               "scored", seconds, "s", target="<= 50 s, exactly once",
               met=max(seconds) <= 50 and all_once, extra={"checks": extra}),
        figure("B3", "files_per_s", "burst throughput", files_s, "files/s",
               floor=floor_files_s,
               notes="floor: plain script scoring up to 100 of the files in one warm process"),
        figure("B3", "rows_per_s", "burst throughput", rows_s, "rows/s",
               floor=floor_files_s * rows if floor_files_s else None),
        figure("B3", "exactly_once", "exactly once (batch_files rows, ledger, outbox files)",
               once, "1 = yes", target="1", met=all_once),
    ]


def verify(svc, like: str, prefix: str, n: int) -> dict:
    bf = svc.sql("SELECT count(*) AS rows, count(DISTINCT file_id) AS files,"
                 " count(*) FILTER (WHERE status = 'scored') AS scored,"
                 " coalesce(sum(rows), 0) AS scored_rows"
                 " FROM batch_files WHERE source_uri LIKE ?", [like]).iloc[0]
    ledger = svc.sql("SELECT state, count(*) AS n FROM files WHERE source_uri LIKE ?"
                     " GROUP BY state", [like])
    states = {r.state: int(r.n) for r in ledger.itertuples()}
    outputs = [p for p in svc.outbox.rglob(f"{prefix}*.parquet")]
    check = {"batch_files_rows": int(bf["rows"]), "batch_files_distinct": int(bf["files"]),
             "batch_files_scored": int(bf["scored"]), "rows_scored": int(bf["scored_rows"]),
             "ledger_states": states, "outbox_files": len(outputs), "expected": n}
    check["exactly_once"] = (check["batch_files_rows"] == n and check["batch_files_distinct"] == n
                             and check["batch_files_scored"] == n and states == {"scored": n}
                             and check["outbox_files"] == n)
    return check
