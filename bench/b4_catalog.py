"""B4: the catalog at 1k / 10k / 100k runs.

The catalog is filled with bulk SQL (``INSERT ... SELECT FROM range()`` inside one
``catalog.db.write()`` transaction): runs of two flows, 10 metrics each, ~1% of the train runs
tagged ``deployment_candidate`` (some of them later untagged, so history exists). At each size:
``latest_run(flow, tag=...)`` p50 on a warm connection (and, apart, with the connection
closed before each call), then logging one run through the public API (five calls, and the same
run in two commits with ``create_run(params=, metrics=, tags=)`` + ``finish``) and adding a tag.
"""

from __future__ import annotations

import time

from .common import Context, Figure, figure, percentile

TAG = "deployment_candidate"


def populate(catalog, start: int, stop: int) -> None:
    """Runs ``start+1 .. stop``: 90% flow 'train', 10% flow 'other'; 10 metrics each;
    every 100th train run tagged (i % 100 == 1), a third of those tags removed again
    (i % 300 == 1), so the tags table holds history."""
    with catalog.db.write() as con:
        con.execute(f"""
            INSERT INTO runs (run_id, flow, number, status, started_at, ended_at, params)
            SELECT CASE WHEN i % 10 = 0 THEN 'other/' ELSE 'train/' END || i::VARCHAR,
                   CASE WHEN i % 10 = 0 THEN 'other' ELSE 'train' END, i,
                   CASE WHEN i % 50 = 7 THEN 'failed' ELSE 'completed' END,
                   TIMESTAMPTZ '2024-01-01' + to_seconds(i * 60),
                   TIMESTAMPTZ '2024-01-01' + to_seconds(i * 60 + 30),
                   '{{"lr": 0.01, "epochs": 10, "seed": ' || i::VARCHAR || '}}'
            FROM range({start + 1}, {stop + 1}) t(i)""")
        con.execute(f"""
            INSERT INTO metrics (run_id, key, value, step, recorded_at)
            SELECT CASE WHEN i % 10 = 0 THEN 'other/' ELSE 'train/' END || i::VARCHAR,
                   'metric_' || k::VARCHAR, random(), 0,
                   TIMESTAMPTZ '2024-01-01' + to_seconds(i * 60 + 30)
            FROM range({start + 1}, {stop + 1}) t(i), range(10) m(k)""")
        con.execute(f"""
            INSERT INTO tags (run_id, tag, added_at, removed_at, note)
            SELECT 'train/' || i::VARCHAR, '{TAG}',
                   TIMESTAMPTZ '2024-01-01' + to_seconds(i * 60 + 31),
                   CASE WHEN i % 300 = 1 THEN TIMESTAMPTZ '2024-01-01' + to_seconds(i * 60 + 99)
                   END, 'bulk'
            FROM range({start + 1}, {stop + 1}) t(i) WHERE i % 100 = 1""")


def expected_latest(stop: int) -> str:
    """The newest run the fill tagged and did not untag: i % 100 == 1 (a 'train' run,
    'completed' since i % 50 == 1) and i % 300 != 1."""
    i = stop - ((stop - 1) % 100)
    while i % 300 == 1:
        i -= 100
    return f"train/{i}"


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run(ctx: Context) -> list[Figure]:
    from batchml import Catalog, Run

    sizes = ctx.sizes["b4_runs"]
    lookups = ctx.sizes["b4_lookups"]
    logs = ctx.sizes["b4_logs"]
    path = ctx.dir("b4") / "catalog.duckdb"
    catalog = Catalog(path)
    figures: list[Figure] = []
    p50s: dict[int, float] = {}
    have = 0
    for n in sizes:
        start = time.perf_counter()
        populate(catalog, have, n)
        have = n
        fill_s = time.perf_counter() - start
        want = expected_latest(n)
        got = catalog.latest_run("train", tag=TAG).id
        if got != want:
            raise RuntimeError(f"latest_run returned {got}, expected {want}")
        catalog.db.close()
        _timed(lambda: catalog.latest_run("train", tag=TAG), 5)  # opens the connection
        warm = _timed(lambda: catalog.latest_run("train", tag=TAG), lookups)
        p50s[n] = percentile(warm, 50)

        def cold() -> None:
            catalog.db.close()
            catalog.latest_run("train", tag=TAG)

        cold_t = _timed(cold, max(5, lookups // 10))
        figures.append(figure(
            "B4", f"lookup_p50.{n}", f"latest_run(flow, tag) p50 at {n:,} runs",
            [v * 1000 for v in warm], "ms", target="<= 2 ms" if n == sizes[-1] else "",
            met=(p50s[n] * 1000 <= 2.0) if n == sizes[-1] else None,
            notes=f"p95 {percentile(warm, 95) * 1000:.2f} ms; with a fresh connection each "
                  f"call p50 {percentile(cold_t, 50) * 1000:.1f} ms; bulk fill {fill_s:.1f} s"))
        ctx.log(f"  B4 {n:,} runs: lookup p50 {p50s[n] * 1000:.2f} ms "
                f"(cold {percentile(cold_t, 50) * 1000:.1f} ms)")

    small, big = sizes[0], sizes[-1]
    flat = p50s[big] / p50s[small]
    figures.append(figure("B4", "lookup_flatness", f"lookup p50 at {big:,} / at {small:,} runs",
                          [flat], "x", target="<= 1.5 (flat in N)", met=flat <= 1.5))

    params = {f"param_{k}": k * 0.5 for k in range(10)}
    metrics = {f"m_{k}": k * 0.1 for k in range(10)}

    def log_one() -> None:
        run = catalog.create_run("bench", params=params)
        run.log_metrics(metrics)
        run.add_tag("bench_a")
        run.add_tag("bench_b")
        run.finish()

    def log_two_commits() -> None:  # the same run in two commits: create_run(...) + finish
        run = catalog.create_run("bench", params=params, metrics=metrics,
                                 tags=["bench_a", "bench_b"])
        run.finish()

    _timed(log_one, 2)
    log_t = _timed(log_one, logs)
    _timed(log_two_commits, 2)
    log2_t = _timed(log_two_commits, logs)
    ids = iter([f"train/{i}" for i in range(big, 0, -1) if i % 10][:logs * 2])

    def tag_one() -> None:
        Run(catalog, next(ids)).add_tag("bench_hot")

    tag_t = _timed(tag_one, logs)
    catalog.db.close()
    p50_log = percentile(log_t, 50) * 1000
    figures.append(figure(
        "B4", "log_run_p50", f"log a run (create_run 10 params, log_metrics 10, add_tag x2, "
        f"finish) at {big:,} runs", [v * 1000 for v in log_t], "ms", target="<= 10 ms",
        met=p50_log <= 10, notes=f"p95 {percentile(log_t, 95) * 1000:.1f} ms; five calls, "
        "five commits"))
    p50_log2 = percentile(log2_t, 50) * 1000
    figures.append(figure(
        "B4", "log_run_2commits_p50", "log the same run in two commits (create_run with params, "
        f"metrics and tags; finish) at {big:,} runs", [v * 1000 for v in log2_t], "ms",
        target="<= 10 ms", met=p50_log2 <= 10,
        notes=f"p95 {percentile(log2_t, 95) * 1000:.1f} ms"))
    figures.append(figure(
        "B4", "add_tag_p50", f"add a tag to an existing run at {big:,} runs",
        [v * 1000 for v in tag_t], "ms", notes=f"p95 {percentile(tag_t, 95) * 1000:.1f} ms"))
    return figures
