"""batchml: train, tag, and score every file that lands, exactly once, queryable in SQL.

The public API is what ``__all__`` lists; everything else is private and may change.
"""

from .catalog import Catalog, Run
from .errors import (
    ArtifactNotFound,
    BatchMLError,
    CatalogBusy,
    ChecksumMismatch,
    DataError,
    ModelNotFound,
    RunCannotScore,
    RunNotFound,
    SchemaMismatch,
    is_transient,
)
from .settings import Settings
from .store import open_store

__version__ = "0.1.0"

__all__ = [
    "ArtifactNotFound",
    "BatchMLError",
    "Catalog",
    "CatalogBusy",
    "ChecksumMismatch",
    "DataError",
    "ModelNotFound",
    "Run",
    "RunCannotScore",
    "RunNotFound",
    "SchemaMismatch",
    "Settings",
    "is_transient",
    "open_store",
]
