"""The records of the file ledger: a file a source has seen, a ledger row, a claimed batch.

Plain values shared by the :class:`~batchml.catalog.Ledger`, the catalog backends and the
sources and workers that pass them around.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime

STATES = ("discovered", "claimed", "scored", "quarantined", "failed")


@dataclass(frozen=True)
class FileRef:
    """A file a source has seen: its URI and what identifies this version of it."""

    uri: str
    etag: str | None = None
    size: int | None = None
    mtime: datetime | None = None

    @property
    def identity(self) -> str:
        """ETag when the store gives one, else size and mtime."""
        if self.etag:
            return f"etag:{self.etag}"
        stamp = self.mtime.isoformat() if self.mtime else ""
        return f"stat:{self.size}:{stamp}"

    @property
    def file_id(self) -> str:
        """Stable id of this version of the file (a new ETag is new work)."""
        return hashlib.sha256(f"{self.uri}\0{self.identity}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FileRecord:
    """A ledger row."""

    file_id: str
    source_uri: str
    etag: str | None
    size: int | None
    mtime: datetime | None
    state: str
    attempts: int
    error: str | None = None
    claimed_by: str | None = None

    @property
    def ref(self) -> FileRef:
        return FileRef(self.source_uri, self.etag, self.size, self.mtime)


@dataclass(frozen=True)
class ClaimedBatch:
    """What :meth:`Ledger.claim_batch` did: the batch opened (None when nothing was claimed),
    the model run it resolved, the files claimed and when their leases expire."""

    batch_id: str | None
    model_run_id: str | None
    records: list[FileRecord]
    lease_expires_at: datetime | None
    model_name: str | None = None
    """The registered model the batch scores with (from the reference, or the version the
    run is registered as), its version and the alias it was resolved through."""
    model_version: int | None = None
    model_alias: str | None = None


def worker_id() -> str:
    """A name for this worker: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
