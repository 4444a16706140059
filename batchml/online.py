"""Online scoring: a model that follows its reference, and requests coalesced into batches.

:class:`ModelFollower` keeps the model a :class:`~batchml.resolve.ModelRef` names loaded and
current. For ``NAME@ALIAS`` (and ``tag:``) it asks the catalog every ``refresh_s`` which run
the reference points at, loads a new one beside the old and swaps one reference: a request
takes the current :class:`Served` once and scores with it to the end, so no request mixes
versions and none waits for a load.

:class:`OnlineScorer` validates a request against the signature (the batch rules: missing
columns, types, nulls, text limits; column-level messages) before it joins a batch, then
coalesces concurrent requests into one model call (at most ``batch_rows`` rows: every request
that queued while the last call ran, and, under load, up to ``batch_wait_ms`` more for company;
a lone request is scored at once) and hands each request its rows back. Requests are coalesced
only with requests of equal inference parameters (:mod:`batchml.params`: checked against the
served model before a request queues, an unknown or bad one refused with its message). The HTTP protocols
(:mod:`batchml.api`) only translate payloads to and from Arrow tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .errors import BatchMLError, DataError, SchemaMismatch
from .limits import Limits, limit_text_columns
from .params import params_json
from .resolve import ModelRef

if TYPE_CHECKING:
    from .catalog import Catalog
    from .scoring import LoadedModel, ModelCache

log = logging.getLogger("batchml.online")

_CANONICAL = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
              "bool": pa.bool_()}


class RequestTooLarge(DataError):
    """A request holds more rows than ``api_max_rows`` allows."""


@dataclass(frozen=True)
class Served:
    """The model serving requests now: the loaded model and the registered version it is
    (``name/3``; None for a run that is not registered)."""

    model: LoadedModel
    version: str | None

    @property
    def label(self) -> str:
        return self.version or self.model.run_id


class ModelFollower:
    """The model a reference names, kept loaded and current (see the module docstring)."""

    def __init__(self, catalog: Catalog, ref: ModelRef, cache: ModelCache, *,
                 refresh_s: float = 0.25) -> None:
        self.catalog = catalog
        self.ref = ref
        self.cache = cache
        self.refresh_s = refresh_s
        self._served: Served | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0

    @property
    def moves(self) -> bool:
        """Can the reference point elsewhere later (an alias or a tag)?"""
        return self.ref.kind in ("alias", "tag")

    def current(self) -> Served:
        """The model to score a request with now (loaded on first use)."""
        served = self._served
        if served is None:
            served = self.refresh()
        return served

    def refresh(self) -> Served:
        """Resolve the reference now; load and swap in a model that changed."""
        run = self.cache.resolver.run(self.ref)
        served = self._served
        if served is not None and served.model.run_id == run.id:
            return served
        model = self.cache.load(run, self.ref)
        versions = self.catalog.backend.versions_of_run(run.id)
        if self.ref.registered:
            version = f"{self.ref.name}/{next(v for n, v in versions if n == self.ref.name)}" \
                if any(n == self.ref.name for n, _ in versions) else None
        else:
            version = f"{versions[0][0]}/{versions[0][1]}" if versions else None
        new = Served(model, version)
        if served is not None:
            log.info("model %s now %s (was %s)", self.ref, new.label, served.label)
            self.swaps += 1
        self._served = new
        return new

    def start(self) -> None:
        """Follow the reference in a background thread (when it can move)."""
        if self.moves and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="batchml-model-follower",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except BatchMLError as exc:  # the catalog away, the alias removed: keep serving
                log.warning("could not refresh %s: %s", self.ref, exc)
            except Exception:
                log.exception("could not refresh %s", self.ref)


@dataclass
class _Pending:
    table: pa.Table
    future: asyncio.Future[tuple[Served, pa.Table]]
    params: Mapping[str, Any] | None = None  # as the request gave them
    key: str = ""  # params_json(params): requests coalesce only with equal keys
    enqueued: float = field(default_factory=time.perf_counter)


class OnlineScorer:
    """Validates requests and scores them, coalescing concurrent ones (see module docstring).

    ``batch_rows=0`` or ``batch_wait_ms=0`` turns coalescing off: each request is one model
    call. Scoring runs in worker threads; call :meth:`start` inside the event loop."""

    def __init__(self, follower: ModelFollower, *, limits: Limits | None = None,
                 max_rows: int = 10_000, batch_rows: int = 256,
                 batch_wait_ms: float = 2.0) -> None:
        self.follower = follower
        self.limits = limits or Limits.defaults()
        self.max_rows = max_rows
        self.batch_rows = batch_rows
        self.batch_wait_s = batch_wait_ms / 1000
        self._queue: asyncio.Queue[_Pending] | None = None
        self._held: list[_Pending] = []  # taken from the queue with other params: next call
        self._busy = False  # the last model call coalesced several requests
        self._task: asyncio.Task[None] | None = None
        self.model_calls = 0

    @property
    def coalescing(self) -> bool:
        return self.batch_rows > 0 and self.batch_wait_s > 0

    def start(self) -> None:
        if self.coalescing and self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def prepare(self, table: pa.Table, served: Served | None = None) -> pa.Table:
        """``table``'s input columns in the signature's types, checked as batch input is
        (SchemaMismatch / DataError with column-level messages), text held to the limits."""
        if table.num_rows == 0:
            raise DataError("The request holds no rows.", hint="Send at least one row.")
        if table.num_rows > self.max_rows:
            raise RequestTooLarge(
                f"The request holds {table.num_rows:,} rows; at most {self.max_rows:,} are "
                "accepted per request.", hint="Split it, or raise BATCHML_API_MAX_ROWS.")
        sig = (served or self.follower.current()).model.signature
        coerced = sig.coerce(table, arrow=True)
        columns = []
        for spec in sig.inputs:
            column = coerced.column(spec.name)
            target = _CANONICAL[spec.type]
            if column.type != target:
                try:
                    column = column.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaMismatch(f"column {spec.name!r} cannot be read as {spec.type}: "
                                         f"{exc}", hint=f"Send {spec.name!r} as {spec.type}.") from exc
            columns.append(column)
        prepared = pa.table(columns, names=sig.input_names)
        texts = [s.name for s in sig.inputs if s.type == "string"]
        if texts:
            prepared, _ = limit_text_columns(prepared, texts, uri="the request",
                                             limits=self.limits)
        return prepared

    def resolve_params(self, params: Mapping[str, Any] | None,
                       served: Served | None = None) -> dict[str, Any]:
        """The request's inference parameters over the served model's defaults, checked:
        :class:`~batchml.params.InvalidParams` names a bad one (a 400), as does ``explain``
        on a model without per-row contributions (a ``ConfigError``)."""
        estimator = (served or self.follower.current()).model.estimator
        resolved = estimator.resolve_params(params, layer="request")
        if resolved.get("explain"):
            from .explanations import check_explainable

            check_explainable(estimator, int(resolved["explain"]))
        return resolved

    async def score(self, table: pa.Table, params: Mapping[str, Any] | None = None
                    ) -> tuple[Served, pa.Table]:
        """Score one request's rows with its inference ``params`` (None: the model's
        defaults); returns the model that scored them and its output columns (one row per
        input row)."""
        served = self.follower.current()
        self.resolve_params(params, served)  # refused before it queues
        prepared = self.prepare(table, served)
        if not self.coalescing or self._queue is None:
            outs = await asyncio.to_thread(self._call, served, [prepared], params)
            return served, outs[0]
        future: asyncio.Future[tuple[Served, pa.Table]] = \
            asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(prepared, future, params, params_json(params or {})
                                       or ""))
        return await future

    def _take(self, key: str | None) -> _Pending | None:
        """The next request waiting (held ones first) whose params key is ``key`` (any when
        None); requests with other params taken from the queue wait in ``_held``."""
        assert self._queue is not None
        for i, item in enumerate(self._held):
            if key is None or item.key == key:
                return self._held.pop(i)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if key is None or item.key == key:
                return item
            self._held.append(item)
        return None

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            first = self._take(None) or await self._queue.get()
            batch, rows = [first], first.table.num_rows
            while rows < self.batch_rows:
                more = self._take(first.key)  # whoever queued during the last call
                if more is None:
                    break
                batch.append(more)
                rows += more.table.num_rows
            # Wait for company only under load (the last call coalesced requests): a lone
            # client is answered at once instead of paying batch_wait_ms on every request.
            deadline = time.perf_counter() + (self.batch_wait_s if self._busy else 0.0)
            while rows < self.batch_rows:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                if item.key != first.key:
                    self._held.append(item)  # other params: a call of its own
                    continue
                batch.append(item)
                rows += item.table.num_rows
            self._busy = len(batch) > 1
            served = self.follower.current()  # one model for the whole call
            try:
                outs = await asyncio.to_thread(self._call, served,
                                               [p.table for p in batch], first.params)
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, out in zip(batch, outs, strict=True):
                if not p.future.done():
                    p.future.set_result((served, out))

    def _call(self, served: Served, tables: list[pa.Table],
              params: Mapping[str, Any] | None = None) -> list[pa.Table]:
        """One model call over the concatenated tables with inference ``params`` (checked
        against ``served``'s model); the outputs split back."""
        from .scoring import model_columns

        self.model_calls += 1
        resolved = self.resolve_params(params, served)
        sig = served.model.signature
        if len(tables) > 1:
            schemas = {t.schema for t in tables}
            if len(schemas) > 1:  # requests prepared with another version's signature
                tables = [t.select(sig.input_names) for t in tables]
            whole = pa.concat_tables(tables).combine_chunks()
        else:
            whole = tables[0].combine_chunks()
        batch = whole.to_batches()[0] if whole.num_rows else pa.RecordBatch.from_pylist([])
        estimator = served.model.estimator
        proba = estimator.predict_proba(batch, params=resolved)
        index = estimator.label_index(proba, params=resolved)
        cols = model_columns(served.model, batch, np.asarray(proba), index, resolved)
        if resolved.get("explain"):
            from .explanations import explanation_column
            from .signature import EXPLANATION_COLUMN

            cols[EXPLANATION_COLUMN] = explanation_column(estimator, batch, index,
                                                          int(resolved["explain"]))
        out = pa.table(cols)
        pieces, start = [], 0
        for t in tables:
            pieces.append(out.slice(start, t.num_rows))
            start += t.num_rows
        return pieces

    def output_types(self, served: Served) -> dict[str, pa.DataType]:
        """The output columns and their types, from scoring one neutral row."""
        probe = {"string": "", "float64": 0.0, "int64": 0, "bool": False}
        sig = served.model.signature
        row = pa.table({s.name: pa.array([probe[s.type]], _CANONICAL[s.type])
                        for s in sig.inputs})
        try:
            out = self._call(served, [row])[0]
        except BatchMLError:  # a model that cannot score the neutral row (a Python model's
            # rule, or one broken here): the outputs its signature declares
            return {s.name: _CANONICAL.get(s.type, pa.string()) for s in sig.outputs}
        finally:
            self.model_calls -= 1  # not a request
        return {f.name: f.type for f in out.schema}
