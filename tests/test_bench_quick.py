"""The benchmark harness runs end to end in quick mode and reports every benchmark.

Only the harness is checked here (exit code, JSON shape, numeric figures), never whether the
performance targets are met: that is what ``make bench`` reports.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IDS = [*(f"B{i}" for i in range(1, 11)), "B13"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_benchmark_reports_every_id(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    data = json.loads(out.read_text())

    assert data["mode"] == "quick"
    for key in ("cpu_count", "memory_bytes", "platform"):
        assert data["machine"].get(key), key
    for pkg in ("batchml", "duckdb", "pyarrow", "tensorflow", "scikit-learn", "prefect"):
        assert pkg in data["packages"], pkg
    assert data["date"]

    for bid in IDS:
        assert data["benchmarks"][bid]["status"] == "ok", data["benchmarks"][bid].get("error")
        figures = [f for f in data["figures"] if f["id"] == bid]
        assert figures, f"no figures for {bid}"
        for f in figures:
            for key in ("value", "min", "max"):
                assert isinstance(f[key], int | float) and math.isfinite(f[key]), (bid, f)
            assert f["unit"]
            assert f["met"] in (True, False, None)

    assert "| id | what | value | unit | ratio to floor | target | met |" in proc.stdout

    # B9: both models, with and without micro-batching, at 1 and 32 clients, each from real
    # requests (the 1-client rows carry every request's latency), the ratio at 32 clients
    b9 = {f["key"]: f for f in data["figures"] if f["id"] == "B9"}
    for model in ("text", "tabular"):
        for mode in ("batching", "plain"):
            assert b9[f"{model}.{mode}.c1.p50"]["n"] >= 100, b9[f"{model}.{mode}.c1.p50"]
            assert b9[f"{model}.{mode}.c32.rps"]["value"] > 0
            assert b9[f"{model}.{mode}.c32.p99"]["value"] > 0
        ratio = b9[f"{model}.batching_ratio.c32"]
        assert ratio["target"] == ">= 5x" and ratio["value"] > 0

    # B10: exactly once whatever the notifications do (a correctness check, not a timing)
    b10 = {f["key"]: f for f in data["figures"] if f["id"] == "B10"}
    assert b10["lost_scored"]["met"] is True, b10["lost_scored"]
    assert b10["storm_duplicates"]["value"] == 0 and b10["storm_duplicates"]["met"] is True
    assert b10["p50"]["n"] >= 5
