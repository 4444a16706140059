"""9. SQL: ``batchml sql`` refuses writes unless ``--write``; tags, flow names, run ids, states
and file URIs holding quotes and SQL are stored and matched literally (bound parameters), and
paths spliced into SQL (the ``predictions`` view) are quoted.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import relhelp
from typer.testing import CliRunner

from batchml import Catalog, ModelNotFound
from batchml.catalog import Ledger
from batchml.cli import app
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

pytestmark = pytest.mark.reliability

HOSTILE = ["x' OR '1'='1", "x'; DROP TABLE runs; --", '" OR 1=1 --', "deployment_candidate' --",
           "%", "deployment%", "train/1' OR '1'='1"]


def cli(settings: Any, *argv: str) -> Any:
    return CliRunner().invoke(app, list(argv), env=relhelp.worker_env(settings))


WRITES = [
    "INSERT INTO tags (run_id, tag, added_at) VALUES ('train/1', 'evil', now())",
    "UPDATE runs SET status = 'failed'",
    "DELETE FROM files",
    "DROP TABLE runs",
    "CREATE TABLE evil AS SELECT 1 AS x",
    "ALTER TABLE runs ADD COLUMN evil INTEGER",
    "SELECT 1; DELETE FROM tags",
    "WITH x AS (SELECT 1) DELETE FROM tags",
    "CREATE OR REPLACE VIEW runs_overview AS SELECT 1 AS x",
]


@pytest.mark.parametrize("statement", WRITES)
def test_sql_refuses_catalog_writes_without_write_flag(home: Any, statement: str) -> None:
    before = relhelp.catalog_dump(home.catalog_file)
    result = cli(home, "sql", statement)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert relhelp.catalog_dump(home.catalog_file) == before


def test_sql_write_flag_allows_writes(home: Any) -> None:
    result = cli(home, "sql", "UPDATE runs SET error = 'noted' WHERE run_id = 'train/2'",
                 "--write")
    assert result.exit_code == 0, result.output
    assert Catalog(home.catalog_file).run("train/2").error == "noted"


@pytest.mark.parametrize("statement", [
    "COPY (SELECT * FROM runs) TO '{dir}/copied.csv'",
    "EXPORT DATABASE '{dir}/exported'",
    "ATTACH '{dir}/other.duckdb' AS o (READ_WRITE); CREATE TABLE o.t AS SELECT 1 AS x",
])
def test_sql_without_write_flag_writes_no_files(home: Any, tmp_path: Path,
                                                statement: str) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    result = cli(home, "sql", statement.format(dir=target))
    assert result.exit_code != 0, result.output
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(("statement", "kind"), [
    ("COPY (SELECT * FROM runs) TO '{dir}/c.parquet'", "COPY"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{dir}/e.csv'", "EXPLAIN ANALYZE"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD '{dir}/evil.duckdb_extension'", "LOAD"),
    ("SET allowed_directories = ['{dir}']", "SET"),
    ("CALL pragma_version()", "CALL"),
    ("SELECT 1; EXPORT DATABASE '{dir}/x'", "EXPORT"),
])
def test_sql_without_write_flag_names_the_refused_statement(home: Any, tmp_path: Path,
                                                            statement: str, kind: str) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    result = cli(home, "sql", statement.format(dir=target))
    assert result.exit_code == 1, result.output
    assert f"{kind} statements do not run without --write" in result.output
    assert "Traceback" not in result.output
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_tags_flows_and_run_ids_match_literally(home: Any, value: str) -> None:
    cat = Catalog.from_settings(home)
    before = relhelp.catalog_dump(home.catalog_file)
    run = cat.run("train/1")
    with pytest.raises(ValueError, match="Invalid tag"):
        run.add_tag(value)
    with pytest.raises(ValueError, match="Invalid flow name"):
        cat.create_run(value)
    assert run.remove_tag(value) is False
    assert cat.runs(tag=value) == [] and cat.runs(flow=value) == []
    with pytest.raises(ModelNotFound):
        cat.latest_run("train", tag=value)
    assert Ledger(cat).requeue(uri=value) == []
    assert len(cat.search_runs(value)) == 0
    for argv in (["tag", "add", "train/1", value], ["run", "show", value],
                 ["files", "--state", value], ["reprocess", value],
                 ["compare", "--metric", value]):
        result = cli(home, *argv)
        assert result.exit_code != 0, (argv, result.output)
        assert "Traceback" not in result.output
    result = cli(home, "runs", "--tag", value, "--format", "csv")
    assert result.exit_code == 0 and "train/1" not in result.output, result.output
    # wildcards of LIKE are no wildcards here
    assert cat.runs(tag="deployment_candidat_") == [] and cat.runs(flow="trai_") == []
    cat.db.close()
    assert relhelp.catalog_dump(home.catalog_file) == before


@pytest.mark.parametrize("flow", ["nosuchflow", "x' OR '1'='1"])
def test_compare_on_a_flow_without_runs_prints_nothing(home: Any, flow: str) -> None:
    result = cli(home, "compare", "--flow", flow, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "train/1" not in result.output


def test_file_uris_with_quotes_are_stored_and_matched_literally(home: Any) -> None:
    inbox = Path(home.inbox)
    names = ["q'; DROP TABLE files; --.parquet", 'd" OR 1=1 --.parquet', "pct%_.parquet",
             "plain.parquet"]
    paths = [str(relhelp.land(inbox / n, synthetic_reviews(5, seed=i)))
             for i, n in enumerate(names)]
    worker = Worker(Catalog.from_settings(home), DirectorySource(
        inbox, quarantine_dir=home.quarantine, use_events=False), home)
    worker.discover()
    outcomes = worker.run_batch().outcomes
    assert sorted(o.source_uri for o in outcomes) == sorted(paths)
    assert {o.status for o in outcomes} == {"scored"}
    worker.catalog.db.close()
    files = Ledger(Catalog(home.catalog_file)).files()
    assert sorted(files["source_uri"]) == sorted(paths)  # stored byte for byte
    # `batchml reprocess URI` matches exactly one file, literally ('%' and '_' are no wildcards)
    for path in paths:
        result = cli(home, "reprocess", path)
        assert result.exit_code == 0 and "1 file(s) queued" in result.output, result.output
    result = cli(home, "reprocess", str(inbox / "q'%"))
    assert result.exit_code == 1 and "0 file(s) queued" in result.output
    states = Ledger(Catalog(home.catalog_file)).counts()
    assert states["discovered"] == len(paths)
    out = cli(home, "sql", "SELECT source_uri FROM files WHERE source_uri LIKE '%DROP%'",
              "--format", "json")
    assert out.exit_code == 0 and "DROP TABLE files" in out.output


@pytest.mark.parametrize("attack", ["attach", "copy"])
def test_search_runs_filter_cannot_modify_anything(home: Any, tmp_path: Path,
                                                   attack: str) -> None:
    cat = Catalog.from_settings(home)
    before = relhelp.catalog_dump(home.catalog_file)
    target = tmp_path / "copied.csv"
    slow = "(SELECT sum(hash(range)) FROM range(60000000)) <> 0"  # batchml lets go of the file
    evil = {"attach": f"{slow}; ATTACH '{home.catalog_file}' AS c (READ_WRITE);"
                      " DELETE FROM c.tags; DETACH c; SELECT * FROM runs WHERE 1=1",
            "copy": f"1=1; COPY (SELECT * FROM runs) TO '{target}'; SELECT * FROM runs"
                    " WHERE 1=1"}[attack]
    with contextlib.suppress(Exception):  # refusing the filter is the right outcome
        cat.search_runs("train", where=evil)
    cat.db.close()
    assert relhelp.catalog_dump(home.catalog_file) == before
    assert not target.exists()


def _score_one(settings: Any) -> Any:
    relhelp.land(Path(settings.inbox) / "v.parquet", synthetic_reviews(6, seed=2))
    worker = Worker(Catalog.from_settings(settings), DirectorySource(
        settings.inbox, quarantine_dir=settings.quarantine, use_events=False), settings)
    worker.discover()
    return worker.run_batch()


def test_outbox_path_with_quotes_is_quoted_in_the_predictions_view(make_home: Any,
                                                                   tmp_path: Path) -> None:
    settings = make_home(outbox=str(tmp_path / "it's out; DROP TABLE runs; --"))
    report = _score_one(settings)
    assert [o.status for o in report.outcomes] == ["scored"]
    cat = Catalog(settings.catalog_file)
    assert cat.sql("SELECT count(*) AS n FROM predictions")["n"].iloc[0] == 6
    assert len(cat.sql("SELECT * FROM runs")) == 2


def test_outbox_path_with_glob_characters(make_home: Any, tmp_path: Path) -> None:
    settings = make_home(outbox=str(tmp_path / "preds[1]"))
    report = _score_one(settings)
    assert [o.status for o in report.outcomes] == ["scored"]
    cat = Catalog(settings.catalog_file)
    assert cat.sql("SELECT count(*) AS n FROM predictions")["n"].iloc[0] == 6


def test_predictions_view_ignores_inflight_temp_files(home: Any) -> None:
    outbox = Path(home.outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / ".tmp-inflight.parquet").write_bytes(b"")  # what Outbox.temp_path creates
    report = _score_one(home)  # the first output of this catalog creates the view
    assert [o.status for o in report.outcomes] == ["scored"]
    cat = Catalog(home.catalog_file)
    assert cat.sql("SELECT count(*) AS n FROM predictions")["n"].iloc[0] == 6
