"""B5: peak memory of ``batchml predict`` on a 1M-row and a 10M-row file (sklearn model).

The inputs are written with ``batchml.synthetic.write_reviews`` (streams). Each scoring runs
in a fresh child process; its peak RSS is the kernel's ``ru_maxrss`` for that process
(``os.wait4``), not an estimate. The floor is the plain script's peak RSS on the small file.
"""

from __future__ import annotations

import shutil

from .common import Context, Figure, batchml_cli, child, figure, run_child

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
    ]
