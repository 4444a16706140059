"""The scorer process's side (see :mod:`batchml.scorer`): ``python -m batchml.scorer_child FD``.

It reads its :class:`~batchml.scorer.ScorerConfig`, then one file at a time from the socket:
loads the model from the artifact store (sha256-checked, cached by run id; the catalog is never
opened), scores the file with :func:`~batchml.scoring.score_file`, asks the parent before it
commits the output, and answers with the outcome or the exception. It exits on ``stop`` or when
the parent goes away.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .scorer import CommitRefused, ModelSpec, ScorerConfig, _pack

if TYPE_CHECKING:
    from .scoring import CommitGuard, LoadedModel
    from .store import S3Health



def _ask_parent(conn: Connection) -> CommitGuard:
    """The child outbox's commit guard: an output is committed only after the parent says
    the file's claim is held; otherwise :class:`CommitRefused`."""

    def guard(key: str) -> None:
        conn.send(("commit?", key))
        reply = conn.recv()
        # only an explicit yes commits: anything else (out of step) refuses
        if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "commit"
                and reply[1] is True):
            raise CommitRefused(key)

    return guard


def _load_model(spec: ModelSpec, config: ScorerConfig,
                health: S3Health | None = None) -> LoadedModel:
    from .estimators import load_estimator
    from .scoring import LoadedModel
    from .store import S3Store, split_s3_uri, store_for_uri

    if spec.artifact_uri.startswith("s3://"):
        bucket, _ = split_s3_uri(spec.artifact_uri)
        store: Any = S3Store(f"s3://{bucket}", endpoint_url=config.s3_endpoint_url,
                             region=config.s3_region, health=health)
    else:
        store = store_for_uri(spec.artifact_uri)
    estimator = load_estimator(spec.flavor, store.get(spec.artifact_uri, sha256=spec.sha256))
    if spec.threshold is not None and len(estimator.classes_) == 2:
        estimator.set_threshold(spec.threshold)  # type: ignore[attr-defined]
    return LoadedModel(spec.run_id, spec.name, spec.flavor, estimator, spec.reference)


def _fault_hooks(uri: str, config: ScorerConfig) -> None:
    """Test hooks (``BATCHML_FAULT_*_MARKER``): die the way a poison file would make it."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if config.fault_kill_marker and config.fault_kill_marker in name:
        os.kill(os.getpid(), signal.SIGKILL)
    if config.fault_alloc_marker and config.fault_alloc_marker in name:
        hog: list[bytearray] = []
        cap = 2 * (config.memory_limit_mb or 1024)
        while len(hog) * 16 < cap:  # until the guard kills us; stop at twice the limit
            hog.append(bytearray(16 * 2**20))
            hog[-1][::4096] = b"\x01" * len(range(0, 16 * 2**20, 4096))
            time.sleep(0.002)
        raise MemoryError(f"fault hook allocated {cap:.0f} MB and was not killed")


def child_main(fd: int) -> None:
    """The child's loop: take a file, score it, answer; exit on ``stop`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    kind, config = conn.recv()
    assert kind == "init"
    from .scoring import Outbox, score_file
    from .store import S3Health

    s3 = None
    # this process's S3 calls (outbox, model artifacts) count in `batchml status` too
    health = S3Health(config.s3_health_dir)
    if config.outbox.startswith("s3://"):
        from .store import s3_client

        s3 = s3_client(config.s3_endpoint_url, config.s3_region, health=health)
    outbox = Outbox(config.outbox, s3=s3, commit_guard=_ask_parent(conn))
    models: dict[str, LoadedModel] = {}
    try:
        conn.send(("ready", os.getpid()))
    except OSError:
        return  # the parent stopped us before we were ready
    while True:
        try:
            kind, *body = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if kind == "stop":
            return
        job = body[0]
        try:
            spec: ModelSpec = job["model"]
            model = models.get(spec.run_id)
            if model is None:
                if len(models) >= 4:
                    models.pop(next(iter(models)))
                model = models[spec.run_id] = _load_model(spec, config, health)
            _fault_hooks(job["record"].source_uri, config)
            outcome = score_file(Path(job["path"]), job["record"], model,
                                 outbox.partitioned(job.get("partition")),
                                 job["batch_id"], batch_rows=config.batch_rows,
                                 budget_bytes=config.budget_bytes, reprocess=job["reprocess"],
                                 limits=config.limits, params=job.get("params"),
                                 carry=(config.id_column,) if config.id_column else (),
                                 drift=config.drift)
            reply: tuple[Any, ...] = ("done", outcome)
        except CommitRefused:
            reply = ("refused",)
        except (EOFError, BrokenPipeError):
            return  # the parent died while we asked it
        except Exception as exc:
            reply = ("raised", _pack(exc))
        try:
            conn.send(reply)
        except OSError:
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s[scorer] %(message)s")
    child_main(int(sys.argv[1]))
