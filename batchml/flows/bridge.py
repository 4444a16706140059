"""The bridge for server mode: discover landed files and emit one ``batchml.file.landed``
Prefect event per new file. A deployment trigger turns each event into a prediction flow run
(see ``deploy/prefect.yaml``); the ledger keeps scoring exactly once even if an event repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect import flow
from prefect.events import emit_event

from batchml import Settings
from batchml.catalog import FileRef
from batchml.worker import Worker

LANDED = "batchml.file.landed"


def emit_landed(refs: list[FileRef]) -> int:
    """One event per file; the resource id is the file URI (templated into the flow run)."""
    for ref in refs:
        emit_event(event=LANDED, resource={"prefect.resource.id": ref.uri,
                                           "batchml.file-id": ref.file_id,
                                           "batchml.etag": ref.etag or ""})
    return len(refs)


def bridge_once(worker: Worker) -> int:
    """Discover new files once and emit their events; returns how many."""
    return emit_landed(worker.discover())


def bridge_for(worker: Worker, seconds: float | None, poll_s: float = 1.0,
               on_emit: Callable[[int], None] | None = None) -> int:
    """Discover and emit, round after round, for ``seconds`` (0: one round; None: until
    interrupted), waiting for the source up to ``poll_s`` between rounds; ``on_emit(n)`` after
    each round that emitted. Returns how many events were emitted."""
    src = worker.source
    emitted = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        n = bridge_once(worker)
        emitted += n
        if n and on_emit is not None:
            on_emit(n)
        if deadline is None:
            src.wait(poll_s)
        elif time.monotonic() >= deadline:
            break
        else:
            src.wait(min(poll_s, max(deadline - time.monotonic(), 0)))
    return emitted


@flow(name="bridge", log_prints=True)
def bridge_flow(source: str | None = None, seconds: float = 55.0, poll_s: float = 1.0,
                settings: Settings | None = None) -> dict[str, Any]:
    """Watch ``source`` for ``seconds`` (a scheduled deployment reruns it) and emit events."""
    settings = settings or Settings()
    worker = Worker.for_source(settings, source)
    try:
        emitted = bridge_for(worker, seconds, poll_s)
    finally:
        worker.source.close()
    print(f"emitted {emitted} {LANDED} event(s)")
    return {"emitted": emitted}
