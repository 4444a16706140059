"""The outbox's layout (``BATCHML_OUTPUT_LAYOUT``): where a file's predictions go under the
outbox.

``flat`` (the default): ``OUTBOX/<model run>/<input name>-<input id>.parquet``.

``hive``: Hive-style partitions that DuckDB, Spark and pyarrow read as columns,
``OUTBOX/date=YYYY-MM-DD/model=NAME-vN/<input name>-<input id>.parquet``:

- ``date`` is the UTC date the file's scoring started (one date per file: the parts of a file
  scored in pieces share it);
- ``model`` is ``NAME-vN`` when the batch's model came from the registry (``NAME@ALIAS``,
  ``NAME/N``, or a tagged run registered as a version: the version its batch records), else
  the run id with ``/`` as ``-`` (``train-12``), as in the flat layout's directory.

The file name is the flat layout's, so within one date and model a retry replaces and never
duplicates. A retry or a reprocess that lands on another date (a crash before midnight, scored
again after it) removes the same output under the model's other dates once its own output is
committed (:meth:`Partition.elsewhere`): one output per input and model, as in the flat layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

LAYOUTS = ("flat", "hive")

_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


def is_hive_key(key: str) -> bool:
    """Is ``key`` (relative to the outbox) an output of the hive layout?"""
    head, _, rest = key.partition("/")
    return bool(_DATE_DIR.match(head)) and rest.startswith("model=")


def model_label(run_id: str, name: str | None = None, version: int | None = None) -> str:
    """The ``model=`` value: ``NAME-vN`` for a registered version, else the run id with ``/``
    as ``-``."""
    if name and version is not None:
        return f"{name}-v{version}"
    return run_id.replace("/", "-")


@dataclass(frozen=True)
class Partition:
    """The partition of one file's output: its date and model, and whether the same output
    under the model's other dates is to be removed after the commit (a retry or reprocess)."""

    day: date
    model: str
    replace_elsewhere: bool = False

    @property
    def prefix(self) -> str:
        """``date=YYYY-MM-DD/model=M``."""
        return f"date={self.day.isoformat()}/model={self.model}"

    def key(self, flat_key: str) -> str:
        """The outbox key of ``flat_key`` (``<run>/<name>...``) in this partition: the run's
        directory replaced by the partition's."""
        _, _, rest = flat_key.partition("/")
        return f"{self.prefix}/{rest or flat_key}"

    def elsewhere(self, key: str, dates: list[str]) -> list[str]:
        """The keys of ``key``'s output under this model's other ``date=`` directories
        (``dates``: the names of the outbox's top-level directories)."""
        head = f"{self.prefix}/"
        if not key.startswith(head):
            return []
        rest = key[len(head):]
        mine = f"date={self.day.isoformat()}"
        return [f"{d}/model={self.model}/{rest}" for d in sorted(set(dates))
                if d != mine and _DATE_DIR.match(d)]
