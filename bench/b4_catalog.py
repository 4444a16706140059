"""B4: the catalog at 1k / 10k / 100k runs, on a DuckDB file and on PostgreSQL.

The catalog is filled with bulk SQL inside one write transaction per size (DuckDB:
``INSERT ... SELECT FROM range()`` through ``catalog.db.write()``; PostgreSQL: ``INSERT ...
SELECT FROM generate_series()`` through ``catalog.backend.pg.write()``, then ``ANALYZE`` as
autovacuum would): runs of two flows, 10 metrics each, ~3% of the runs tagged, with history
(see :func:`populate`). At each size: ``latest_run(flow, tag=...)`` p50 on a warm connection
(and, apart, with the connection closed before each call), then logging one run through the
public API (five calls, and the same run in two commits with ``create_run(params=, metrics=,
tags=)`` + ``finish``) and adding a tag.

The PostgreSQL half runs on a throwaway server (``tests/pgserver.py``, see
:func:`bench.common.postgres_server`) started durable (``fsync``, ``synchronous_commit``,
``full_page_writes`` on), as a production server is and as DuckDB is (it syncs its WAL at each
commit), on loopback: every statement is a network round trip, as it is to a real server.
Its rows carry the DuckDB figure of the same run as their floor, so the ratio column reads
PostgreSQL / DuckDB.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .common import Context, Figure, figure, percentile, postgres_server

TAG = "deployment_candidate"
OTHER_TAG = "reviewed"

# The fill, once per dialect. Run i (1-based): flow 'other' when i % 10 == 0, else 'train';
# 'failed' when i % 50 == 7; 10 metrics. Tags (~3% of runs):
#   TAG on train runs i % 100 == 1, removed again when i % 300 == 1 (history), and put back
#     on the older run later when i % 3000 == 301 (a rollback to an old model);
#   TAG on 'other' runs i % 1000 == 0 (another flow's tagged runs among the newest);
#   OTHER_TAG on runs i % 50 == 3 of both flows, removed again when i % 150 == 3.
_FILL: dict[str, dict[str, str]] = {
    "duckdb": {
        "series": "range({lo}, {hi}) t(i)",
        "ts": "TIMESTAMPTZ '2024-01-01' + to_seconds({secs})",
        "text": "i::VARCHAR",
        "k": "k::VARCHAR",
        "params": "'{\"lr\": 0.01, \"epochs\": 10, \"seed\": ' || i::VARCHAR || '}'",
        "metrics": "range({lo}, {hi}) t(i), range(10) m(k)",
    },
    "postgresql": {
        "series": "generate_series({lo}, {hi} - 1) t(i)",
        "ts": "TIMESTAMPTZ '2024-01-01' + make_interval(secs => {secs})",
        "text": "i::text",
        "k": "k::text",
        "params": "jsonb_build_object('lr', 0.01, 'epochs', 10, 'seed', i)",
        "metrics": "generate_series({lo}, {hi} - 1) t(i), generate_series(0, 9) m(k)",
    },
}


def fill_sql(dialect: str, start: int, stop: int) -> list[str]:
    """The statements that add runs ``start+1 .. stop`` (with their metrics and tags)."""
    d = _FILL[dialect]
    lo, hi = start + 1, stop + 1
    series = d["series"].format(lo=lo, hi=hi)

    def ts(secs: str) -> str:
        return d["ts"].format(secs=secs)

    flow = "CASE WHEN i % 10 = 0 THEN 'other' ELSE 'train' END"
    run_id = f"{flow} || '/' || {d['text']}"
    late = ts(f"{stop} * 60 + i")  # after every run of this fill: tagged later, on old runs
    return [
        f"""INSERT INTO runs (run_id, flow, number, status, started_at, ended_at, params)
            SELECT {run_id}, {flow}, i,
                   CASE WHEN i % 50 = 7 THEN 'failed' ELSE 'completed' END,
                   {ts('i * 60')}, {ts('i * 60 + 30')}, {d['params']}
            FROM {series}""",
        f"""INSERT INTO metrics (run_id, key, value, step, recorded_at)
            SELECT {run_id}, 'metric_' || {d['k']}, random(), 0,
                   {ts('i * 60 + 30')}
            FROM {d['metrics'].format(lo=lo, hi=hi)}""",
        f"""INSERT INTO tags (run_id, tag, added_at, removed_at, note)
            SELECT {run_id}, '{TAG}', {ts('i * 60 + 31')},
                   CASE WHEN i % 300 = 1 THEN {ts('i * 60 + 99')} END, 'bulk'
            FROM {series} WHERE i % 100 = 1 OR i % 1000 = 0
            UNION ALL
            SELECT {run_id}, '{TAG}', {late}, NULL, 'bulk: rollback'
            FROM {series} WHERE i % 3000 = 301
            UNION ALL
            SELECT {run_id}, '{OTHER_TAG}', {ts('i * 60 + 40')},
                   CASE WHEN i % 150 = 3 THEN {ts('i * 60 + 120')} END, 'bulk'
            FROM {series} WHERE i % 50 = 3""",
    ]


def populate(catalog: Any, start: int, stop: int) -> None:
    """Runs ``start+1 .. stop`` into a DuckDB catalog (one transaction)."""
    with catalog.db.write() as con:
        for stmt in fill_sql("duckdb", start, stop):
            con.execute(stmt)


def populate_pg(catalog: Any, start: int, stop: int) -> None:
    """Runs ``start+1 .. stop`` into a PostgreSQL catalog (one transaction), the flows' run
    counters set as ``create_run`` would have left them, then ANALYZE (what autovacuum does
    after such a load on a live server; the lookup's plan is the same without it)."""
    with catalog.backend.pg.write() as con:
        for stmt in fill_sql("postgresql", start, stop):
            con.execute(stmt)
        con.execute("INSERT INTO run_numbers (flow, last_number)"
                    " SELECT flow, max(number) FROM runs GROUP BY flow"
                    " ON CONFLICT (flow) DO UPDATE SET last_number = EXCLUDED.last_number")
    with catalog.backend.pg.read() as con:
        con.execute("ANALYZE runs, metrics, tags")


def expected_latest(stop: int) -> str:
    """The newest 'train' run the fill left tagged: i % 100 == 1 (completed, since
    i % 50 == 1), not untagged (i % 300 != 1) or tagged again (i % 3000 == 301)."""
    for i in range(stop, 0, -1):
        if i % 100 == 1 and (i % 300 != 1 or i % 3000 == 301):
            return f"train/{i}"
    raise ValueError(f"no tagged run among {stop}")


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run(ctx: Context) -> list[Figure]:
    from batchml import Catalog

    duck = Catalog(ctx.dir("b4") / "catalog.duckdb")
    figures = measure(ctx, duck, populate, "")
    with postgres_server() as server:
        ctx.log(f"  B4 PostgreSQL server {server.url()} ({server.bindir})")
        pg = Catalog(server.create_database("b4"))
        try:
            figures += measure(ctx, pg, populate_pg, "pg.", floors={
                f.key: f.value for f in figures})
        finally:
            pg.close()
    return figures


def measure(ctx: Context, catalog: Any, fill: Callable[[Any, int, int], None], prefix: str, *,
            floors: dict[str, float] | None = None) -> list[Figure]:
    """B4's figures on one catalog; ``prefix`` '' (DuckDB) or 'pg.' (PostgreSQL: its rows get
    the DuckDB figure of the same key in ``floors`` as floor)."""
    from batchml import Run

    name = "PostgreSQL" if prefix else "DuckDB"
    label = "PostgreSQL: " if prefix else ""
    floors = floors or {}

    def fig(key: str, what: str, samples: list[float], unit: str, **kw: Any) -> Figure:
        return figure("B4", prefix + key, label + what, samples, unit,
                      floor=floors.get(key) if prefix else None, **kw)

    sizes = ctx.sizes["b4_runs"]
    lookups = ctx.sizes["b4_lookups"]
    logs = ctx.sizes["b4_logs"]
    figures: list[Figure] = []
    p50s: dict[int, float] = {}
    have = 0
    for n in sizes:
        start = time.perf_counter()
        fill(catalog, have, n)
        have = n
        fill_s = time.perf_counter() - start
        want = expected_latest(n)
        got = catalog.latest_run("train", tag=TAG).id
        if got != want:
            raise RuntimeError(f"{name}: latest_run returned {got}, expected {want}")
        catalog.close()
        _timed(lambda: catalog.latest_run("train", tag=TAG), 5)  # opens the connection
        warm = _timed(lambda: catalog.latest_run("train", tag=TAG), lookups)
        p50s[n] = percentile(warm, 50)

        def cold() -> None:
            catalog.close()
            catalog.latest_run("train", tag=TAG)

        cold_t = _timed(cold, max(5, lookups // 10))
        figures.append(fig(
            f"lookup_p50.{n}", f"latest_run(flow, tag) p50 at {n:,} runs",
            [v * 1000 for v in warm], "ms", target="<= 2 ms" if n == sizes[-1] else "",
            met=(p50s[n] * 1000 <= 2.0) if n == sizes[-1] else None,
            notes=f"p95 {percentile(warm, 95) * 1000:.2f} ms; with a fresh connection each "
                  f"call p50 {percentile(cold_t, 50) * 1000:.1f} ms; bulk fill {fill_s:.1f} s"))
        ctx.log(f"  B4 {name} {n:,} runs: lookup p50 {p50s[n] * 1000:.2f} ms "
                f"(cold {percentile(cold_t, 50) * 1000:.1f} ms; fill {fill_s:.1f} s)")

    small, big = sizes[0], sizes[-1]
    flat = p50s[big] / p50s[small]
    figures.append(figure("B4", prefix + "lookup_flatness",
                          f"{label}lookup p50 at {big:,} / at {small:,} runs", [flat], "x",
                          target="<= 1.5 (flat in N)", met=flat <= 1.5))

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
    catalog.close()
    p50_log = percentile(log_t, 50) * 1000
    figures.append(fig(
        "log_run_p50", f"log a run (create_run 10 params, log_metrics 10, add_tag x2, "
        f"finish) at {big:,} runs", [v * 1000 for v in log_t], "ms", target="<= 10 ms",
        met=p50_log <= 10, notes=f"p95 {percentile(log_t, 95) * 1000:.1f} ms; five calls, "
        "five commits"))
    p50_log2 = percentile(log2_t, 50) * 1000
    figures.append(fig(
        "log_run_2commits_p50", "log the same run in two commits (create_run with params, "
        f"metrics and tags; finish) at {big:,} runs", [v * 1000 for v in log2_t], "ms",
        target="<= 10 ms", met=p50_log2 <= 10,
        notes=f"p95 {percentile(log2_t, 95) * 1000:.1f} ms"))
    figures.append(fig(
        "add_tag_p50", f"add a tag to an existing run at {big:,} runs",
        [v * 1000 for v in tag_t], "ms", notes=f"p95 {percentile(tag_t, 95) * 1000:.1f} ms"))
    ctx.log(f"  B4 {name}: log a run p50 {p50_log:.1f} ms (two commits {p50_log2:.1f} ms), "
            f"add a tag p50 {percentile(tag_t, 50) * 1000:.1f} ms")
    return figures
