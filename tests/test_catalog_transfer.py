"""`batchml catalog migrate`: a real DuckDB catalog file copied onto a real PostgreSQL server
(and back), everything intact: runs, params, metrics at every step, tags with their history,
artifacts, models, the file ledger in every state and the batches' lineage."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batchml import Catalog, open_store
from batchml.catalog import STATES, FileRef, Ledger
from batchml.catalog.transfer import TABLES, migrate_catalog
from batchml.cli import app
from batchml.errors import CatalogError
from batchml.scoring import FileOutcome

runner = CliRunner()

FLOWS = {"train": 7, "nightly": 4, "eval-text": 3}
TAG = "deployment_candidate"


def build_source(path: Path, artifacts: Path) -> Catalog:
    """A DuckDB catalog as a team's looks after a while: several flows of completed, failed
    and running runs; tags moved around; models; a ledger with files in every state."""
    cat = Catalog(path, store=open_store(str(artifacts)))
    for flow, count in FLOWS.items():
        for i in range(1, count + 1):
            run = cat.create_run(
                flow, params={"i": i, "lr": 0.1 * i, "layers": [i, 2 * i], "big": 2**60 + i,
                              "nested": {"name": f"ü-{flow}-{i}", "none": None, "ok": True}},
                metrics={"accuracy": 0.5 + i / 100}, tags=["nightly"] if i % 2 else [],
                code_fingerprint=f"code-{i}", prefect_flow_run_id=f"pf-{flow}-{i}")
            for step in (1, 2, 3):
                run.log_metrics({"loss": 1.0 / (step + i), "roc_auc": 0.6 + step / 100},
                                step=step)
            if i == 2:
                run.log_metrics({"undefined": float("nan")})  # NaN metrics stay NaN
                run.set_data_fingerprint(f"data-{flow}")
            run.log_artifact("model.bin", f"{flow}-{i}".encode(), kind="model")
            cat.backend.record_model(run.id, "baseline", flavor="sklearn_text",
                                     signature={"inputs": [{"name": "review", "type": "str"}],
                                                "threshold": 0.5}, artifact="model.bin",
                                     primary=False)
            cat.backend.record_model(run.id, "winner", flavor="lightgbm",
                                     signature={"inputs": [{"name": "x", "type": "float"}],
                                                "classes": ["neg", "pos"], "n": i},
                                     artifact="model.bin", primary=True)
            if i == count:
                continue  # the newest run of each flow is still running
            if i % 3 == 0:
                run.finish("failed", f"boom {i}")
            else:
                run.finish()
    train = {i: cat.run(f"train/{i}") for i in range(1, FLOWS["train"] + 1)}
    train[2].add_tag(TAG)
    train[2].remove_tag(TAG)  # history keeps a removed row
    train[4].add_tag(TAG, note="promoted by hand")
    train[5].add_tag(TAG)
    train[5].remove_tag(TAG)
    train[5].add_tag("canary", note="second look")
    train[6].add_tag(TAG)  # failed: not the latest successful
    train[7].add_tag(TAG)  # running: not the latest successful either
    cat.run("nightly/1").remove_tag("nightly")

    ledger = Ledger(cat, max_attempts=1)
    ledger.discover([FileRef(f"s3://inbox/day{d}/part-{n}.parquet", etag=f"e{d}{n}",
                             size=100 * d + n, mtime=datetime(2024, 1, d, 6, n, tzinfo=UTC))
                     for d in (1, 2, 3) for n in range(5)])
    ledger.discover([FileRef(f"/data/inbox/local-{n}.parquet", size=n, mtime=None)
                     for n in range(3)])  # no etag, no mtime
    first = ledger.claim_batch("w1", limit=6, lease_s=600, tag=TAG)
    assert first.batch_id is not None and first.model_run_id == "train/4"
    outcomes = [FileOutcome(r.file_id, r.source_uri, "scored", first.model_run_id,
                            output_uri=f"/out/{i}.parquet", rows=10 + i, positives=i,
                            duration_ms=1.25 * i, truncated=i % 2)
                for i, r in enumerate(first.records)]
    for o in outcomes[3:5]:
        o.status, o.error = "quarantined", "bad"
        o.output_uri = o.rows = o.positives = None
    outcomes[5].status, outcomes[5].error = "failed", "scorer died"
    ledger.record_files(first.batch_id, outcomes, "w1",
                        end={"files": 0, "rows": 0, "duration_ms": 12.5})
    # a second batch opened on its own, one outcome a reprocess, left running
    second = ledger.start_batch("train/1", prefect_flow_run_id="pf-batch")
    got = ledger.claim("w2", limit=2, lease_s=600)
    ledger.record_files(second, [FileOutcome(got[0].file_id, got[0].source_uri, "scored",
                                             "train/1", output_uri="/out/again.parquet",
                                             rows=3, positives=1, reprocess=True)], "w2")
    ledger.release([got[1].file_id], "w2", reason="transient", count_attempt=False)
    failing = ledger.claim("w3", limit=1, lease_s=600)
    ledger.release([failing[0].file_id], "w3", reason="out of attempts", count_attempt=True)
    ledger.claim("w4", limit=2, lease_s=600)  # held claims, with leases
    ledger.record_rejected_event("sqs://queue", "m-1", "{not json", "unparseable")
    counts = ledger.counts()
    assert all(counts[s] > 0 for s in STATES), counts
    return cat


def rows(tables: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A dump as comparable rows: JSON columns parsed (PostgreSQL's jsonb rewrites the text),
    NaN as a marker (NaN != NaN)."""
    out = {}
    for name, table in tables.items():
        found = table.to_pylist()
        for row in found:
            for key, value in row.items():
                if key in ("params", "signature") and value is not None:
                    row[key] = json.loads(value)
                elif isinstance(value, float) and math.isnan(value):
                    row[key] = "NaN"
        out[name] = found
    return out


def history(run: Any) -> list[tuple[Any, ...]]:
    """A run's tag history as plain values (the backends' frames differ in how they say "no
    time": NaT or None)."""
    import pandas as pd

    return [tuple(None if pd.isna(v) else
                  v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in row)
            for row in run.tag_history()[["tag", "added_at", "removed_at", "note"]]
            .itertuples(index=False)]


def migrate(*args: str) -> Any:
    result = runner.invoke(app, ["catalog", "migrate", *args], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output + result.stderr
    return result


def with_password(url: str, password: str) -> str:
    """``url`` with a password (the test server trusts its superuser and ignores it)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def test_a_duckdb_catalog_moves_to_postgresql_intact(tmp_path: Path, pg_url: str) -> None:
    source = build_source(tmp_path / "team.duckdb", tmp_path / "artifacts")
    before = rows(source.backend.dump_tables())
    latest = {(flow, tag, ok): source.backend.latest_run_id(flow, tag=tag, successful=ok)
              for flow in FLOWS for tag in (None, TAG, "nightly", "canary")
              for ok in (True, False)}
    counts = Ledger(source).counts()

    secret = "s3cr3t-Pa55"
    result = migrate("--catalog", str(tmp_path / "team.duckdb"),
                     "--to", with_password(pg_url, secret))
    assert result.exit_code == 0, result.output + result.stderr
    assert secret not in result.output + result.stderr
    for name, table_rows in before.items():
        assert f"{name} " in result.output and f"{len(table_rows):,}" in result.output
    assert "rows/s" in result.output

    target = Catalog(pg_url)
    assert rows(target.backend.dump_tables()) == before  # every row of every table, as is
    for flow in FLOWS:
        assert [r.id for r in target.runs(flow)] == [r.id for r in source.runs(flow)]
        for run in source.runs(flow):
            there = target.run(run.id)
            assert (there.params, there.metrics.keys(), there.tags, there.status, there.error,
                    there.started_at, there.ended_at, there.artifacts, there.models,
                    there.data_fingerprint) == \
                   (run.params, run.metrics.keys(), run.tags, run.status, run.error,
                    run.started_at, run.ended_at, run.artifacts, run.models,
                    run.data_fingerprint)
            assert history(there) == history(run)
    assert target.run("train/2").params["big"] == 2**60 + 2  # JSON numbers exact
    assert target.run("train/2").params["nested"]["name"] == "ü-train-2"
    assert [(tag, removed is not None, note) for tag, _, removed, note in
            history(target.run("train/5"))] == [
        ("nightly", False, None), (TAG, True, None), ("canary", False, "second look")]
    assert {key: target.backend.latest_run_id(*key[:1], tag=key[1], successful=key[2])
            for key in latest} == latest
    assert target.latest_run("train", tag=TAG).id == "train/4"
    assert Ledger(target).counts() == counts
    assert target.backend.files().shape == source.backend.files().shape

    # numbering continues after the highest copied run, per flow; a new flow starts at 1
    assert target.create_run("train").id == f"train/{FLOWS['train'] + 1}"
    assert target.create_run("nightly").id == f"nightly/{FLOWS['nightly'] + 1}"
    assert target.create_run("brand-new").id == "brand-new/1"
    # the tag sequence moved past the copied tag ids: new tags, and a removed one re-added
    top = max(r["tag_id"] for r in before["tags"])
    assert target.run("train/1").add_tag(TAG) is True
    assert target.run("train/2").add_tag(TAG, note="back") is True
    assert target.run("train/1").add_tag(TAG) is False
    assert [r["tag_id"] for r in rows(target.backend.dump_tables())["tags"]][-2:] == \
        [top + 1, top + 2]
    assert target.latest_run("train", tag=TAG).id == "train/4"  # the newest completed one

    # migrating again into the now non-empty target: refused, naming the tables, no change
    after = rows(target.backend.dump_tables())
    again = migrate("--catalog", str(tmp_path / "team.duckdb"), "--to", pg_url)
    assert again.exit_code == 1
    said = " ".join(again.stderr.split())
    assert "is not empty: runs, metrics, tags, artifacts, models, files, prediction_batches," \
           " batch_files, run_numbers hold rows already; nothing was loaded" in said
    assert rows(target.backend.dump_tables()) == after
    target.close()
    source.close()


def test_postgresql_moves_back_to_a_new_duckdb_file(tmp_path: Path, pg_url: str) -> None:
    source = build_source(tmp_path / "team.duckdb", tmp_path / "artifacts")
    before = rows(source.backend.dump_tables())
    source.close()
    assert migrate("--catalog", str(tmp_path / "team.duckdb"), "--to", pg_url).exit_code == 0
    back = tmp_path / "back" / "catalog.duckdb"
    result = migrate("--catalog", pg_url, "--to", str(back))
    assert result.exit_code == 0, result.output + result.stderr
    assert f"BATCHML_CATALOG_URL={back})" in " ".join(result.output.split())
    copy = Catalog(back)
    assert rows(copy.backend.dump_tables()) == before
    top = max(r["tag_id"] for r in before["tags"])
    assert copy.run("train/3").add_tag("fresh") is True  # DuckDB's sequence moved too
    assert copy.sql("SELECT max(tag_id) AS m FROM tags")["m"].iloc[0] == top + 1
    assert copy.create_run("train").id == f"train/{FLOWS['train'] + 1}"
    assert copy.latest_run("train", tag=TAG).id == "train/4"
    copy.close()


def test_a_row_the_target_refuses_loads_nothing(tmp_path: Path, pg_url: str) -> None:
    source = Catalog(tmp_path / "c.duckdb")
    run = source.create_run("train", params={"x": 1}, metrics={"auc": 0.5}, tags=["a"])
    # DuckDB's JSON takes NaN (json.dumps writes it); PostgreSQL's jsonb does not. models
    # loads after runs, metrics and tags: the whole load rolls back
    source.backend.record_model(run.id, "m", flavor="sklearn_text",
                                signature={"threshold": float("nan")}, artifact="m.bin",
                                primary=True)
    target = Catalog(pg_url)
    with pytest.raises(CatalogError, match=r"Cannot load table models .*json.*nothing was"):
        migrate_catalog(source, target)
    assert {name: t.num_rows for name, t in target.backend.dump_tables().items()} == \
        dict.fromkeys(TABLES, 0)
    assert target.create_run("train").id == "train/1"  # no run_numbers row was left either
    source.close()
    target.close()


@pytest.mark.parametrize("ahead", ["source", "target"])
def test_a_schema_version_mismatch_says_which_to_upgrade(tmp_path: Path, pg_url: str,
                                                        ahead: str) -> None:
    source = Catalog(tmp_path / "c.duckdb")
    source.create_run("train").finish()
    target = Catalog(pg_url)
    current = source.schema_version()
    # a catalog a newer batchml opened: one more migration recorded than this one knows
    (source if ahead == "source" else target).sql(
        "INSERT INTO schema_migrations VALUES (99, 'from_the_future', now())", write=True)
    if ahead == "source":
        source.close()
        result = migrate("--catalog", str(tmp_path / "c.duckdb"), "--to", pg_url)
        assert result.exit_code == 1
        said = " ".join(result.stderr.split())
        assert (f"The source catalog {tmp_path / 'c.duckdb'} is at schema version 99 and the "
                f"target {pg_url} at {current}; a migration needs both at the same version"
                in said)
        assert "Upgrade the target to version 99" in said and "batchml init" in said
    else:
        with pytest.raises(CatalogError) as caught:
            migrate_catalog(source, target)
        said = str(caught.value)
        assert f"is at schema version {current} and the target {pg_url} at 99" in said
        assert "Upgrade the source to version 99" in said
        assert f"batchml init --catalog {tmp_path / 'c.duckdb'}" in said
    assert target.backend.dump_tables()["runs"].num_rows == 0  # nothing was copied
    source.close()
    target.close()


def test_what_cannot_be_migrated_is_a_clear_error(tmp_path: Path, pg_url: str) -> None:
    missing = tmp_path / "nowhere.duckdb"
    result = migrate("--catalog", str(missing), "--to", pg_url)
    assert result.exit_code == 1 and f"No catalog at {missing}" in result.stderr
    assert not missing.exists()  # not created empty on the way

    source = Catalog(tmp_path / "c.duckdb")
    source.create_run("train")
    same = migrate("--catalog", str(tmp_path / "c.duckdb"), "--to", str(tmp_path / "c.duckdb"))
    assert same.exit_code == 1 and "the same catalog" in same.stderr

    target = Catalog(pg_url)
    tables = source.backend.dump_tables()
    with pytest.raises(CatalogError, match="Not catalog tables: schema_migrations"):
        target.backend.load_tables({**tables, "schema_migrations": tables["runs"]})
    with pytest.raises(CatalogError, match=r"table runs do not fit .*not in .*: extra"):
        target.backend.load_tables({"runs": tables["runs"].append_column(
            "extra", tables["runs"].column("flow"))})
    with pytest.raises(CatalogError, match=r"table runs do not fit .*missing: error"):
        target.backend.load_tables({"runs": tables["runs"].drop_columns(["error"])})
    assert target.backend.dump_tables()["runs"].num_rows == 0
    source.close()
    target.close()


def test_dumps_of_both_backends_have_one_shape(tmp_path: Path, pg_url: str) -> None:
    duck = Catalog(tmp_path / "c.duckdb").backend.dump_tables()
    pg = Catalog(pg_url).backend.dump_tables()
    assert list(duck) == list(pg) == list(TABLES)
    for name in TABLES:
        assert duck[name].schema.equals(pg[name].schema, check_metadata=False), name
