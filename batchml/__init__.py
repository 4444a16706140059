"""batchml: train, tag, and score every file that lands, exactly once, queryable in SQL.

The public API is what ``__all__`` lists; everything else is private and may change.
"""

from .catalog import Catalog, Run
from .catalog.registry import ModelVersion, RegisteredModel
from .errors import (
    AliasConflict,
    ArtifactNotFound,
    BatchMLError,
    CatalogBusy,
    ChecksumMismatch,
    DataError,
    ModelNotFound,
    RegistryError,
    RunCannotScore,
    RunNotFound,
    SchemaMismatch,
    is_transient,
)
from .settings import Settings
from .store import open_store
from .user_model import PythonModel, PythonModelContext

__version__ = "0.1.0"

__all__ = [
    "AliasConflict",
    "ArtifactNotFound",
    "BatchMLError",
    "Catalog",
    "CatalogBusy",
    "ChecksumMismatch",
    "DataError",
    "ModelNotFound",
    "ModelVersion",
    "PythonModel",
    "PythonModelContext",
    "RegisteredModel",
    "RegistryError",
    "Run",
    "RunCannotScore",
    "RunNotFound",
    "SchemaMismatch",
    "Settings",
    "is_transient",
    "open_store",
]
