"""Shadow scoring: while a worker scores with ``NAME@ALIAS`` and ``NAME@challenger`` is another
version, each file the champion scored is scored again by the challenger into the shadow area
(``BATCHML_SHADOW_OUTBOX``, by default ``OUTBOX-shadow`` beside the outbox: never in the
outbox, its ``predictions`` view or its dataset), and the comparison is recorded per file
(``shadow_comparisons``, ``shadow_bins``; per batch the ``shadow_batches`` view): rows, how
many predicted labels agree, and the score distributions (binary: tenths of the positive
class's probability; several classes: the predicted class), from which the view computes the
population stability index. A shadow failure is recorded with its reason and never touches
the champion's output. ``BATCHML_SHADOW=false`` turns it off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ConfigError
from .labels import open_output
from .limits import Limits
from .resolve import ModelRef
from .scoring import Outbox, score_file

if TYPE_CHECKING:
    from .catalog import Catalog, FileRecord
    from .catalog.labels_sql import LabelsSQL
    from .scoring import FileOutcome, ModelCache
    from .settings import Settings

log = logging.getLogger("batchml.shadow")

CHALLENGER = "challenger"


@dataclass(frozen=True)
class Pairing:
    """The champion a batch resolved and the challenger that shadows it."""

    name: str
    champion_version: int | None
    champion_run_id: str
    challenger_version: int
    challenger_run_id: str


def shadow_root(settings: Settings, outbox_root: str) -> str:
    """Where shadow outputs go: ``BATCHML_SHADOW_OUTBOX``, else ``OUTBOX-shadow`` beside the
    outbox (an outbox at a bucket's root needs the setting)."""
    if settings.shadow_outbox:
        return settings.shadow_outbox.rstrip("/")
    root = outbox_root.rstrip("/")
    if root.startswith("s3://") and "/" not in root[len("s3://"):]:
        raise ConfigError(f"The outbox {root} is a bucket's root, so the shadow area cannot "
                          "sit beside it.",
                          hint="Set BATCHML_SHADOW_OUTBOX=s3://bucket/prefix, or "
                               "BATCHML_SHADOW=false.")
    return root + "-shadow"


class Shadow:
    """Scores a worker's files with the challenger and records the comparisons."""

    def __init__(self, catalog: Catalog, settings: Settings, cache: ModelCache,
                 outbox: Outbox) -> None:
        self.catalog = catalog
        self.settings = settings
        self.cache = cache
        self.root = shadow_root(settings, outbox.root)
        self._s3 = outbox.s3
        self._outbox: Outbox | None = None  # made when first needed (a failure is recorded)
        self.backend = cast("LabelsSQL", catalog.backend)

    @classmethod
    def for_worker(cls, catalog: Catalog, settings: Settings, cache: ModelCache,
                   outbox: Outbox, ref: ModelRef) -> Shadow | None:
        """The shadow of a worker scoring ``ref``: None when off, or when ``ref`` names no
        alias of a registered model (a run, a tag or a fixed version is not shadowed)."""
        if not settings.shadow or not ref.registered or ref.alias in (None, CHALLENGER):
            return None
        try:
            return cls(catalog, settings, cache, outbox)
        except ConfigError as exc:
            log.warning("shadow scoring is off: %s", exc)
            return None

    def pairing(self, name: str | None, version: int | None, run_id: str | None
                ) -> Pairing | None:
        """The challenger of this batch's champion, or None (no challenger, or the same)."""
        if name is None or run_id is None:
            return None
        target = self.catalog.backend.alias_target(name, CHALLENGER)
        if target is None or target[1] == run_id:
            return None
        return Pairing(name, version, run_id, target[0], target[1])

    def score(self, pairing: Pairing, path: Path, record: FileRecord,
              champion: FileOutcome, batch_id: str) -> dict[str, Any]:
        """Score ``path`` with the challenger into the shadow area, compare it with the
        champion's output and record the comparison; never raises for the challenger's or
        the shadow area's trouble (it is recorded as ``failed`` with the reason)."""
        row: dict[str, Any] = {
            "batch_id": batch_id, "file_id": record.file_id, "source_uri": record.source_uri,
            "model_name": pairing.name, "champion_version": pairing.champion_version,
            "champion_run_id": pairing.champion_run_id,
            "challenger_version": pairing.challenger_version,
            "challenger_run_id": pairing.challenger_run_id, "status": "failed",
            "output_uri": champion.output_uri}
        bins: list[tuple[int, int, int]] = []
        try:
            model = self.cache.load(pairing.challenger_run_id,
                                    ModelRef.for_run(pairing.challenger_run_id))
            carry = (self.settings.id_column,) if self.settings.id_column else ()
            if self._outbox is None:
                self._outbox = Outbox(self.root, s3=self._s3)
            outcome = score_file(path, record, model, self._outbox, batch_id,
                                 batch_rows=self.settings.batch_rows,
                                 budget_bytes=self.settings.memory_budget_mb * 2**20,
                                 limits=Limits.from_settings(self.settings), carry=carry)
            if outcome.status != "scored" or not outcome.output_uri:
                row["error"] = f"the challenger could not score it: {outcome.error}"
            else:
                row["shadow_uri"] = outcome.output_uri
                rows, agreed, bins = self.compare(str(champion.output_uri),
                                                  outcome.output_uri)
                row.update(status="scored", rows=rows, agreed=agreed)
        except Exception as exc:  # the champion's output stands whatever happens here
            log.warning("shadow scoring of %s failed: %s", record.source_uri, exc)
            row["error"] = f"{type(exc).__name__}: {exc}"
        try:
            self.backend.record_shadow(row, bins)
        except Exception as exc:
            log.warning("could not record the shadow comparison of %s: %s",
                        record.source_uri, exc)
        return row

    def compare(self, champion_uri: str, shadow_uri: str
                ) -> tuple[int, int, list[tuple[int, int, int]]]:
        """Rows, rows whose predicted labels agree, and the score bins
        ``(bin, champion, challenger)`` of two outputs of the same input, read side by side
        in chunks of :data:`CHUNK_ROWS` (only the label and probability columns)."""
        rows = agreed = 0
        ha: dict[int, int] = {}
        hb: dict[int, int] = {}
        a_chunks = _chunks(self._open(champion_uri))
        b_chunks = _chunks(self._open(shadow_uri))
        for a, b in zip(a_chunks, b_chunks, strict=False):
            if a.num_rows != b.num_rows:
                raise ValueError("the champion's and the challenger's outputs differ in rows")
            rows += a.num_rows
            agreed += int(pc.sum(pc.equal(pc.cast(a.column("label"), pa.string()),
                                          pc.cast(b.column("label"), pa.string()))).as_py()
                          or 0)
            for hist, table in ((ha, a), (hb, b)):
                values, counts = np.unique(_binned(table), return_counts=True)
                for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                    hist[v] = hist.get(v, 0) + c
        if next(a_chunks, None) is not None or next(b_chunks, None) is not None:
            raise ValueError("the champion's and the challenger's outputs differ in rows")
        bins = [(k, ha.get(k, 0), hb.get(k, 0)) for k in sorted(set(ha) | set(hb))]
        return rows, agreed, bins

    def _open(self, uri: str) -> tuple[pq.ParquetFile, list[str]]:
        pf = open_output(uri, self.settings.s3_endpoint_url, self.settings.s3_region)
        names = pf.schema_arrow.names
        return pf, ["label"] + (["proba"] if "proba" in names else
                                [n for n in names if n.startswith("proba_")])


CHUNK_ROWS = 65_536
"""Rows of each output compared at a time (memory stays flat whatever the file's size)."""


def _chunks(opened: tuple[pq.ParquetFile, list[str]]) -> Iterator[pa.Table]:
    """The columns of an output in chunks of exactly :data:`CHUNK_ROWS` rows (the last one
    shorter), whatever its row groups."""
    pf, cols = opened
    buf: list[pa.RecordBatch] = []
    held = 0
    for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=cols):
        buf.append(batch)
        held += batch.num_rows
        while held >= CHUNK_ROWS:
            table = pa.Table.from_batches(buf)
            yield table.slice(0, CHUNK_ROWS)
            rest = table.slice(CHUNK_ROWS)
            buf, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(buf)


def _binned(table: pa.Table) -> np.ndarray:
    """Binary (a ``proba`` column): tenths of it, 0 .. 9; else the predicted class's index
    among the ``proba_<class>`` columns."""
    if "proba" in table.column_names:
        p = table.column("proba").to_numpy(zero_copy_only=False).astype(np.float64)
        return np.clip((p * 10).astype(np.int64), 0, 9)
    probas = np.column_stack([table.column(n).to_numpy(zero_copy_only=False)
                              for n in table.column_names if n.startswith("proba_")])
    return np.asarray(probas.argmax(axis=1), dtype=np.int64)


def shadow_batches(catalog: Catalog, name: str | None = None,
                   limit: int = 20) -> list[dict[str, Any]]:
    """The ``shadow_batches`` view (of registered model ``name``), newest first: per batch the
    champion and challenger versions, files, rows, agreement and PSI."""
    return cast("LabelsSQL", catalog.backend).shadow_batches(name, limit)
