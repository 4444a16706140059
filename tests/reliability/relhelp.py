"""Helpers shared by the reliability tests (imported as a plain module: this directory has no
``__init__.py``, so pytest puts it on ``sys.path``).

Nothing here patches batchml: the tests drive the real worker, CLI and catalog and inspect what
they leave on disk and in the catalog.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable
BATCHML = str(Path(PYTHON).with_name("batchml"))

TAG = "deployment_candidate"


BOTH = ["duckdb", "postgresql"]
"""The catalog backends of the tests that run on each (``rel_backend``, indirect)."""


def scale() -> float:
    """``BATCHML_RELIABILITY_SCALE`` (default 1 = quick sizes; 5 = the full sizes)."""
    try:
        value = float(os.environ.get("BATCHML_RELIABILITY_SCALE", "1"))
    except ValueError:
        value = 1.0
    return max(value, 0.2)


# --- landing and inspecting files ------------------------------------------------------------


def land(path: Path, frame: pd.DataFrame | bytes, *, row_group_size: int | None = None) -> Path:
    """Land a file the way the contract says: write a hidden temp name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    if isinstance(frame, bytes):
        tmp.write_bytes(frame)
    else:
        frame.to_parquet(tmp, row_group_size=row_group_size)
    tmp.rename(path)
    return path


def age(path: Path, seconds: float = 120) -> None:
    """Make a file look settled (a file without parquet's footer is taken once it is old)."""
    old = time.time() - seconds
    os.utime(path, (old, old))


def tmp_leftovers(outbox: Path) -> list[Path]:
    """Temp files of unfinished output writes still visible in a local outbox."""
    return sorted(outbox.rglob(".tmp-*")) if outbox.exists() else []


def committed_outputs(outbox: Path) -> list[Path]:
    """Committed prediction parquet in a local outbox (hidden temp files excluded)."""
    if not outbox.exists():
        return []
    return sorted(p for p in outbox.rglob("*.parquet") if not p.name.startswith("."))


def lineage(path: Path) -> dict[str, Any]:
    """The ``batchml.lineage`` metadata of one output parquet."""
    meta = pq.read_schema(path).metadata or {}
    return dict(json.loads(meta[b"batchml.lineage"]))


def outputs_by_input(outbox: Path) -> dict[str, list[Path]]:
    """input_uri -> the committed outputs that say they came from it."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in committed_outputs(outbox):
        found[lineage(path)["input_uri"]].append(path)
    return dict(found)


def tree(root: Path, *, skip: Iterable[Path] = ()) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (not following symlinks) -> (size, mtime_ns), minus ``skip``."""
    skipped = [Path(s).resolve() for s in skip]
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirs, files in os.walk(root):
        here = Path(dirpath).resolve()
        if any(here == s or here.is_relative_to(s) for s in skipped):
            dirs[:] = []
            continue
        for name in files:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# --- the catalog, read the way an operator would ----------------------------------------------


@dataclass
class CatalogFacts:
    """What the catalog says about input files after a run."""

    states: dict[str, int]
    scored_files: int
    batch_scored_rows: int
    batch_scored_distinct: int
    scored_uris: list[str]
    claimed: list[str]
    frame: pd.DataFrame = field(repr=False)


def catalog_facts(catalog: Path | str, *, like: str = "%") -> CatalogFacts:
    """Open the catalog (a DuckDB file or a URL: ``settings.catalog_target``) the way a user
    does (batchml's own Catalog) and count."""
    from batchml import Catalog

    cat = Catalog(catalog)
    try:
        files = cat.sql("SELECT file_id, source_uri, state, attempts, error, output_uri,"
                        " model_run_id, batch_id FROM files WHERE source_uri LIKE ?", [like])
        bf = cat.sql("SELECT count(*) AS n, count(DISTINCT file_id) AS d FROM batch_files"
                     " WHERE status = 'scored' AND source_uri LIKE ?", [like])
    finally:
        cat.close()
    states = files["state"].value_counts().to_dict()
    return CatalogFacts(
        states={str(k): int(v) for k, v in states.items()},
        scored_files=int((files["state"] == "scored").sum()),
        batch_scored_rows=int(bf["n"].iloc[0]),
        batch_scored_distinct=int(bf["d"].iloc[0]),
        scored_uris=sorted(files.loc[files["state"] == "scored", "source_uri"]),
        claimed=sorted(files.loc[files["state"] == "claimed", "source_uri"]),
        frame=files,
    )


# --- worker processes ---------------------------------------------------------------------------


def worker_env(settings: Any, **extra: str) -> dict[str, str]:
    """Environment for a worker process: this test's settings only, no stray BATCHML_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    env.update({
        "BATCHML_HOME": str(settings.home),
        # the settings' catalog: a DuckDB file, or a server's URL (its password, if any, stays
        # out of the environment: the servers here trust loopback)
        **({"BATCHML_CATALOG_URL": settings.catalog_url} if settings.catalog_url else
           {"BATCHML_CATALOG_PATH": str(settings.catalog_file)}),
        "BATCHML_ARTIFACT_ROOT": str(settings.artifact_root),
        "BATCHML_INBOX": str(settings.inbox),
        "BATCHML_OUTBOX": str(settings.outbox),
        "BATCHML_QUARANTINE": str(settings.quarantine),
        "BATCHML_LEASE_S": f"{settings.lease_s:g}",
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    env.update(extra)
    return env


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Zygote:
    """A pre-warmed Python process that forks worker processes on request.

    Importing batchml's scoring stack (pandas, pyarrow, scikit-learn, skops) costs ~5 s, which
    would dominate a test that kills and restarts a worker many times. The zygote imports it
    once and forks a child per worker; each child sets its own environment and runs the real
    ``batchml`` command line (``batchml.cli.app``) exactly as the console script does, with
    stdout/stderr in files. Children are SIGKILLed by pid. ``zygote.py`` beside this file.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "zygote.stderr", "ab") as err:
            self.proc = subprocess.Popen(
                [PYTHON, str(HERE / "zygote.py")], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")},
                     "TF_CPP_MIN_LOG_LEVEL": "2"})
        self._ready = False
        self.children: list[int] = []
        self._n = 0

    def wait_ready(self) -> None:
        """The zygote imports in the background; the first spawn waits for it."""
        if self._ready:
            return
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"zygote did not start: {line!r}; see "
                               f"{self.log_dir}/zygote.stderr")
        self._ready = True

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, name: str) -> Child:
        """Fork a child that runs ``batchml *argv``; returns it (pid and log paths)."""
        assert self.proc.stdin and self.proc.stdout
        self.wait_ready()
        self._n += 1
        base = self.log_dir / f"{self._n:03d}-{name}"
        req = {"argv": argv, "env": env, "cwd": str(cwd), "stdout": f"{base}.out",
               "stderr": f"{base}.err", "rc": f"{base}.rc"}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        self.children.append(pid)
        return Child(pid, Path(f"{base}.out"), Path(f"{base}.err"), Path(f"{base}.rc"))

    def close(self) -> None:
        for pid in self.children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Child:
    pid: int
    stdout: Path
    stderr: Path
    rc_file: Path

    def alive(self) -> bool:
        return alive(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def rc(self) -> int | None:
        try:
            return int(self.rc_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def out(self) -> str:
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def err(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from ``/proc/PID/task/*/children``)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for path in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(x) for x in path.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_mid_write(child: Child, writing: Callable[[], bool], timeout: float,
                   jitter: Callable[[], float] = lambda: 0.0) -> bool:
    """SIGKILL ``child`` while ``writing()`` holds (an output's temp file is there).

    Waits for ``writing()``, sleeps ``jitter()`` seconds, then freezes the child's process
    tree (SIGSTOP) and checks again: if the write is still going the child is SIGKILLed
    while frozen (its descendants are resumed, as after a real crash of that one process);
    if the write finished in between, the tree is resumed and the next write is awaited.
    So a kill that lands mid-write does not depend on the machine's speed. Returns whether
    the kill happened (False: no write was caught before ``timeout`` or the child died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.alive():
        if not writing():
            time.sleep(0.001)
            continue
        time.sleep(jitter())
        tree = [child.pid, *descendants(child.pid)]
        _signal_all(tree, signal.SIGSTOP)
        if writing():
            os.kill(child.pid, signal.SIGKILL)
            _signal_all(tree[1:], signal.SIGCONT)
            return True
        _signal_all(tree, signal.SIGCONT)
    return False


def run_cli(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 170
            ) -> subprocess.CompletedProcess[str]:
    """The real console script, as a fresh process."""
    return subprocess.run([BATCHML, *argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def pg_copy_of_base(base: Any) -> str:
    """A new database holding a copy of the PostgreSQL base catalog (``rel_base_pg``);
    returns its URL."""
    import uuid

    name = f"rel_{uuid.uuid4().hex[:12]}"
    with base.server.admin() as con:
        con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base.template}"')
    return str(base.server.url(name))


def copy_catalog(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copy2(wal, dst.with_name(dst.name + ".wal"))


def prime_predictions_view(settings: Any) -> str:
    """Score one warm-up file in-process into ``settings.outbox`` so that the catalog's
    ``predictions`` view exists before worker processes start; returns the warm-up input URI.

    Creating that view while another process is writing an output crashes the creating worker
    (the view's glob reads the writer's hidden temp file); that defect has its own test
    (test_reliability_sql.py::test_predictions_view_ignores_inflight_temp_files). Tests about
    something else create the view up front so that they test one thing at a time.
    """
    from batchml import Catalog
    from batchml.sources import DirectorySource
    from batchml.synthetic import synthetic_reviews
    from batchml.worker import Worker

    warm = Path(settings.home) / "warmup"
    path = land(warm / "warmup.parquet", synthetic_reviews(5, seed=0))
    cat = Catalog.from_settings(settings)
    src = DirectorySource(warm, quarantine_dir=settings.quarantine, use_events=False)
    worker = Worker(cat, src, settings)
    worker.discover()
    report = worker.run_batch(file_ids=[r.file_id for r in src.poll()])
    assert [o.status for o in report.outcomes] == ["scored"], report
    cat.close()
    return str(path)


def catalog_dump(catalog: Path | str) -> dict[str, str]:
    """Every base table of the catalog (a DuckDB file or a URL) as CSV text (a full SQL dump,
    for comparisons), but ``publication``: when the read-only copy was last refreshed is
    bookkeeping that a debounced publication of an earlier write may update at any moment."""
    from batchml import Catalog

    cat = Catalog(catalog)
    try:
        tables = cat.sql("SELECT table_name FROM information_schema.tables"
                         " WHERE table_type = 'BASE TABLE' AND table_schema IN ('main', 'public')"
                         " AND table_name <> 'publication' ORDER BY table_name")["table_name"]
        return {t: cat.sql(f'SELECT * FROM "{t}"').to_csv() for t in tables}
    finally:
        cat.close()
