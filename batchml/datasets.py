"""Reading and preparing training data: parquet from a local path or ``s3://``, text cleaning,
and the checks that turn bad training data into a clear error."""

from __future__ import annotations

import hashlib
import html
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError, UnreadableFile

if TYPE_CHECKING:
    from .limits import Limits

log = logging.getLogger("batchml.datasets")
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]{0,200}>", re.S)
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Strip HTML tags, unescape entities (``&#039;`` -> ``'``) and normalise whitespace.

    ``<br />`` and other tags become a space so words on either side stay apart.
    """
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _TAG.sub(" ", text)  # entities may have encoded tags (&lt;br&gt;)
    return _SPACE.sub(" ", text).strip()


def clean_text_column(values: pd.Series) -> pd.Series:
    """:func:`clean_text` over a column of strings (nulls stay null)."""
    return values.map(lambda v: clean_text(v) if isinstance(v, str) else v)


def read_bytes(uri: str, *, s3: Any = None, max_bytes: int | None = None) -> bytes:
    """The bytes at a local path or ``s3://`` URI; more than ``max_bytes`` raises
    :class:`~batchml.errors.FileTooLarge` before they are read."""
    from .limits import Limits, check_object_size

    limits = Limits(max_file_bytes=max_bytes)
    if uri.startswith("s3://"):
        from .store import split_s3_uri, translate_s3_error

        bucket, key = split_s3_uri(uri)
        try:
            response = s3.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise translate_s3_error(exc, uri) from exc
        check_object_size(uri, response.get("ContentLength"), limits)
        try:
            return bytes(response["Body"].read())
        except Exception as exc:
            raise translate_s3_error(exc, uri) from exc
    try:
        check_object_size(uri, Path(uri).stat().st_size, limits)
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{uri} does not exist.", hint="Check the path.") from None


def read_parquet(uri: str, *, s3: Any = None,
                 limits: Limits | None = None) -> tuple[pd.DataFrame, str]:
    """Read a whole parquet file into pandas; returns the frame and the file's sha256.

    Training data is held in memory whole, so the file must fit the memory budget per file
    as a whole (estimated from its footer before decoding, see :mod:`batchml.limits`), and
    text values over ``max_text_chars`` are truncated (counted in the frame's
    ``attrs["batchml.truncated_values"]``) or refused. ``limits`` default to the documented
    defaults. Raises :class:`DataError` subclasses naming the file and the limit.
    """
    from .budget import plan_read
    from .footer import check_footer
    from .limits import Limits, decode_error, limit_text_columns

    limits = limits or Limits.defaults()
    data = read_bytes(uri, s3=s3, max_bytes=limits.max_file_bytes)
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise DataError(f"{uri} is empty (0 bytes).", hint="Point to a parquet file with rows.")
    try:
        check_footer(data, uri, limits)
        pf = pq.ParquetFile(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"{uri} is not readable parquet: {exc}",
                             hint="Re-export it as parquet.") from exc
    plan = plan_read(pf, data, uri, limits, whole=True)
    try:
        table = pa.Table.from_batches(list(plan.batches(pf)), schema=pf.schema_arrow)
    except (pa.ArrowException, OSError, MemoryError) as exc:
        raise decode_error(exc, uri, limits) from exc
    texts = [f.name for f in table.schema
             if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
             or (pa.types.is_dictionary(f.type) and pa.types.is_string(f.type.value_type))]
    table, truncated = limit_text_columns(table, texts, uri=uri, limits=limits)
    frame = table.to_pandas()
    frame.attrs["batchml.truncated_values"] = truncated
    if truncated:
        log.warning("%s: %d text value(s) cut to %d characters (BATCHML_MAX_TEXT_CHARS)",
                    uri, truncated, limits.max_text_chars)
    return frame, digest


def prepare_training_frame(frame: pd.DataFrame, *, label: str, text_column: str | None = None,
                           feature_columns: list[str] | None = None,
                           what: str = "training data") -> tuple[pd.DataFrame, pd.Series]:
    """Check and clean a training or validation frame; return (features, labels).

    Raises :class:`DataError` naming the problem: empty data, a missing label or input column,
    null labels, non-text values in the text column. Text is cleaned with :func:`clean_text`.
    """
    if len(frame) == 0:
        raise DataError(f"The {what} has no rows.", hint="Point to a file with labelled rows.")
    if label not in frame.columns:
        raise DataError(f"The {what} has no label column {label!r}; it has "
                        f"{', '.join(map(str, frame.columns))}.",
                        hint="Pass the right name with --label.")
    if frame[label].isna().any():
        n = int(frame[label].isna().sum())
        raise DataError(f"The {what} has {n} rows with no label in {label!r}.",
                        hint="Drop or label them first.")
    if text_column is None and not feature_columns:
        raise DataError("Say which columns to learn from: a text column or feature columns.")
    inputs = [text_column] if text_column else list(feature_columns or [])
    missing = [c for c in inputs if c not in frame.columns]
    if missing:
        raise DataError(f"The {what} lacks input column(s) {', '.join(map(repr, missing))}.",
                        hint="Check --text-column / --feature-columns.")
    features = frame[inputs].copy()
    if text_column:
        col = features[text_column]
        bad = col.map(lambda v: not isinstance(v, str) and not pd.isna(v))
        if bad.any():
            first = col[bad].iloc[0]
            raise DataError(
                f"The {what}'s text column {text_column!r} holds non-text values "
                f"({int(bad.sum())} rows, e.g. {type(first).__name__} {first!r}).",
                hint="Convert them to strings or point --text-column at a text column.")
        features[text_column] = clean_text_column(col).fillna("")
    labels = frame[label]
    return features.reset_index(drop=True), labels.reset_index(drop=True)


def check_classes(labels: pd.Series, *, what: str = "training data") -> list[Any]:
    """The sorted classes; raises :class:`DataError` when there are fewer than two."""
    classes = sorted(pd.unique(labels).tolist())
    if len(classes) < 2:
        raise DataError(f"The {what} has a single class ({classes[0]!r}); a classifier needs at "
                        "least two.", hint="Add examples of the other class(es).")
    return classes


def fingerprint(*digests: str) -> str:
    """One fingerprint for several input files' sha256s (order matters)."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
