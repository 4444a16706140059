"""Training data preparation: text cleaning and clear errors for bad data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from batchml.datasets import (
    check_classes,
    clean_text,
    prepare_training_frame,
    read_parquet,
)
from batchml.errors import DataError, UnreadableFile


@pytest.mark.parametrize(("raw", "clean"), [
    ("Love it!<br /><br />Fits well", "Love it! Fits well"),
    ("It&#039;s great &amp; cheap", "It's great & cheap"),
    ("  lots \n\t of   space  ", "lots of space"),
    ("<p>para</p><b>bold</b>", "para bold"),
    ("&lt;br&gt;encoded tag", "encoded tag"),
    ("a < b and c > d", "a < b and c > d"),
    ("", ""),
])
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_is_idempotent() -> None:
    text = "Great&#039;s<br/>  fit"
    assert clean_text(clean_text(text)) == clean_text(text)


def frame(**cols) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    return pd.DataFrame(cols)


@pytest.mark.parametrize(("data", "kwargs", "message"), [
    (frame(review=[], labels=[]), {"text_column": "review"}, "has no rows"),
    (frame(review=["a"], y=[1]), {"text_column": "review"}, "no label column 'labels'"),
    (frame(text=["a"], labels=[1]), {"text_column": "review"}, "lacks input column(s) 'review'"),
    (frame(review=["a", 3], labels=[1, 0]), {"text_column": "review"},
     "non-text values (1 rows, e.g. int 3)"),
    (frame(review=["a", "b"], labels=[1, None]), {"text_column": "review"},
     "1 rows with no label"),
    (frame(review=["a"], labels=[1]), {}, "Say which columns"),
])
def test_bad_training_data_is_named(data: pd.DataFrame, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError) as info:
        prepare_training_frame(data, label="labels", **kwargs)
    assert message in str(info.value)


def test_prepare_cleans_text() -> None:
    x, y = prepare_training_frame(frame(review=["a<br />b", None], labels=[1, 0]),
                                  label="labels", text_column="review")
    assert x["review"].tolist() == ["a b", ""]
    assert y.tolist() == [1, 0]


def test_single_class_is_refused() -> None:
    with pytest.raises(DataError, match="single class"):
        check_classes(pd.Series([1, 1, 1]))
    assert check_classes(pd.Series(["b", "a", "b"])) == ["a", "b"]


def test_read_parquet_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_parquet(str(empty))
    csv = tmp_path / "csv.parquet"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(UnreadableFile, match="not readable parquet"):
        read_parquet(str(csv))
    with pytest.raises(DataError, match="does not exist"):
        read_parquet(str(tmp_path / "missing.parquet"))


def test_read_parquet_from_s3(tmp_path: Path, s3_bucket: str, aws_env: str) -> None:
    from batchml.store import s3_client

    client = s3_client(aws_env)
    path = tmp_path / "t.parquet"
    frame(review=["x"], labels=[1]).to_parquet(path)
    client.upload_file(str(path), s3_bucket, "data/t.parquet")
    got, digest = read_parquet(f"s3://{s3_bucket}/data/t.parquet", s3=client)
    assert got["review"].tolist() == ["x"] and len(digest) == 64
