"""Run the batchml benchmarks: ``python -m bench.run [--quick] [--only B1,B4] [--out FILE]``.

Generates its own synthetic data in a temp dir, runs B1..B9 (see ``bench/README.md``), prints a
markdown table and writes the same figures as JSON with machine info, package versions and the
date. Every figure is the median over its repetitions with min and max; throughput and latency
carry their ratio to a floor measured in the same run; peak memory comes from the kernel.

The full run plans its sizes against a time budget (``--budget-minutes``, default 25): scoring
speed is measured first, and when the specified sizes would not fit, repetitions are reduced
and then the sklearn-bound sizes scaled down. Every change is printed and recorded in the JSON
(``plan``); ``--budget-minutes 0`` runs the specified sizes whatever they cost.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    b1_throughput,
    b2_latency,
    b2_server,
    b3_burst,
    b4_catalog,
    b5_memory,
    b6_training,
    b7_coldstart,
    b8_claims,
    b9_online,
    b10_sqs,
    b11_encoder,
    b12_drift,
    b13_backfill,
)
from .common import (
    ROOT,
    Context,
    Figure,
    fmt_num,
    git_info,
    loadavg,
    machine_info,
    package_versions,
)

BENCHMARKS: dict[str, tuple[str, Callable[[Context], list[Figure]]]] = {
    "B1": ("scoring throughput", b1_throughput.run),
    "B2": ("drop-to-output latency", b2_latency.run),
    "B2S": ("drop-to-output latency, server mode", b2_server.run),
    "B3": ("burst", b3_burst.run),
    "B4": ("catalog", b4_catalog.run),
    "B5": ("memory", b5_memory.run),
    "B6": ("training", b6_training.run),
    "B7": ("cold start", b7_coldstart.run),
    "B8": ("claims from several workers", b8_claims.run),
    "B9": ("online scoring over HTTP", b9_online.run),
    "B10": ("S3 notifications through SQS", b10_sqs.run),
    "B11": ("encoder candidate", b11_encoder.run),
    "B12": ("drift overhead", b12_drift.run),
    "B13": ("backfill", b13_backfill.run),
}
NEEDS_MODELS = {"B1", "B2", "B2S", "B3", "B5", "B7", "B10", "B13"}
# server mode starts a Prefect server and a worker (~2-3 min): full runs or --only B2S
NOT_QUICK = {"B2S"}
USES_SERVE = {"B2", "B3"}

SPEC_FULL: dict[str, Any] = {
    "model_train_rows": 20_000, "calibrate_rows": 20_000,
    "b1_rows": {"keras_nbow": 1_000_000, "sklearn_text": 1_000_000},
    "b1_reps": {"keras_nbow": 3, "sklearn_text": 3}, "b1_io_reps": 3,
    "b2_files": 50, "b2s_files": 5,
    "b3_files": 1_000, "b3_reps": 2,
    "b4_runs": [1_000, 10_000, 100_000], "b4_lookups": 200, "b4_logs": 50,
    "b5_rows": [1_000_000, 10_000_000], "b5_reps": 1,
    "b6_rows": [20_000, 5_000], "b6_reps": 2,
    "b7_reps": 5,
    "b8_files": 2_000, "b8_workers": [1, 2, 4, 8], "b8_batch": 20, "b8_work_ms": 1.0,
    "b8_reps": 2,
    "b9_train_rows": 4_000, "b9_clients": [1, 32], "b9_requests": {"1": 2_000, "32": 8_000},
    "b9_max_s": 20.0, "b9_warmup": 200, "b9_mlflow": True,
    "b10_files": 50, "b10_lost_files": 100, "b10_storm_files": 50, "b10_sweep_s": 10.0,
    "b12_rows": 300_000, "b12_train_rows": 20_000, "b12_reps": 5,
    "b13_files": 200, "b13_rows": 5_000, "b13_reps": 2,
    "b11_rows": [20_000, 2_000], "b11_reps": 2, "b11_auc": True,
}
SPEC_QUICK: dict[str, Any] = {
    "model_train_rows": 2_000, "calibrate_rows": 2_000,
    "b1_rows": {"keras_nbow": 20_000, "sklearn_text": 20_000},
    "b1_reps": {"keras_nbow": 1, "sklearn_text": 1}, "b1_io_reps": 2,
    "b2_files": 5, "b2s_files": 2,
    "b3_files": 50, "b3_reps": 1,
    "b4_runs": [1_000, 5_000], "b4_lookups": 50, "b4_logs": 10,
    "b5_rows": [50_000, 200_000], "b5_reps": 1,
    "b6_rows": [1_000, 250], "b6_reps": 1,
    "b7_reps": 1,
    "b8_files": 200, "b8_workers": [1, 4], "b8_batch": 20, "b8_work_ms": 1.0, "b8_reps": 1,
    "b9_train_rows": 1_000, "b9_clients": [1, 32], "b9_requests": {"1": 200, "32": 640},
    "b9_max_s": 4.0, "b9_warmup": 32, "b9_mlflow": True,
    "b10_files": 10, "b10_lost_files": 20, "b10_storm_files": 10, "b10_sweep_s": 3.0,
    "b12_rows": 20_000, "b12_train_rows": 2_000, "b12_reps": 1,
    "b13_files": 10, "b13_rows": 1_000, "b13_reps": 1,
    "b11_rows": [100, 100], "b11_reps": 1, "b11_auc": False,
}


# --- planning against the time budget -------------------------------------------------------

STARTUP_S = {"keras_nbow": 7.0, "sklearn_text": 5.0}  # fresh process: imports + model load
GEN_S_PER_ROW = 1.2e-5  # write_reviews on this class of machine


def estimate(sizes: dict[str, Any], thr: dict[str, float], selected: set[str]) -> dict[str, float]:
    """Rough seconds per benchmark for ``sizes`` given warm predict throughput ``thr``."""
    sk = thr["sklearn_text"]
    cost: dict[str, float] = {}
    if "B1" in selected:
        c = 0.0
        for m, n in sizes["b1_rows"].items():
            r, t, st = sizes["b1_reps"][m], n / thr[m], STARTUP_S[m]
            c += r * (t + st) + r * (1.15 * t + st + 1) + st + r * 1.15 * t
        c += max(sizes["b1_rows"].values()) * (GEN_S_PER_ROW + 3 * 3e-6)
        cost["B1"] = c
    if "B2" in selected:
        f = sizes["b2_files"]
        cost["B2"] = 25 + 1.5 * f + STARTUP_S["sklearn_text"] + 20_000 / sk + 0.03 * f
    if "B2S" in selected:
        cost["B2S"] = 90 + 40 * sizes["b2s_files"]
    if "B3" in selected:
        f, r = sizes["b3_files"], sizes["b3_reps"]
        cost["B3"] = (r * (1.25 * f * 1_000 / sk + 0.06 * f + 3) + STARTUP_S["sklearn_text"]
                      + min(100, f) * 1_000 / sk + (0 if "B2" in selected else 25))
    if "B4" in selected:  # DuckDB, then PostgreSQL (a server started for it)
        cost["B4"] = 12 + max(sizes["b4_runs"]) * 1.5e-4 + sizes["b4_logs"] * 0.15
    if "B5" in selected:
        small, large = sizes["b5_rows"]
        cost["B5"] = ((small + large) * (GEN_S_PER_ROW + 1.15 * sizes["b5_reps"] / sk)
                      + small / sk + 3 * STARTUP_S["sklearn_text"])
    if "B6" in selected:
        cost["B6"] = sizes["b6_reps"] * (15 + 45 * sizes["b6_rows"][0] / 20_000)
    if "B7" in selected:
        cost["B7"] = sum(2 * sizes["b7_reps"] * (st + 1.5) for st in STARTUP_S.values())
    if "B8" in selected:  # per worker count: DuckDB (~300-400 files/s with one worker, ~170
        # with more as they queue for its lock, ~60 on a loaded machine: the conservative
        # figure), PostgreSQL (~500+), starting the workers
        f = sizes["b8_files"]
        cost["B8"] = 2 + sizes["b8_reps"] * sum(
            f / (300 if n == 1 else 60) + f / 500 + 2 + 0.5 * n for n in sizes["b8_workers"])
    if "B11" in selected:
        cost["B11"] = b11_encoder.estimate(sizes)
    if "B9" in selected:  # training both models; per model 2-3 servers (~5 s to start), each
        # loaded at every client count until its request count or b9_max_s (the slow cells,
        # the tabular model and the MLflow server, hit the time bound)
        servers = 2 + bool(sizes["b9_mlflow"])
        cost["B9"] = 20 + 2 * servers * (5 + len(sizes["b9_clients"])
                                         * (0.8 * sizes["b9_max_s"] + 2))
    if "B10" in selected:  # moto + watch start, files one at a time, the sweep's wait
        cost["B10"] = 15 + sizes["b10_files"] * 0.6 + sizes["b10_sweep_s"] * 2 \
            + (sizes["b10_lost_files"] + sizes["b10_storm_files"]) * 0.1
    if "B12" in selected:  # two trainings, then off + on per repetition, two models
        cost["B12"] = (20 + 30 * sizes["b12_train_rows"] / 20_000
                       + sizes["b12_reps"] * 2 * 2 * 1.1 * sizes["b12_rows"] / sk)
    if "B13" in selected:  # writing the files; per repetition a predict and a backfill of
        # them (fresh processes) at about warm speed plus start-up and per-file catalog work
        n = sizes["b13_files"] * sizes["b13_rows"]
        cost["B13"] = n * GEN_S_PER_ROW + sizes["b13_reps"] * 2 * (
            1.3 * n / sk + STARTUP_S["sklearn_text"] + 0.05 * sizes["b13_files"])
    return cost


def _round(n: float) -> int:
    """Two significant digits: 437,512 -> 440,000."""
    if n <= 0:
        return 0
    digits = int(math.floor(math.log10(n))) - 1
    return int(round(n / 10**digits) * 10**digits)


def plan(spec: dict[str, Any], thr: dict[str, float], selected: set[str],
         budget_s: float) -> tuple[dict[str, Any], list[str]]:
    """Sizes that fit ``budget_s``: fewer repetitions first, then smaller sklearn inputs."""
    sizes = copy.deepcopy(spec)
    notes: list[str] = []

    def total(s: dict[str, Any]) -> float:
        return sum(estimate(s, thr, selected).values())

    if budget_s <= 0 or total(sizes) <= budget_s:
        return sizes, notes
    steps: list[tuple[str, str | None, int]] = [
        ("b3_reps", None, 1), ("b1_reps", "sklearn_text", 2), ("b6_reps", None, 1),
        ("b1_reps", "sklearn_text", 1), ("b7_reps", None, 3), ("b1_reps", "keras_nbow", 2),
        ("b8_reps", None, 1)]
    for key, sub, value in steps:
        if total(sizes) <= budget_s:
            break
        old = sizes[key][sub] if sub else sizes[key]
        if old <= value:
            continue
        if sub:
            sizes[key][sub] = value
        else:
            sizes[key] = value
        notes.append(f"{key}{'.' + sub if sub else ''}: {old} -> {value} repetitions")

    def scaled(s: dict[str, Any], f5: float, f13: float, f5s: float = 1.0) -> dict[str, Any]:
        """B5's large input shrinks first (down to 2x the small one), then its small one (to
        500k rows: still two row groups of write_reviews), then B1's sklearn file and B3's
        burst together."""
        out = copy.deepcopy(s)
        small, large = s["b5_rows"]
        small = max(500_000, _round(small * f5s))
        out["b5_rows"] = [small, max(2 * small, _round(large * f5))]
        out["b1_rows"]["sklearn_text"] = max(200_000, _round(s["b1_rows"]["sklearn_text"] * f13))
        out["b3_files"] = max(200, _round(s["b3_files"] * f13))
        return out

    def solve(fn: Callable[[float], dict[str, Any]]) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if total(fn(mid)) <= budget_s:
                lo = mid
            else:
                hi = mid
        return lo

    before = copy.deepcopy(sizes)
    if "B5" in selected:  # memory growth shows at any size with several row groups
        f5 = solve(lambda f: scaled(before, f, 1.0))
        sizes = scaled(before, f5, 1.0)
        if total(sizes) > budget_s:
            f5s = solve(lambda f: scaled(before, 0.0, 1.0, f))
            sizes = scaled(before, 0.0, 1.0, f5s)
    if total(sizes) > budget_s:
        f13 = solve(lambda f: scaled(before, 0.0, f, 0.0))
        sizes = scaled(before, 0.0, f13, 0.0)
        if "B5" not in selected:
            sizes["b5_rows"] = before["b5_rows"]
    for key, label in (("b5_rows", "B5 rows"), ("b3_files", "B3 files")):
        if sizes[key] != before[key]:
            notes.append(f"{label}: {_fmt_size(before[key])} -> {_fmt_size(sizes[key])}")
    if sizes["b1_rows"] != before["b1_rows"]:
        notes.append(f"B1 sklearn rows: {before['b1_rows']['sklearn_text']:,} -> "
                     f"{sizes['b1_rows']['sklearn_text']:,}")
    return sizes, notes


def _fmt_size(v: Any) -> str:
    return " / ".join(f"{x:,}" for x in v) if isinstance(v, list) else f"{v:,}"


# --- output ---------------------------------------------------------------------------------


def markdown(figures: list[Figure], errors: dict[str, str]) -> str:
    lines = ["| id | what | value | unit | ratio to floor | target | met |",
             "|---|---|---|---|---|---|---|"]
    for f in figures:
        value = fmt_num(f.value)
        if f.n > 1 and f.min is not None and f.max is not None:
            value += f" ({fmt_num(f.min)}–{fmt_num(f.max)}, n={f.n})"
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.id} | {f.what} | {value} | {f.unit} | {ratio} | {f.target} | {met} |")
    for bid, err in errors.items():
        lines.append(f"| {bid} | {BENCHMARKS[bid][0]}: ERROR {err.splitlines()[-1][:120]} | | | | "
                     "| **no** |")
    notes = [f"- {f.id} {f.key}: {f.notes}" for f in figures if f.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, fewer repetitions")
    parser.add_argument("--only", help="comma-separated benchmark ids, e.g. B1,B4")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--budget-minutes", type=float, default=25.0,
                        help="full run: fit sizes into this many minutes (0: specified sizes)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)

    selected = [b for b in BENCHMARKS if not (args.quick and b in NOT_QUICK)]
    if args.only:
        wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark ids: {', '.join(unknown)}")
        selected = [b for b in BENCHMARKS if b in wanted]

    started = time.perf_counter()
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    spec = SPEC_QUICK if args.quick else SPEC_FULL
    tmp = Path(tempfile.mkdtemp(prefix="batchml-bench-"))
    ctx = Context(args.quick, tmp, copy.deepcopy(spec), log)
    results: dict[str, Any] = {
        "date": date, "mode": "quick" if args.quick else "full", "argv": sys.argv[1:],
        "machine": machine_info(), "packages": package_versions(), "git": git_info(),
        "spec": spec,
        "benchmarks": {}, "figures": [], "plan": [],
    }
    log(f"batchml benchmarks ({results['mode']}): {', '.join(selected)}; temp dir {tmp}")
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    try:
        if NEEDS_MODELS & set(selected):
            log("preparing models (train once, template homes, warm predict speed)")
            thr = {m: v["rows_per_s"] for m, v in ctx.models().items()}
            if not args.quick:
                budget = args.budget_minutes * 60 - (time.perf_counter() - started)
                if args.budget_minutes <= 0:
                    budget = 0
                ctx.sizes, notes = plan(spec, thr, set(selected), budget)
                est = estimate(ctx.sizes, thr, set(selected))
                results["plan"] = notes
                results["estimate_s"] = est
                log(f"plan: estimated {sum(est.values()) / 60:.1f} min "
                    f"({', '.join(f'{k} {v / 60:.1f}' for k, v in est.items())})")
                for note in notes:
                    log(f"  scaled to the {args.budget_minutes:g}-min budget: {note}")
        results["sizes"] = ctx.sizes
        for i, bid in enumerate(selected):
            name, fn = BENCHMARKS[bid]
            log(f"{bid} {name}")
            entry: dict[str, Any] = {"name": name, "loadavg_before": loadavg()}
            t0 = time.perf_counter()
            try:
                figs = fn(ctx)
                figures += figs
                entry["status"] = "ok"
            except Exception:
                err = traceback.format_exc()
                errors[bid] = err
                entry["status"] = "error"
                entry["error"] = err
                log(f"{bid} FAILED:\n{err}")
            entry["seconds"] = time.perf_counter() - t0
            entry["loadavg_after"] = loadavg()
            results["benchmarks"][bid] = entry
            log(f"{bid} done in {entry['seconds']:.0f} s")
            if not USES_SERVE & set(selected[i + 1:]) and "serve" in ctx._cache:
                ctx.close()  # stop the shared batchml serve before the next benchmarks
    finally:
        ctx.close()
        if not args.keep_tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    results["figures"] = [f.to_dict() for f in figures]
    results["duration_s"] = time.perf_counter() - started
    results["machine"]["loadavg_at_end"] = loadavg()
    table = markdown(figures, errors)
    results["table_markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    git = results["git"]
    print(f"batchml {(git.get('commit') or '?')[:12]}"
          + (f" ({git['uncommitted_changes']})" if git.get("uncommitted_changes") else "")
          + f", {results['mode']} run of {date}, load average at start "
          f"{results['machine'].get('loadavg_at_start')}\n")
    print(table)
    missed = [f for f in figures if f.met is False]
    print(f"\n{len(figures)} figures, {sum(f.met is True for f in figures)} targets met, "
          f"{len(missed)} missed, {len(errors)} benchmark(s) failed; "
          f"{results['duration_s'] / 60:.1f} min; JSON: {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
