"""Late labels: label files (an id column and the true label) joined to the predictions made
earlier, for live accuracy, AUC and calibration per model version and day.

A label file lands in the labels inbox (``BATCHML_LABELS_INBOX``: a directory or
``s3://bucket/prefix``) or is given to ``batchml labels ingest``. It is processed exactly once
(the catalog's ``label_files`` ledger, :mod:`batchml.catalog.labels_sql`). Its ids are looked up
in every prediction output of the last ``BATCHML_LABELS_LOOKBACK_DAYS`` (outputs and shadow
outputs; only the id, label, probability and ``scored_at`` columns are read, batch by batch,
and only matching rows kept), each model version's latest prediction of an id is paired with
its label, and the sufficient statistics are recorded (``label_matches``, ``label_score_bins``;
the ``live_performance`` view). Rows that cannot count are counted per reason: an id never
predicted, an id given more than once in the file (every row of it left out), a missing id or
label, a label of the wrong type or not one of the model's classes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .catalog import utcnow, worker_id
from .errors import BatchMLError, DataError, UnreadableFile, is_transient

if TYPE_CHECKING:
    import pandas as pd

    from .catalog import Catalog, FileRecord
    from .catalog.labels_sql import LabelsSQL
    from .settings import Settings
    from .sources import Source

log = logging.getLogger("batchml.labels")

BINS = 1000
"""Score bins per class for AUC and calibration (ties within a bin count half)."""


@dataclass
class LabelReport:
    """What one label file did."""

    file_id: str
    source_uri: str
    state: str  # ingested | quarantined | failed | lost
    rows: int = 0
    matched: int = 0
    unknown_ids: int = 0
    duplicate_ids: int = 0
    bad_labels: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    """Rows left out, per reason."""
    versions: list[dict[str, Any]] = field(default_factory=list)
    """Per model version, role and day: ``n`` labelled predictions and ``correct``."""
    error: str | None = None


@dataclass
class LabelConfig:
    """How label files are read and joined (from :class:`~batchml.Settings`)."""

    id_column: str
    label_column: str
    lookback_days: float = 30.0
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    lease_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelConfig:
        """The label settings; ``BATCHML_ID_COLUMN`` must be set."""
        if not settings.id_column:
            from .errors import ConfigError

            raise ConfigError("Late labels need BATCHML_ID_COLUMN: the input column that "
                              "identifies a row in your data and in the prediction outputs.",
                              hint="Set BATCHML_ID_COLUMN=<column> (and score with it set).")
        return cls(settings.id_column, settings.label_column,
                   settings.labels_lookback_days, settings.s3_endpoint_url, settings.s3_region,
                   settings.lease_s)


class LabelInbox:
    """Ingests label files from a source into a catalog, each exactly once."""

    def __init__(self, catalog: Catalog, config: LabelConfig, *,
                 name: str | None = None) -> None:
        self.catalog = catalog
        self.config = config
        self.name = name or worker_id()
        self.backend = cast("LabelsSQL", catalog.backend)

    def run_once(self, source: Source, *, limit: int = 20) -> list[LabelReport]:
        """Discover the source's label files and ingest every one not ingested yet."""
        refs = source.poll()
        self.backend.label_discover(refs)
        source.ack()
        reports: list[LabelReport] = []
        while claimed := self.backend.label_claim(self.name, limit=limit,
                                                  lease_s=self.config.lease_s,
                                                  prefix=source.claim_prefix):
            for record in claimed:
                reports.append(self.ingest(source, record))
        return reports

    def ingest(self, source: Source, record: FileRecord) -> LabelReport:
        """Ingest one claimed label file: statistics recorded with its ledger row, or the
        file quarantined with the reason (a transient error gives the claim back)."""
        report = LabelReport(record.file_id, record.source_uri, "ingested")
        try:
            with source.fetch(record) as path:
                stats = compute(path, record.source_uri, self.outputs(), self.config)
        except FileNotFoundError:
            report.state, report.error = "failed", f"{record.source_uri} vanished before it " \
                                                   "could be read."
        except Exception as exc:
            if is_transient(exc):
                self.backend.label_release([record.file_id], self.name, str(exc))
                raise
            report.state = "quarantined"
            report.error = str(exc) if isinstance(exc, BatchMLError) else \
                f"{record.source_uri} could not be read as labels: {type(exc).__name__}: {exc}"
            try:
                moved = source.quarantine(record, report.error)
            except Exception as qexc:  # the ledger still says why
                log.warning("could not move %s to quarantine: %s", record.source_uri, qexc)
                moved = None
            if moved:
                report.error += f" (moved to {moved})"
        else:
            report.__dict__.update({k: v for k, v in stats.items() if k in (
                "rows", "matched", "unknown_ids", "duplicate_ids", "bad_labels", "reasons")})
            report.versions = stats["matches"]
        done = self.backend.label_finish(
            record.file_id, self.name, state=report.state, error=report.error,
            counts={"rows": report.rows, "matched": report.matched,
                    "unknown_ids": report.unknown_ids, "duplicate_ids": report.duplicate_ids,
                    "bad_labels": report.bad_labels},
            report=report.reasons,
            matches=report.versions if report.state == "ingested" else [],
            bins=stats["bins"] if report.state == "ingested" else [])
        if not done:
            report.state = "lost"
        return report

    def outputs(self) -> list[dict[str, Any]]:
        """The prediction outputs (and shadow outputs) labels are looked up in."""
        since = utcnow() - timedelta(days=self.config.lookback_days)
        return self.backend.label_outputs(since)


class LabelPoller:
    """The labels inbox of a long-running worker (``batchml serve`` / ``watch``): polled
    between batches, at most every ``interval_s``; its trouble is logged, never raised, so
    labels never stop scoring."""

    def __init__(self, inbox: LabelInbox, source: Source, *, interval_s: float = 2.0) -> None:
        self.inbox = inbox
        self.source = source
        self.interval_s = interval_s
        self._last = float("-inf")

    @classmethod
    def from_settings(cls, catalog: Catalog, settings: Settings) -> LabelPoller | None:
        """The poller of ``BATCHML_LABELS_INBOX`` (None when unset)."""
        if not settings.labels_inbox:
            return None
        from .sources import open_source

        config = LabelConfig.from_settings(settings)
        return cls(LabelInbox(catalog, config), open_source(settings.labels_inbox,
                                                            settings=settings))

    def poll(self) -> list[LabelReport]:
        """Ingest the label files that landed since the last poll (none when polled again
        within ``interval_s``)."""
        import time

        now = time.monotonic()
        if now - self._last < self.interval_s:
            return []
        self._last = now
        try:
            reports = self.inbox.run_once(self.source)
        except Exception as exc:  # a transient error: the claims went back, next poll retries
            log.warning("labels inbox %s: %s", self.source.uri, exc)
            return []
        for r in reports:
            log.info("label file %s %s: %d matched, %d unknown ids, %d duplicate ids, %d bad "
                     "labels%s", r.source_uri, r.state, r.matched, r.unknown_ids,
                     r.duplicate_ids, r.bad_labels, f" ({r.error})" if r.error else "")
        return reports

    def close(self) -> None:
        """Stop watching the labels inbox."""
        self.source.close()


def compute(path: Path, uri: str, outputs: list[dict[str, Any]],
            config: LabelConfig) -> dict[str, Any]:
    """Join the label file at ``path`` to ``outputs``; return counts, reasons, per-version
    matches (``n``, ``correct`` per day) and score bins. Raises :class:`DataError` for a file
    that is not a label file (unreadable, a column missing)."""
    import pandas as pd

    ids, labels, rows = _read_labels(path, uri, config)
    reasons: Counter[str] = Counter()
    present = pc.invert(pc.is_null(ids))
    missing = rows - int(pc.sum(present).as_py() or 0)
    if missing:
        reasons["missing id"] = missing
    frame = pd.DataFrame({"id": ids.to_pylist(), "truth": labels.to_pylist()})
    frame = frame[frame["id"].notna()]
    dup = frame["id"].duplicated(keep=False)
    if dup.any():
        reasons["duplicate id (every row of an id given more than once is left out)"] = \
            int(dup.sum())
    frame = frame[~dup]
    wanted = pd.Index(frame["id"].astype(object))
    found = _lookup(wanted, outputs, config)
    known: Any = found["id"].astype(object).unique() if len(found) else []
    unknown = int((~wanted.isin(known)).sum())
    if unknown:
        reasons["unknown id (never predicted in the lookback window)"] = unknown
    matches: list[dict[str, Any]] = []
    bins: list[dict[str, Any]] = []
    good_ids: set[str] = set()
    bad_ids: set[str] = set()
    if len(found):
        joined = found.merge(frame, on="id")
        for (run_id, role), part in joined.groupby(["model_run_id", "role"], sort=True):
            meta = part.iloc[0]
            desc = (f"{meta['model_name']}/{meta['model_version']}"
                    if meta["model_name"] else str(run_id)) + (" (shadow)" if role == "shadow"
                                                               else "")
            truth, why = _check(part["truth"].tolist(), meta["classes"], meta["class_type"],
                                desc)
            for reason, n in Counter(r for r in why if r).items():
                reasons[reason] += n
            ok = np.array([r is None for r in why], dtype=bool)
            bad_ids.update(part["id"][~ok])
            good = part[ok].assign(truth=[t for t, k in zip(truth, ok, strict=True) if k])
            good_ids.update(good["id"])
            for day, g in good.groupby("day", sort=True):
                correct = int(sum(str(p) == str(t) for p, t in zip(g["pred"], g["truth"],
                                                                   strict=True)))
                matches.append({"model_run_id": run_id, "role": role, "day": day,
                                "model_name": meta["model_name"],
                                "model_version": _int_or_none(meta["model_version"]),
                                "n": len(g), "correct": correct})
                bins.extend(_bins(g, meta["classes"], str(run_id), str(role),
                                  cast(date, day)))
    return {"rows": rows, "matched": len(good_ids - bad_ids), "unknown_ids": unknown,
            "duplicate_ids": int(dup.sum()), "bad_labels": len(bad_ids),
            "reasons": dict(reasons), "matches": matches, "bins": bins}


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or value != value else int(value)
    except (TypeError, ValueError):
        return None


def _read_labels(path: Path, uri: str, config: LabelConfig
                 ) -> tuple[pa.Array, pa.Array, int]:
    """The id column (as strings) and the label column of a label file."""
    try:
        pf = pq.ParquetFile(path, memory_map=False)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"{uri} is not readable parquet: {exc}",
                             hint="Write label files as parquet with the id and label "
                                  "columns.") from exc
    lacking = [c for c in (config.id_column, config.label_column) if c not in names]
    if lacking:
        raise DataError(f"{uri} has no column {', '.join(repr(c) for c in lacking)} "
                        f"(it has {', '.join(names[:20])}).",
                        hint="A label file needs the id column (BATCHML_ID_COLUMN) and the "
                             "label column (BATCHML_LABEL_COLUMN).")
    try:
        table = pf.read(columns=[config.id_column, config.label_column])
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"{uri} could not be read: {exc}") from exc
    ids = _as_strings(table.column(config.id_column))
    return ids, table.column(config.label_column).combine_chunks(), table.num_rows


def _as_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string())


def _lookup(wanted: pd.Index, outputs: list[dict[str, Any]],
            config: LabelConfig) -> pd.DataFrame:
    """The predictions of ``wanted`` ids in ``outputs``: per model run and role the latest
    one of each id, with the predicted label, the class probabilities and the day."""
    import pandas as pd

    parts: list[pd.DataFrame] = []
    for out, uri in ((o, u) for o in outputs for u in _output_files(o["uri"], config)):
        try:
            pf = open_output(uri, config.s3_endpoint_url, config.s3_region)
        except (OSError, pa.ArrowException) as exc:  # gone, or not parquet: not the labels'
            log.warning("prediction output %s cannot be read (%s); its labels cannot be "
                        "matched", uri, exc)
            continue
        names = pf.schema_arrow.names
        probas = [n for n in names if n.startswith("proba_")]
        if config.id_column not in names or "label" not in names or not probas:
            continue
        cols = [config.id_column, "label", *probas,
                *(["scored_at"] if "scored_at" in names else [])]
        label_type = pf.schema_arrow.field("label").type
        class_type = ("boolean" if pa.types.is_boolean(label_type) else "integer"
                      if pa.types.is_integer(label_type) else "number"
                      if pa.types.is_floating(label_type) else "string")
        classes = [_class_value(n[len("proba_"):], class_type) for n in probas]
        for batch in pf.iter_batches(batch_size=65_536, columns=cols):
            # the ids' hash table is built once (pandas keeps it with the index), not per batch
            probe = _as_strings(batch.column(config.id_column)).to_numpy(zero_copy_only=False)
            keep = pa.array(wanted.get_indexer(probe) >= 0)
            hit = batch.filter(keep)
            if hit.num_rows == 0:
                continue
            part = pd.DataFrame({
                "id": _as_strings(hit.column(config.id_column)).to_pylist(),
                "pred": hit.column("label").to_pylist(),
                "scored_at": hit.column("scored_at").to_pylist() if "scored_at" in names
                else [None] * hit.num_rows,
                **{f"p{i}": hit.column(n).to_numpy(zero_copy_only=False)
                   for i, n in enumerate(probas)}})
            part["model_run_id"] = out["model_run_id"]
            part["role"] = out["role"]
            part["model_name"] = out["model_name"]
            part["model_version"] = out["model_version"]
            part["classes"] = [classes] * len(part)
            part["class_type"] = class_type
            parts.append(part)
    if not parts:
        return pd.DataFrame()
    found = pd.concat(parts, ignore_index=True)
    when = pd.to_datetime(found["scored_at"], utc=True, errors="coerce")
    found["when"] = when.fillna(pd.Timestamp(utcnow()))
    found["day"] = found["when"].dt.date
    found = found.sort_values("when").drop_duplicates(["model_run_id", "role", "id"],
                                                      keep="last")
    return found.reset_index(drop=True)


def _output_files(uri: str, config: LabelConfig) -> list[str]:
    """The parquet files of an output: itself, or the parts beside a file scored in pieces
    (its output is the pieces' ``_manifest.json``)."""
    if not uri.endswith("_manifest.json"):
        return [uri]
    base = uri.rsplit("/", 1)[0]
    if not base.startswith("s3://"):
        return sorted(str(p) for p in Path(base).glob("part-*.parquet"))
    from pyarrow import fs

    s3fs = _s3fs(config.s3_endpoint_url, config.s3_region)
    infos = s3fs.get_file_info(fs.FileSelector(base[len("s3://"):], allow_not_found=True))
    return sorted("s3://" + i.path for i in infos
                  if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))


def _s3fs(endpoint_url: str | None, region: str | None) -> Any:
    from urllib.parse import urlparse

    from pyarrow import fs

    kwargs: dict[str, Any] = {"region": region} if region else {}
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        kwargs.update(endpoint_override=parsed.netloc or endpoint_url,
                      scheme=parsed.scheme or "https")
    return fs.S3FileSystem(**kwargs)


def open_output(uri: str, endpoint_url: str | None = None,
                region: str | None = None) -> pq.ParquetFile:
    """A prediction output (a local path or ``s3://``) opened for reading columns."""
    if not uri.startswith("s3://"):
        return pq.ParquetFile(uri, memory_map=False)
    return pq.ParquetFile(_s3fs(endpoint_url, region).open_input_file(uri[len("s3://"):]))


def _class_value(name: str, class_type: str) -> Any:
    try:
        if class_type == "integer":
            return int(name)
        if class_type == "number":
            return float(name)
        if class_type == "boolean":
            return name == "True"
    except ValueError:
        pass
    return name


_TYPE_OK = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,)}


def _check(values: list[Any], classes: list[Any], class_type: str, model: str
           ) -> tuple[list[Any], list[str | None]]:
    """Each label as one of the model's classes, or the reason it is not one."""
    out: list[Any] = []
    why: list[str | None] = []
    shown = ", ".join(repr(c) for c in classes)
    for v in values:
        norm: Any = v
        if v is None or (isinstance(v, float) and v != v):
            why.append(f"missing label ({model})")
            out.append(None)
            continue
        if class_type == "integer" and isinstance(v, float) and v.is_integer():
            norm = int(v)
        if isinstance(norm, np.generic):
            norm = norm.item()
        allowed = _TYPE_OK[class_type]
        if not isinstance(norm, allowed) or (class_type != "boolean"
                                              and isinstance(norm, bool)):
            why.append(f"wrong label type: {type(v).__name__} labels for {model}, whose "
                       f"classes are {class_type} ({shown})")
            out.append(None)
            continue
        if norm not in classes:
            why.append(f"not a class of {model} (its classes: {shown})")
            out.append(None)
            continue
        why.append(None)
        out.append(norm)
    return out, why


def _bins(g: pd.DataFrame, classes: list[Any], run_id: str, role: str,
          day: date) -> list[dict[str, Any]]:
    """Score bins of one model version's labelled predictions of one day: per class (binary:
    the positive class only) and bin, positives, negatives and the scores' sum."""
    rows: list[dict[str, Any]] = []
    which = [len(classes) - 1] if len(classes) == 2 else list(range(len(classes)))
    for i in which:
        score = np.asarray(g[f"p{i}"], dtype=np.float64)
        positive = np.array([t == classes[i] for t in g["truth"]], dtype=bool)
        b = np.clip((score * BINS).astype(np.int64), 0, BINS - 1)
        for k in np.unique(b):
            sel = b == k
            pos = int((positive & sel).sum())
            rows.append({"model_run_id": run_id, "role": role, "day": day,
                         "class": str(classes[i]), "bin": int(k), "positives": pos,
                         "negatives": int(sel.sum()) - pos,
                         "score_sum": float(score[sel].sum())})
    return rows


def live_performance(catalog: Catalog, name: str | None = None) -> list[dict[str, Any]]:
    """The ``live_performance`` view (of registered model ``name``): per model version, role
    (``output`` or ``shadow``) and day, labelled rows, accuracy, AUC and calibration error."""
    return cast("LabelsSQL", catalog.backend).live_performance(name)


def label_files(catalog: Catalog) -> list[dict[str, Any]]:
    """Every label file with its state, counts and reasons, newest first."""
    return cast("LabelsSQL", catalog.backend).label_files()

