"""Issue 22: decompression bombs and their cousins (bench/bombs.py) scored by ``batchml
predict`` in a CHILD PROCESS with a hard address-space limit (``RLIMIT_AS``, 3 GiB), so a
regression fails here instead of exhausting the machine. Each file ends quarantined with a
clear reason, or scored within the budget; the child's peak RSS (its own VmHWM at exit, see
``bench.bombs.PEAK_CLI``; ``os.wait4`` if it died) must stay under the budget plus the peak of
the same command on an ordinary small file (the fixed overhead:
interpreter, pyarrow, the model), plus a margin.

Also: a bomb among the training files stops training (run failed, nothing tagged), an S3
object over BATCHML_MAX_FILE_BYTES is refused before download (moto's server), and the two
text-overflow modes (truncate: counted in batch_files.truncated_values; refuse: quarantined
naming column, row, length, limit and setting).
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import relhelp

from batchml import Catalog, Settings
from batchml.catalog import FileRecord
from batchml.limits import Limits
from batchml.scoring import ModelCache, Outbox, score_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bombs import BOMBS, PEAK_CLI, PEAK_MARK, peak_mb  # noqa: E402

pytestmark = pytest.mark.reliability

BUDGET_MB = 128
AS_LIMIT = 3 * 2**30  # every child stays under ~3 GB of address space
MARGIN_MB = 96  # allocator slack and the decoder's builders over the fixed overhead
MiB = 2**20
BATCHML = [sys.executable, "-c", PEAK_CLI]  # the batchml command line, reporting its peak


@dataclass
class Child:
    returncode: int
    peak_mb: float
    wall_s: float
    output: str


def run_measured(args: list[str], env: dict[str, str], *, timeout_s: float = 300) -> Child:
    """Run ``args`` with RLIMIT_AS set; the peak RSS of exactly that child (``os.wait4``)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    out_f = io.BytesIO()
    start = time.perf_counter()
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=devnull, preexec_fn=limit,
                                cwd=ROOT)
        assert proc.stdout is not None
        deadline = start + timeout_s
        chunks = []
        while True:
            chunk = proc.stdout.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if time.perf_counter() > deadline:
                proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
    out_f.write(b"".join(chunks))
    text = out_f.getvalue().decode(errors="replace")
    # the child's own VmHWM when it wrote it (PEAK_CLI); wait4's ru_maxrss starts at this
    # process's RSS at fork, an upper bound
    peak = peak_mb(text) or usage.ru_maxrss / 1024
    return Child(os.waitstatus_to_exitcode(status), peak, time.perf_counter() - start, text)


def build(name: str, path: Path) -> Path:
    """Build a bomb in a child (some take ~1.3 GB to write; the test process stays small)."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from bench.bombs import BOMBS; BOMBS[sys.argv[2]].build(Path(sys.argv[3]))")
    child = run_measured([sys.executable, "-c", code, str(ROOT), name, str(path)], os.environ
                         .copy())
    assert child.returncode == 0, child.output[-3000:]
    return path


# --- model homes --------------------------------------------------------------------------------


def _train(home: Path, frame: Any, **config: Any) -> Settings:
    from batchml import training as tr

    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    n = len(frame) * 4 // 5
    frame.iloc[:n].to_parquet(data / "train.parquet")
    frame.iloc[n:].to_parquet(data / "valid.parquet")
    settings = Settings(home=home, catalog_path=home / "catalog.duckdb",
                        artifact_root=str(home / "artifacts"))
    outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(
        train_uri=str(data / "train.parquet"), valid_uri=str(data / "valid.parquet"), **config))
    assert outcome.decision.tagged, outcome.decision.reasons
    Catalog.from_settings(settings).db.close()
    return settings


@pytest.fixture(scope="module")
def homes(rel_base: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Settings]:
    """Template homes with one tagged run: the text model on ``review`` (the session's),
    a tabular model, and a text model on ``arr`` (large_string_map's column)."""
    from batchml.synthetic import synthetic_reviews, synthetic_tabular

    root = tmp_path_factory.mktemp("bomb-models")
    text = Settings(home=rel_base.home, catalog_path=rel_base.catalog_file,
                    artifact_root=str(rel_base.artifact_root))
    tab = synthetic_tabular(1500, seed=3)
    tabular = _train(root / "tabular", tab, label="segment",
                     feature_columns=["tenure_months", "monthly_charges", "support_calls",
                                      "plan", "region"], candidates=["tabular_logreg"])
    arr = synthetic_reviews(1500, seed=4).rename(columns={"review": "arr"})
    text_arr = _train(root / "text_arr", arr, text_column="arr", candidates=["sklearn_text"])
    return {"text": text, "tabular": tabular, "text_arr": text_arr}


def predict_env(template: Settings, home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    relhelp.copy_catalog(template.catalog_file, home / "catalog.duckdb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    env.update(BATCHML_HOME=str(home), BATCHML_CATALOG_PATH=str(home / "catalog.duckdb"),
               BATCHML_ARTIFACT_ROOT=str(template.artifact_root),
               BATCHML_MEMORY_BUDGET_MB=str(BUDGET_MB), BATCHML_LOCK_TIMEOUT_S="120", **extra)
    return env


def query(catalog: Path, sql: str) -> list[tuple[Any, ...]]:
    cat = Catalog(catalog)
    try:
        with cat.db.read() as con:
            return con.execute(sql).fetchall()
    finally:
        cat.db.close()


def outcome_of(home: Path) -> dict[str, Any]:
    row = query(home / "catalog.duckdb", "SELECT status, error, rows, duration_ms, "
                "truncated_values FROM batch_files")
    assert len(row) == 1, row
    status, error, rows, duration_ms, truncated = row[0]
    return {"status": status, "error": error or "", "rows": rows,
            "verdict_s": (duration_ms or 0) / 1000, "truncated": truncated}


def predict(template: Settings, home: Path, path: Path) -> tuple[Child, dict[str, Any]]:
    env = predict_env(template, home)
    child = run_measured([*BATCHML, "predict", str(path), "--output", str(home / "out")], env)
    assert child.returncode in (0, 1), child.output[-3000:]
    return child, outcome_of(home)


@pytest.fixture(scope="module")
def overhead(homes: dict[str, Settings], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, float]:
    """Peak RSS of ``batchml predict`` on an ordinary 1,000-row file, per model."""
    from batchml.synthetic import synthetic_reviews, synthetic_tabular

    root = tmp_path_factory.mktemp("bomb-overhead")
    files = {"text": synthetic_reviews(1000, seed=9),
             "tabular": synthetic_tabular(1000, seed=9),
             "text_arr": synthetic_reviews(1000, seed=9).rename(columns={"review": "arr"})}
    peaks = {}
    for model, frame in files.items():
        path = root / f"{model}.parquet"
        frame.to_parquet(path)
        child, o = predict(homes[model], root / f"home-{model}", path)
        assert o["status"] == "scored", o
        peaks[model] = child.peak_mb
    print("\n[bombs] overhead (ordinary 1,000-row file): "
          + ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items()))
    return peaks


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_quarantined_or_scored_within_budget(name: str, homes: dict[str, Settings],
                                                     overhead: dict[str, float],
                                                     tmp_path: Path) -> None:
    bomb = BOMBS[name]
    path = build(name, tmp_path / f"{name}.parquet")
    child, o = predict(homes[bomb.model], tmp_path / "home", path)
    limit = BUDGET_MB + overhead[bomb.model] + MARGIN_MB
    print(f"\n[bombs] {name}: {path.stat().st_size:,} bytes on disk, peak {child.peak_mb:.0f} "
          f"MB (limit {limit:.0f}), {o['status']} in {o['verdict_s']:.2f} s "
          f"(wall {child.wall_s:.1f} s), truncated {o['truncated']}: {o['error'][:300]}")
    assert o["status"] == bomb.outcome, o
    if bomb.outcome == "quarantined":
        assert bomb.reason in o["error"], o["error"]
        assert str(path) in o["error"]  # names the file
    else:
        assert o["rows"] > 0 and o["truncated"] == o["rows"]  # every long value was cut
    assert child.peak_mb <= limit, (child.peak_mb, limit)
    assert o["verdict_s"] < 10


# --- training --------------------------------------------------------------------------------


def test_training_bomb_stops_training(tmp_path: Path) -> None:
    """A dictionary bomb as the training file: training fails with the budget's reason in a
    child under RLIMIT_AS; the run is recorded failed and nothing is tagged."""
    from batchml.synthetic import synthetic_reviews

    bomb = build("text_dictionary_1.5GB", tmp_path / "train.parquet")
    synthetic_reviews(300, seed=2).to_parquet(tmp_path / "valid.parquet")
    home = tmp_path / "home"
    code = f"""
import json
from batchml import Catalog, Settings
from batchml import training as tr
s = Settings(home={str(home)!r})
try:
    tr.train(Catalog.from_settings(s), tr.TrainingConfig(train_uri={str(bomb)!r},
             valid_uri={str(tmp_path / 'valid.parquet')!r}, text_column="review",
             candidates=["sklearn_text"]))
    print(json.dumps({{"raised": None}}))
except Exception as exc:
    print(json.dumps({{"raised": type(exc).__name__, "message": str(exc)}}))
print("{PEAK_MARK}", [l.split()[1] for l in open("/proc/self/status")
                      if l.startswith("VmHWM:")][0])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    child = run_measured([sys.executable, "-c", code], env)
    assert child.returncode == 0, child.output[-3000:]
    answer = json.loads(child.output.strip().splitlines()[-2])
    print(f"\n[bombs] training bomb: peak {child.peak_mb:.0f} MB, {child.wall_s:.1f} s: "
          f"{answer}")
    assert answer["raised"] == "MemoryBudgetExceeded", answer
    assert str(bomb) in answer["message"] and "BATCHML_MEMORY_BUDGET_MB" in answer["message"]
    runs = Catalog(home / "catalog.duckdb").runs("train")
    assert [r.status for r in runs] == ["failed"]
    assert not Catalog(home / "catalog.duckdb").runs("train", tag="deployment_candidate")
    assert child.peak_mb < 1024


# --- S3 -----------------------------------------------------------------------------------------


def test_s3_object_over_max_file_bytes_is_refused_before_download(
        homes: dict[str, Settings], s3_bucket: str, aws_env: str, tmp_path: Path,
        private_tmpdir: Path) -> None:
    from batchml.store import s3_client
    from batchml.synthetic import synthetic_reviews

    client = s3_client(aws_env, "us-east-1")
    buf = io.BytesIO()
    synthetic_reviews(2000, seed=5).to_parquet(buf)
    client.put_object(Bucket=s3_bucket, Key="in/big.parquet", Body=buf.getvalue())
    client.put_object(Bucket=s3_bucket, Key="in/small.parquet", Body=_small_parquet())
    size = len(buf.getvalue())
    env = predict_env(homes["text"], tmp_path / "home",
                      BATCHML_MAX_FILE_BYTES=str(size - 1), BATCHML_S3_ENDPOINT_URL=aws_env,
                      BATCHML_S3_REGION="us-east-1", TMPDIR=str(private_tmpdir))
    child = run_measured([*BATCHML, "predict", f"s3://{s3_bucket}/in/big.parquet",
                          f"s3://{s3_bucket}/in/small.parquet", "--output",
                          str(tmp_path / "out")], env)
    rows = {r[0].rsplit("/", 1)[-1]: (r[1], r[2] or "") for r in query(
        tmp_path / "home" / "catalog.duckdb", "SELECT source_uri, status, error FROM batch_files")}
    assert rows["small.parquet"][0] == "scored", (rows, child.output[-2000:])
    status, error = rows["big.parquet"]
    assert status == "quarantined", rows
    assert f"s3://{s3_bucket}/in/big.parquet is {size:,} bytes" in error
    assert "not downloaded" in error and "BATCHML_MAX_FILE_BYTES" in error
    assert not list(private_tmpdir.glob("batchml-in-*"))  # nothing left behind


def _small_parquet() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"review": ["nice soft dress", "runs small"]}), buf)
    return buf.getvalue()


# --- text overflow ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,expected", [
    ("truncate", None),
    ("refuse", "column 'review' row 2 holds 150,000 characters, over the limit of 100,000 per "
               "text value"),
])
def test_text_overflow_modes(mode: str, expected: str | None, rel_base: Any,
                             tmp_path: Path) -> None:
    """Truncate counts the cut values (FileOutcome.truncated, batch_files.truncated_values);
    refuse quarantines naming column, row, length, limit and the settings to change."""
    path = tmp_path / "long.parquet"
    reviews = ["soft fabric", "runs small", "great " * 25_000, "nice", "love " * 30_000]
    pq.write_table(pa.table({"review": reviews}), path)
    cache = ModelCache(Catalog(rel_base.catalog_file))
    model = cache.resolve(tag=relhelp.TAG)
    record = FileRecord("f" * 32, str(path), None, path.stat().st_size, None, "claimed", 0)
    limits = Limits(memory_bytes=BUDGET_MB * MiB, max_text_chars=100_000, text_overflow=mode)
    o = score_file(path, record, model, Outbox(str(tmp_path / "out")), "batch-1",
                   limits=limits)
    if expected is None:
        assert o.status == "scored" and o.rows == 5 and o.truncated == 2, o
        # the cut values scored like their first 100,000 characters
        cut = tmp_path / "cut.parquet"
        pq.write_table(pa.table({"review": [r[:100_000] for r in reviews]}), cut)
        o2 = score_file(cut, FileRecord("e" * 32, str(cut), None, 1, None, "claimed", 0),
                        model, Outbox(str(tmp_path / "out")), "batch-2", limits=limits)
        assert o2.truncated == 0
        a = pq.read_table(o.output_uri).column("proba").to_pylist()
        b = pq.read_table(o2.output_uri).column("proba").to_pylist()
        assert a == pytest.approx(b)
    else:
        assert o.status == "quarantined", o
        assert expected in (o.error or ""), o.error
        assert str(path) in o.error and "BATCHML_MAX_TEXT_CHARS" in o.error
        assert "BATCHML_TEXT_OVERFLOW=truncate" in o.error


def test_truncated_values_recorded_in_batch_lineage(make_home: Any, rel_base: Any) -> None:
    """The worker records the count in batch_files.truncated_values (migration 0004)."""
    from batchml.sources import DirectorySource
    from batchml.worker import Worker

    settings = make_home("trunc")
    inbox = Path(settings.inbox)
    relhelp.land(inbox / "long.parquet", _long_reviews())
    cat = Catalog.from_settings(settings)
    worker = Worker(cat, DirectorySource(settings.inbox, use_events=False), settings)
    worker.discover()
    (o,) = worker.run_batch().outcomes
    assert o.status == "scored" and o.truncated == 1, o
    cat.db.close()
    assert query(settings.catalog_file, "SELECT truncated_values FROM batch_files") == [(1,)]


def _long_reviews() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"review": ["nice dress", "soft " * 30_000]}), buf)
    return buf.getvalue()
