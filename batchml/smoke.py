"""Smoke examples for the training gate: a user's own file (parquet or CSV, local or ``s3://``)
of inputs with the labels the winner must give them. Checked right after the training data is
loaded, so a bad file stops training before anything is fitted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .datasets import clean_text_column
from .errors import SmokeExamplesError


def read_smoke_file(uri: str, *, label: str, inputs: Sequence[str],
                    s3: Any = None) -> pd.DataFrame:
    """Read a smoke-example file (parquet, or CSV when the name ends in ``.csv``) from a local
    path or ``s3://`` and check it has rows, the input columns and the label column.

    Raises :class:`SmokeExamplesError` naming the file and what is wrong.
    """
    import io

    from .datasets import read_bytes

    what = f"The smoke-example file {uri}"
    try:
        data = read_bytes(uri, s3=s3)
        if uri.lower().endswith((".csv", ".csv.gz")):
            frame = pd.read_csv(io.BytesIO(data),
                                compression="gzip" if uri.lower().endswith(".gz") else None)
        else:
            import pyarrow.parquet as pq

            frame = pq.read_table(io.BytesIO(data)).to_pandas()
    except SmokeExamplesError:
        raise
    except Exception as exc:  # missing, unreadable, not parquet/CSV: one clear message
        detail = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise SmokeExamplesError(f"{what} cannot be read ({detail}).",
                                 hint="Point --smoke / BATCHML_SMOKE_PATH at a parquet or .csv "
                                      "file with the model's input columns and the label "
                                      "column.") from exc
    missing = [c for c in [*inputs, label] if c not in frame.columns]
    if missing:
        raise SmokeExamplesError(
            f"{what} lacks column(s) {', '.join(map(repr, missing))}; it has "
            f"{', '.join(map(repr, map(str, frame.columns))) or 'none'}.",
            hint=f"Give it the input column(s) {', '.join(map(repr, inputs))} and the expected "
                 f"label in {label!r}.")
    if len(frame) == 0:
        raise SmokeExamplesError(f"{what} has no rows.",
                                 hint="Add at least one example with its expected label, or "
                                      "leave --smoke out to use the built-in checks only.")
    if frame[label].isna().any():
        row = int(np.flatnonzero(frame[label].isna().to_numpy())[0])
        raise SmokeExamplesError(f"{what} has no expected label in column {label!r} at row "
                                 f"{row}.", hint="Give every example its expected label.")
    return frame


def prepare_smoke(frame: pd.DataFrame, *, uri: str, label: str, inputs: Sequence[str],
                  text_column: str | None, classes: Sequence[Any]
                  ) -> tuple[pd.DataFrame, list[Any]]:
    """The smoke inputs (text cleaned as training text is) and the expected labels mapped onto
    the training classes. A label that is none of them raises :class:`SmokeExamplesError`
    (a CSV's ``"1"`` matches the class ``1``)."""
    classes = list(classes)
    by_text = {str(c): c for c in classes}
    expected: list[Any] = []
    for i, value in enumerate(frame[label].tolist()):
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value in classes:
            expected.append(classes[classes.index(value)])
        elif str(value) in by_text:
            expected.append(by_text[str(value)])
        else:
            raise SmokeExamplesError(
                f"The smoke examples in {uri} expect label {value!r} in column {label!r} "
                f"(row {i}), which is not one of the training classes {classes}.",
                hint="Use the labels of the training data, or drop that example.")
    x = frame[list(inputs)].reset_index(drop=True).copy()
    if text_column is not None:
        x[text_column] = clean_text_column(x[text_column].astype("string").astype(object)) \
            .fillna("")
    return x, expected
