"""Artifact stores: put / get / list / exists / delete over a local directory or S3.

Writes are atomic: locally a temp file is renamed into place, on S3 an object is complete or
absent (a single PUT, or a multipart upload that only appears when completed). Every ``put``
returns the sha256 and size of what was stored, which the catalog records; :meth:`get` can verify
bytes against an expected sha256 before anyone deserialises them.
"""

from __future__ import annotations

import hashlib
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


def s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client with standard retries (backoff on throttling and 5xx)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=5,
                    read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def translate_s3_error(exc: Exception, uri: str) -> ArtifactError:
    """Turn a botocore error into the batchml error that says what to do."""
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
        if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            return StorageUnavailable(f"S3 did not serve {uri}: {code}.", hint="Retry later.")
        return ArtifactError(f"S3 refused {uri}: {code} ({status}).",
                             hint="Check credentials, bucket policy and the URI.")
    if isinstance(exc, BotoCoreError):
        return StorageUnavailable(f"S3 unreachable for {uri}: {exc}",
                                  hint="Check BATCHML_S3_ENDPOINT_URL and the network.")
    return ArtifactError(f"S3 error for {uri}: {exc}")


class S3Store:
    """Artifacts under an ``s3://bucket/prefix``."""

    def __init__(self, root: str, *, client: Any = None, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        self.root = root.rstrip("/")
        self.bucket, self.prefix = split_s3_uri(self.root)
        self.client = client or s3_client(endpoint_url, region)

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
