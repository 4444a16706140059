"""Shared pieces of the benchmarks: figures, statistics, child processes with their peak RSS,
machine and package information, and the run context (temp dir, sizes, shared test data).

The runner process stays light (stdlib, numpy, pyarrow, duckdb): anything that imports
TensorFlow or scikit-learn runs in a child process (``python -m bench._child ...``), so every
measured process starts from the same state and the runner's own memory never counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TAG = "deployment_candidate"


# --- figures --------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the results table.

    ``value`` is the median over ``n`` repetitions (``min``/``max`` beside it). ``floor`` is
    the same quantity for the reference measured in this run; ``ratio`` = value / floor.
    ``met`` is None when the figure has no target.
    """

    id: str
    key: str
    what: str
    value: float
    unit: str
    min: float | None = None
    max: float | None = None
    n: int = 1
    floor: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    notes: str = ""
    samples: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of ``values``."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no samples")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between closest ranks."""
    vals = sorted(float(v) for v in values)
    if not vals:
        raise ValueError("no samples")
    if len(vals) == 1:
        return vals[0]
    pos = (len(vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def figure(id: str, key: str, what: str, samples: Sequence[float], unit: str, *,
           floor: float | None = None, target: str = "", met: bool | None = None,
           notes: str = "", extra: dict[str, Any] | None = None) -> Figure:
    """A figure from raw samples: median with min and max, ratio to ``floor`` if given."""
    s = summary(samples)
    ratio = s["median"] / floor if floor else None
    return Figure(id, key, what, s["median"], unit, s["min"], s["max"], int(s["n"]), floor,
                  ratio, target, met, notes, [float(v) for v in samples], extra or {})


# --- child processes ------------------------------------------------------------------------


@dataclass
class ChildResult:
    """A finished child process: wall time, exit code, peak RSS (from the kernel), output."""

    args: list[str]
    returncode: int
    wall_s: float
    maxrss_bytes: int
    cpu_s: float
    stdout: str
    stderr: str

    @property
    def cores(self) -> float:
        """CPU time over wall time: how many cores the process kept busy on average."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def json(self) -> Any:
        """The last line of stdout that parses as JSON (what ``bench._child`` prints)."""
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    return json.loads(line)
        raise RuntimeError(f"no JSON in the output of {' '.join(self.args[:4])}...:\n"
                           f"{self.stdout[-2000:]}\n{self.stderr[-4000:]}")

    def check(self) -> ChildResult:
        if self.returncode != 0:
            raise RuntimeError(f"{' '.join(self.args[:6])} exited {self.returncode}:\n"
                               f"{self.stdout[-2000:]}\n{self.stderr[-4000:]}")
        return self


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours without BATCHML_*/PREFECT_API_URL, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BATCHML_") and k != "PREFECT_API_URL"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def run_child(args: Sequence[str], *, env: dict[str, str] | None = None,
              timeout_s: float = 1800, cwd: Path | None = None) -> ChildResult:
    """Run ``args`` to completion; wall time from spawn to exit, peak RSS from ``wait4``.

    ``os.wait4`` returns the rusage of exactly this child (and the children it waited for),
    so the peak RSS is the kernel's ``ru_maxrss`` for that process, not an estimate.
    """
    args = [str(a) for a in args]
    out_f = _tempfile()
    err_f = _tempfile()
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env or clean_env(), cwd=cwd or ROOT, stdout=out_f,
                            stderr=err_f, stdin=subprocess.DEVNULL, start_new_session=True)
    timer = threading.Timer(timeout_s, _kill_group, [proc.pid])
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    err_f.seek(0)
    stdout = out_f.read().decode(errors="replace")
    stderr = err_f.read().decode(errors="replace")
    out_f.close()
    err_f.close()
    return ChildResult(args, proc.returncode, wall, int(usage.ru_maxrss) * 1024,
                       usage.ru_utime + usage.ru_stime, stdout, stderr)


def _tempfile() -> Any:
    import tempfile

    return tempfile.TemporaryFile()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def child(command: str, payload: dict[str, Any], *, env: dict[str, str] | None = None,
          timeout_s: float = 1800) -> tuple[Any, ChildResult]:
    """Run ``python -m bench._child COMMAND JSON`` and return (its JSON answer, the result)."""
    result = run_child([PYTHON, "-m", "bench._child", command, json.dumps(payload)],
                       env=env, timeout_s=timeout_s).check()
    return result.json(), result


def batchml_cli() -> list[str]:
    """The ``batchml`` console script of this interpreter's environment."""
    script = Path(PYTHON).parent / "batchml"
    if script.exists():
        return [str(script)]
    return [PYTHON, "-c", "from batchml.cli import main; main()"]


# --- machine --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
    }
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    info["memory_bytes"] = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = list(os.getloadavg())
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    names = {"batchml": ["batchml"], "duckdb": ["duckdb"], "pyarrow": ["pyarrow"],
             "tensorflow": ["tensorflow", "tensorflow-cpu"], "keras": ["keras"],
             "scikit-learn": ["scikit-learn"], "prefect": ["prefect"], "pandas": ["pandas"],
             "numpy": ["numpy"]}
    found: dict[str, str | None] = {}
    for key, dists in names.items():
        found[key] = None
        for dist in dists:
            with contextlib.suppress(metadata.PackageNotFoundError):
                found[key] = metadata.version(dist)
                break
    return found


def git_info() -> dict[str, Any]:
    """The commit under test and whether batchml/ or flows/ differ from it (read-only git)."""
    info: dict[str, Any] = {}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                        capture_output=True, timeout=10).stdout.strip() or None
        diff = subprocess.run(["git", "diff", "--stat", "HEAD", "--", "batchml", "flows"],
                              cwd=ROOT, text=True, capture_output=True, timeout=10).stdout
        info["uncommitted_changes"] = diff.strip().splitlines()[-1] if diff.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# --- the run context ------------------------------------------------------------------------


@dataclass
class Context:
    """What every benchmark gets: the mode, the sizes it should use, a temp dir, shared data
    (files, trained models, template homes) made once and reused."""

    quick: bool
    tmp: Path
    sizes: dict[str, Any]
    log: Callable[[str], None]
    _cache: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Any]] = field(default_factory=list)

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` when the whole run ends (stops a shared service)."""
        self._closers.append(fn)

    def close(self) -> None:
        while self._closers:
            fn = self._closers.pop()
            try:
                fn()
            except Exception as exc:  # closing must not hide the results
                self.log(f"  (cleanup failed: {exc})")

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def dir(self, *parts: str) -> Path:
        path = self.tmp.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # shared data ------------------------------------------------------------------------

    def reviews_file(self, n: int, *, seed: int = 7) -> Path:
        """A parquet file of ``n`` synthetic reviews (``review_id``, ``review``, ``labels``)
        written by ``batchml.synthetic.write_reviews`` (streams, flat memory)."""

        def make() -> Path:
            path = self.dir("data") / f"reviews-{n}-{seed}.parquet"
            start = time.perf_counter()
            write_scoring_file(path, n, seed=seed)
            self.log(f"  wrote {path.name} ({n:,} rows, {path.stat().st_size / 1e6:.0f} MB)"
                     f" in {time.perf_counter() - start:.1f} s")
            return path

        return self.cached(f"reviews:{n}:{seed}", make)

    def models(self) -> dict[str, Any]:
        """Both scoring models trained once, each in a template batchml home with a tagged
        run; plus their warm predict throughput (rows/s) measured on held-out rows."""

        def make() -> dict[str, Any]:
            out = self.dir("models")
            start = time.perf_counter()
            answer, _ = child("prepare-models", {
                "dir": str(out), "n_train": self.sizes["model_train_rows"],
                "n_calibrate": self.sizes["calibrate_rows"],
            }, timeout_s=1800)
            self.log(f"  trained keras_nbow and sklearn_text on "
                     f"{self.sizes['model_train_rows']:,} rows in "
                     f"{time.perf_counter() - start:.0f} s; warm predict: "
                     + ", ".join(f"{m} {v['rows_per_s']:,.0f} rows/s"
                                 for m, v in answer.items()))
            return dict(answer)

        return self.cached("models", make)

    def fresh_home(self, model: str, name: str) -> tuple[Path, dict[str, str]]:
        """A new BATCHML_HOME whose catalog is a copy of the model's template catalog (one
        tagged run, empty ledger), and the environment that points batchml at it."""
        info = self.models()[model]
        home = self.tmp / "homes" / name
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        shutil.copy2(info["catalog"], home / "catalog.duckdb")
        env = clean_env(BATCHML_HOME=str(home), BATCHML_ARTIFACT_ROOT=info["artifacts"],
                        BATCHML_LOCK_TIMEOUT_S="120")
        return home, env


def write_scoring_file(path: Path, n: int, *, seed: int) -> Path:
    """``n`` synthetic reviews streamed to ``path`` by batchml's own writer (flat memory)."""
    from batchml.synthetic import write_reviews

    return write_reviews(path, n, seed=seed)


@contextlib.contextmanager
def timed(log: Callable[[str], None], what: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log(f"  {what}: {time.perf_counter() - start:.1f} s")


def fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 100_000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2g}"


# --- a throwaway PostgreSQL server ----------------------------------------------------------


def _pgserver_module() -> Any:
    """``tests/pgserver.py``, loaded by its path: the one throwaway-server implementation,
    shared with the tests, without putting ``tests/`` (its conftest, its test modules) on
    ``sys.path``. Registered as ``pgserver``, the name the tests import it by."""
    import importlib.util

    if "pgserver" in sys.modules:
        return sys.modules["pgserver"]
    path = ROOT / "tests" / "pgserver.py"
    spec = importlib.util.spec_from_file_location("pgserver", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pgserver"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["pgserver"]
        raise
    return module


_NOT_DURABLE = ("fsync", "synchronous_commit", "full_page_writes")


@contextlib.contextmanager
def postgres_server(*, durable: bool = True) -> Iterator[Any]:
    """A throwaway PostgreSQL server (``tests/pgserver.PostgresServer``: initdb into a fresh
    temp dir, a free loopback port, trust auth) for one benchmark; stopped and removed when the
    block ends. ``.create_database(name)`` gives a catalog URL.

    The tests' server switches durability off (``fsync``, ``synchronous_commit``,
    ``full_page_writes``) on its command line, where neither ``ALTER SYSTEM`` nor a session can
    switch it back. ``durable=True`` (the default) starts it without those options, so a commit
    waits for its WAL flush as on a production server (and as on DuckDB, which syncs its WAL at
    every commit); checked with ``SHOW`` once started."""
    base = _pgserver_module().PostgresServer

    class Server(base):  # type: ignore[misc, valid-type]
        def _server_options(self) -> str:
            options = super()._server_options()
            if durable:
                for name in _NOT_DURABLE:
                    options = options.replace(f"-c {name}=off", "")
            return " ".join(options.split())

    server = Server().start()
    try:
        if durable:
            with server.admin() as con:
                off = [n for n in _NOT_DURABLE
                       if con.execute(f"SHOW {n}").fetchone()[0] != "on"]
            if off:
                raise RuntimeError(f"the benchmark's PostgreSQL server is not durable: "
                                   f"{', '.join(off)} off")
        yield server
    finally:
        server.stop()
