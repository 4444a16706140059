"""File sources: where new parquet files come from.

One interface, several implementations: a local directory, an S3 prefix polled with
``list_objects_v2``, and S3 event notifications through SQS. A source lists what it sees
(``poll()``), makes a file readable locally (``fetch()``), and puts away a bad file
(``quarantine()``). A source never crashes on a bad event or an unreadable object.

**The landing contract for directories.** Write the file under a temporary name (a leading dot
or ``_``, or a ``.tmp``/``.part`` suffix) and rename it into place; renaming is atomic. A file
written in place is taken only once it is complete: its last four bytes are parquet's ``PAR1``
footer magic and its size and mtime did not change for ``settle_s``. Hidden files, temp names
and markers such as ``_SUCCESS`` are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import unquote, urlparse

from .catalog import FileRecord, FileRef
from .errors import ConfigError, FileTooLarge

if TYPE_CHECKING:
    from .store import S3Health

log = logging.getLogger("batchml.sources")

_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".inprogress", ".writing")


def is_candidate_name(name: str) -> bool:
    """True for a name that may be a landed parquet file (not hidden, temp or a marker)."""
    lower = name.lower()
    if name.startswith((".", "_", "~")) or lower.endswith(_TEMP_SUFFIXES):
        return False
    return lower.endswith(".parquet")


class Source(Protocol):
    """What every source offers (the worker talks to sources through this only). A new kind
    of source implements it; :func:`open_source` maps a URI to one."""

    uri: str
    client: Any
    """The S3 client the source reads with (``None`` off S3); an S3 outbox reuses it."""
    claim_prefix: str | None
    """The URI prefix of every file this source lists, so a worker claims only files it can
    read (another source's pending files are not readable here); ``None`` for sources that
    name files anywhere (a queue, a list)."""

    def poll(self) -> list[FileRef]:
        """The files there now (seen before or not; the ledger keeps each version once)."""
        ...

    def ack(self) -> None:
        """Called once the files of the last polls are recorded in the ledger (a queue
        deletes their messages now); a no-op for sources without acknowledgement."""
        ...

    def fetch(self, record: FileRecord) -> AbstractContextManager[Path]:
        """A local path to the claimed version of ``record``, for as long as the context."""
        ...

    def quarantine(self, record: FileRecord, reason: str) -> str | None:
        """Put a bad file away; where it went, or ``None`` when it stays put."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until something may have landed, or ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Stop watching; release what the source holds."""
        ...


class DirectorySource:
    """A local inbox directory, woken by filesystem events with polling as the fallback."""

    client: Any = None  # not on S3
    claim_prefix: str | None

    def __init__(self, path: str | Path, *, quarantine_dir: str | Path | None = None,
                 settle_s: float = 1.0, use_events: bool = True) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.path)
        self.claim_prefix = self.uri.rstrip("/") + "/"
        self.quarantine_dir = Path(quarantine_dir).expanduser().resolve() if quarantine_dir \
            else self.path.parent / "quarantine"
        self.settle_s = settle_s
        # complete files seen by the last poll: path -> ((size, mtime_ns), FileRef)
        self._seen: dict[str, tuple[tuple[int, int], FileRef]] = {}
        self._wake = threading.Event()
        self._observer: Any = None
        if use_events:
            self._start_observer()

    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # polling still works
            return
        wake = self._wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        observer = Observer()
        observer.schedule(_Handler(), str(self.path), recursive=True)
        observer.daemon = True
        try:
            observer.start()
            self._observer = observer
        except OSError as exc:  # e.g. inotify limits: fall back to polling
            log.warning("filesystem events unavailable (%s); polling %s", exc, self.path)

    def wait(self, timeout: float) -> None:
        """Sleep until a filesystem event or ``timeout`` seconds."""
        self._wake.wait(timeout)
        self._wake.clear()

    def ack(self) -> None:
        pass  # nothing to acknowledge: the files stay until scored

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None

    def _complete(self, path: Path, st: os.stat_result) -> bool:
        if st.st_size >= 12:
            try:
                with path.open("rb") as fh:
                    fh.seek(-4, os.SEEK_END)
                    if fh.read(4) in (b"PAR1", b"PARE"):  # PARE: encrypted footer
                        return True
            except OSError:
                return False
        # Not (yet) parquet-shaped: take it once it has stopped changing, so a bad file is
        # quarantined instead of waiting forever.
        return time.time() - st.st_mtime >= self.settle_s

    def poll(self) -> list[FileRef]:
        """Every complete candidate file under the directory (recursively), in name order."""
        # A long-running watcher's inbox keeps its scored files, so each poll lists all of
        # them: plain os.scandir and strings (no pathlib), and a file already found complete
        # with the same size and mtime keeps its FileRef and is not opened again. (Reading
        # every footer through pathlib made a poll of 10,000 files take seconds.)
        found: list[FileRef] = []
        fresh: dict[str, tuple[tuple[int, int], FileRef]] = {}
        self._scan(self.uri, found, fresh)
        self._seen = fresh  # forget files that went away
        return found

    def _scan(self, directory: str, found: list[FileRef],
              fresh: dict[str, tuple[tuple[int, int], FileRef]]) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # vanished or unreadable: nothing to take from it now
            return
        subdirs = []
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:  # like os.walk: symlinked directories are not followed
                if not name.startswith((".", "_")) and not entry.is_symlink():
                    subdirs.append(entry.path)
                continue
            if not is_candidate_name(name):
                continue
            try:
                st = entry.stat()  # follows a symlink, like Path.stat
            except OSError:
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            known = self._seen.get(entry.path)
            if known is not None and known[0] == stamp:
                ref = known[1]
            else:
                if not self._complete(Path(entry.path), st):
                    continue
                ref = FileRef(entry.path, None, st.st_size,
                              datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC))
            fresh[entry.path] = (stamp, ref)
            found.append(ref)
        for sub in subdirs:
            self._scan(sub, found, fresh)

    def _inside(self, uri: str) -> Path:
        path = Path(uri).resolve()
        if not path.is_relative_to(self.path):
            raise ConfigError(f"{uri} is outside the inbox {self.path}; refusing to touch it.")
        return path

    @contextmanager
    def fetch(self, record: FileRecord) -> Iterator[Path]:
        """The file itself: local files are read in place."""
        yield self._inside(record.source_uri)

    def quarantine(self, record: FileRecord, reason: str) -> str | None:
        """Move the file to the quarantine directory with an ``.error.json`` sidecar."""
        src = self._inside(record.source_uri)
        rel = src.relative_to(self.path)
        target = self.quarantine_dir / rel.parent / f"{record.file_id[:16]}-{rel.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.move(str(src), str(target))
        except FileNotFoundError:
            return None
        sidecar = target.with_name(target.name + ".error.json")
        sidecar.write_text(json.dumps({"source_uri": record.source_uri, "file_id":
                                       record.file_id, "error": reason,
                                       "quarantined_at": datetime.now(UTC).isoformat()},
                                      indent=2))
        return str(target)


class _RemoteFiles:
    """Shared by sources whose files live in S3: fetch downloads the claimed version; bad
    objects stay where they are (the ledger says why they were not scored)."""

    client: Any
    claim_prefix: str | None = None  # files named anywhere (a prefix source sets its own)
    health: S3Health | None = None  # counts downloads that broke off (the client's tracker)
    max_file_bytes: int | None = None  # larger objects are refused before download

    @contextmanager
    def fetch(self, record: FileRecord) -> Iterator[Path]:
        """Download the exact version (If-Match on the ETag) to a temp file; an object over
        ``max_file_bytes`` raises :class:`~batchml.errors.FileTooLarge` first."""
        yield from _download(self.client, record, self.max_file_bytes, self.health)

    def quarantine(self, record: FileRecord, reason: str) -> str | None:
        return None

    def ack(self) -> None:
        pass  # a queue (SQSSource) deletes its messages here

    def close(self) -> None:
        pass


class S3PrefixSource(_RemoteFiles):
    """An ``s3://bucket/prefix`` polled with ``list_objects_v2`` (all pages, every poll)."""

    def __init__(self, uri: str, *, client: Any, poll_s: float = 2.0,
                 page_size: int = 1000, health: S3Health | None = None) -> None:
        from .store import split_s3_uri

        self.health = health
        self.page_size = page_size
        self.uri = uri.rstrip("/")
        self.claim_prefix = self.uri + "/"
        self.bucket, self.prefix = split_s3_uri(self.uri + "/")
        self.client = client
        self.poll_s = poll_s
        sweep_stale_downloads()

    def poll(self) -> list[FileRef]:
        """Every parquet object under the prefix, keyed by key + ETag."""
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix,
                PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if is_candidate_name(name):
                        found.append(FileRef(f"s3://{self.bucket}/{obj['Key']}",
                                             obj.get("ETag", "").strip('"') or None,
                                             int(obj.get("Size", 0)),
                                             obj.get("LastModified")))
        except Exception as exc:  # a listing failure is retried on the next poll
            log.warning("listing %s failed: %s", self.uri, exc)
        return found

    def wait(self, timeout: float) -> None:
        time.sleep(min(timeout, self.poll_s))


_DOWNLOAD_PREFIX = "batchml-in-"


def sweep_stale_downloads(directory: str | None = None) -> int:
    """Remove input downloads (``batchml-in-<pid>-*.parquet`` in the temp directory) whose
    process is gone: a SIGKILLed worker cannot clean up after itself. Returns how many."""
    removed = 0
    root = Path(directory or tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{_DOWNLOAD_PREFIX}*-*.parquet"))
    except OSError:
        return 0
    for path in entries:
        pid_text = path.name[len(_DOWNLOAD_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or a reused pid): leave it
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d input download(s) left by dead workers in %s", removed, root)
    return removed


def _download(client: Any, record: FileRecord, max_bytes: int | None = None,
              health: S3Health | None = None) -> Iterator[Path]:
    from .limits import Limits, check_object_size
    from .store import S3Health, split_s3_uri, translate_s3_error

    limits = Limits(max_file_bytes=max_bytes)
    check_object_size(record.source_uri, record.size, limits)  # the size the listing gave
    bucket, key = split_s3_uri(record.source_uri)
    # the pid in the name lets a later process remove what a killed one left behind
    fd, name = tempfile.mkstemp(prefix=f"{_DOWNLOAD_PREFIX}{os.getpid()}-", suffix=".parquet")
    os.close(fd)
    path = Path(name)
    try:
        extra = {"IfMatch": f'"{record.etag}"'} if record.etag else {}
        try:
            # get_object (not download_file) so If-Match pins the version that was claimed;
            # the body is streamed to disk in chunks, so memory stays flat for large files.
            response = client.get_object(Bucket=bucket, Key=key, **extra)
            check_object_size(record.source_uri, response.get("ContentLength"), limits)
            body = response["Body"]
            try:
                with path.open("wb") as fh:
                    for chunk in body.iter_chunks(chunk_size=8 * 2**20):
                        fh.write(chunk)
                        if max_bytes is not None and fh.tell() > max_bytes:
                            body.close()
                            check_object_size(record.source_uri, fh.tell(), limits)
            except FileTooLarge:
                raise
            except Exception as exc:  # the body broke off: botocore does not retry that
                (health or S3Health()).note_stream_error(exc, record.source_uri)
                raise
        except FileTooLarge:
            raise
        except Exception as exc:
            err = translate_s3_error(exc, record.source_uri)
            code = ((getattr(exc, "response", None) or {}).get("Error") or {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound", "412", "PreconditionFailed"):
                raise FileNotFoundError(record.source_uri) from exc
            raise err from exc
        yield path
    finally:
        path.unlink(missing_ok=True)


class SQSSource(_RemoteFiles):
    """S3 event notifications delivered to an SQS queue (the production way).

    ``poll()`` long-polls the queue, parses each body with :func:`batchml.events.parse_message`
    and returns the created parquet objects. Messages are deleted only by :meth:`ack`, which the
    caller invokes after the files are recorded in the ledger; an unparseable message is handed
    to ``on_rejected`` (the ledger keeps it quarantined) and then deleted.

    Notifications can be lost (a misconfigured or purged queue, a message that expired while
    the service was down). With ``sweep`` (the ``s3://bucket/prefix`` the notifications come
    from, as an :class:`S3PrefixSource`) every ``sweep_s`` seconds, and once at start, a poll
    also lists that prefix: objects whose notification never came are found there. The ledger
    knows a file by its URI and ETag whichever way it arrived, so a file both notified and
    listed, or notified ten times, is still scored once.
    """

    def __init__(self, queue_url: str, *, sqs: Any, s3: Any, wait_s: int = 1,
                 on_rejected: Any = None, health: S3Health | None = None,
                 sweep: S3PrefixSource | None = None, sweep_s: float = 300.0) -> None:
        self.health = health
        self.queue_url = queue_url
        self.uri = f"sqs://{queue_url}"
        self.sqs = sqs
        self.client = s3
        self.wait_s = wait_s
        self.on_rejected = on_rejected
        self.sweep = sweep
        self.sweep_s = sweep_s
        self.sweeps = 0
        self._next_sweep = 0.0  # the first poll sweeps (what landed while nobody listened)
        self._pending: list[str] = []
        sweep_stale_downloads()

    def poll(self) -> list[FileRef]:
        refs = self._receive()
        now = time.monotonic()
        if self.sweep is not None and (
                self.sweeps == 0 or (self.sweep_s > 0 and now >= self._next_sweep)):
            self._next_sweep = now + self.sweep_s
            self.sweeps += 1
            refs.extend(self.sweep.poll())  # a failed listing logs and is retried next time
        return refs

    def _receive(self) -> list[FileRef]:
        from .events import EventParseError, parse_message

        try:
            resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=self.wait_s)
        except Exception as exc:
            log.warning("receiving from %s failed: %s", self.queue_url, exc)
            return []
        refs: list[FileRef] = []
        for msg in resp.get("Messages", []):
            try:
                events = parse_message(msg["Body"])
            except EventParseError as exc:
                log.warning("unparseable message %s: %s", msg.get("MessageId"), exc)
                if self.on_rejected is not None:
                    self.on_rejected(self.uri, msg.get("MessageId", "?"), msg["Body"], str(exc))
                events = []
            for ev in events:
                if ev.kind == "created" and is_candidate_name(ev.key.rsplit("/", 1)[-1]):
                    refs.append(FileRef(ev.uri, ev.etag, ev.size, ev.event_time))
            self._pending.append(msg["ReceiptHandle"])
        return refs

    def ack(self) -> None:
        """Delete the messages received so far (call after the ledger recorded their files)."""
        handles, self._pending = self._pending, []
        for i in range(0, len(handles), 10):
            chunk = handles[i:i + 10]
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(chunk)])

    def wait(self, timeout: float) -> None:
        pass  # receive_message already long-polls


#: Opens the source at a URI: ``opener(uri, settings=, on_rejected=, health=) -> Source``.
SourceOpener = Callable[..., Source]

#: Entry point group through which a package adds a source for a URI scheme (the entry point's
#: name is the scheme; it loads a :data:`SourceOpener`).
ENTRY_POINT_GROUP = "batchml.sources"


def _open_s3(uri: str, *, settings: Any, on_rejected: Any, health: S3Health) -> Source:
    from .store import s3_client

    prefix = S3PrefixSource(uri, client=s3_client(settings.s3_endpoint_url, settings.s3_region,
                                                  health=health), health=health)
    prefix.max_file_bytes = settings.max_file_bytes
    return prefix


def _open_sqs(uri: str, *, settings: Any, on_rejected: Any, health: S3Health) -> Source:
    import boto3

    from .store import s3_client

    queue_url = unquote(uri[len("sqs://"):])
    if not urlparse(queue_url).scheme:
        queue_url = "https://" + queue_url
    sqs = boto3.client("sqs", endpoint_url=settings.s3_endpoint_url,
                       region_name=settings.s3_region)
    s3 = s3_client(settings.s3_endpoint_url, settings.s3_region, health=health)
    sweep = S3PrefixSource(settings.sqs_sweep_uri, client=s3, health=health) \
        if settings.sqs_sweep_uri else None
    queue = SQSSource(queue_url, sqs=sqs, s3=s3, on_rejected=on_rejected, health=health,
                      sweep=sweep, sweep_s=settings.sqs_sweep_s)
    queue.max_file_bytes = settings.max_file_bytes
    return queue


def _open_directory(uri: str, *, settings: Any, on_rejected: Any, health: S3Health) -> Source:
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return DirectorySource(path, quarantine_dir=settings.quarantine)


def _builtin_openers() -> dict[str, SourceOpener]:
    return {"s3": _open_s3, "sqs": _open_sqs, "file": _open_directory}


def source_opener(scheme: str) -> SourceOpener:
    """The opener for URIs of ``scheme``: a built-in (``file`` for directories, ``s3``,
    ``sqs``), else the entry point of that name in the group ``batchml.sources``."""
    builtin = _builtin_openers()
    if scheme in builtin:
        return builtin[scheme]
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
    if not found:
        known = sorted({*builtin, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise ConfigError(
            f"Unsupported source scheme {scheme!r}: no built-in source and no entry point "
            f"{scheme!r} in group {ENTRY_POINT_GROUP!r} (known: {', '.join(known)}).",
            hint="Use a directory, s3://bucket/prefix or sqs://queue-url, or install the "
                 "package that provides this source.")
    ep = found[0]
    try:
        opener = ep.load()
    except Exception as exc:
        raise ConfigError(
            f"The source for {scheme!r} could not be loaded: entry point {ep.value!r} in group "
            f"{ENTRY_POINT_GROUP!r} raised {type(exc).__name__}: {exc}.",
            hint="Fix or reinstall the package that declares it.") from exc
    if not callable(opener):
        raise ConfigError(f"Entry point {ep.value!r} for source {scheme!r} is not callable.",
                          hint="It must name a function (uri, *, settings, on_rejected, "
                               "health) -> Source.")
    return cast(SourceOpener, opener)


def open_source(uri: str, *, settings: Any, on_rejected: Any = None,
                health: S3Health | None = None) -> Source:
    """The source for ``uri``: a directory, ``s3://bucket/prefix``, ``sqs://queue-url``, or a
    scheme a package registers in the entry point group ``batchml.sources``.

    ``health`` counts the source's S3 calls; by default a new tracker whose counts
    ``batchml status`` shows (``HOME/s3-health``). Pass the caller's to count the source's
    calls with the caller's other S3 calls."""
    from .store import S3Health

    if health is None:
        health = S3Health.for_home(settings.home)
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    return source_opener(scheme)(uri, settings=settings, on_rejected=on_rejected,
                                 health=health)


class ListSource:
    """An explicit list of files (local paths or ``s3://`` URIs), for one-off scoring."""

    def __init__(self, uris: list[str], *, client: Any = None,
                 max_file_bytes: int | None = None, health: S3Health | None = None) -> None:
        self.uris = uris
        self.uri = "list"
        self.claim_prefix: str | None = None  # the files are named one by one
        self.client = client
        self.health = health  # the tracker ``client`` was made with (broken-off downloads)
        self.max_file_bytes = max_file_bytes  # s3:// objects larger are never downloaded

    def poll(self) -> list[FileRef]:
        refs = []
        for uri in self.uris:
            if uri.startswith("s3://"):
                from .store import split_s3_uri

                bucket, key = split_s3_uri(uri)
                try:
                    head = self.client.head_object(Bucket=bucket, Key=key)
                except Exception as exc:
                    raise ConfigError(f"Cannot read {uri}: {exc}") from exc
                refs.append(FileRef(uri, head["ETag"].strip('"'), int(head["ContentLength"]),
                                    head["LastModified"]))
            else:
                path = Path(uri).expanduser().resolve()
                try:
                    st = path.stat()
                except FileNotFoundError:
                    raise ConfigError(f"{uri} does not exist.", hint="Check the path.") from None
                refs.append(FileRef(str(path), None, st.st_size,
                                    datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)))
        return refs

    @contextmanager
    def fetch(self, record: FileRecord) -> Iterator[Path]:
        if record.source_uri.startswith("s3://"):
            yield from _download(self.client, record, self.max_file_bytes, self.health)
        else:
            yield Path(record.source_uri)

    def quarantine(self, record: FileRecord, reason: str) -> str | None:
        return None  # files named explicitly stay where the user put them

    def ack(self) -> None:
        pass

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def close(self) -> None:
        pass
