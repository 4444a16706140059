"""B13: backfill throughput. ``batchml backfill`` re-scoring files a fresh home scored before,
against the floor of ``batchml predict`` scoring the same files (both fresh processes, end to
end: interpreter start, imports, catalog, model load, every file scored, recorded).

Per repetition: a fresh home (the sklearn text model's template catalog) gets ``b13_files``
files of ``b13_rows`` synthetic reviews in its inbox; ``batchml predict INBOX`` scores them
(the floor, rows/s), then ``batchml backfill --model train/1 --since 2000-01-01`` scores them
again into a new output version (rows/s). Exactly once is checked from the catalog: every
input recorded once under the backfill, one backfill output per input in the outbox.
"""

from __future__ import annotations

import shutil

import duckdb

from .common import Context, Figure, batchml_cli, figure, run_child, write_scoring_file


def run(ctx: Context) -> list[Figure]:
    n, rows, reps = ctx.sizes["b13_files"], ctx.sizes["b13_rows"], ctx.sizes["b13_reps"]
    staged = ctx.dir("b13", "staged")
    files = [write_scoring_file(staged / f"b13-{i:04d}.parquet", rows, seed=13_000 + i)
             for i in range(n)]
    total = n * rows
    floor, speed, once = [], [], []
    for rep in range(reps):
        home, env = ctx.fresh_home("sklearn_text", f"b13-{rep}")
        inbox = home / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, inbox / f.name)
        env["BATCHML_ISOLATE_SCORING"] = "false"
        scored = run_child([*batchml_cli(), "predict", str(inbox)], env=env).check()
        back = run_child([*batchml_cli(), "backfill", "--model", "train/1", "--since",
                          "2000-01-01"], env=env).check()
        floor.append(total / scored.wall_s)
        speed.append(total / back.wall_s)
        con = duckdb.connect(str(home / "catalog.duckdb"), read_only=True)
        try:
            (bid, status, done), = con.execute(
                "SELECT backfill_id, status, scored FROM backfills").fetchall()
            (recorded, distinct), = con.execute(
                "SELECT count(*), count(DISTINCT file_id) FROM batch_files WHERE backfill_id"
                " = ?", [bid]).fetchall()
        finally:
            con.close()
        outputs = [p for p in (home / "outbox").rglob(f"*.{bid}.parquet")]
        ok = status == "completed" and done == recorded == distinct == len(outputs) == n
        once.append(1.0 if ok else 0.0)
        ctx.log(f"  B13 rep {rep + 1}/{reps}: predict {scored.wall_s:.1f} s, backfill "
                f"{back.wall_s:.1f} s for {n} files x {rows:,} rows; exactly once: {ok}")
        shutil.rmtree(home, ignore_errors=True)
    med_floor = sorted(floor)[len(floor) // 2]
    return [
        figure("B13", "rows_per_s", f"backfill: batchml backfill of {n} files x {rows:,} rows "
               "scored before, fresh process", speed, "rows/s", floor=med_floor,
               notes="floor: batchml predict of the same files, fresh process"),
        figure("B13", "floor_rows_per_s", f"floor: batchml predict of the same {n} files, "
               "fresh process", floor, "rows/s"),
        figure("B13", "exactly_once", "backfill exactly once (one record and one output per "
               "input)", once, "1 = yes", target="1", met=all(v == 1.0 for v in once)),
    ]
