"""BATCHML_OUTPUT_LAYOUT=hive (batchml/layout.py): outputs under date=YYYY-MM-DD/model=NAME-vN/,
read by DuckDB with hive_partitioning as `date` and `model` columns, local and on S3 (moto's
server); the commit guard, one output per input and the catalog's views as in the flat
layout."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from batchml import Catalog, Settings
from batchml.catalog import utcnow
from batchml.catalog.duckdb_init import duckdb_init_sql, outbox_output_kinds
from batchml.layout import Partition, model_label
from batchml.scoring import Outbox
from batchml.sources import ListSource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

HIVE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/model=([^/]+)/in\d-[0-9a-f]{16}\.parquet$")


def _inputs(tmp_path: Path, n: int = 3, rows: int = 20, tag: str = "in") -> list[str]:
    folder = tmp_path / f"inputs-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"in{i}.parquet"
        synthetic_reviews(rows, seed=70 + i).to_parquet(path)
        files.append(str(path))
    return files


def _register(cat: Catalog, settings: Settings) -> Any:
    """The tagged run as version 1 of ``reviews``, champion."""
    run = cat.latest_run(settings.train_flow, tag=settings.model_tag)
    model = cat.model("reviews")
    version = model.register(run)
    model.set_alias("champion", version, expect=None, reason="layout test")
    return version


def _unregistered_copy(cat: Catalog, settings: Settings) -> Any:
    """A second finished run with the tagged run's model, registered as no version."""
    first = cat.latest_run(settings.train_flow, tag=settings.model_tag)
    name, info = next((n, m) for n, m in first.models.items() if m["is_primary"])
    second = cat.create_run(settings.train_flow)
    cat.backend.record_model(second.id, name, flavor=info["flavor"],
                             signature=info["signature"], artifact=info["artifact"],
                             primary=True)
    for art, meta in first.artifacts.items():
        cat.backend.record_artifact(second.id, art, uri=meta["uri"], sha256=meta["sha256"],
                                    size=meta["bytes"], kind=meta["kind"])
    second.finish()
    return second


def _score(settings: Settings, files: list[str], *, model: str | None = None,
           run_id: str | None = None, isolate: bool = False) -> Any:
    cat = Catalog.from_settings(settings)
    worker = Worker(cat, ListSource(files), settings, model=model, run_id=run_id,
                    isolate=isolate)
    try:
        worker.discover()
        report = worker.run_batch(limit=10)
    finally:
        worker.close()
    assert [o.status for o in report.outcomes] == ["scored"] * len(files), report
    return report


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "scorer-process"])
def test_hive_layout_local_read_by_duckdb_with_partitions(tagged_home: Settings,
                                                          tmp_path: Path,
                                                          isolate: bool) -> None:
    settings = tagged_home.model_copy(update={"output_layout": "hive"})
    cat = Catalog.from_settings(settings)
    run = cat.latest_run(settings.train_flow, tag=settings.model_tag)
    version = _register(cat, settings)
    files = _inputs(tmp_path)
    today = utcnow().date().isoformat()
    report = _score(settings, files, isolate=isolate)  # by tag: the version it is registered as
    outbox = Path(settings.outbox)
    outputs = sorted(p.relative_to(outbox).as_posix() for p in outbox.rglob("*.parquet"))
    assert len(outputs) == 3
    for rel in outputs:
        assert HIVE.fullmatch(rel) and HIVE.fullmatch(rel).groups() == (  # type: ignore[union-attr]
            today, f"reviews-v{version.version}"), rel
    assert sorted(o.output_uri for o in report.outcomes) == [str(outbox / r) for r in outputs]
    con = duckdb.connect()
    rows = con.sql(f"SELECT date, model, model_run_id, count(*) AS n FROM read_parquet("
                   f"'{outbox}/**/*.parquet', hive_partitioning = true) GROUP BY ALL").fetchall()
    assert rows == [(date.fromisoformat(today), "reviews-v1", run.id, 60)]
    # the catalog's views: `predictions` has the partition columns, `prediction_outputs`
    # names every output
    Catalog.from_settings(settings).close()
    cat = Catalog.from_settings(settings)
    got = cat.sql("SELECT CAST(date AS VARCHAR) AS date, model, count(*) AS n FROM predictions"
                  " GROUP BY ALL")
    assert got.to_dict("records") == [{"date": today, "model": "reviews-v1", "n": 60}]
    uris = cat.sql("SELECT output_uri FROM prediction_outputs")["output_uri"]
    assert sorted(uris) == [str(outbox / r) for r in outputs]


def test_hive_model_is_the_registered_version_else_the_run(tagged_home: Settings,
                                                            tmp_path: Path) -> None:
    settings = tagged_home.model_copy(update={"output_layout": "hive"})
    cat = Catalog.from_settings(settings)
    _register(cat, settings)
    second = _unregistered_copy(cat, settings)
    _score(settings, _inputs(tmp_path, 1, tag="a"), model="reviews@champion")
    _score(settings, _inputs(tmp_path, 1, tag="b"), run_id=second.id)
    dirs = sorted({p.parent.relative_to(settings.outbox).as_posix()
                   for p in Path(settings.outbox).rglob("*.parquet")})
    today = utcnow().date().isoformat()
    assert dirs == [f"date={today}/model=reviews-v1",
                    f"date={today}/model={second.id.replace('/', '-')}"]
    assert model_label("train/7") == "train-7"
    assert model_label("train/7", "reviews", 3) == "reviews-v3"


def test_flat_outputs_then_hive_outputs_one_view(tagged_home: Settings, tmp_path: Path) -> None:
    """An outbox that switched layout: the `predictions` view reads both (flat rows with NULL
    date and model); DuckDB refuses one hive scan over both shapes, so it is a union."""
    _register(Catalog.from_settings(tagged_home), tagged_home)
    _score(tagged_home, _inputs(tmp_path, 2, tag="flat"))
    assert outbox_output_kinds(tagged_home).flat
    hive = tagged_home.model_copy(update={"output_layout": "hive"})
    _score(hive, _inputs(tmp_path, 2, tag="hive"))
    kinds = outbox_output_kinds(hive)
    assert kinds.flat and kinds.hive
    cat = Catalog.from_settings(hive)
    got = cat.sql("SELECT coalesce(model, '(flat)') AS model, count(*) AS n, count(date) AS"
                  " dated FROM predictions GROUP BY ALL ORDER BY model")
    assert got.to_dict("records") == [{"model": "(flat)", "n": 40, "dated": 0},
                                      {"model": "reviews-v1", "n": 40, "dated": 40}]
    assert len(cat.sql("SELECT * FROM prediction_outputs")) == 4
    # pyarrow's dataset of the outbox (what `batchml sql` registers for an S3 outbox) too
    table = Outbox(str(hive.outbox)).dataset().to_table(columns=["model", "date"])
    assert sorted(map(str, table["model"].to_pylist())) == ["None"] * 40 + ["reviews-v1"] * 40


def test_a_large_file_in_dask_pieces_lands_in_its_partition(tagged_home: Settings,
                                                             tmp_path: Path) -> None:
    """The score-large-file flow (Prefect + Dask): every part and the manifest under the file's
    one date=/model= directory; the catalog's view reads each row once, with the partitions."""
    from prefect.testing.utilities import prefect_test_harness

    from batchml.flows.pieces import score_large_file_flow
    from batchml.synthetic import write_reviews

    settings = tagged_home.model_copy(update={"output_layout": "hive"})
    _register(Catalog.from_settings(settings), settings)
    big = write_reviews(tmp_path / "big.parquet", 12_000, seed=3, row_group_size=3_000)
    with prefect_test_harness(server_startup_timeout=120):
        result = score_large_file_flow(file=str(big), rows_per_piece=6_000, settings=settings)
    assert result["status"] == "scored" and result["rows"] == 12_000
    today = utcnow().date().isoformat()
    outbox = Path(settings.outbox)
    written = sorted(p.relative_to(outbox).as_posix() for p in outbox.rglob("*")
                     if p.is_file() and not p.name.startswith("."))
    assert len(written) == 3 and all(re.fullmatch(
        rf"date={today}/model=reviews-v1/big-[0-9a-f]{{16}}/(part-0000[01]\.parquet|"
        r"_manifest\.json)", w) for w in written), written
    assert result["output"] == str(outbox / written[0])  # _manifest.json sorts first
    Catalog.from_settings(settings).close()
    got = Catalog.from_settings(settings).sql(
        "SELECT model, count(*) AS n, count(DISTINCT row_index) AS distinct_rows FROM predictions"
        " GROUP BY ALL")
    assert got.to_dict("records") == [{"model": "reviews-v1", "n": 12_000,
                                       "distinct_rows": 12_000}]


def test_commit_guard_refuses_and_nothing_is_placed(tmp_path: Path) -> None:
    def refuse(key: str) -> None:
        raise PermissionError(f"claim lost: {key}")

    outbox = Outbox(str(tmp_path / "out")).partitioned(
        Partition(date(2026, 12, 6), "reviews-v2")).guarded(refuse)
    tmp = outbox.temp_path()
    tmp.write_bytes(b"x")
    with pytest.raises(PermissionError, match="claim lost: train-1/a-0123.parquet"):
        outbox.commit(tmp, "train-1/a-0123.parquet")
    assert not tmp.exists() and not list((tmp_path / "out").rglob("*.parquet"))
    ok = Outbox(str(tmp_path / "out")).partitioned(Partition(date(2026, 12, 6), "reviews-v2"))
    tmp = ok.temp_path()
    tmp.write_bytes(b"x")
    uri = ok.commit(tmp, "train-1/a-0123.parquet")
    assert uri == str(tmp_path / "out/date=2026-12-06/model=reviews-v2/a-0123.parquet")


def _retry_across_midnight(outbox: Outbox, listing: Any) -> None:
    key = "train-1/in0-0123456789abcdef.parquet"
    days = [date(2026, 12, 5), date(2026, 12, 6)]
    for day, replace in ((days[0], False), (days[0], False), (days[1], True)):
        view = outbox.partitioned(Partition(day, "reviews-v2", replace_elsewhere=replace))
        tmp = view.temp_path()
        tmp.write_bytes(day.isoformat().encode())
        view.commit(tmp, key)
    # another model's output of the same input, and another input, on the first day: kept
    for other in ("date=2026-12-05/model=reviews-v1/in0-0123456789abcdef.parquet",
                  "date=2026-12-05/model=reviews-v2/in1-0123456789abcdef.parquet"):
        view = outbox.partitioned(Partition(days[0], "x"))
        tmp = view.temp_path()
        tmp.write_bytes(b"other")
        view._put(tmp, other)
    view = outbox.partitioned(Partition(days[1], "reviews-v2", replace_elsewhere=True))
    tmp = view.temp_path()
    tmp.write_bytes(b"again")
    view.commit(tmp, key)
    assert listing() == ["date=2026-12-05/model=reviews-v1/in0-0123456789abcdef.parquet",
                         "date=2026-12-05/model=reviews-v2/in1-0123456789abcdef.parquet",
                         "date=2026-12-06/model=reviews-v2/in0-0123456789abcdef.parquet"]


def test_a_retry_on_another_date_replaces_the_output_local(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _retry_across_midnight(Outbox(str(root)), lambda: sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.parquet")))


def test_a_retry_on_another_date_replaces_the_output_s3(s3_bucket: str,
                                                         moto_server: str) -> None:
    from batchml.store import s3_client

    client = s3_client(moto_server, "us-east-1")
    outbox = Outbox(f"s3://{s3_bucket}/out", s3=client)

    def listing() -> list[str]:
        objs = client.list_objects_v2(Bucket=s3_bucket, Prefix="out/").get("Contents", [])
        return sorted(o["Key"].removeprefix("out/") for o in objs)

    _retry_across_midnight(outbox, listing)


def test_hive_layout_on_s3_read_by_duckdb_through_the_init_script(
        tagged_home: Settings, tmp_path: Path, s3_bucket: str, moto_server: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker -> S3 outbox on moto in the hive layout; `batchml sql --duckdb-init`'s script
    gives a plain DuckDB session the `predictions` view with `date` and `model`."""
    from batchml.store import s3_client

    settings = tagged_home.model_copy(update={
        "output_layout": "hive", "outbox": f"s3://{s3_bucket}/preds",
        "s3_endpoint_url": moto_server, "s3_region": "us-east-1"})
    files = _inputs(tmp_path)
    cat = Catalog.from_settings(settings)
    _register(cat, settings)
    worker = Worker(cat, ListSource(files, client=s3_client(moto_server, "us-east-1")),
                    settings)
    worker.discover()
    report = worker.run_batch(limit=10)
    assert [o.status for o in report.outcomes] == ["scored"] * 3
    today = utcnow().date().isoformat()
    keys = [o["Key"] for o in s3_client(moto_server, "us-east-1").list_objects_v2(
        Bucket=s3_bucket)["Contents"]]
    assert len(keys) == 3 and all(
        re.fullmatch(rf"preds/date={today}/model=reviews-v1/in\d-[0-9a-f]{{16}}\.parquet", k)
        for k in keys), keys
    assert sorted(o.output_uri for o in report.outcomes) == sorted(
        f"s3://{s3_bucket}/{k}" for k in keys)
    assert outbox_output_kinds(settings).hive
    script = duckdb_init_sql(settings)
    assert "hive_partitioning = true" in script
    con = duckdb.connect()
    con.execute(script)
    rows = con.sql("SELECT date, model, count(*) FROM predictions GROUP BY ALL").fetchall()
    assert rows == [(date.fromisoformat(today), "reviews-v1", 60)]
    # and the same parquet straight from DuckDB with hive_partitioning, as the issue reads it
    direct = con.sql(f"SELECT count(*), min(date), min(model) FROM read_parquet("
                     f"'s3://{s3_bucket}/preds/**/*.parquet', hive_partitioning = true)"
                     ).fetchall()
    assert direct == [(60, date.fromisoformat(today), "reviews-v1")]
    # `batchml sql` reads an S3 outbox through pyarrow: the partitions are columns there too
    dataset = Outbox(settings.outbox).dataset(endpoint_url=moto_server, region="us-east-1")
    table = dataset.to_table(columns=["date", "model"])
    assert set(zip(table["date"].to_pylist(), table["model"].to_pylist(), strict=True)) == {
        (date.fromisoformat(today), "reviews-v1")} and table.num_rows == 60


def test_partition_keys() -> None:
    day = date(2026, 12, 6)
    assert Partition(day, "m").key("train-1/x-0123.parquet") == \
        "date=2026-12-06/model=m/x-0123.parquet"
    assert Partition(day, "m").key("train-1/big-0123/part-00002.parquet") == \
        "date=2026-12-06/model=m/big-0123/part-00002.parquet"
    assert Partition(day - timedelta(days=1), "m").elsewhere(
        "date=2026-12-05/model=m/x.parquet", ["date=2026-12-05", "date=2026-12-04", "train-1",
                                              "date=junk"]) == ["date=2026-12-04/model=m/x.parquet"]


def test_output_layout_setting_is_checked(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("BATCHML_OUTPUT_LAYOUT", "hive")
    assert Settings(home=tmp_path).output_layout == "hive"
    monkeypatch.setenv("BATCHML_OUTPUT_LAYOUT", "daily")
    with pytest.raises(ValueError, match="flat.*hive"):
        Settings(home=tmp_path)
