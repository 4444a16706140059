"""An inter-process reader/writer lock on a lock file (POSIX ``flock``).

DuckDB lets one process hold a writable connection to a file, and read-only connections from
other processes cannot coexist with it. batchml therefore wraps every catalog connection in this
lock: readers share it, a writer holds it alone. The kernel releases ``flock`` locks when a
process dies, so a SIGKILLed writer never leaves the catalog locked.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from pathlib import Path

from ..errors import CatalogBusy


def holders_of(fd: int) -> list[str]:
    """The processes holding ``flock`` locks on the file open as ``fd`` ("process 12
    (batchml serve)"), from /proc/locks; empty where that cannot be known."""
    try:
        st = os.fstat(fd)
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found: list[str] = []
    for line in table.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2e:5678 0 EOF" ("->" marks a waiter)
        if len(parts) < 6 or "->" in parts or parts[1] != "FLOCK" or parts[5] != inode:
            continue
        pid = parts[4]
        if pid == str(os.getpid()):
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = ""
        label = f"process {pid}" + (f" ({cmd.strip()[:80]})" if cmd.strip() else "")
        if label not in found:
            found.append(label)
    return found


class FileLock:
    """One holder's handle on a lock file; ``acquire(exclusive=...)`` / ``release()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.exclusive = False

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, *, exclusive: bool, timeout_s: float) -> None:
        """Wait (polling with jittered backoff) up to ``timeout_s``; raise :class:`CatalogBusy`."""
        assert self.fd is None, "lock already held"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holders = holders_of(fd)
                    os.close(fd)
                    who = ", ".join(holders) or "another process"
                    raise CatalogBusy(
                        f"The catalog lock {self.path} was held by {who} for over "
                        f"{timeout_s:g} s.",
                        hint="If that process is stuck, stop it (batchml status shows the "
                        "service); otherwise raise BATCHML_LOCK_TIMEOUT_S.",
                    ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.005)
        self.fd, self.exclusive = fd, exclusive

    def _probe(self, mode: int) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def is_free(self) -> bool:
        """True when nobody holds the lock exclusively (a quick non-blocking probe)."""
        return self._probe(fcntl.LOCK_SH)

    def nobody_else(self) -> bool:
        """True when no other holder (shared or exclusive) has the lock right now."""
        return self._probe(fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def forget(self) -> None:
        """In a forked child: drop the inherited descriptor without unlocking the parent's lock."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
