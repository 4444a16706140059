"""The DuckDB init script: an S3 outbox's predictions in a plain DuckDB session.

``batchml sql --duckdb-init`` prints it, so that ``SELECT ... FROM predictions`` (and the
README's join with ``prediction_outputs``) works in the user's own DuckDB CLI or Python session
on the published copy of the catalog::

    (umask 077; batchml sql --duckdb-init > s3-init.sql)
    duckdb -readonly .batchml/catalog.readonly.duckdb -init s3-init.sql; rm s3-init.sql

(``-init <(batchml sql --duckdb-init)`` works with a native ``duckdb`` binary, not with the PyPI
``duckdb-cli`` launcher, which starts the binary without the process substitution's descriptor.)

The script

- loads the ``httpfs`` extension from the installed ``duckdb-extension-httpfs`` package (a file
  on disk: nothing is downloaded, and ``autoinstall_known_extensions`` is switched off so that
  DuckDB does not try to either). DuckDB loads an extension only into the exact version it was
  built for, so the CLI must be that version (``duckdb-cli==1.5.5``, see docs/catalog.md);
- creates a temporary S3 secret from the credentials boto3's standard chain resolves (the same
  chain batchml's own S3 clients use), with ``BATCHML_S3_REGION`` and
  ``BATCHML_S3_ENDPOINT_URL`` (an S3-compatible server such as MinIO or moto: host:port,
  ``USE_SSL false`` for http, path-style URLs);
- creates a temporary ``predictions`` view over the outbox's parquet, skipping names that start
  with ``.`` or ``_`` (temp files, markers), as the catalog's view over a local outbox does.

The secret is credentials in clear text: the script is for stdout only, never logged here.
DuckDB's ``credential_chain`` provider would avoid that, but it needs the ``aws`` extension,
which batchml does not ship.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError
from ..settings import Settings

HTTPFS_PACKAGE = "duckdb-extension-httpfs"
"""The PyPI package that ships DuckDB's httpfs extension as a file (no download at run time)."""

SECRET_NAME = "batchml_outbox"
"""Name of the temporary secret the script creates (``CREATE OR REPLACE``: rerunning is fine)."""

VISIBLE_PARQUET = "[!._]*.parquet"
"""Glob of an output file: ``.parquet`` names not starting with ``.`` or ``_``."""


@dataclass(frozen=True)
class HttpfsExtension:
    """The httpfs extension file of the installed package and the DuckDB version it needs."""

    path: Path
    duckdb_version: str  # as DuckDB's version() prints it, e.g. 'v1.5.5'


@dataclass(frozen=True)
class S3Credentials:
    """Credentials resolved by boto3's chain. The values stay out of ``repr`` (and logs)."""

    key_id: str = field(repr=False)
    secret: str = field(repr=False)
    session_token: str | None = field(repr=False, default=None)
    method: str = "unknown"  # where botocore found them: env, shared-credentials-file, ...


def httpfs_extension() -> HttpfsExtension:
    """Find ``httpfs.duckdb_extension`` in the installed ``duckdb-extension-httpfs`` package.

    The package lays it out as ``extensions/v<duckdb version>/httpfs.duckdb_extension``; with
    several versions, the one for the installed ``duckdb`` wins. Raises :class:`ConfigError`
    (with the pip command) when the package is missing.
    """
    import importlib.resources

    import duckdb

    wanted = f"v{duckdb.__version__}"
    install = (f"Install it: pip install '{HTTPFS_PACKAGE}=={duckdb.__version__}' (the version "
               "of your DuckDB CLI; the extension loads only into that exact version).")
    try:
        root = Path(str(importlib.resources.files("duckdb_extension_httpfs")))
    except ModuleNotFoundError:
        raise ConfigError(f"The DuckDB httpfs extension package ({HTTPFS_PACKAGE}) is not "
                          "installed.", hint=install) from None
    found = sorted(root.glob("extensions/v*/httpfs.duckdb_extension"))
    if not found:
        raise ConfigError(f"{HTTPFS_PACKAGE} at {root} holds no httpfs.duckdb_extension.",
                          hint=install)
    chosen = next((p for p in found if p.parent.name == wanted), found[-1])
    return HttpfsExtension(path=chosen, duckdb_version=chosen.parent.name)


def resolve_credentials() -> tuple[S3Credentials, str | None]:
    """Credentials and region from boto3's standard chain (AWS_* variables, AWS_PROFILE and
    the shared files, container and instance roles): what batchml's S3 clients use.

    Raises :class:`ConfigError` when the chain finds no credentials."""
    import botocore.session

    session = botocore.session.get_session()
    creds = session.get_credentials()
    frozen = creds.get_frozen_credentials() if creds is not None else None
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise ConfigError(
            "No AWS credentials could be resolved (boto3's standard chain found none).",
            hint="Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with "
                 "~/.aws/credentials, as for batchml's own S3 access.")
    region = session.get_config_variable("region")
    return (S3Credentials(key_id=frozen.access_key, secret=frozen.secret_key,
                          session_token=frozen.token or None,
                          method=str(getattr(creds, "method", None) or "unknown")),
            str(region) if region else None)


def _literal(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _endpoint(endpoint_url: str) -> tuple[str, bool]:
    """``http://host:port[/path]`` -> (``host:port[/path]``, use_ssl). No scheme means https."""
    if "://" not in endpoint_url:
        return endpoint_url.rstrip("/"), True
    parsed = urlparse(endpoint_url)
    if not parsed.netloc:
        raise ConfigError(f"BATCHML_S3_ENDPOINT_URL {endpoint_url!r} has no host.")
    return parsed.netloc + parsed.path.rstrip("/"), parsed.scheme != "http"


def outbox_has_outputs(settings: Settings) -> bool:
    """True once the S3 outbox holds at least one visible ``.parquet`` (DuckDB cannot create
    a view over a glob that matches no file). Lists with batchml's own S3 client."""
    from fnmatch import fnmatchcase

    from ..store import s3_client, split_s3_uri, translate_s3_error

    outbox = str(settings.outbox).rstrip("/")
    bucket, prefix = split_s3_uri(outbox)
    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    kwargs = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                if fnmatchcase(obj["Key"].rsplit("/", 1)[-1], VISIBLE_PARQUET):
                    return True
    except Exception as exc:
        raise translate_s3_error(exc, outbox) from exc
    return False


def duckdb_init_sql(settings: Settings) -> str:
    """The init script for ``settings``' outbox (see the module docstring).

    For a local outbox it is comments only: the catalog's own ``predictions`` view covers it.
    For an S3 outbox the script holds the resolved credentials in clear text. Raises
    :class:`ConfigError` when the httpfs package is missing or no credentials resolve, and
    a storage error when the outbox cannot be listed.
    """
    from .publication import published_path

    outbox = str(settings.outbox).rstrip("/")
    catalog = settings.published_catalog_path or published_path(settings.catalog_file)
    if not outbox.startswith("s3://"):
        return "\n".join([
            f"-- batchml: the outbox {outbox} is a local directory, not an s3:// outbox: no S3",
            "-- set-up is needed. The published catalog already has the `predictions` view",
            "-- over it (created once the first output exists):",
            f"--   duckdb -readonly {catalog}",
            "",
        ])
    from ..store import split_s3_uri
    from .ledger import _glob_escape  # the local view's escaping: `out[1]` -> `out[[]1[]]`

    bucket, prefix = split_s3_uri(outbox)
    credentials, chain_region = resolve_credentials()
    extension = httpfs_extension()
    region = settings.s3_region or chain_region
    version = extension.duckdb_version
    options = [("TYPE", "s3"), ("KEY_ID", _literal(credentials.key_id)),
               ("SECRET", _literal(credentials.secret))]
    if credentials.session_token:
        options.append(("SESSION_TOKEN", _literal(credentials.session_token)))
    if region:
        options.append(("REGION", _literal(region)))
    if settings.s3_endpoint_url:
        host, use_ssl = _endpoint(settings.s3_endpoint_url)
        options += [("ENDPOINT", _literal(host)), ("USE_SSL", str(use_ssl).lower()),
                    ("URL_STYLE", "'path'")]
    options.append(("SCOPE", _literal(f"s3://{bucket}/")))
    pattern = "/".join(p for p in (f"s3://{bucket}", _glob_escape(prefix.strip("/")), "**",
                                   VISIBLE_PARQUET) if p)
    lines = [
        f"-- batchml: the predictions of the S3 outbox {outbox} in a plain DuckDB session:",
        "--   (umask 077; batchml sql --duckdb-init > s3-init.sql)",
        f"--   duckdb -readonly {catalog} -init s3-init.sql; rm s3-init.sql",
        "-- (a native duckdb binary also takes -init <(batchml sql --duckdb-init); the PyPI",
        "-- duckdb-cli launcher does not pass that descriptor on to the binary it starts).",
        "-- This script holds S3 credentials in clear text (the secret below): do not keep,",
        "-- commit, share or log it; print it again when the credentials change or expire.",
        f"-- The DuckDB CLI must be version {version}: the httpfs extension below was built for",
        f"-- it, and DuckDB loads an extension only into that exact version (pip install "
        f"'duckdb-cli=={version.lstrip('v')}').",
        "-- Nothing is downloaded: the extension is a file of the installed "
        f"{HTTPFS_PACKAGE} package.",
        "SET autoinstall_known_extensions = false;",
        f"LOAD {_literal(str(extension.path))};",
        f"-- credentials from boto3's standard chain ({credentials.method}), as batchml uses",
        f"CREATE OR REPLACE TEMPORARY SECRET {SECRET_NAME} (",
        ",\n".join(f"    {key} {value}" for key, value in options),
        ");",
    ]
    view = (f"CREATE OR REPLACE TEMP VIEW predictions AS SELECT * FROM read_parquet(\n"
            f"    {_literal(pattern)}, union_by_name = true);")
    if outbox_has_outputs(settings):
        lines += ["-- every output parquet under the outbox; names starting with '.' or '_' "
                  "(temp files, markers) skipped", view]
    else:
        lines += [f"-- {outbox} holds no prediction parquet yet, and DuckDB cannot create a "
                  "view over no files:",
                  "-- print this script again once the first output exists. The view will be:",
                  *("-- " + line for line in view.splitlines())]
    return "\n".join(lines) + "\n"
