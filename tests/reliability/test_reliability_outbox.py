"""4. Unwritable outbox. Tests run as root, which ignores permission bits, so the outbox is made
unwritable for real: a tiny tmpfs filled to the last byte (ENOSPC; skipped where tmpfs cannot be
mounted), an outbox path below a regular file, the outbox replaced by a file or deleted while
the worker runs, and an S3 outbox whose bucket does not exist.

The contract (README "Exactly once", scoring.py's StorageUnavailable hint): scoring fails
cleanly, the input files stay pending (``discovered``; not ``failed``, not quarantined, still in
the inbox), and once the outbox is fixed each is scored exactly once.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import relhelp

from batchml import Catalog
from batchml.catalog import Ledger
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

pytestmark = pytest.mark.reliability


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last byte."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def worker_for(settings: Any) -> Worker:
    src = DirectorySource(settings.inbox, quarantine_dir=settings.quarantine, use_events=False)
    return Worker(Catalog.from_settings(settings), src, settings)


def land_inputs(settings: Any, n: int = 3) -> list[str]:
    return [str(relhelp.land(Path(settings.inbox) / f"o-{i}.parquet",
                             synthetic_reviews(40, seed=i))) for i in range(n)]


def assert_pending(settings: Any, names: list[str]) -> None:
    files = Ledger(Catalog.from_settings(settings)).files()
    mine = files[files["source_uri"].isin(names)]
    assert sorted(mine["state"]) == ["discovered"] * len(names), mine[["state", "error"]]
    assert all(Path(n).exists() for n in names), "an input left the inbox"
    q = Path(settings.quarantine)
    assert not q.exists() or not any(q.iterdir()), list(q.iterdir())


def drain_pending(settings: Any) -> list[Any]:
    worker = worker_for(settings)
    worker.discover()
    outcomes = []
    while (rep := worker.run_batch()).outcomes:
        outcomes += rep.outcomes
    assert rep.error is None, rep.error
    return outcomes


def drain_and_check_once(settings: Any, names: list[str], earlier: Sequence[Any] = ()) -> None:
    """Drain what is pending; with ``earlier`` outcomes, every input in ``names`` ends scored
    exactly once, with one output and no temp file left."""
    outcomes = [*earlier, *drain_pending(settings)]
    assert sorted(o.source_uri for o in outcomes) == sorted(names)
    assert {o.status for o in outcomes} == {"scored"}
    by_input = relhelp.outputs_by_input(Path(settings.outbox))
    assert sorted(by_input) == sorted(names)
    assert all(len(v) == 1 for v in by_input.values())
    assert relhelp.tmp_leftovers(Path(settings.outbox)) == []


def test_full_outbox_keeps_files_pending_then_scores_once(make_home: Any,
                                                          tiny_tmpfs: Path) -> None:
    settings = make_home(outbox=str(tiny_tmpfs / "outbox"))
    names = land_inputs(settings)
    worker = worker_for(settings)
    filler = fill(tiny_tmpfs)
    worker.discover()
    report = worker.run_batch()
    assert report.outcomes == [] and report.released == len(names)
    assert "StorageUnavailable" in (report.error or "") and "No space left" in report.error
    assert_pending(settings, names)
    assert relhelp.committed_outputs(Path(settings.outbox)) == []
    assert relhelp.tmp_leftovers(Path(settings.outbox)) == []
    filler.unlink()  # the operator frees space
    drain_and_check_once(settings, names)
    print(f"\n[outbox] ENOSPC: files={len(names)} pending while full, then scored once")


def test_outbox_outage_longer_than_max_attempts_keeps_files_pending(make_home: Any,
                                                                    tiny_tmpfs: Path) -> None:
    settings = make_home(outbox=str(tiny_tmpfs / "outbox"))
    names = land_inputs(settings)
    worker = worker_for(settings)
    filler = fill(tiny_tmpfs)
    worker.discover()
    first = worker.run_batch()
    assert first.outcomes == [] and "StorageUnavailable" in (first.error or "")
    for _ in range(7):  # what Worker.run does about once a second during the outage
        assert worker.run_batch().outcomes == []
    assert_pending(settings, names)
    filler.unlink()
    drain_and_check_once(settings, names)


def test_outbox_below_a_regular_file_refuses_to_start(make_home: Any, tmp_path: Path) -> None:
    """BATCHML_OUTBOX under a regular file: `batchml watch --once` fails with one line and
    touches no input; with the outbox fixed, every file is scored once."""
    from typer.testing import CliRunner

    from batchml.cli import app

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    settings = make_home(outbox=str(blocker / "outbox"))
    names = land_inputs(settings)
    env = relhelp.worker_env(settings)
    result = CliRunner().invoke(app, ["watch", str(settings.inbox), "--once"], env=env)
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "error" in result.output.lower()
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    files = Ledger(Catalog.from_settings(settings)).files()
    assert set(files["state"]) <= {"discovered"}  # never claimed, never quarantined
    assert all(Path(n).exists() for n in names)
    fixed = settings.model_copy(update={"outbox": str(tmp_path / "outbox-fixed")})
    drain_and_check_once(fixed, names)


def test_outbox_replaced_by_a_file_does_not_quarantine_inputs(make_home: Any) -> None:
    settings = make_home()
    names = land_inputs(settings)
    worker = worker_for(settings)  # the outbox exists when the worker starts ...
    outbox = Path(settings.outbox)
    shutil.rmtree(outbox)
    outbox.write_text("... and then a file takes its place")
    worker.discover()
    report = worker.run_batch()
    assert report.outcomes == [] and report.error
    assert_pending(settings, names)


def test_outbox_deleted_under_worker_does_not_fail_inputs(make_home: Any) -> None:
    """Was a defect: the outbox's mkstemp raised FileNotFoundError, reported as the *input*
    having been deleted, so every good input was marked 'failed'."""
    settings = make_home()
    names = land_inputs(settings)
    worker = worker_for(settings)
    shutil.rmtree(settings.outbox)
    worker.discover()
    outcomes = []
    while (rep := worker.run_batch()).outcomes:
        outcomes += rep.outcomes
    files = Ledger(worker.catalog).files()
    assert not (files["state"].isin(["failed", "quarantined"])).any(), files[["state", "error"]]
    drain_and_check_once(settings, names, earlier=outcomes)


def test_s3_outbox_missing_bucket_keeps_files_pending(make_home: Any, aws_env: str) -> None:
    settings = make_home(outbox="s3://no-such-bucket-batchml/preds", s3_endpoint_url=aws_env,
                         s3_region="us-east-1")
    names = land_inputs(settings)
    worker = worker_for(settings)
    worker.discover()
    report = worker.run_batch()
    assert report.outcomes == [] and report.error
    assert_pending(settings, names)
