"""The batchml exception tree.

Every error raised on purpose by batchml derives from :class:`BatchMLError`, and most also
derive from the builtin that fits (``LookupError``, ``ValueError``, ``OSError`` ...), so callers
can catch either.  Each class says whether it is *transient* (retrying the same thing later can
succeed: a busy lock, a flaky network) or *terminal* (retrying cannot help: a corrupt file, a
missing column).  Retry logic asks :func:`is_transient` and never retries terminal errors.
"""

from __future__ import annotations


class BatchMLError(Exception):
    """Base class of every batchml error. Messages say what went wrong and what to do next."""

    transient: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)


# --- configuration -----------------------------------------------------------------------------


class ConfigError(BatchMLError, ValueError):
    """A setting is missing or invalid."""


# --- catalog -----------------------------------------------------------------------------------


class CatalogError(BatchMLError, OSError):
    """The catalog could not be opened or used."""


class CatalogBusy(CatalogError, TimeoutError):
    """Another process held the catalog lock for longer than the configured timeout."""

    transient = True


class CatalogUnavailable(CatalogError, ConnectionError):
    """The catalog's server could not be reached or dropped the connection (a restart, a
    network partition); the statement's transaction was rolled back."""

    transient = True


class QueryRefused(CatalogError, PermissionError):
    """A read-only SQL session was given a statement that writes (catalog or files)."""


class RunNotFound(BatchMLError, LookupError):
    """No run matches the id or the query."""


class ModelNotFound(BatchMLError, LookupError):
    """No model qualifies (no run carries the tag, or the run has no model)."""

    transient = True  # a later training run may tag one; files wait instead of failing


class RunCannotScore(BatchMLError, LookupError):
    """A run named by id cannot score: it does not exist, failed, is still running or has no
    model. Terminal: waiting cannot fix it (unlike :class:`ModelNotFound` for a tag).
    ``run_id`` and ``status`` (``missing`` when there is no such run) say which and why."""

    def __init__(self, message: str, *, hint: str | None = None, run_id: str | None = None,
                 status: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run_id = run_id
        self.status = status


class InvalidParams(BatchMLError, ValueError):
    """An inference parameter was refused (:mod:`batchml.params`): an unknown name, a wrong
    type, a value out of range. Terminal. ``param`` names it and ``layer`` says where the
    value came from (``request``, ``batch``, ``inbox settings`` ...)."""

    def __init__(self, message: str, *, hint: str | None = None, param: str | None = None,
                 layer: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.param = param
        self.layer = layer


class BackfillNotFound(BatchMLError, LookupError):
    """No backfill has the id given to resume. Terminal."""


class RegistryError(BatchMLError, ValueError):
    """The model registry refused a change: no such model or version, a version whose run did
    not complete, deleting a version an alias holds, an invalid name. Terminal."""


class AliasConflict(RegistryError):
    """An alias move expected one holder and found another: someone moved it meanwhile.
    ``current`` is the version holding it now (None: unset). Read it again and decide."""

    def __init__(self, name: str, alias: str, *, expected: int | None,
                 current: int | None) -> None:
        def shown(v: int | None) -> str:
            return "unset" if v is None else f"version {v}"

        super().__init__(
            f"{name}@{alias} is held by {shown(current)}, not {shown(expected)} as this move "
            "expected: another process moved it meanwhile.",
            hint=f"Check `batchml models history {name}` and move it again naming "
                 f"--expect {'none' if current is None else current}.")
        self.name, self.alias, self.expected, self.current = name, alias, expected, current


class InvalidRunState(BatchMLError, ValueError):
    """The run is not in a state that allows this operation."""


# --- artifacts ---------------------------------------------------------------------------------


class ArtifactError(BatchMLError, OSError):
    """An artifact could not be stored or fetched."""


class ArtifactNotFound(ArtifactError, FileNotFoundError):
    """The artifact does not exist in the store."""


class ChecksumMismatch(ArtifactError):
    """Stored bytes do not match the sha256 recorded in the catalog: refuse to load them."""


class StorageUnavailable(ArtifactError):
    """The storage backend did not answer (network error, throttling, 5xx)."""

    transient = True


# --- data and models ---------------------------------------------------------------------------


class DataError(BatchMLError, ValueError):
    """Input data cannot be used (missing column, single class, empty file ...)."""


class UnreadableFile(DataError):
    """A file is not readable parquet (corrupt, truncated, encrypted, another format)."""


class SchemaMismatch(DataError):
    """Input does not match the model's signature."""


class MemoryBudgetExceeded(DataError):
    """A file would decode to more than the memory budget per file allows (estimated from its
    footer before reading, or measured on a batch); ``BATCHML_MEMORY_BUDGET_MB`` raises it."""


class ValueTooLong(DataError):
    """A text value is longer than ``BATCHML_MAX_TEXT_CHARS`` and overflow is ``refuse``."""


class FileTooLarge(DataError):
    """An input object is larger than ``BATCHML_MAX_FILE_BYTES``; it is not downloaded."""


class DecodeError(UnreadableFile):
    """Arrow or a decompressor failed while decoding a file's pages (corrupt data, or values
    that expand beyond what one array can hold); names the file and, when known, the column."""


class SmokeExamplesError(DataError):
    """The smoke-example file cannot be used (unreadable, no rows, a missing column, a label
    that is not a training class); raised before any candidate is trained."""


class ModelError(BatchMLError, RuntimeError):
    """A model could not be fitted, saved or loaded."""


class ExtraNotInstalled(ModelError, ImportError):
    """A model flavor needs an optional extra that is not installed (``batchml[transformers]``
    for the encoder). Terminal until it is installed; ``extra`` names it. Training skips such
    a candidate with one line in the gate report."""

    def __init__(self, message: str, *, hint: str | None = None, extra: str = "") -> None:
        super().__init__(message, hint=hint)
        self.extra = extra


def is_transient(exc: BaseException) -> bool:
    """True when retrying the operation that raised ``exc`` may succeed."""
    if isinstance(exc, BatchMLError):
        return exc.transient
    # Errors from outside batchml: network-ish builtins are worth a retry, the rest are not.
    return isinstance(exc, ConnectionError | TimeoutError)


class Backoff:
    """How long to wait before retrying after consecutive transient errors: ``base`` doubled
    per failure up to ``cap`` seconds, jittered down to half so that many workers that lost
    the same server (a PostgreSQL restart) do not come back in step."""

    def __init__(self, base: float = 1.0, cap: float = 30.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def failed(self) -> float:
        """Count a failure; return the delay before the next try, in seconds."""
        import random

        delay = min(self.cap, self.base * 2 ** self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def succeeded(self) -> None:
        """The last try worked: the next failure starts from ``base`` again."""
        self.failures = 0
