"""The catalog: runs, tags, models, the file ledger and its batches, in one package.

What the rest of batchml (and a user) sees is the object model: :class:`Catalog`, :class:`Run`
and the :class:`Ledger` of input files. They talk to a backend (:mod:`.backend`: the interface
and its registry by URL scheme), never to SQL text; the DuckDB backend (:mod:`.duckdb_backend`,
with :mod:`._db` for connections, locks and migrations) holds all the SQL. :mod:`.publication`
makes the read-only copy people open, :mod:`.duckdb_init` the init script for their own DuckDB
session on an S3 outbox.
"""

from ._db import utcnow
from .ledger import Ledger
from .model import Catalog, Run
from .records import STATES, ClaimedBatch, FileRecord, FileRef, worker_id

__all__ = [
    "STATES",
    "Catalog",
    "ClaimedBatch",
    "FileRecord",
    "FileRef",
    "Ledger",
    "Run",
    "utcnow",
    "worker_id",
]
