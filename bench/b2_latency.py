"""B2: drop-to-output latency of ``batchml serve``.

Files of 1,000 rows are dropped one at a time: copied into the inbox under a hidden temp name,
then ``os.rename``-d into place (atomic landing). The latency runs from the rename to the poll
that first sees the file's ``batch_files`` row with status 'scored' (polled with
``batchml.Catalog(path).sql`` at most every 50 ms; the connection is closed between files).

The floor is the plain script's warm time to score one such file (read + predict + write).

B2 with a reader attached: the same drops while a person's DuckDB session holds the published
copy open (``duckdb.connect(catalog.readonly.duckdb, read_only=True)`` in another process,
querying it every 100 ms like a dashboard). Each file's latency is measured as above; its
staleness is the time from the 'scored' row in the catalog until a fresh connection to the
published copy shows it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .common import Context, Figure, child, figure, percentile, summary, write_scoring_file
from .serving import land, serve_for


def staged_files(ctx: Context, prefix: str, n: int, rows: int, seed0: int) -> list:
    """``n`` small parquet files written once into a staging dir (not the inbox)."""

    def make() -> list:
        staging = ctx.dir("staging", prefix)
        start = time.perf_counter()
        paths = [write_scoring_file(staging / f"{prefix}_{i:04d}.parquet", rows, seed=seed0 + i)
                 for i in range(n)]
        ctx.log(f"  staged {n} files of {rows:,} rows in {time.perf_counter() - start:.1f} s")
        return paths

    return ctx.cached(f"staged:{prefix}:{n}:{rows}", make)


_DASHBOARD = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1], read_only=True)
print("open", flush=True)
while True:
    con.execute("SELECT count(*) FROM prediction_outputs").fetchall()
    time.sleep(0.1)
"""


def drop(svc, src: Path, name: str) -> tuple[Path, float | None, float | None]:  # type: ignore[no-untyped-def]
    """Land ``src`` in the inbox as ``name`` (atomic rename) and wait until it is scored:
    (its path, the time it was seen scored or None on a 120 s timeout, the latency)."""
    tmp = land(src, svc.inbox, name)
    target = svc.inbox / name
    start = time.perf_counter()
    os.rename(tmp, target)
    seen = svc.wait_scored(str(target), timeout_s=120)
    svc.close_catalog()
    return target, seen, None if seen is None else seen - start


def _visible(published: Path, uri: str) -> bool:
    import duckdb

    try:
        with duckdb.connect(str(published), read_only=True) as con:
            row = con.execute("SELECT count(*) FROM batch_files WHERE source_uri = ? AND "
                              "status = 'scored'", [uri]).fetchone()
    except duckdb.Error:
        return False
    return bool(row and row[0])


def with_reader(ctx: Context, svc, files: list[Path], floor: float) -> list[Figure]:  # type: ignore[no-untyped-def]
    """Drop ``files`` while a session holds the published copy open: latency and staleness."""
    published = svc.catalog_path.with_name("catalog.readonly.duckdb")
    deadline = time.monotonic() + 60
    while not published.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    reader = subprocess.Popen([sys.executable, "-c", _DASHBOARD, str(published)],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    latencies: list[float] = []
    stale: list[float] = []
    timeouts = 0
    try:
        for src in files:
            target, seen, latency = drop(svc, src, f"b2r_{src.name}")
            if seen is None or latency is None:
                timeouts += 1
                latencies.append(120.0)
                continue
            latencies.append(latency)
            while not _visible(published, str(target)) and time.perf_counter() - seen < 60:
                time.sleep(0.02)
            stale.append(time.perf_counter() - seen)
            target.unlink(missing_ok=True)
    finally:
        reader.kill()
        reader.wait()
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    ctx.log(f"  B2 with a reader: p50 {p50:.3f} s, p95 {p95:.3f} s; copy stale p50 "
            f"{percentile(stale, 50):.2f} s, max {max(stale):.2f} s")
    note = f"{len(latencies)} files; a session held the published copy open throughout"
    if timeouts:
        note += f"; {timeouts} timed out (counted as 120 s)"
    return [
        figure("B2", "reader_p50", "drop-to-output p50, a DuckDB session holding the "
               "published copy", [p50], "s", floor=floor, notes=note),
        figure("B2", "reader_p95", "drop-to-output p95, a DuckDB session holding the "
               "published copy", [p95], "s", floor=floor, target="<= 2.0 s",
               met=p95 <= 2.0 and not timeouts),
        figure("B2", "copy_stale_p50", "published copy behind the catalog (scored until "
               "visible to a new session), p50", [percentile(stale, 50)], "s"),
        figure("B2", "copy_stale_max", "published copy behind the catalog, max",
               [max(stale)], "s", target="a few seconds (<= 5 s)", met=max(stale) <= 5.0),
    ]


def run(ctx: Context) -> list[Figure]:
    n = ctx.sizes["b2_files"]
    rows = 1_000
    files = staged_files(ctx, "drop", n + 1, rows, seed0=1_000)
    reader_files = staged_files(ctx, "dropr", max(10, n // 2), rows, seed0=5_000)
    info = ctx.models()["sklearn_text"]
    floor_ans, _ = child("floor", {"flavor": info["flavor"], "model_file": info["model_file"],
                                   "inputs": [str(p) for p in files[:min(len(files), 20)]],
                                   "out_dir": str(ctx.dir("b2", "floor"))})
    floor = summary(floor_ans["seconds"])["median"]

    svc = serve_for(ctx)
    latencies: list[float] = []
    timeouts = 0
    first: float | None = None
    landed = []
    for i, src in enumerate(files):
        target, _, measured = drop(svc, src, f"b2_{src.name}")
        landed.append(target)
        if measured is None:
            timeouts += 1
            latency = 120.0
        else:
            latency = measured
        if i == 0:
            first = latency  # the service's first file also loads the model: reported apart
        else:
            latencies.append(latency)
    for path in landed:  # scored: clear the inbox for the next benchmark
        path.unlink(missing_ok=True)
    ctx.log(f"  B2 latencies: p50 {percentile(latencies, 50):.3f} s, "
            f"p95 {percentile(latencies, 95):.3f} s, first {first:.2f} s")

    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    note = f"{len(latencies)} files of {rows:,} rows after 1 warm-up file"
    if timeouts:
        note += f"; {timeouts} timed out (counted as 120 s)"
    figs = [
        figure("B2", "p50", f"drop-to-output latency p50 ({n} files x {rows:,} rows)",
               [p50], "s", floor=floor, target="<= 1.0 s", met=p50 <= 1.0 and not timeouts,
               notes=note, extra={"latencies_s": latencies}),
        figure("B2", "p95", "drop-to-output latency p95", [p95], "s", floor=floor,
               target="<= 2.0 s", met=p95 <= 2.0 and not timeouts,
               notes=f"min {min(latencies):.3f} s, max {max(latencies):.3f} s"),
        figure("B2", "first", "latency of the first file (model load in the service)",
               [first or 0.0], "s", floor=floor),
        figure("B2", "floor", "floor: plain warm scoring of one 1,000-row file",
               floor_ans["seconds"], "s"),
        figure("B2", "serve_start", "batchml serve start until running (own Prefect server)",
               [svc.start_s], "s"),
    ]
    # Every latency is a sample: report the median/min/max of the distribution itself.
    figs[0].samples = latencies
    figs[0].min, figs[0].max, figs[0].n = min(latencies), max(latencies), len(latencies)
    return figs + with_reader(ctx, svc, reader_files, floor)
