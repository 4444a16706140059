"""Unit tests of the limits per file (batchml/limits.py, budget.py, footer.py): estimates
against the true decoded size, batches sized by bytes, footer checks, text limits, error
wrapping, and the training loader held to the same limits. The end-to-end bombs (in child
processes with a memory cap) are in tests/reliability/test_reliability_bombs.py."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchml import Settings
from batchml.budget import plan_read
from batchml.datasets import read_bytes, read_parquet
from batchml.errors import (
    DataError,
    DecodeError,
    FileTooLarge,
    MemoryBudgetExceeded,
    UnreadableFile,
    ValueTooLong,
)
from batchml.footer import check_encryption, check_footer
from batchml.limits import Limits, decode_error, limit_text
from batchml.settings import default_memory_budget_mb

MiB = 2**20


def _dictionary_bomb(path: Path, chars: int, rows: int) -> Path:
    review = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)),
                                            pa.array(["x" * chars]))
    pq.write_table(pa.table({"id": np.arange(rows), "review": review}), path,
                   compression="zstd", store_schema=False)
    return path


def _open(path: Path) -> pq.ParquetFile:
    return pq.ParquetFile(path, memory_map=False)


def test_dictionary_bomb_estimate_bounds_the_truth_and_batches_fit(tmp_path: Path) -> None:
    path = _dictionary_bomb(tmp_path / "bomb.parquet", 200_000, 500)  # 100 MB decoded
    limits = Limits(memory_bytes=64 * MiB)
    plan = plan_read(_open(path), path, str(path), limits)
    truth = 200_000 * 500
    assert truth <= plan.decoded_bytes <= 1.05 * truth + MiB
    (group,) = plan.groups
    assert group.batch_rows == limits.batch_bytes // int(group.row_bytes)
    sizes = [b.nbytes for b in plan.batches(_open(path))]
    assert sum(b for b in sizes) >= truth and max(sizes) <= limits.batch_bytes


def test_ordinary_file_keeps_its_batch_rows(tmp_path: Path) -> None:
    from batchml.synthetic import write_reviews

    path = write_reviews(tmp_path / "r.parquet", 100_000, seed=1)
    plan = plan_read(_open(path), path, str(path), Limits(memory_bytes=1024 * MiB))
    assert all(g.batch_rows == 65_536 for g in plan.groups)


def test_a_dictionary_page_over_half_the_budget_is_refused(tmp_path: Path) -> None:
    path = _dictionary_bomb(tmp_path / "bomb.parquet", 3 * MiB, 10)
    with pytest.raises(MemoryBudgetExceeded) as info:
        plan_read(_open(path), path, str(path), Limits(memory_bytes=4 * MiB))
    text = str(info.value)
    assert str(path) in text and "3.0 MiB of pages" in text
    assert "2.0 MiB of 4.0 MiB per file" in text and "BATCHML_MEMORY_BUDGET_MB" in text


def test_training_needs_the_whole_file_within_the_budget(tmp_path: Path) -> None:
    path = _dictionary_bomb(tmp_path / "bomb.parquet", 150_000, 300)  # 45 MB decoded
    with pytest.raises(MemoryBudgetExceeded, match="in all, over the memory budget of 16"):
        read_parquet(str(path), limits=Limits(memory_bytes=16 * MiB))
    frame, _ = read_parquet(str(path), limits=Limits(memory_bytes=1024 * MiB))
    assert frame.attrs["batchml.truncated_values"] == 300
    assert frame["review"].str.len().max() == 100_000


def test_delta_byte_array_is_bounded_by_its_pages(tmp_path: Path) -> None:
    path = tmp_path / "delta.parquet"
    pq.write_table(pa.table({"review": ["y" * 10_000] * 1000}), path, use_dictionary=False,
                   column_encoding={"review": "DELTA_BYTE_ARRAY"})
    plan = plan_read(_open(path), path, str(path), Limits(memory_bytes=64 * MiB))
    assert plan.decoded_bytes >= 10_000 * 1000
    assert sum(b.num_rows for b in plan.batches(_open(path))) == 1000


def test_footer_too_large_to_parse_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": [0.0] for i in range(2000)}), path)
    with pytest.raises(MemoryBudgetExceeded, match="footer of"):
        check_footer(path, str(path), Limits(memory_bytes=4 * MiB))
    check_footer(path, str(path), Limits(memory_bytes=256 * MiB))


def test_encrypted_columns_are_refused_before_their_metadata_is_read(
        shared_testdata: Path) -> None:
    path = shared_testdata / "parquet-testing" / "encrypted" / \
        "encrypt_columns_plaintext_footer.parquet.encrypted"
    if not path.exists():
        pytest.skip("shared parquet-testing data not present")
    with pytest.raises(UnreadableFile, match="encrypted columns"):
        check_encryption(path, str(path))
    plain = shared_testdata / "parquet-testing" / "nested" / "nested_maps.snappy.parquet"
    check_encryption(plain, str(plain))  # no error


@pytest.mark.parametrize("mode", ["truncate", "refuse"])
@pytest.mark.parametrize("dictionary", [False, True])
def test_text_limit(mode: str, dictionary: bool) -> None:
    values = pa.array(["short", "é" * 12, None, "ok", "z" * 20])
    if dictionary:
        values = values.dictionary_encode()
    limits = Limits(max_text_chars=10, text_overflow=mode)
    if mode == "refuse":
        with pytest.raises(ValueTooLong) as info:
            limit_text(values, name="review", uri="f.parquet", limits=limits, first_row=100)
        assert "column 'review' row 101 holds 12 characters, over the limit of 10" in \
            str(info.value)
        assert "BATCHML_MAX_TEXT_CHARS" in str(info.value)
        return
    cut, count = limit_text(values, name="review", uri="f.parquet", limits=limits)
    assert count == 2
    plain = cut.cast(pa.string()) if dictionary else cut
    assert plain.to_pylist() == ["short", "é" * 10, None, "ok", "z" * 10]


@pytest.mark.parametrize("exc,column", [
    (pa.ArrowCapacityError("Take operation overflowed binary array capacity"), None),
    (pa.ArrowInvalid("Column 18 named timestamp_us_no_tz expected length 3 but got length 0"),
     "timestamp_us_no_tz"),
    (OSError("Corrupt snappy compressed data."), None),
])
def test_decode_errors_say_file_column_limit_and_what_to_do(exc: Exception,
                                                             column: str | None) -> None:
    err = decode_error(exc, "s3://b/in/x.parquet", Limits(memory_bytes=256 * MiB), row_group=2)
    text = str(err)
    assert isinstance(err, DecodeError) and isinstance(err, DataError)
    assert "s3://b/in/x.parquet, row group 2" in text
    if column:
        assert f"column {column!r}" in text
    if isinstance(exc, pa.ArrowCapacityError):
        assert "256 MiB per file" in text and "BATCHML_BATCH_ROWS" in text
    else:
        assert "re-export" in text


def test_object_size_limit_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2, 3]}), buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(FileTooLarge, match="BATCHML_MAX_FILE_BYTES"):
        read_bytes(str(path), max_bytes=10)
    assert read_bytes(str(path), max_bytes=10**6) == buf.getvalue()


def test_settings_defaults_and_limits_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 64 <= default_memory_budget_mb() <= 1024
    monkeypatch.setenv("BATCHML_MEMORY_BUDGET_MB", "96")
    monkeypatch.setenv("BATCHML_TEXT_OVERFLOW", "refuse")
    monkeypatch.setenv("BATCHML_MAX_TEXT_CHARS", "500")
    monkeypatch.setenv("BATCHML_MAX_FILE_BYTES", "1000")
    limits = Limits.from_settings(Settings())
    assert limits == Limits(memory_bytes=96 * MiB, max_text_chars=500, text_overflow="refuse",
                            max_file_bytes=1000)
    monkeypatch.setenv("BATCHML_TEXT_OVERFLOW", "ignore")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize("command", [["predict"], ["watch", "--once"]])
@pytest.mark.parametrize("mode", ["truncate", "refuse"])
def test_text_limit_settings_reach_predict_and_the_scorer_process(
        tagged_home, tmp_path: Path, command: list[str], mode: str) -> None:  # type: ignore[no-untyped-def]
    """BATCHML_MAX_TEXT_CHARS / BATCHML_TEXT_OVERFLOW apply in `batchml predict` (in-process)
    and in `batchml watch` (the scorer child process), not only the budget."""
    import os
    import subprocess
    import sys

    from batchml import Catalog
    from batchml.synthetic import synthetic_reviews

    frame = synthetic_reviews(20, seed=3)
    frame.loc[4, "review"] = "word " * 400  # 2,000 characters
    inbox = Path(tagged_home.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(inbox / ".long.tmp")
    (inbox / ".long.tmp").rename(inbox / "long.parquet")
    env = {**os.environ, "BATCHML_HOME": str(tagged_home.home),
           "BATCHML_MAX_TEXT_CHARS": "1000", "BATCHML_TEXT_OVERFLOW": mode}
    args = command + ([str(inbox / "long.parquet")] if command == ["predict"] else [])
    done = subprocess.run([str(Path(sys.executable).parent / "batchml"), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    row = Catalog(tagged_home.catalog_file).sql(
        "SELECT status, error, truncated_values FROM batch_files")
    assert len(row) == 1, done.stdout + done.stderr
    if mode == "truncate":
        assert row["status"][0] == "scored" and row["truncated_values"][0] == 1
    else:
        assert row["status"][0] == "quarantined"
        assert "column 'review' row 4 holds 2,000 characters, over the limit of 1,000" \
            in row["error"][0], row["error"][0]
