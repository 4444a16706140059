"""The catalog: runs, tags, models, the file ledger and its batches, in one package.

What the rest of batchml (and a user) sees is the object model: :class:`Catalog`, :class:`Run`
(:mod:`.model`) and the :class:`Ledger` of input files (:mod:`.ledger`, its records in
:mod:`.records`). They talk to a :class:`CatalogBackend` (:mod:`.backend`: the interface and its
registry by URL scheme), never to SQL text. The DuckDB backend holds all the SQL:
:mod:`.duckdb_backend` (runs, tags, artifacts, models, the ``sql`` passthrough) and
:mod:`.duckdb_ledger` (claims, leases, batches), over :mod:`._db` (connections, the
inter-process lock of :mod:`._locking`, migrations from ``migrations/``). :mod:`.publication`
makes the read-only copy people open, :mod:`.duckdb_init` the init script for their own DuckDB
session on an S3 outbox.

A new backend (PostgreSQL next) subclasses :class:`CatalogBackend` and calls
:func:`register_backend` with its URL scheme; ``Catalog("postgresql://...")`` then opens it.
"""

from ._db import utcnow
from .backend import CatalogBackend, open_backend, register_backend
from .ledger import Ledger
from .model import Catalog, Run
from .records import STATES, ClaimedBatch, FileRecord, FileRef, worker_id

__all__ = [
    "STATES",
    "Catalog",
    "CatalogBackend",
    "ClaimedBatch",
    "FileRecord",
    "FileRef",
    "Ledger",
    "Run",
    "open_backend",
    "register_backend",
    "utcnow",
    "worker_id",
]
