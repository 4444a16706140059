"""Scoring one input file: validate it against the model's signature, stream it through the
model in record batches (flat memory), and write one prediction parquet atomically."""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .budget import ReadPlan, plan_read
from .catalog import utcnow
from .errors import (
    BatchMLError,
    DataError,
    ModelError,
    SchemaMismatch,
    StorageUnavailable,
    UnreadableFile,
)
from .footer import check_footer
from .limits import Limits, decode_error, limit_text_columns
from .resolve import ModelRef, ModelResolver

if TYPE_CHECKING:
    from .catalog import Catalog, FileRecord, Run
    from .drift import DriftAccumulator, DriftCounts, DriftReference
    from .estimators import Estimator
    from .layout import Partition
    from .signature import Signature

log = logging.getLogger("batchml.scoring")

LINEAGE = ("model_run_id", "model_flavor", "input_uri", "input_etag", "batch_id", "scored_at")


@dataclass
class LoadedModel:
    """A model ready to score, with the run it came from."""

    run_id: str
    name: str
    flavor: str
    estimator: Estimator
    reference: DriftReference | None = None
    """The training reference drift is measured against (None: trained before drift
    references, or the run has none)."""

    @property
    def signature(self) -> Signature:
        return self.estimator.signature


class ModelCache:
    """Loaded models by run id, so a long-running service loads each model once."""

    def __init__(self, catalog: Catalog, *, flow: str = "train", max_models: int = 4,
                 threshold: float | None = None) -> None:
        self.catalog = catalog
        self.flow = flow
        self.max_models = max_models
        self.threshold = threshold
        """Binary decision threshold overriding each model's (BATCHML_DECISION_THRESHOLD)."""
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self.resolver = ModelResolver(catalog, flow=flow)

    def resolve(self, ref: ModelRef | None = None, *, run_id: str | None = None,
                tag: str | None = None) -> LoadedModel:
        """The model ``ref`` names (or ``run_id``, else the latest successful run carrying
        ``tag``), loaded once and kept.

        Raises :class:`ModelNotFound` (transient) when no run carries the tag yet and
        :class:`RunCannotScore` (terminal) when a named run does not exist, failed, is still
        running or has no model (see :class:`batchml.resolve.ModelResolver`).
        """
        if ref is None:
            ref = ModelRef.from_options(run_id, tag)
        if ref.run_id is not None:
            with self._lock:  # checked when it was loaded, and a run ends only once
                cached = self._models.get(ref.run_id)
            if cached is not None:
                return cached
        return self.load(self.resolver.run(ref), ref)

    def load(self, run: Run | str, ref: ModelRef) -> LoadedModel:
        """The primary model of ``run`` (found through ``ref``, which decides the error when it
        cannot score; see :meth:`ModelResolver.check`), loaded once and kept."""
        run_id = run if isinstance(run, str) else run.id
        with self._lock:
            cached = self._models.get(run_id)
            if cached is not None:
                return cached
        if isinstance(run, str):
            run = self.resolver.run(ModelRef.for_run(run))
        primary = self.resolver.check(run, ref)
        estimator = run.load_model(primary)
        if self.threshold is not None and len(estimator.classes_) == 2:
            estimator.set_threshold(self.threshold)
        model = LoadedModel(run_id, primary, estimator.flavor, estimator,
                            _drift_reference(run))
        with self._lock:
            if len(self._models) >= self.max_models:
                self._models.pop(next(iter(self._models)))
            self._models[run_id] = model
        return model


@dataclass
class FileOutcome:
    """What happened to one file in a batch."""

    file_id: str
    source_uri: str
    status: str  # scored | quarantined | failed
    model_run_id: str | None = None
    output_uri: str | None = None
    rows: int | None = None
    positives: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    reprocess: bool = False
    truncated: int = 0  # text values cut to BATCHML_MAX_TEXT_CHARS
    drift: DriftCounts | None = None  # binned counts against the model's reference


_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def output_key(record: FileRecord, model_run_id: str) -> str:
    """Where a file's predictions go, relative to the outbox: derived from the model run and
    the input's identity, so a retry replaces and never duplicates, and two inputs whose names
    collide after cleaning still get different outputs."""
    base = record.source_uri.rstrip("/").rsplit("/", 1)[-1]
    base = base[:-8] if base.lower().endswith(".parquet") else base
    base = _UNSAFE.sub("_", base).strip("._")[:80] or "input"
    return f"{model_run_id.replace('/', '-')}/{base}-{record.file_id[:16]}.parquet"


CommitGuard = Callable[[str], None]
"""Called with an output's key right before :meth:`Outbox.commit` puts it in place; it raises
to refuse (the worker: the file's claim was lost; the scorer process: the worker said no)."""


class Outbox:
    """Where prediction parquet goes: a local directory or ``s3://bucket/prefix``.

    ``commit_guard`` (see :data:`CommitGuard`) may refuse a commit; :meth:`guarded` gives a
    view of a long-lived outbox with a guard of its own (one file's claim), and
    :meth:`partitioned` one that commits into a Hive partition (``BATCHML_OUTPUT_LAYOUT=hive``,
    :mod:`batchml.layout`)."""

    def __init__(self, root: str, *, s3: Any = None,
                 commit_guard: CommitGuard | None = None) -> None:
        self.root = root.rstrip("/")
        self.s3 = s3
        self.is_s3 = root.startswith("s3://")
        self.commit_guard = commit_guard
        self.partition: Partition | None = None
        self._locks: dict[str, int] = {}
        if not self.is_s3:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.sweep()

    def guarded(self, commit_guard: CommitGuard) -> Outbox:
        """This outbox (same root, client and temp files; no new sweep), committing only
        what ``commit_guard`` lets through, after this outbox's own guard if it has one."""
        outer = self.commit_guard

        def both(key: str) -> None:
            if outer is not None:
                outer(key)
            commit_guard(key)

        view = copy.copy(self)  # shares self._locks: temp files stay locked until committed
        view.commit_guard = commit_guard if outer is None else both
        return view

    def partitioned(self, partition: Partition | None) -> Outbox:
        """This outbox (same root, client, guard and temp files), committing each key into
        ``partition`` (:meth:`placed`); ``None``: the flat layout."""
        view = copy.copy(self)  # shares self._locks, as guarded()
        view.partition = partition
        return view

    def placed(self, key: str) -> str:
        """Where ``key`` (an outbox key of the flat layout) is committed: itself, or its place
        in this view's Hive partition."""
        return key if self.partition is None else self.partition.key(key)

    def sweep(self) -> list[Path]:
        """Delete temp files left by writers that died (a killed worker); return them.

        A live writer holds an exclusive ``flock`` on its temp file for as long as it writes,
        so a temp whose lock can be taken has no writer left. Local outputs are written in the
        outbox (rename is atomic there); S3 outputs in the machine's temp directory."""
        swept: list[Path] = []
        for path in self._temp_dir().glob(f"{self._temp_prefix()}*.partial"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone already
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a writer is alive
            try:
                path.unlink(missing_ok=True)
                swept.append(path)
            except OSError as exc:
                log.warning("could not remove stale temp file %s: %s", path, exc)
            finally:
                os.close(fd)
        if swept:
            log.info("removed %d temp file(s) left by dead writers in %s", len(swept),
                     self._temp_dir())
        return swept

    def _temp_dir(self) -> Path:
        return Path(tempfile.gettempdir() if self.is_s3 else self.root)

    def _temp_prefix(self) -> str:
        # in the shared temp directory the name says whose it is
        return ".batchml-out-" if self.is_s3 else ".tmp-"

    def dataset(self, *, endpoint_url: str | None = None, region: str | None = None) -> Any:
        """The outbox's prediction parquet as one pyarrow dataset (S3 without DuckDB
        extensions); ``None`` while it holds no files. Outputs of the hive layout add the
        columns ``date`` and ``model`` (NULL for flat outputs beside them)."""
        import pyarrow.dataset as ds

        if not self.is_s3:
            files = sorted(str(p) for p in Path(self.root).rglob("*.parquet")
                           if not p.name.startswith((".", "_")))
            return ds.dataset(files, format="parquet", **_hive(files, str(Path(self.root)))
                              ) if files else None
        from pyarrow import fs

        from .store import split_s3_uri

        kwargs: dict[str, Any] = {"region": region} if region else {}
        if endpoint_url:
            parsed = urlparse(endpoint_url)
            kwargs.update(endpoint_override=parsed.netloc or endpoint_url,
                          scheme=parsed.scheme or "https")
        s3fs = fs.S3FileSystem(**kwargs)
        bucket, prefix = split_s3_uri(self.root + "/")
        infos = s3fs.get_file_info(fs.FileSelector(f"{bucket}/{prefix}".rstrip("/"),
                                                   recursive=True, allow_not_found=True))
        # temp files and markers (names starting with '.' or '_') are not outputs
        files = sorted(i.path for i in infos if i.path.endswith(".parquet")
                       and not i.base_name.startswith((".", "_")))
        base = f"{bucket}/{prefix}".rstrip("/")
        return ds.dataset(files, format="parquet", filesystem=s3fs, **_hive(files, base)
                          ) if files else None

    def temp_path(self) -> Path:
        """A temp file to write into: inside the outbox locally (so rename is atomic). Its
        name is hidden and does not end in .parquet, so no reader or glob ever takes it."""
        directory = self._temp_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            while True:
                fd, path = tempfile.mkstemp(prefix=self._temp_prefix(), suffix=".partial",
                                            dir=directory)
                if _lock_own(fd, path):
                    break
                os.close(fd)  # a sweeper got it between create and lock: take another name
        except OSError as exc:
            raise _outbox_error(self.root, exc) from exc
        self._locks[path] = fd  # held until commit or discard: sweep() leaves it alone
        return Path(path)

    def discard(self, tmp: Path) -> None:
        """Remove an unfinished temp file and drop its lock."""
        tmp.unlink(missing_ok=True)
        self._unlock(tmp)

    def _unlock(self, tmp: Path) -> None:
        fd = self._locks.pop(str(tmp), None)
        if fd is not None:
            os.close(fd)

    def commit(self, tmp: Path, key: str) -> str:
        """Move a finished temp file into place as one complete object; return its URI.

        Any failure here is the outbox's, never the input's: it raises
        :class:`StorageUnavailable` so the file stays pending. A refusal of the commit guard
        removes the temp file and propagates."""
        if self.commit_guard is not None:
            try:
                self.commit_guard(key)
            except BaseException:
                self.discard(tmp)
                raise
        key = self.placed(key)
        uri = self._put(tmp, key)
        if self.partition is not None and self.partition.replace_elsewhere:
            self._remove_elsewhere(key)
        return uri

    def _remove_elsewhere(self, key: str) -> None:
        """Remove ``key``'s output under its model's other dates (a retry or reprocess scored
        on another day): best effort, a failure is logged and the output stays."""
        assert self.partition is not None
        try:
            if self.is_s3:
                from .store import split_s3_uri

                bucket, prefix = split_s3_uri(self.root + "/")
                pages = self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix, Delimiter="/")
                dates = [p["Prefix"][len(prefix):].rstrip("/") for page in pages
                         for p in page.get("CommonPrefixes", [])]
                for other in self.partition.elsewhere(key, dates):
                    self.s3.delete_object(Bucket=bucket, Key=f"{prefix}{other}")
                return
            root = Path(self.root)
            dates = [d.name for d in root.iterdir() if d.is_dir()]
            for other in self.partition.elsewhere(key, dates):
                (root / other).unlink(missing_ok=True)
        except Exception as exc:
            log.warning("could not remove earlier outputs of %s under other dates: %s", key,
                        exc)

    def _put(self, tmp: Path, key: str) -> str:
        if self.is_s3:
            from .store import split_s3_uri, translate_s3_error

            bucket, prefix = split_s3_uri(self.root + "/")
            uri = f"{self.root}/{key}"
            try:
                self.s3.upload_file(str(tmp), bucket, f"{prefix}{key}")
            except Exception as exc:
                err = translate_s3_error(exc, uri)
                raise StorageUnavailable(f"Cannot write predictions to {uri}: {err}",
                                         hint="Fix the outbox (bucket, permissions); the file "
                                              "stays pending.") from exc
            finally:
                self.discard(tmp)
            return uri
        target = Path(self.root) / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except OSError as exc:
            raise _outbox_error(self.root, exc) from exc
        finally:
            self._unlock(tmp)
        return str(target)


def _hive(files: list[str], base: str) -> dict[str, Any]:
    """pyarrow's hive partitioning (``date``, ``model``) when an output under ``base`` is in
    the hive layout (:mod:`batchml.layout`), else nothing."""
    from .layout import is_hive_key

    if not any(is_hive_key(f[len(base):].lstrip("/")) for f in files):
        return {}
    import pyarrow.dataset as ds

    schema = pa.schema([("date", pa.date32()), ("model", pa.string())])
    return {"partitioning": ds.partitioning(schema, flavor="hive"),
            "partition_base_dir": base}


def _lock_own(fd: int, path: str) -> bool:
    """Lock a fresh temp file; False when the name no longer refers to it (swept)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _outbox_error(root: str, exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"Cannot write predictions to {root}: {exc}",
                              hint="Free space or fix the outbox path and permissions; the file "
                                   "stays pending and is scored once it can be.")


def _drift_reference(run: Run) -> DriftReference | None:
    """The run's drift reference (:mod:`batchml.drift`); None when it has none or it cannot
    be read (drift is a report: it never stops scoring)."""
    from .drift import REFERENCE_ARTIFACT, DriftReference

    if REFERENCE_ARTIFACT not in run.artifacts:
        return None
    try:
        return DriftReference.from_json(run.fetch_artifact(REFERENCE_ARTIFACT))
    except Exception as exc:
        log.warning("run %s: its %s cannot be read, no drift measured: %s", run.id,
                    REFERENCE_ARTIFACT, exc)
        return None


def _open_parquet(path: Path, uri: str, limits: Limits | None = None) -> pq.ParquetFile:
    try:
        if path.stat().st_size == 0:
            raise UnreadableFile(f"{uri} is empty (0 bytes).",
                                 hint="Write the whole file, then move it into the inbox.")
        if limits is not None:
            check_footer(path, uri, limits)  # before parsing: 100,000 columns cost 300 MB
        # not memory-mapped: mapped pages of a large input stay resident and made peak RSS
        # grow with file size (B5: 613 MB mapped vs 228 MB buffered on a 3M-row file)
        return pq.ParquetFile(path, memory_map=False)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"{uri} is not readable parquet: {exc}",
                             hint="Re-export it as parquet; the original is kept.") from exc


def check_file(pf: pq.ParquetFile, model: LoadedModel, uri: str, budget_bytes: int, *,
               source: Path | None = None, limits: Limits | None = None,
               batch_rows: int = 65_536) -> ReadPlan | None:
    """Refuse a file before scoring: schema against the signature, zero rows, memory budget
    (every row group's decoded size estimated from the footer, see :mod:`batchml.limits`).
    Returns the read plan (rows per batch within the budget); ``None`` without ``source``,
    when only the row groups' page sizes can be checked."""
    limits = limits or Limits(memory_bytes=budget_bytes)
    try:
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"{uri} has an unreadable schema: {exc}") from exc
    try:
        model.signature.check_schema(schema)
    except SchemaMismatch as exc:
        raise SchemaMismatch(f"{uri}: {exc}") from exc
    if pf.metadata.num_rows == 0:
        raise DataError(f"{uri} has zero rows.", hint="Nothing to score; drop files with rows.")
    if source is not None:
        return plan_read(pf, source, uri, limits, batch_rows=batch_rows)
    for i in range(pf.metadata.num_row_groups):
        size = pf.metadata.row_group(i).total_byte_size
        if size > limits.memory_bytes:
            raise DataError(
                f"{uri}: row group {i} decodes to {size / 2**20:.0f} MiB, over the memory "
                f"budget of {limits.memory_bytes / 2**20:.0f} MiB.",
                hint="Rewrite the file with smaller row groups or raise "
                     "BATCHML_MEMORY_BUDGET_MB.")
    return None


def score_file(path: Path, record: FileRecord, model: LoadedModel, outbox: Outbox,
               batch_id: str, *, batch_rows: int = 65_536, budget_bytes: int = 2**30,
               reprocess: bool = False, limits: Limits | None = None,
               explain: int = 0, carry: tuple[str, ...] = (),
               key: str | None = None,
               params: Mapping[str, Any] | None = None,
               drift: bool = False) -> FileOutcome:
    """Score one local parquet file into the outbox; never raises for bad input.

    Bad input (unreadable, schema mismatch, zero rows, over the memory budget or a text
    limit) comes back ``quarantined`` with the reason; a vanished file ``failed``. Transient
    errors (the outbox unreachable or full) propagate, so the caller releases the claim and
    retries later. ``limits`` default to ``budget_bytes`` and the documented text limits.

    ``explain`` > 0 adds the column ``explanation``: per row the ``explain`` largest
    contributions (:mod:`batchml.explanations`; the caller checks first that the model has
    them, :func:`~batchml.explanations.check_explainable`).

    ``carry``: input columns copied to the output even when they are model inputs (the id
    column, ``BATCHML_ID_COLUMN``, so late labels can be joined); other non-model columns
    are always carried.

    ``key`` puts the output elsewhere in the outbox than :func:`output_key` (a backfill's
    version of it).

    ``params`` are the resolved inference parameters (:mod:`batchml.params`; checked by the
    caller before the file was claimed): ``threshold`` decides the label, ``explain`` (when
    ``explain`` is 0) the explanation column, ``batch_size`` the rows per model call, and the
    flavor's own reach its hooks. They are recorded in the output's metadata
    (``batchml.params``).

    ``drift``: count the file against the model's drift reference, if it has one, into
    ``outcome.drift`` (:mod:`batchml.drift`; ``BATCHML_DRIFT``).
    """
    limits = limits or Limits(memory_bytes=budget_bytes)
    acc: DriftAccumulator | None = None
    if drift and model.reference is not None:
        from .drift import DriftAccumulator

        acc = DriftAccumulator(model.reference)
    start = time.perf_counter()
    outcome = FileOutcome(record.file_id, record.source_uri, "scored", model.run_id,
                          reprocess=reprocess)
    tmp: Path | None = None
    try:
        pf = _open_parquet(path, record.source_uri, limits)
        plan = check_file(pf, model, record.source_uri, limits.memory_bytes, source=path,
                          limits=limits, batch_rows=batch_rows)
        tmp = outbox.temp_path()
        rows, positives, truncated = _stream(pf, model, record, batch_id, tmp, batch_rows,
                                             plan=plan, limits=limits, explain=explain,
                                             carry=carry, params=params, drift=acc)
        outcome.output_uri = outbox.commit(tmp, key or output_key(record, model.run_id))
        tmp = None
        outcome.rows, outcome.positives, outcome.truncated = rows, positives, truncated
        outcome.drift = acc.counts if acc is not None else None
    except FileNotFoundError:
        outcome.status = "failed"
        outcome.error = (f"{record.source_uri} was deleted before it could be read; nothing to "
                         "score. Drop it again to score it.")
    except StorageUnavailable:
        raise  # the outbox's trouble, not the input's: the file stays pending
    except (DataError, pa.ArrowException, MemoryError) as exc:
        outcome.status = "quarantined"
        outcome.error = str(exc) if isinstance(exc, BatchMLError) else \
            str(decode_error(exc, record.source_uri, limits))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise StorageUnavailable(f"Cannot write predictions to {outbox.root}: {exc}",
                                     hint="Free space or fix permissions; the file stays "
                                          "pending and is scored once it can be.") from exc
        outcome.status = "quarantined"
        outcome.error = f"{record.source_uri} could not be read: {exc}"
    finally:
        if tmp is not None:
            outbox.discard(tmp)
    outcome.duration_ms = (time.perf_counter() - start) * 1000
    return outcome


def model_columns(model: LoadedModel, batch: pa.RecordBatch, proba: np.ndarray,
                  index: np.ndarray, params: Mapping[str, Any] | None = None
                  ) -> dict[str, pa.Array]:
    """The columns the model's flavor adds (:meth:`Estimator.output_columns`, given the
    resolved inference ``params``), checked: a wrong one is the model's fault (ModelError),
    not the input file's (no quarantine)."""
    from .estimators.base import call_output_columns

    cols = call_output_columns(model.estimator, batch, proba, index, params)
    for name, values in cols.items():
        if not isinstance(values, pa.Array | pa.ChunkedArray) or len(values) != batch.num_rows:
            got = f"{len(values)} values" if isinstance(values, pa.Array | pa.ChunkedArray) \
                else type(values).__name__
            raise ModelError(f"Model {model.name!r} of run {model.run_id} (flavor "
                             f"{model.flavor!r}) gave output column {name!r} as {got}, expected "
                             f"an Arrow array of {batch.num_rows} values.",
                             hint="Fix the flavor's output_columns() and score the file again.")
    return cols


def _stream(pf: pq.ParquetFile, model: LoadedModel, record: FileRecord, batch_id: str,
            tmp: Path, batch_rows: int, row_groups: list[int] | None = None, *,
            plan: ReadPlan | None = None, limits: Limits | None = None, explain: int = 0,
            carry: tuple[str, ...] = (),
            params: Mapping[str, Any] | None = None,
            drift: DriftAccumulator | None = None) -> tuple[int, int, int]:
    """Score ``pf`` into ``tmp``; returns (rows, positives, text values truncated). With a
    ``plan`` batches are sized by bytes (:mod:`batchml.limits`); text inputs are held to
    ``limits`` (default: the documented limits). ``explain``: see :func:`score_file` (the
    output's metadata then holds the signature it follows, under ``batchml.signature``)."""
    # Arrays are built from their buffers: pa.array()/to_numpy() import pandas (~0.5 s cold)
    from .estimators._arrays import constant, from_numpy

    sig = model.signature
    if params is not None:
        params = model.estimator.resolve_params(params)  # every parameter, checked once
        explain = explain or int(params.get("explain") or 0)
    classes = list(model.estimator.classes_)
    inputs = set(sig.input_names)
    texts = [s.name for s in sig.inputs if s.type == "string"]
    limits = limits or Limits()
    truncated = 0
    scored_at = utcnow().isoformat()
    lineage = {"model_run_id": model.run_id, "model_flavor": model.flavor,
               "input_uri": record.source_uri, "input_etag": record.etag or record.ref.identity,
               "batch_id": batch_id, "scored_at": scored_at}
    writer: pq.ParquetWriter | None = None
    rows = positives = 0
    # row_index counts from the start of the file even when scoring a piece of it
    first = 0 if not row_groups else sum(pf.metadata.row_group(i).num_rows
                                         for i in range(row_groups[0]))
    groups = list(row_groups) if row_groups else list(range(pf.metadata.num_row_groups))
    # One reader per row group: a single iter_batches over the whole file kept ~100 MB more
    # per million rows resident (measured: 467 vs 249 MB peak over 2M rows), so peak memory
    # grew with file size.
    batches = plan.batches(pf, groups) if plan is not None else \
        (b for g in groups for b in pf.iter_batches(batch_size=batch_rows, row_groups=[g]))
    try:
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            if texts:
                batch, cut = limit_text_columns(batch, texts, uri=record.source_uri,
                                                limits=limits, first_row=first + rows)
                truncated += cut
            # arrow straight in: the estimator checks and coerces it with the signature once
            # (a text model with an arrow hook never builds a DataFrame)
            proba = model.estimator.predict_proba(batch, params=params)
            index = model.estimator.label_index(proba, params=params)
            if drift is not None:
                drift.update(batch, proba)
            if len(classes) == 2:
                positives += int(index.sum())
            cols: dict[str, pa.Array] = {
                "row_index": from_numpy(np.arange(first + rows, first + rows + n,
                                                  dtype=np.int64))}
            for name in batch.schema.names:
                if (name not in inputs or name in carry) and name not in cols:
                    cols[name] = batch.column(name)
            # the model's own columns (label, proba, proba_<class> unless its flavor says)
            cols.update(model_columns(model, batch, proba, index, params))
            if explain:
                from .explanations import explanation_column
                from .signature import EXPLANATION_COLUMN

                cols[EXPLANATION_COLUMN] = explanation_column(model.estimator, batch, index,
                                                              explain)
            for key, value in lineage.items():
                cols[key] = constant(value, n)
            table = pa.table(cols)
            try:
                if writer is None:
                    meta = {b"batchml.lineage": json.dumps(lineage).encode()}
                    if params is not None:
                        meta[b"batchml.params"] = json.dumps(params, sort_keys=True).encode()
                    if explain:
                        meta[b"batchml.signature"] = json.dumps(
                            sig.with_explanation(explain).to_dict()).encode()
                    schema = table.schema.with_metadata(meta)
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
            except OSError as exc:
                raise _outbox_error(str(tmp.parent), exc) from exc
            rows += n
    finally:
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                raise _outbox_error(str(tmp.parent), exc) from exc
    return rows, positives, truncated
