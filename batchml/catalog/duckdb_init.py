"""The DuckDB init script: the catalog and the outputs in a user's own DuckDB session.

``batchml sql --duckdb-init`` prints it, so that ``SELECT ... FROM predictions`` (and the
README's join with ``prediction_outputs``) works in the user's own DuckDB CLI or Python session.

**A DuckDB catalog with an S3 outbox** (for the published copy of the catalog)::

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

With a local outbox the script is comments only: the published copy has the view already.

**A PostgreSQL catalog** (``BATCHML_CATALOG_URL=postgresql://...``), local or S3 outbox, in a
session with no database file::

    (umask 077; batchml sql --duckdb-init > init.sql)
    duckdb -init init.sql; rm init.sql

The script loads DuckDB's ``postgres`` extension from the installed
``duckdb-extension-postgres-scanner`` package the same way, ``ATTACH``es the catalog
``(TYPE postgres, READ_ONLY)`` as :data:`ATTACHED_CATALOG`, puts that database's ``public``
schema on the session's ``search_path`` after the session's own ``main`` (so the catalog's
tables and views answer to their plain names, as in the DuckDB file, while an unqualified
``CREATE TABLE`` still lands in the session's own database), and creates the ``predictions`` view over the outbox: a
local glob, or S3 through httpfs and a secret as above. The URL it attaches carries no
password, ever: libpq inside the extension takes it from ``PGPASSWORD``, ``~/.pgpass`` or
``PGPASSFILE``, as psql does.

An S3 secret is credentials in clear text: the script is for stdout only, never logged here.
DuckDB's ``credential_chain`` provider would avoid that, but it needs the ``aws`` extension,
which batchml does not ship.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from ..errors import ConfigError
from ..settings import Settings

HTTPFS_PACKAGE = "duckdb-extension-httpfs"
"""The PyPI package that ships DuckDB's httpfs extension as a file (no download at run time)."""

POSTGRES_PACKAGE = "duckdb-extension-postgres-scanner"
"""The PyPI package that ships DuckDB's postgres extension (``postgres_scanner``) as a file."""

ATTACHED_CATALOG = "batchml_catalog"
"""The name a PostgreSQL catalog is attached under in the session (``batchml_catalog.runs``)."""

CATALOG_SCHEMA = "public"
"""The PostgreSQL schema batchml's migrations create the catalog in."""

SECRET_NAME = "batchml_outbox"
"""Name of the temporary secret the script creates (``CREATE OR REPLACE``: rerunning is fine)."""

VISIBLE_PARQUET = "[!._]*.parquet"
"""Glob of an output file: ``.parquet`` names not starting with ``.`` or ``_``."""

ONLINE_DIR = "online"
"""Where the HTTP API logs its requests, under the batchml home: ``HOME/online/date=YYYY-MM-DD/
hour=HH/part-<uuid>.parquet`` (:mod:`batchml.api.prediction_log`)."""


def online_root(settings: Settings) -> Path:
    """The directory of the HTTP API's request log: ``HOME/online``."""
    return settings.home / ONLINE_DIR


def online_pattern(root: Path | str) -> str:
    """The glob of the request log's visible parquet under ``root`` (its own glob characters
    escaped, as the ``predictions`` view's outbox)."""

    return f"{glob_escape(str(Path(root).expanduser().resolve()))}/**/{VISIBLE_PARQUET}"


def online_predictions_select(pattern: str) -> str:
    """The query of the ``online_predictions`` view over ``pattern``: every logged request
    row, the hive partitions as ``date`` and ``hour`` columns, schemas of several model
    versions united by name (a column a version lacks is NULL); ``date`` is a DATE and
    ``hour`` an INTEGER (0-23, UTC)."""
    return (f"SELECT * FROM read_parquet({_literal(pattern)}, union_by_name = true, "
            "hive_partitioning = true, hive_types = {'date': DATE, 'hour': INTEGER})")


HIVE_DIR = re.compile(r"^date=\d{4}-\d{2}-\d{2}$")
"""A top-level outbox directory of the hive layout (:mod:`batchml.layout`)."""


def predictions_select(base: str, *, flat: bool = True, hive: bool = False,
                       visible: str = VISIBLE_PARQUET, file_column: str | None = None) -> str:
    """The query of the ``predictions`` view over the outbox at ``base`` (its glob-escaped
    path or ``s3://bucket/prefix``): every output parquet whose name matches ``visible``,
    schemas united by name; with ``file_column``, each row's file path in that column.

    With ``hive`` outputs (``BATCHML_OUTPUT_LAYOUT=hive``) the ``date=``/``model=``
    directories become the columns ``date`` (DATE) and ``model`` (VARCHAR); with flat outputs
    beside them (an outbox that changed layout) those are read without partitions (``date`` and
    ``model`` NULL) and united by name, as DuckDB refuses one scan over both shapes."""
    flat_files = _literal(f"{base}/**/{visible}")
    named = f", filename = '{file_column}'" if file_column else ""
    if not hive:
        return f"SELECT * FROM read_parquet({flat_files}, union_by_name = true{named})"
    hive_read = (f"SELECT * FROM read_parquet({_literal(f'{base}/date=*/**/{visible}')}, "
                 "union_by_name = true, hive_partitioning = true, "
                 f"hive_types = {{'date': DATE, 'model': VARCHAR}}{named})")
    if not flat:
        return hive_read
    col = file_column or OUTPUT_FILE_COLUMN
    keep = "*" if file_column else f"* EXCLUDE ({col})"
    return (f"{hive_read} UNION ALL BY NAME SELECT {keep} FROM "
            f"read_parquet({flat_files}, union_by_name = true, hive_partitioning = false, "
            f"filename = '{col}') WHERE NOT regexp_matches({col}, "
            "'/date=[0-9]{4}-[0-9]{2}-[0-9]{2}/model=')")


OUTPUT_FILE_COLUMN = "batchml_output_file"
"""The column the catalog's ``predictions`` view reads each output's path into (and drops)."""


@dataclass(frozen=True)
class OutputKinds:
    """Which layouts an outbox holds outputs of."""

    flat: bool = False
    hive: bool = False

    def __bool__(self) -> bool:
        return self.flat or self.hive

    def add(self, relative: str) -> OutputKinds:
        """With the output at ``relative`` (its key under the outbox) counted."""
        if HIVE_DIR.match(relative.split("/", 1)[0]) and "/model=" in relative:
            return OutputKinds(self.flat, True)
        return OutputKinds(True, self.hive)


def local_output_kinds(root: Path | str, visible: str = VISIBLE_PARQUET) -> OutputKinds:
    """The layouts of the visible ``.parquet`` under a local outbox ``root``."""
    from fnmatch import fnmatchcase

    base = Path(root).expanduser()
    kinds = OutputKinds()
    if not base.is_dir():
        return kinds
    for p in base.rglob("*.parquet"):
        if fnmatchcase(p.name, visible) and p.is_file():
            kinds = kinds.add(p.relative_to(base).as_posix())
            if kinds.flat and kinds.hive:
                break
    return kinds


def glob_escape(path: str) -> str:
    """``path`` as a DuckDB glob that matches only itself (``preds[1]`` -> ``preds[[]1[]]``)."""
    return "".join(f"[{ch}]" if ch in "*?[]{}" else ch for ch in path)


def online_has_files(root: Path | str) -> bool:
    """True once the request log holds a visible ``.parquet`` (DuckDB cannot create a view over
    a glob that matches no file)."""
    from fnmatch import fnmatchcase

    base = Path(root).expanduser()
    return base.is_dir() and any(fnmatchcase(p.name, VISIBLE_PARQUET) and p.is_file()
                                 for p in base.rglob("*.parquet"))


@dataclass(frozen=True)
class PackagedExtension:
    """An extension file of an installed ``duckdb-extension-*`` package and the DuckDB version
    it needs."""

    path: Path
    duckdb_version: str  # as DuckDB's version() prints it, e.g. 'v1.5.5'


HttpfsExtension = PackagedExtension
"""The name of :class:`PackagedExtension` from before the postgres extension."""


@dataclass(frozen=True)
class S3Credentials:
    """Credentials resolved by boto3's chain. The values stay out of ``repr`` (and logs)."""

    key_id: str = field(repr=False)
    secret: str = field(repr=False)
    session_token: str | None = field(repr=False, default=None)
    method: str = "unknown"  # where botocore found them: env, shared-credentials-file, ...


def packaged_extension(package: str, name: str) -> PackagedExtension:
    """Find ``<name>.duckdb_extension`` in the installed PyPI ``package``.

    The ``duckdb-extension-*`` packages lay it out as
    ``extensions/v<duckdb version>/<name>.duckdb_extension``; with several versions, the one for
    the installed ``duckdb`` wins. Raises :class:`ConfigError` naming the package (with the pip
    command) when it is missing.
    """
    import importlib.resources

    import duckdb

    wanted = f"v{duckdb.__version__}"
    what = name.removesuffix("_scanner")  # postgres_scanner is DuckDB's postgres extension
    install = (f"Install it: pip install '{package}=={duckdb.__version__}' (the version "
               "of your DuckDB CLI; the extension loads only into that exact version).")
    try:
        root = Path(str(importlib.resources.files(package.replace("-", "_"))))
    except ModuleNotFoundError:
        raise ConfigError(f"The DuckDB {what} extension package ({package}) is not "
                          "installed.", hint=install) from None
    found = sorted(root.glob(f"extensions/v*/{name}.duckdb_extension"))
    if not found:
        raise ConfigError(f"{package} at {root} holds no {name}.duckdb_extension.",
                          hint=install)
    chosen = next((p for p in found if p.parent.name == wanted), found[-1])
    return PackagedExtension(path=chosen, duckdb_version=chosen.parent.name)


def httpfs_extension() -> PackagedExtension:
    """``httpfs.duckdb_extension`` of the installed ``duckdb-extension-httpfs`` package."""
    return packaged_extension(HTTPFS_PACKAGE, "httpfs")


def postgres_extension() -> PackagedExtension:
    """``postgres_scanner.duckdb_extension`` of the installed
    ``duckdb-extension-postgres-scanner`` package (``ATTACH ... (TYPE postgres)``)."""
    return packaged_extension(POSTGRES_PACKAGE, "postgres_scanner")


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
    """True once the outbox holds at least one visible ``.parquet`` (DuckDB cannot create a
    view over a glob that matches no file). An S3 outbox is listed with batchml's own S3
    client, a local one walked on disk."""
    return bool(outbox_output_kinds(settings))


def outbox_output_kinds(settings: Settings) -> OutputKinds:
    """Which layouts the outbox's visible ``.parquet`` are in (none: empty), as
    :func:`outbox_has_outputs` finds them."""
    from fnmatch import fnmatchcase

    outbox = str(settings.outbox).rstrip("/")
    if not outbox.startswith("s3://"):
        return local_output_kinds(outbox)

    from ..store import s3_client, split_s3_uri, translate_s3_error

    bucket, prefix = split_s3_uri(outbox)
    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    start = f"{prefix}/" if prefix else ""
    kinds = OutputKinds()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=start):
            for obj in page.get("Contents", []):
                if fnmatchcase(obj["Key"].rsplit("/", 1)[-1], VISIBLE_PARQUET):
                    kinds = kinds.add(obj["Key"][len(start):])
                    if kinds.flat and kinds.hive:
                        return kinds
    except Exception as exc:
        raise translate_s3_error(exc, outbox) from exc
    return kinds


def postgres_catalog_url(settings: Settings) -> str | None:
    """The PostgreSQL catalog URL ``settings`` name, without any password; None for a DuckDB
    file. Settings move a password in the URL's user part to ``catalog_password`` already; a
    ``password=`` query parameter (libpq accepts one) is dropped here too."""
    url = settings.catalog_url
    if url is None:
        return None
    scheme = url.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"batchml sql --duckdb-init knows DuckDB and PostgreSQL catalogs, not "
                          f"{scheme}:// ones.")
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}@{hostport}"
    query = "&".join(item for item in parts.query.split("&")
                     if item and unquote(item.split("=", 1)[0]) != "password")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _pgpass_line(url: str) -> str:
    """The ``~/.pgpass`` line (``host:port:database:user:password``) for ``url``, the password
    left as a placeholder. Parts the URL leaves to libpq's defaults are ``*``."""
    parts = urlsplit(url)

    def field_(value: str | None) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:") if value else "*"

    try:
        port = str(parts.port) if parts.port else "5432"
    except ValueError:
        port = "*"
    return ":".join([field_(parts.hostname), port, field_(unquote(parts.path.lstrip("/"))),
                     field_(unquote(parts.username) if parts.username else None), "PASSWORD"])


def _s3_setup(settings: Settings, outbox: str
              ) -> tuple[S3Credentials, PackagedExtension, list[str], str]:
    """What an S3 outbox needs: the credentials, the httpfs extension, the secret statement
    (lines) and the view's glob. Raises :class:`ConfigError` as :func:`duckdb_init_sql`."""
    from ..store import split_s3_uri

    bucket, prefix = split_s3_uri(outbox)
    credentials, chain_region = resolve_credentials()
    extension = httpfs_extension()
    region = settings.s3_region or chain_region
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
    pattern = "/".join(p for p in (f"s3://{bucket}", glob_escape(prefix.strip("/")), "**",
                                   VISIBLE_PARQUET) if p)
    secret = [f"CREATE OR REPLACE TEMPORARY SECRET {SECRET_NAME} (",
              ",\n".join(f"    {key} {value}" for key, value in options),
              ");"]
    return credentials, extension, secret, pattern


def _view_lines(settings: Settings, outbox: str, pattern: str) -> list[str]:
    """The ``predictions`` view over ``pattern`` (``BASE/**/VISIBLE``), or comments while the
    outbox is empty. Hive-layout outputs add their ``date`` and ``model`` columns."""
    base = pattern.rsplit("/**/", 1)[0]
    kinds = outbox_output_kinds(settings)
    if kinds:
        query = predictions_select(base, flat=kinds.flat, hive=kinds.hive)
    else:  # what it will be once the layout in use has written something
        hive = settings.output_layout == "hive"
        query = predictions_select(base, flat=not hive, hive=hive)
    if "hive_partitioning" in query:
        view = f"CREATE OR REPLACE TEMP VIEW predictions AS\n    {query};"
    else:  # the flat layout's view, as it has always been printed
        view = (f"CREATE OR REPLACE TEMP VIEW predictions AS SELECT * FROM read_parquet(\n"
                f"    {_literal(pattern)}, union_by_name = true);")
    if kinds:
        return ["-- every output parquet under the outbox; names starting with '.' or '_' "
                "(temp files, markers) skipped"
                + ("; date= / model= directories as columns" if kinds.hive else ""), view]
    return [f"-- {outbox} holds no prediction parquet yet, and DuckDB cannot create a "
            "view over no files:",
            "-- print this script again once the first output exists. The view will be:",
            *("-- " + line for line in view.splitlines())]


def duckdb_init_sql(settings: Settings) -> str:
    """The init script for ``settings``' catalog and outbox (see the module docstring).

    For a DuckDB catalog with a local outbox it is comments only: the catalog's own
    ``predictions`` view covers it. For a PostgreSQL catalog it attaches the catalog
    read-only (no password in the script, ever). For an S3 outbox the script holds the resolved
    credentials in clear text. Raises :class:`ConfigError` when an extension package is missing
    or no credentials resolve, and a storage error when an S3 outbox cannot be listed.
    """
    pg_url = postgres_catalog_url(settings)
    if pg_url is not None:
        return _postgres_init_sql(settings, pg_url)
    from .publication import published_path

    outbox = str(settings.outbox).rstrip("/")
    catalog = settings.published_catalog_path or published_path(settings.catalog_file)
    if not outbox.startswith("s3://"):
        return "\n".join([
            f"-- batchml: the outbox {outbox} is a local directory, not an s3:// outbox: no S3",
            "-- set-up is needed. The published catalog already has the `predictions` view",
            "-- over it (created once the first output exists), and `online_predictions` over",
            "-- the HTTP API's request log (once it has logged a request):",
            f"--   duckdb -readonly {catalog}",
            "",
        ])
    credentials, extension, secret, pattern = _s3_setup(settings, outbox)
    version = extension.duckdb_version
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
        *secret,
    ]
    lines += _view_lines(settings, outbox, pattern)
    return "\n".join(lines) + "\n"


def _postgres_init_sql(settings: Settings, url: str) -> str:
    """The script for a PostgreSQL catalog: the catalog attached read-only under plain names,
    and ``predictions`` over a local or S3 outbox. ``url`` carries no password."""

    outbox = str(settings.outbox).rstrip("/")
    s3 = outbox.startswith("s3://")
    if "://" in outbox and not s3:
        raise ConfigError(f"batchml sql --duckdb-init reads a local or s3:// outbox, not "
                          f"{outbox}.")
    postgres = postgres_extension()
    # errors (a missing package, no credentials) come before any output
    s3_parts = _s3_setup(settings, outbox) if s3 else None
    version = postgres.duckdb_version
    if s3_parts is not None and s3_parts[1].duckdb_version != version:
        raise ConfigError(
            f"The installed DuckDB extensions are for different DuckDB versions: "
            f"{POSTGRES_PACKAGE} for {version}, {HTTPFS_PACKAGE} for "
            f"{s3_parts[1].duckdb_version}; a DuckDB CLI loads only extensions of its own.",
            hint="Install both at the version of your DuckDB CLI (docs/catalog.md).")
    packages = f" {POSTGRES_PACKAGE} and\n-- {HTTPFS_PACKAGE} packages" if s3 else \
        f"\n-- {POSTGRES_PACKAGE} package"
    kept_out = settings.catalog_password is not None or url != settings.catalog_url
    lines = [
        f"-- batchml: the PostgreSQL catalog {url}",
        f"-- (read-only) and the predictions of the outbox {outbox},",
        "-- in a plain DuckDB session with no database file:",
        "--   (umask 077; batchml sql --duckdb-init > init.sql)",
        "--   duckdb -init init.sql; rm init.sql",
        "-- The catalog's tables and views (runs_overview, current_tags, tag_history, file_status,",
        "-- prediction_outputs, catalog_info, ...) answer to their plain names, as in the DuckDB",
        f"-- catalog ({ATTACHED_CATALOG}.runs in full); `predictions` reads the outbox's parquet.",
        "-- NO PASSWORD is in this script, ever: libpq, inside DuckDB's postgres extension, takes",
        "-- it from PGPASSWORD, ~/.pgpass or the file PGPASSFILE names, as psql does"
        + (" (the password" if kept_out else "."),
        *(["-- batchml has, from BATCHML_CATALOG_PASSWORD or the URL, is deliberately not "
           "copied)."] if kept_out else []),
        "-- A ~/.pgpass line for this catalog (the file's mode must be 0600):",
        f"--   {_pgpass_line(url)}",
        "-- READ_ONLY: DuckDB refuses writes to the catalog and reads in read-only transactions;",
        "-- for a guarantee the server enforces, connect as a role with SELECT only "
        "(docs/catalog.md).",
    ]
    if s3:
        lines += [
            "-- This script holds S3 credentials in clear text (the secret below): do not keep,",
            "-- commit, share or log it; print it again when the credentials change or expire.",
        ]
    lines += [
        f"-- The DuckDB CLI must be version {version}: the extensions below were built for it,",
        "-- and DuckDB loads an extension only into that exact version (pip install "
        f"'duckdb-cli=={version.lstrip('v')}').",
        f"-- Nothing is downloaded: the extensions are files of the installed{packages}.",
        "SET autoinstall_known_extensions = false;",
        f"LOAD {_literal(str(postgres.path))};",
        f"ATTACH OR REPLACE {_literal(url)} AS {ATTACHED_CATALOG} (TYPE postgres, READ_ONLY);",
        "-- plain names: temporary objects (the view below) first, then this session's own",
        "-- database (where an unqualified CREATE TABLE goes), then the catalog",
        f"SET search_path = 'main,{ATTACHED_CATALOG}.{CATALOG_SCHEMA}';",
    ]
    if s3_parts is not None:
        credentials, httpfs, secret, pattern = s3_parts
        lines += [f"LOAD {_literal(str(httpfs.path))};",
                  f"-- credentials from boto3's standard chain ({credentials.method}), as "
                  "batchml uses",
                  *secret]
    else:
        root = str(Path(outbox).expanduser().resolve())
        pattern = f"{glob_escape(root)}/**/{VISIBLE_PARQUET}"
    lines += _view_lines(settings, outbox, pattern)
    lines += _online_view_lines(settings)
    return "\n".join(lines) + "\n"


def _online_view_lines(settings: Settings) -> list[str]:
    """The ``online_predictions`` view over this host's request log (``HOME/online``), or
    comments while it holds no file. A DuckDB catalog has the view itself; a PostgreSQL
    catalog keeps no view over files, so the session gets a temporary one."""
    root = online_root(settings)
    view = (f"CREATE OR REPLACE TEMP VIEW online_predictions AS\n    "
            f"{online_predictions_select(online_pattern(root))};")
    if online_has_files(root):
        return ["-- the HTTP API's logged requests on this host (batchml serve-api, serve --api),",
                "-- one parquet per flush under date=/hour= partitions", view]
    return [f"-- {root} holds no logged request yet (the HTTP API writes it): print this",
            "-- script again once it does. The online_predictions view will be:",
            *("-- " + line for line in view.splitlines())]
