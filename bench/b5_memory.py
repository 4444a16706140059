"""B5: peak memory of ``batchml predict`` on a 1M-row and a 10M-row file (sklearn model), and
on each hostile file of ``bench/bombs.py`` (issue 22) at the default memory budget.

The inputs are written with ``batchml.synthetic.write_reviews`` (streams). Each scoring runs
in a fresh child process; its peak RSS is the kernel's ``ru_maxrss`` for that process
(``os.wait4``), not an estimate. The floor is the plain script's peak RSS on the small file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .bombs import BOMBS, PEAK_CLI, large_string_column, peak_mb
from .common import PYTHON, Context, Figure, batchml_cli, child, figure, run_child

MB = 2**20


def run(ctx: Context) -> list[Figure]:
    small, large = ctx.sizes["b5_rows"]
    info = ctx.models()["sklearn_text"]
    peaks: dict[int, list[float]] = {}
    walls: dict[int, list[float]] = {}
    for rows in (small, large):
        path = ctx.reviews_file(rows, seed=11)
        for rep in range(ctx.sizes["b5_reps"]):
            home, env = ctx.fresh_home("sklearn_text", f"b5-{rows}-{rep}")
            r = run_child([*batchml_cli(), "predict", str(path)], env=env,
                          timeout_s=4 * 3600).check()
            shutil.rmtree(home, ignore_errors=True)
            peaks.setdefault(rows, []).append(r.maxrss_bytes / MB)
            walls.setdefault(rows, []).append(r.wall_s)
            ctx.log(f"  B5 {rows:,} rows: peak RSS {r.maxrss_bytes / MB:,.0f} MB, "
                    f"{r.wall_s:.0f} s ({rows / r.wall_s:,.0f} rows/s)")
        if rows == large:
            path.unlink(missing_ok=True)  # the big input is not needed again
    _, floor_res = child("floor", {"flavor": info["flavor"], "model_file": info["model_file"],
                                   "inputs": [str(ctx.reviews_file(small, seed=11))],
                                   "out_dir": str(ctx.dir("b5", "floor"))}, timeout_s=4 * 3600)
    floor = floor_res.maxrss_bytes / MB
    p_small = min(peaks[small])
    p_large = max(peaks[large])
    growth = p_large / p_small
    return [
        figure("B5", f"peak.{small}", f"peak RSS, batchml predict {small:,} rows (sklearn)",
               peaks[small], "MB", floor=floor,
               notes=f"{small / min(walls[small]):,.0f} rows/s; floor = plain script peak on "
                     "the same file"),
        figure("B5", f"peak.{large}", f"peak RSS, batchml predict {large:,} rows (sklearn)",
               peaks[large], "MB", floor=floor, target="<= 1.5 GB (1536 MB)",
               met=p_large <= 1536, notes=f"{large / min(walls[large]):,.0f} rows/s"),
        figure("B5", "growth", f"peak at {large:,} / peak at {small:,} rows", [growth], "x",
               target="<= 1.2", met=growth <= 1.2),
        *run_bombs(ctx),
    ]


# --- issue 22: bombs ----------------------------------------------------------------------------

BUILD = ("import sys; from pathlib import Path; from bench.b5_memory import bench_bombs; "
         "bench_bombs()[sys.argv[1]](Path(sys.argv[2]))")


def bench_bombs() -> dict[str, Any]:
    """The bombs of ``bench/bombs.py`` that the text model reads (``review``)."""

    out: dict[str, Any] = {n: b.build for n, b in BOMBS.items() if b.model != "text_arr"}
    out["large_string_column"] = lambda p: large_string_column(p, column="review")
    return out


def _verdict(home: Path) -> tuple[str, float, int, str]:
    import duckdb

    con = duckdb.connect(str(home / "catalog.duckdb"), read_only=True)
    try:
        status, ms, truncated, error = con.execute(
            "SELECT status, duration_ms, truncated_values, error FROM batch_files").fetchone()
    finally:
        con.close()
    return status, (ms or 0) / 1000, truncated or 0, error or ""


def run_bombs(ctx: Context) -> list[Figure]:
    """One row per bomb: peak RSS of ``batchml predict`` (default budget) against the budget
    plus the peak on an ordinary 1,000-row file, and the time to the verdict."""
    from batchml.settings import default_memory_budget_mb

    budget = default_memory_budget_mb()
    home, env = ctx.fresh_home("sklearn_text", "b5-bomb-overhead")
    small = ctx.reviews_file(1000, seed=12)
    base = run_child([PYTHON, "-c", PEAK_CLI, "predict", str(small)], env=env,
                     timeout_s=600).check()
    overhead = peak_mb(base.stderr) or base.maxrss_bytes / MB
    shutil.rmtree(home, ignore_errors=True)
    figures = []
    for name in bench_bombs():
        path = ctx.dir("b5", "bombs") / f"{name}.parquet"
        run_child([PYTHON, "-c", BUILD, name, str(path)], timeout_s=600).check()
        home, env = ctx.fresh_home("sklearn_text", f"b5-bomb-{name}")
        r = run_child([PYTHON, "-c", PEAK_CLI, "predict", str(path)], env=env, timeout_s=600)
        status, verdict_s, truncated, error = _verdict(home)
        shutil.rmtree(home, ignore_errors=True)
        peak = peak_mb(r.stderr) or r.maxrss_bytes / MB  # VmHWM: wait4's counts the runner
        limit = budget + overhead
        reason = error.split(": ", 1)[-1].split(". ")[0][:90] if error else \
            f"{truncated:,} values cut to 100,000 chars"
        ctx.log(f"  B5 bomb {name}: {path.stat().st_size:,} bytes, peak {peak:,.0f} MB, "
                f"{status} in {verdict_s:.2f} s (wall {r.wall_s:.1f} s): {reason}")
        figures.append(figure(
            "B5", f"bomb.{name}", f"bomb {name} ({path.stat().st_size:,} B): peak RSS",
            [peak], "MB", target=f"<= budget + overhead ({limit:,.0f} MB)", met=peak <= limit,
            notes=f"{status} in {verdict_s:.2f} s (wall {r.wall_s:.1f} s): {reason}",
            extra={"verdict_s": verdict_s, "status": status, "budget_mb": budget,
                   "overhead_mb": overhead, "file_bytes": path.stat().st_size}))
        path.unlink(missing_ok=True)
    return figures
