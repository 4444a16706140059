"""The published catalog: a read-only copy for people and their tools.

DuckDB lets no process write a database file while another process has it open, even
read-only: a user's ``duckdb -readonly`` session or a notebook's ``read_only=True`` connection
left open for an hour would stop every batchml write for that hour. So batchml keeps its own
catalog file to itself and, after each change, publishes a copy beside it
(``catalog.readonly.duckdb`` by default) by writing a temporary file and renaming it over the
old copy. A rename never waits for readers: a session that has the old copy open keeps reading
it (its file handle still points at the old file) and sees newer data when it reconnects. The
copy's ``catalog_info`` view says when it was published.

Publication is debounced: a burst of changes is published at most once per ``interval_s``
(and at least ten copy-durations apart, so a large catalog never spends most of its time being
copied). A process publishes what it changed: the service from a background thread, a one-shot
command when it exits. SQL stays in :mod:`._db`; this module decides when, and moves files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger("batchml.publication")


def published_path(catalog_path: Path) -> Path:
    """The default published copy of ``catalog_path``: ``x.duckdb`` -> ``x.readonly.duckdb``."""
    path = Path(catalog_path)
    if path.suffix:
        return path.with_name(f"{path.stem}.readonly{path.suffix}")
    return path.with_name(path.name + ".readonly")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Publication:
    """When and where one catalog file is published; :meth:`copy` does the file work."""

    def __init__(self, target: Path, *, interval_s: float = 1.0) -> None:
        self.target = Path(target)
        self.interval_s = interval_s
        self.pending = False
        self.last_at = 0.0          # monotonic time of this process's last publication
        self.last_duration = 0.0    # how long it took, seconds
        self.count = 0
        self.failures = 0

    def changed(self) -> None:
        """A change was committed that the copy does not have yet."""
        self.pending = True

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until a pending change may be published (0 when due now)."""
        now = time.monotonic() if now is None else now
        gap = max(self.interval_s, 10 * self.last_duration)
        return max(0.0, self.last_at + gap - now)

    def due(self) -> bool:
        """Is there a pending change whose debounce interval has passed?"""
        return self.pending and self.wait_s() == 0.0

    def missing(self) -> bool:
        """No copy has been published yet (or someone deleted it)."""
        return not self.target.exists()

    def copy(self, source: Path) -> None:
        """Copy the checkpointed catalog ``source`` over the published copy, atomically.

        The caller holds the catalog's write lock and has checkpointed it, so the file is
        complete on its own (no write-ahead log) and nothing writes to it during the copy."""
        start = time.monotonic()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._sweep()
        tmp = self.target.with_name(f".{self.target.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())  # a crash never leaves a torn copy under the real name
            os.replace(tmp, self.target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.pending = False
        self.last_at = time.monotonic()
        self.last_duration = self.last_at - start
        self.count += 1

    def failed(self, exc: BaseException) -> None:
        """A publication failed (disk full, permissions): keep the change pending, say so once
        per streak, and never let it fail the write that triggered it."""
        self.failures += 1
        self.last_at = time.monotonic()  # back off one interval before trying again
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning("could not publish the catalog to %s (%s); will retry: %s",
                        self.target, type(exc).__name__, exc)

    def _sweep(self) -> None:
        # temporary copies of processes killed mid-copy
        for stale in self.target.parent.glob(f".{self.target.name}.tmp-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    stale.unlink()
