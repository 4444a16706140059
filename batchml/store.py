"""Artifact stores: put / get / list / exists / delete over a local directory or S3.

Writes are atomic: locally a temp file is renamed into place, on S3 an object is complete or
absent (a single PUT, or a multipart upload that only appears when completed). Every ``put``
returns the sha256 and size of what was stored, which the catalog records; :meth:`get` can verify
bytes against an expected sha256 before anyone deserialises them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import (
    ArtifactError,
    ArtifactNotFound,
    ChecksumMismatch,
    ConfigError,
    StorageUnavailable,
)

log = logging.getLogger("batchml.store")


@dataclass(frozen=True)
class StoredObject:
    """What a store reports about one stored object."""

    uri: str
    sha256: str
    size: int


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, expected_sha256: str, what: str) -> bytes:
    """Return ``data`` if its sha256 is ``expected_sha256``, else raise :class:`ChecksumMismatch`."""
    actual = sha256_bytes(data)
    if actual != expected_sha256:
        raise ChecksumMismatch(
            f"{what}: stored bytes have sha256 {actual[:12]}..., the catalog recorded "
            f"{expected_sha256[:12]}...; refusing to load them.",
            hint="The artifact was modified or replaced after it was recorded. Restore it from "
            "a backup or retrain; do not load it.",
        )
    return data


class ArtifactStore(Protocol):
    """What every artifact store offers. Keys are ``/``-separated relative paths."""

    root: str

    def uri(self, key: str) -> str: ...
    def put(self, key: str, data: bytes) -> StoredObject: ...
    def put_file(self, key: str, path: Path) -> StoredObject: ...
    def get(self, uri: str, *, sha256: str | None = None) -> bytes: ...
    def exists(self, uri: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, uri: str) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(
            f"Invalid artifact key {key!r}.",
            hint="Keys are relative paths without empty, '.' or '..' parts.",
        )
    return key


class LocalStore:
    """Artifacts in a local directory."""

    def __init__(self, root: str | Path) -> None:
        self.base = Path(root).expanduser().resolve()
        self.root = str(self.base)

    def uri(self, key: str) -> str:
        return str(self.base / _check_key(key))

    def _path(self, uri: str) -> Path:
        path = Path(uri).resolve()
        if not path.is_relative_to(self.base):
            raise ArtifactError(f"{uri} is outside the artifact root {self.base}.")
        return path

    def put(self, key: str, data: bytes) -> StoredObject:
        target = Path(self.uri(key))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return StoredObject(str(target), sha256_bytes(data), len(data))

    def put_file(self, key: str, path: Path) -> StoredObject:
        return self.put(key, Path(path).read_bytes())

    def get(self, uri: str, *, sha256: str | None = None) -> bytes:
        path = self._path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(
                f"Artifact {uri} does not exist.",
                hint="It was deleted or the artifact root moved; check BATCHML_ARTIFACT_ROOT.",
            ) from None
        return verify(data, sha256, uri) if sha256 else data

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def list(self, prefix: str = "") -> list[str]:
        start = self.base / prefix if prefix else self.base
        if not start.exists():
            return []
        return sorted(
            str(p) for p in start.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so readers see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    # not urlparse: '?' and '#' are ordinary characters in S3 keys
    if not uri.startswith("s3://"):
        raise ConfigError(f"{uri!r} is not an s3://bucket/prefix URI.")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} is not an s3://bucket/prefix URI.")
    return bucket, key


S3_MAX_ATTEMPTS = 8
"""Attempts per S3 call (1 + 7 retries). botocore's *standard* retry mode retries 5xx,
throttling (``SlowDown``, 429) and connection errors with exponential backoff and full jitter
(up to 20 s between attempts), spending from a client-side retry quota so a real outage is not
hammered. *adaptive* mode would add a client-side rate limiter that can stall every thread of a
worker behind one throttled call; the scoring loop already waits between batches, so standard
is used."""

_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestTimeout",
    "RequestTimeoutException", "RequestLimitExceeded", "TooManyRequestsException",
    "ServiceUnavailable", "InternalError", "PriorRequestNotComplete", "BandwidthLimitExceeded",
    "EC2ThrottledException", "ProvisionedThroughputExceededException",
})
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


def s3_client(endpoint_url: str | None = None, region: str | None = None, *,
              health: S3Health | None = None) -> Any:
    """A boto3 S3 client with standard retries (backoff on throttling, 5xx and connection
    errors) whose every call is counted and logged by ``health``: the tracker the entry point
    made (:meth:`S3Health.for_home`, counted in ``batchml status``), or by default a private
    one that only logs retried and failed calls."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                    connect_timeout=5, read_timeout=60)
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    (health if health is not None else S3Health()).watch(client)
    return client


def _network_error(exc: BaseException) -> bool:
    """True for errors of the connection itself (reset, closed, truncated body, timeout)."""
    import http.client

    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from botocore.exceptions import (
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )

    kinds: tuple[type[BaseException], ...] = (
        BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError,
        ConnectionError, TimeoutError, http.client.HTTPException)
    try:
        from urllib3.exceptions import HTTPError as Urllib3Error

        kinds += (Urllib3Error,)
    except ImportError:  # pragma: no cover - urllib3 comes with botocore
        pass
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # the cause chain: wrapped resets count
        if isinstance(cur, kinds):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def translate_s3_error(exc: Exception, uri: str) -> ArtifactError:
    """Turn a botocore error into the batchml error that says what to do.

    Throttling, 5xx and connection trouble (reset, truncated body, timeout) are
    :class:`StorageUnavailable`, which is transient: the file stays pending and is tried again
    later, never quarantined or failed for it."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "404", "NotFound"):
            return ArtifactNotFound(f"{uri} does not exist.")
        if code == "NoSuchBucket":
            return ArtifactError(
                f"The bucket of {uri} does not exist.", hint="Create it or fix the URI."
            )
        if status in _TRANSIENT_STATUS or status >= 500 or code in _TRANSIENT_CODES:
            return StorageUnavailable(f"S3 did not serve {uri}: {code or status}.",
                                      hint="Retry later.")
        return ArtifactError(f"S3 refused {uri}: {code} ({status}).",
                             hint="Check credentials, bucket policy and the URI.")
    if isinstance(exc, BotoCoreError) or _network_error(exc):
        return StorageUnavailable(f"S3 unreachable for {uri}: {type(exc).__name__}: {exc}",
                                  hint="Check BATCHML_S3_ENDPOINT_URL and the network.")
    return ArtifactError(f"S3 error for {uri}: {exc}")


# --- S3 call health: counted per process, logged, summed by `batchml status` -----------------

HEALTH_DIR = "s3-health"
"""Where, under the batchml home, every tracker of :meth:`S3Health.for_home` writes."""
HEALTH_WINDOW_S = 15 * 60
"""`batchml status` sums S3 attempts, retries and failures over this many seconds."""
_BUCKET_S = 60
_KEEP_BUCKETS = 60  # one hour of per-minute buckets in each process's file


class S3Health:
    """Counts every S3 HTTP attempt and call of the clients it watches through botocore's
    event hooks (``needs-retry`` sees each attempt, ``after-call`` / ``after-call-error`` each
    call with its ``RetryAttempts``), logs each call that needed a retry or failed (logger
    ``batchml.store``, WARNING / ERROR), and keeps per-minute counts.

    Made by an entry point and passed down (``s3_client(..., health=)``, the sources, the
    worker, the scorer process): there is no process-wide tracker. Made with a directory
    (:meth:`for_home`: ``HOME/s3-health``) it writes its counts to
    ``<dir>/<pid>-<tracker>.json`` at most once a second and at exit, so ``batchml status``
    shows the S3 error rate of every worker and of ``batchml serve``
    (:func:`s3_health_summary`)."""

    def __init__(self, persist_dir: str | Path | None = None) -> None:
        import threading
        import uuid

        self._lock = threading.Lock()
        self.totals: dict[str, int] = {}
        self.codes: dict[str, int] = {}
        self._buckets: dict[int, dict[str, Any]] = {}
        self._dir: Path | None = None
        self._written = 0.0
        self._started = 0.0
        # several trackers of one process may share a directory: one file each
        self._name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        if persist_dir is not None:
            self.persist_to(persist_dir)

    @classmethod
    def for_home(cls, home: str | Path) -> S3Health:
        """A tracker whose counts ``batchml status`` shows (written under
        ``HOME/`` :data:`HEALTH_DIR`)."""
        return cls(Path(home) / HEALTH_DIR)

    # the hooks -----------------------------------------------------------------------------

    def watch(self, client: Any) -> None:
        """Register the counting hooks on a botocore client (once per client)."""
        if getattr(client, "_batchml_health", False):
            return
        client._batchml_health = True
        events = client.meta.events
        events.register("needs-retry.s3", self._on_attempt)
        events.register("after-call.s3", self._on_call)
        events.register("after-call-error.s3", self._on_call_error)

    def _on_attempt(self, response: Any = None, caught_exception: Any = None,
                    attempts: int = 1, operation: Any = None, request_dict: Any = None,
                    **_: Any) -> None:
        kind = None
        if caught_exception is not None:
            kind = type(caught_exception).__name__
        elif response is not None:
            http, parsed = response
            status = getattr(http, "status_code", 0)
            code = str((parsed or {}).get("Error", {}).get("Code", "") or "")
            if status in _TRANSIENT_STATUS or status >= 500 or code in _TRANSIENT_CODES:
                kind = f"{status} {code}".strip()
        if kind is not None and isinstance(request_dict, dict):
            request_dict.setdefault("context", {}).setdefault("batchml_faults", []).append(kind)
        self._count(attempts=1, failed_attempts=int(kind is not None), code=kind)

    def _on_call(self, http_response: Any = None, parsed: Any = None, model: Any = None,
                 context: Any = None, **_: Any) -> None:
        meta = (parsed or {}).get("ResponseMetadata", {})
        retries = int(meta.get("RetryAttempts", 0) or 0)
        faults = list((context or {}).get("batchml_faults", []))
        status = getattr(http_response, "status_code", 0)
        code = str((parsed or {}).get("Error", {}).get("Code", "") or "")
        failed = status in _TRANSIENT_STATUS or status >= 500 or code in _TRANSIENT_CODES
        op = getattr(model, "name", "?")
        if failed:
            log.error("S3 %s failed after %d attempt(s): %s %s (faults: %s)", op, retries + 1,
                      status, code, ", ".join(faults) or "-")
        elif retries:
            log.warning("S3 %s succeeded after %d retr%s (faults: %s)", op, retries,
                        "y" if retries == 1 else "ies", ", ".join(faults) or "-")
        self._count(calls=1, retries=retries, retried_calls=int(retries > 0),
                    failed_calls=int(failed))

    def _on_call_error(self, exception: Any = None, context: Any = None, **_: Any) -> None:
        faults = list((context or {}).get("batchml_faults", []))
        attempts = int((context or {}).get("retries", {}).get("attempt", 1) or 1)
        log.error("S3 call failed after %d attempt(s): %s: %s (faults: %s)", attempts,
                  type(exception).__name__, exception, ", ".join(faults) or "-")
        self._count(calls=1, retries=attempts - 1, retried_calls=int(attempts > 1),
                    failed_calls=1)

    def note_stream_error(self, exc: BaseException, uri: str) -> None:
        """A download whose body broke off after the response started (botocore cannot retry
        that; the file goes back to pending)."""
        log.error("S3 download of %s broke off: %s: %s", uri, type(exc).__name__, exc)
        self._count(failed_attempts=1, failed_calls=1, code=type(exc).__name__)

    # counting and persisting -------------------------------------------------------------

    def _count(self, code: str | None = None, **deltas: int) -> None:
        import time

        now = time.time()
        with self._lock:
            if not self._started:
                self._started = now
            minute = int(now // _BUCKET_S) * _BUCKET_S
            bucket = self._buckets.setdefault(minute, {"codes": {}})
            for key, value in deltas.items():
                if value:
                    self.totals[key] = self.totals.get(key, 0) + value
                    bucket[key] = bucket.get(key, 0) + value
            if code:
                self.codes[code] = self.codes.get(code, 0) + 1
                bucket["codes"][code] = bucket["codes"].get(code, 0) + 1
            for old in [m for m in self._buckets if m < minute - _KEEP_BUCKETS * _BUCKET_S]:
                del self._buckets[old]
            due = self._dir is not None and now - self._written >= 1.0
        if due:
            self.flush()

    def persist_to(self, directory: str | Path) -> None:
        """Write this process's counts under ``directory`` from now on (and at exit)."""
        import atexit

        first = self._dir is None
        self._dir = Path(directory)
        if first:
            atexit.register(self.flush)

    def flush(self) -> None:
        import json
        import time

        if self._dir is None:
            return
        with self._lock:
            if not self._buckets:
                return
            data = {"pid": os.getpid(), "updated_at": time.time(),
                    "started_at": self._started, "totals": dict(self.totals),
                    "codes": dict(self.codes),
                    "buckets": {str(k): {**v, "codes": dict(v["codes"])}
                                for k, v in self._buckets.items()}}
            self._written = time.time()
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._dir / self._name,
                               json.dumps(data).encode())
        except OSError as exc:  # counting must never break a call
            log.debug("could not write S3 health to %s: %s", self._dir, exc)


def s3_health_summary(directory: str | Path, *, window_s: float = HEALTH_WINDOW_S,
                      now: float | None = None) -> dict[str, Any] | None:
    """S3 attempts, failed attempts, retries and failed calls of every process that wrote
    under ``directory`` in the last ``window_s`` seconds (``None`` when there were none)."""
    import json
    import time

    now = time.time() if now is None else now
    since = now - window_s
    sums: dict[str, int] = {}
    codes: dict[str, int] = {}
    processes: set[str] = set()  # a process may have written several trackers' files
    root = Path(directory)
    if not root.is_dir():
        return None
    for path in root.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if float(data.get("updated_at", 0)) < since:
            if float(data.get("updated_at", 0)) < now - _KEEP_BUCKETS * _BUCKET_S:
                path.unlink(missing_ok=True)  # an old process's file: nothing in any window
            continue
        counted = False
        for start, bucket in data.get("buckets", {}).items():
            if float(start) + _BUCKET_S <= since:
                continue
            counted = True
            for key, value in bucket.items():
                if key == "codes":
                    for c, n in value.items():
                        codes[c] = codes.get(c, 0) + int(n)
                else:
                    sums[key] = sums.get(key, 0) + int(value)
        if counted:
            processes.add(str(data.get("pid", path.stem.split("-")[0])))
    if not sums:
        return None
    attempts = sums.get("attempts", 0)
    failed = sums.get("failed_attempts", 0)
    return {"window_minutes": round(window_s / 60, 1), "processes": len(processes),
            "calls": sums.get("calls", 0), "attempts": attempts, "failed_attempts": failed,
            "retries": sums.get("retries", 0), "retried_calls": sums.get("retried_calls", 0),
            "failed_calls": sums.get("failed_calls", 0),
            "error_rate": round(failed / attempts, 4) if attempts else 0.0,
            "faults": dict(sorted(codes.items(), key=lambda kv: -kv[1]))}


class S3Store:
    """Artifacts under an ``s3://bucket/prefix``."""

    def __init__(self, root: str, *, client: Any = None, endpoint_url: str | None = None,
                 region: str | None = None, health: S3Health | None = None) -> None:
        self.root = root.rstrip("/")
        self.bucket, self.prefix = split_s3_uri(self.root)
        self.client = client or s3_client(endpoint_url, region, health=health)

    def uri(self, key: str) -> str:
        return f"{self.root}/{_check_key(key)}"

    def _key(self, uri: str) -> str:
        bucket, key = split_s3_uri(uri)
        if bucket != self.bucket or not key.startswith(self.prefix):
            raise ArtifactError(f"{uri} is outside the artifact root {self.root}.")
        return key

    def put(self, key: str, data: bytes) -> StoredObject:
        uri = self.uri(key)
        digest = sha256_bytes(data)
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(uri), Body=data,
                                   Metadata={"sha256": digest})
        except Exception as exc:
            raise translate_s3_error(exc, uri) from exc
        return StoredObject(uri, digest, len(data))

    def put_file(self, key: str, path: Path) -> StoredObject:
        return self.put(key, Path(path).read_bytes())

    def get(self, uri: str, *, sha256: str | None = None) -> bytes:
        try:
            data = self.client.get_object(Bucket=self.bucket, Key=self._key(uri))["Body"].read()
        except Exception as exc:
            raise translate_s3_error(exc, uri) from exc
        return verify(data, sha256, uri) if sha256 else data

    def exists(self, uri: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(uri))
            return True
        except Exception as exc:
            err = translate_s3_error(exc, uri)
            if isinstance(err, ArtifactNotFound):
                return False
            raise err from exc

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}".strip("/") if self.prefix else prefix
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            for page in pages:
                out.extend(f"s3://{self.bucket}/{o['Key']}" for o in page.get("Contents", []))
        except Exception as exc:
            raise translate_s3_error(exc, self.root) from exc
        return sorted(out)

    def delete(self, uri: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(uri))
        except Exception as exc:
            raise translate_s3_error(exc, uri) from exc


def open_store(root: str, *, endpoint_url: str | None = None,
               region: str | None = None) -> LocalStore | S3Store:
    """The store for ``root``: ``s3://...`` gives an :class:`S3Store`, anything else a local one."""
    if root.startswith("s3://"):
        return S3Store(root, endpoint_url=endpoint_url, region=region)
    if "://" in root and not root.startswith("file://"):
        raise ConfigError(f"Unsupported artifact root {root!r}.",
                          hint="Use a local directory or s3://bucket/prefix.")
    return LocalStore(root.removeprefix("file://"))


def store_for_uri(uri: str) -> LocalStore | S3Store:
    """A store able to read ``uri`` when no artifact root was configured (a plain
    ``Catalog(path)`` in a notebook). S3 endpoints then come from boto3's own configuration
    (``AWS_ENDPOINT_URL``, profiles)."""
    if uri.startswith("s3://"):
        bucket, _ = split_s3_uri(uri)
        return S3Store(f"s3://{bucket}")
    return LocalStore(Path(uri).parent)
