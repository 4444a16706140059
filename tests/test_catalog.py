"""The catalog's client API against real DuckDB files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from batchml import Catalog, ChecksumMismatch, ModelNotFound, RunNotFound
from batchml.errors import InvalidRunState, QueryRefused


def make_run(catalog: Catalog, flow: str = "train", *, status: str = "completed",
             tags: tuple[str, ...] = (), metrics: dict[str, float] | None = None,
             params: dict | None = None):
    run = catalog.create_run(flow, params=params or {})
    if metrics:
        run.log_metrics(metrics)
    for tag in tags:
        run.add_tag(tag)
    if status != "running":
        run.finish(status, error="boom" if status == "failed" else None)
    return run


def test_run_ids_are_path_like_and_numbered_per_flow(catalog: Catalog) -> None:
    a, b = catalog.create_run("train"), catalog.create_run("train")
    c = catalog.create_run("predict")
    assert (a.id, b.id, c.id) == ("train/1", "train/2", "predict/1")
    assert (b.flow, b.number, b.status) == ("train", 2, "running")


def test_runs_newest_first_and_filtered(catalog: Catalog) -> None:
    r1 = make_run(catalog, tags=("x",))
    r2 = make_run(catalog, status="failed", tags=("x",))
    r3 = make_run(catalog)
    make_run(catalog, "other")
    assert catalog.runs("train") == [r3, r2, r1]
    assert catalog.runs("train", tag="x") == [r2, r1]
    assert catalog.runs("train", successful=True) == [r3, r1]
    assert catalog.runs("train", successful=False) == [r2]
    assert len(catalog.runs()) == 4


def test_latest_run_with_tag_skips_failed_and_untagged(catalog: Catalog) -> None:
    good = make_run(catalog, tags=("deployment_candidate",))
    make_run(catalog, status="failed", tags=("deployment_candidate",))
    make_run(catalog)
    assert catalog.latest_run("train", tag="deployment_candidate") == good
    assert catalog.latest_run("train").number == 3
    newer = make_run(catalog, tags=("deployment_candidate",))
    assert catalog.latest_run("train", tag="deployment_candidate") == newer
    newer.remove_tag("deployment_candidate")
    assert catalog.latest_run("train", tag="deployment_candidate") == good


@pytest.mark.parametrize(
    ("flow", "tag", "error", "message"),
    [
        ("train", "deployment_candidate", ModelNotFound,
         "No successful run of flow 'train' tagged 'deployment_candidate'"),
        ("nope", None, RunNotFound, "No successful run of flow 'nope'"),
    ],
)
def test_latest_run_errors_say_what_to_do(catalog: Catalog, flow, tag, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        catalog.latest_run(flow, tag=tag)
    assert "batchml train" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_run_not_found(catalog: Catalog) -> None:
    with pytest.raises(RunNotFound, match="No run 'train/99'"):
        catalog.run("train/99")


def test_params_metrics_and_lazy_loading(catalog: Catalog) -> None:
    run = make_run(catalog, params={"lr": 0.1, "cols": ["a"]}, metrics={"auc": 0.9})
    fresh = Run_by_id(catalog, run.id)
    assert "_row" not in fresh.__dict__  # nothing loaded until asked
    assert fresh.params == {"lr": 0.1, "cols": ["a"]}
    assert fresh.metrics == {"auc": 0.9}
    assert fresh.successful and fresh.ended_at >= fresh.started_at


def Run_by_id(catalog: Catalog, run_id: str):  # noqa: N802 - reads like a constructor
    from batchml import Run

    return Run(catalog, run_id)


def test_metric_steps_keep_history_and_latest_wins(catalog: Catalog) -> None:
    run = catalog.create_run("train")
    for step, loss in enumerate([0.9, 0.5, 0.3]):
        run.log_metrics({"loss": loss}, step=step)
    assert run.metrics == {"loss": 0.3}
    assert len(catalog.sql("SELECT * FROM metrics WHERE key = 'loss'")) == 3


def test_tags_are_idempotent_and_keep_history(catalog: Catalog) -> None:
    run = make_run(catalog)
    assert run.add_tag("champion") is True
    assert run.add_tag("champion") is False
    assert run.tags == {"champion"}
    assert run.remove_tag("champion") is True
    assert run.remove_tag("champion") is False
    assert run.tags == set()
    assert run.add_tag("champion", note="back again") is True
    history = run.tag_history()
    assert list(history["tag"]) == ["champion", "champion"]
    assert history["removed_at"].isna().tolist() == [False, True]
    current = catalog.sql("SELECT * FROM current_tags")
    assert current[["run_id", "tag"]].values.tolist() == [[run.id, "champion"]]


@pytest.mark.parametrize("bad", ["", "has space", "semi;colon", "x" * 200, "quote'"])
def test_invalid_tag_names_are_rejected(catalog: Catalog, bad: str) -> None:
    run = make_run(catalog)
    with pytest.raises(ValueError, match="Invalid tag"):
        run.add_tag(bad)


def test_ended_runs_are_facts(catalog: Catalog) -> None:
    run = make_run(catalog)
    with pytest.raises(InvalidRunState, match="already ended"):
        run.log_params({"x": 1})
    with pytest.raises(InvalidRunState, match="cannot be finished again"):
        run.finish("failed")


def test_failed_run_records_error(catalog: Catalog) -> None:
    run = catalog.create_run("train")
    run.finish("failed", error="ValueError: bad data")
    again = catalog.run(run.id)
    assert (again.status, again.error) == ("failed", "ValueError: bad data")


def test_artifacts_are_checksummed_and_verified_on_read(catalog: Catalog) -> None:
    run = catalog.create_run("train")
    info = run.log_artifact("notes.txt", b"hello", kind="text")
    assert info["bytes"] == 5 and len(info["sha256"]) == 64
    assert run.fetch_artifact("notes.txt") == b"hello"
    Path(info["uri"]).write_bytes(b"hellO")
    with pytest.raises(ChecksumMismatch, match="notes.txt.*refusing to load"):
        run.fetch_artifact("notes.txt")


def test_search_runs_compares_models(catalog: Catalog) -> None:
    make_run(catalog, metrics={"auc": 0.7}, params={"model": "a"})
    make_run(catalog, metrics={"auc": 0.9}, params={"model": "b"})
    make_run(catalog, metrics={"auc": 0.8}, params={"model": "c"}, tags=("x",))
    frame = catalog.search_runs("train", order_by="metrics.auc DESC")
    assert frame["params.model"].tolist() == ["b", "c", "a"]
    frame = catalog.search_runs("train", where='"metrics.auc" > 0.75', order_by="metrics.auc")
    assert frame["params.model"].tolist() == ["c", "b"]
    assert catalog.search_runs("train", tag="x")["params.model"].tolist() == ["c"]
    with pytest.raises(ValueError, match="Cannot order by"):
        catalog.search_runs("train", order_by="auc; DROP TABLE runs")


def test_runs_overview_view(catalog: Catalog) -> None:
    make_run(catalog, metrics={"accuracy": 0.8, "roc_auc": 0.9}, tags=("b", "a"))
    row = catalog.sql("SELECT * FROM runs_overview").iloc[0]
    assert (row["accuracy"], row["roc_auc"], row["tags"]) == (0.8, 0.9, "a, b")


def test_views_readable_from_plain_duckdb(duckdb_catalog: Catalog) -> None:
    catalog = duckdb_catalog
    make_run(catalog, metrics={"accuracy": 0.5})
    catalog.db.close()
    con = duckdb.connect(str(catalog.path), read_only=True)
    names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() "
                                       "WHERE NOT internal").fetchall()}
    assert {"runs_overview", "current_tags", "tag_history", "file_status",
            "prediction_outputs"} <= names
    assert con.execute("SELECT count(*) FROM runs_overview").fetchone() == (1,)
    con.close()


def test_sql_is_read_only_unless_asked(catalog: Catalog) -> None:
    with pytest.raises(QueryRefused, match="read-only here: DELETE statements"):
        catalog.sql("DELETE FROM runs")
    catalog.sql("CREATE TABLE scratch (a INT)", write=True)
    assert catalog.sql("SELECT count(*) AS n FROM scratch")["n"][0] == 0


def test_user_values_are_bound_not_interpolated(catalog: Catalog) -> None:
    evil = "x' OR '1'='1"
    make_run(catalog, tags=("safe",))
    assert catalog.runs("train", tag=evil) == []
    with pytest.raises(RunNotFound):
        catalog.latest_run(evil)


def _traced_lookup(cat: Catalog, monkeypatch: pytest.MonkeyPatch,
                   tag: str) -> tuple[str, list[str]]:
    """``cat.latest_run("train", tag=tag).id`` and every SQL statement it ran."""
    import contextlib

    statements: list[str] = []
    real_read = cat.db.read

    class Tracing:  # records what the lookup executes on its connection
        def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
            self.con = con

        def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
            statements.append(" ".join(sql.split()))
            return self.con.execute(sql, *args)

    @contextlib.contextmanager
    def read(**kwargs: object):  # type: ignore[no-untyped-def]
        with real_read(**kwargs) as con:  # type: ignore[arg-type]
            yield Tracing(con)

    with monkeypatch.context() as m:
        m.setattr(cat.db, "read", read)
        run_id = cat.latest_run("train", tag=tag).id
    return run_id, statements


def _plan_breaks_promise(statements: list[str]) -> list[str]:
    """The statements of a tagged lookup that break its plan: it must start from the tags
    table filtered by the tag, and touch ``runs`` only by primary key (no scan or join over
    all runs)."""
    broken = [] if statements and statements[0].startswith("SELECT run_id FROM tags WHERE "
                                                            "tag = ?") else statements[:1]
    for sql in statements:
        if ("JOIN" in sql or " runs" in sql) and not sql.startswith(
                ("SELECT run_id FROM tags WHERE tag = ?",
                 "SELECT run_id, status FROM runs WHERE run_id = ?")):
            broken.append(sql)
    return broken


def test_latest_run_lookup_plan_uses_the_tag_filter_at_scale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 20,000 runs (206 tagged), the tagged lookup reads the tags table filtered by the tag
    and then looks runs up by primary key only: its statements are checked, not its speed.
    The negative case (more than the lookup's window of newer tagged runs all unfinished, the
    rare fallback that joins runs) shows the check fails when the plan is broken."""
    cat = Catalog(tmp_path / "c.duckdb")
    with cat.db.write() as con:
        con.execute("""INSERT INTO runs (run_id, flow, number, status, started_at)
            SELECT 'train/' || i, 'train', i, 'completed', now() FROM range(1, 20001) t(i)""")
        con.execute("""INSERT INTO tags (run_id, tag, added_at)
            SELECT 'train/' || i, 'deployment_candidate', now() FROM range(1, 20001, 97) t(i)""")
    run_id, statements = _traced_lookup(cat, monkeypatch, "deployment_candidate")
    assert run_id == "train/19983"
    assert statements[0].startswith("SELECT run_id FROM tags WHERE tag = ?")
    assert _plan_breaks_promise(statements) == [], statements
    assert len(statements) <= 2  # the tag's newest ids, then one run by key
    again = _traced_lookup(cat, monkeypatch, "deployment_candidate")
    assert again == ("train/19983", statements[:1])  # a completed run is remembered

    # negative: 70 newer tagged runs all unfinished -> the join fallback, which the check flags
    with cat.db.write() as con:
        con.execute("""INSERT INTO runs (run_id, flow, number, status, started_at)
            SELECT 'train/' || i, 'train', i, 'running', now() FROM range(20001, 20071) t(i)""")
        con.execute("""INSERT INTO tags (run_id, tag, added_at)
            SELECT 'train/' || i, 'deployment_candidate', now() FROM range(20001, 20071) t(i)""")
    run_id, statements = _traced_lookup(cat, monkeypatch, "deployment_candidate")
    assert run_id == "train/19983"
    broken = _plan_breaks_promise(statements)
    assert len(broken) == 1 and "JOIN runs" in broken[0], statements


def test_latest_tagged_run_behind_many_unfinished_tagged_runs(catalog: Catalog) -> None:
    good = make_run(catalog, tags=("t",))
    for _ in range(70):  # more than the lookup's first window of candidates
        make_run(catalog, status="running", tags=("t",))
    assert catalog.latest_run("train", tag="t") == good
    assert catalog.latest_run("train", tag="t", successful=False).number == 71
    make_run(catalog, "train2", tags=("t",))  # another flow's tagged runs never leak in
    assert catalog.latest_run("train", tag="t") == good


def test_create_run_records_metrics_and_tags_with_the_run(catalog: Catalog) -> None:
    run = catalog.create_run("train", params={"lr": 0.1}, metrics={"auc": 0.9, "f1": 0.5},
                             tags=["a", "b", "a"])
    assert run.params == {"lr": 0.1} and run.metrics == {"auc": 0.9, "f1": 0.5}
    assert run.tags == {"a", "b"} and run.status == "running"
    run.finish()
    assert catalog.latest_run("train", tag="b") == run
    with pytest.raises(ValueError):  # checked before anything is written
        catalog.create_run("train", metrics={"bad name": 1.0})
    with pytest.raises(ValueError):
        catalog.create_run("train", tags=["bad tag"])
    assert [r.id for r in catalog.runs("train")] == [run.id]


def test_transaction_commits_once_or_not_at_all(catalog: Catalog) -> None:
    with catalog.transaction():
        run = catalog.create_run("train")
        run.log_metrics({"auc": 0.7})
        assert run.add_tag("x") and not run.add_tag("x")
        run.finish()
    assert run.refresh().status == "completed" and run.tags == {"x"}
    with pytest.raises(RuntimeError), catalog.transaction():
        doomed = catalog.create_run("train")
        doomed.add_tag("y")
        raise RuntimeError("boom")
    assert [r.id for r in catalog.runs("train")] == [run.id]
    assert catalog.runs("train", tag="y") == []


def test_add_tag_on_a_missing_run_raises(catalog: Catalog) -> None:
    from batchml import Run

    with pytest.raises(RunNotFound):
        Run(catalog, "train/99").add_tag("x")
    assert catalog.sql("SELECT count(*) AS n FROM tags")["n"].iloc[0] == 0


def test_latest_tagged_run_follows_status_and_tags_on_a_warm_connection(
        catalog: Catalog) -> None:
    first = make_run(catalog, tags=("t",))
    assert catalog.latest_run("train", tag="t") == first  # remembered as completed
    later = make_run(catalog, status="running", tags=("t",))
    assert catalog.latest_run("train", tag="t") == first
    later.finish()
    assert catalog.latest_run("train", tag="t") == later
    later.remove_tag("t")
    assert catalog.latest_run("train", tag="t") == first
    failed = make_run(catalog, status="failed", tags=("t",))
    assert catalog.latest_run("train", tag="t") == first
    assert catalog.latest_run("train", tag="t", successful=False) == failed
