"""Late labels on both catalog backends: a hand-checked example (accuracy, AUC and calibration
worked out below by hand), exactly-once ingestion, and every kind of bad row counted with its
reason while the rest of the file still counts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchml.catalog import Ledger
from batchml.catalog.records import FileRef
from batchml.labels import LabelConfig, LabelInbox, label_files, live_performance
from batchml.scoring import FileOutcome
from batchml.sources import DirectorySource

# ten predictions: id, P(class 1), true label. The model says 1 at P >= 0.5.
ROWS = [("a", 0.95, 1), ("b", 0.85, 1), ("c", 0.75, 0), ("d", 0.65, 1), ("e", 0.55, 1),
        ("f", 0.45, 0), ("g", 0.35, 1), ("h", 0.25, 0), ("i", 0.15, 0), ("j", 0.05, 0)]
# By hand: c (0.75, truth 0) and g (0.35, truth 1) are wrong: accuracy 8/10.
# AUC: positives 0.95, 0.85, 0.65, 0.55, 0.35 against negatives 0.75, 0.45, 0.25, 0.15, 0.05:
# 5 + 5 + 4 + 4 + 3 = 21 of 25 pairs ordered right: 0.84.
# Calibration (10 bins, one score each): |p - y| summed = 0.05 + 0.15 + 0.75 + 0.35 + 0.45 +
# 0.45 + 0.65 + 0.25 + 0.15 + 0.05 = 3.3, over 10 rows: 0.33.
ACCURACY, AUC, ECE = 0.8, 0.84, 0.33
DAY = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)


def _completed_run(catalog: Any) -> str:
    run = catalog.create_run("train")
    catalog.backend.record_model(run.id, "m", flavor="baseline",
                                 signature={"inputs": [], "outputs": []},
                                 artifact="model.bin", primary=True)
    run.finish("completed")
    return str(run.id)


def _scored(catalog: Any, tmp: Path, rows: list[tuple[str, float, int]], *,
            alias: str = "champion", name: str = "input") -> tuple[str, str]:
    """A batch of ``reviews@alias`` that scored one input into an output holding ``rows``
    (as the scorer writes them: id carried, label, proba, proba_<class>, scored_at); returns
    (run id, output path)."""
    model = catalog.model("reviews")
    run = _completed_run(catalog)
    version = model.register(run)
    current = model.alias(alias)
    model.set_alias(alias, version, expect=current.version if current else None)
    ledger = Ledger(catalog)
    ref = FileRef(f"{tmp}/inbox/{name}.parquet", etag=name)
    ledger.discover([ref])
    claim = ledger.claim_batch("w", limit=5, lease_s=60, registered="reviews", alias=alias,
                               expect_run_id=run, file_ids=[ref.file_id])
    assert claim.batch_id and claim.model_run_id == run
    out = tmp / "outbox" / run.replace("/", "-") / f"{name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    proba = [p for _, p, _ in rows]
    pq.write_table(pa.table({
        "row_index": list(range(len(rows))), "rid": [r[0] for r in rows],
        "label": pa.array([int(p >= 0.5) for p in proba], pa.int64()), "proba": proba,
        "proba_0": [1 - p for p in proba], "proba_1": proba,
        "model_run_id": [run] * len(rows), "scored_at": [DAY.isoformat()] * len(rows)}), out)
    done = ledger.record_files(claim.batch_id, [FileOutcome(
        ref.file_id, ref.uri, "scored", run, output_uri=str(out), rows=len(rows))], "w",
        end={"files": 0, "rows": 0, "duration_ms": 1.0, "error": None})
    assert done == {ref.file_id}
    return run, str(out)


def _labels(path: Path, ids: list[Any], labels: list[Any], *,
            label_type: pa.DataType | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"rid": ids, "y": pa.array(labels, label_type)}), path)
    return path


def _inbox(catalog: Any, tmp: Path) -> tuple[LabelInbox, DirectorySource]:
    config = LabelConfig(id_column="rid", label_column="y")
    source = DirectorySource(tmp / "labels", quarantine_dir=tmp / "quarantine",
                             use_events=False)
    return LabelInbox(catalog, config, name="labeller"), source


def test_late_labels_give_the_hand_checked_live_metrics(catalog: Any, tmp_path: Path) -> None:
    run, _ = _scored(catalog, tmp_path, ROWS)
    inbox, source = _inbox(catalog, tmp_path)
    _labels(tmp_path / "labels" / "day1.parquet", [r[0] for r in ROWS], [r[2] for r in ROWS])
    [report] = inbox.run_once(source)
    assert (report.state, report.rows, report.matched, report.unknown_ids,
            report.duplicate_ids, report.bad_labels, report.reasons) == (
        "ingested", 10, 10, 0, 0, 0, {})
    [perf] = live_performance(catalog, "reviews")
    assert (perf["model_version"], perf["model_run_id"], perf["role"], perf["day"],
            perf["n"]) == (1, run, "output", DAY.date(), 10)
    assert perf["accuracy"] == pytest.approx(ACCURACY)
    assert perf["auc"] == pytest.approx(AUC)
    assert perf["calibration_error"] == pytest.approx(ECE)
    # the same view in SQL
    rows = catalog.sql("SELECT n, accuracy, auc, calibration_error FROM live_performance")
    assert rows.iloc[0].tolist() == pytest.approx([10, ACCURACY, AUC, ECE])


def test_a_label_file_counts_once(catalog: Any, tmp_path: Path) -> None:
    _scored(catalog, tmp_path, ROWS)
    inbox, source = _inbox(catalog, tmp_path)
    _labels(tmp_path / "labels" / "day1.parquet", [r[0] for r in ROWS[:4]],
            [r[2] for r in ROWS[:4]])
    assert [r.state for r in inbox.run_once(source)] == ["ingested"]
    assert inbox.run_once(source) == []  # seen: nothing to do
    other = LabelInbox(catalog, inbox.config, name="another-worker")
    assert other.run_once(source) == []
    [perf] = live_performance(catalog)
    assert perf["n"] == 4
    [row] = label_files(catalog)
    assert (row["state"], row["matched"], row["attempts"]) == ("ingested", 4, 1)


def test_labels_split_by_day_and_version_and_shadow_joins_too(catalog: Any,
                                                              tmp_path: Path) -> None:
    run1, _ = _scored(catalog, tmp_path, ROWS[:5], name="one")
    run2, _ = _scored(catalog, tmp_path, ROWS[5:], name="two")  # version 2 is champion now
    inbox, source = _inbox(catalog, tmp_path)
    _labels(tmp_path / "labels" / "all.parquet", [r[0] for r in ROWS], [r[2] for r in ROWS])
    [report] = inbox.run_once(source)
    assert report.matched == 10
    perf = {(p["model_version"], p["role"]): p for p in live_performance(catalog, "reviews")}
    assert {k: v["n"] for k, v in perf.items()} == {(1, "output"): 5, (2, "output"): 5}
    assert perf[(1, "output")]["accuracy"] == pytest.approx(4 / 5)  # c is wrong
    assert perf[(2, "output")]["accuracy"] == pytest.approx(4 / 5)  # g is wrong


@pytest.mark.parametrize(("ids", "labels", "label_type", "reasons", "matched"), [
    (["a", "b", "zz", "yy"], [1, 1, 0, 1], None,
     {"unknown id (never predicted in the lookback window)": 2}, 2),
    (["a", "a", "b", "c"], [1, 0, 1, 0], None,
     {"duplicate id (every row of an id given more than once is left out)": 2}, 2),
    (["a", None, "b"], [1, 1, 1], None, {"missing id": 1}, 2),
    (["a", "b", "c"], ["yes", "no", "yes"], None,
     {"wrong label type: str labels for reviews/1, whose classes are integer (0, 1)": 3}, 0),
    (["a", "b", "c"], [1.0, 0.5, 0.0], None,
     {"wrong label type: float labels for reviews/1, whose classes are integer (0, 1)": 1}, 2),
    (["a", "b", "c"], [1, 7, 2], None,
     {"not a class of reviews/1 (its classes: 0, 1)": 2}, 1),
    (["a", "b"], [1, None], pa.int64(), {"missing label (reviews/1)": 1}, 1),
], ids=["unknown-ids", "duplicate-ids", "missing-id", "wrong-type", "not-whole",
        "other-classes", "missing-label"])
def test_bad_label_rows_are_counted_with_their_reason(
        catalog: Any, tmp_path: Path, ids: list[Any], labels: list[Any],
        label_type: pa.DataType | None, reasons: dict[str, int], matched: int) -> None:
    _scored(catalog, tmp_path, ROWS)
    inbox, source = _inbox(catalog, tmp_path)
    _labels(tmp_path / "labels" / "bad.parquet", ids, labels, label_type=label_type)
    _labels(tmp_path / "labels" / "good.parquet", ["h", "i"], [0, 0])
    reports = {Path(r.source_uri).name: r for r in inbox.run_once(source)}
    bad = reports["bad.parquet"]
    assert (bad.state, bad.reasons, bad.matched) == ("ingested", reasons, matched)
    assert reports["good.parquet"].reasons == {}  # nothing else affected
    [perf] = live_performance(catalog)
    assert perf["n"] == matched + 2
    recorded = {Path(r["source_uri"]).name: r for r in label_files(catalog)}
    assert recorded["bad.parquet"]["report"] == reasons


@pytest.mark.parametrize(("content", "error"), [
    (b"not parquet at all, PAR1", "is not readable parquet"),
    (None, "has no column 'y'"),
], ids=["unreadable", "no-label-column"])
def test_a_file_that_is_not_a_label_file_is_quarantined(
        catalog: Any, tmp_path: Path, content: bytes | None, error: str) -> None:
    _scored(catalog, tmp_path, ROWS)
    inbox, source = _inbox(catalog, tmp_path)
    path = tmp_path / "labels" / "broken.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        pq.write_table(pa.table({"rid": ["a"], "label": [1]}), path)
    else:
        path.write_bytes(content)
    _labels(tmp_path / "labels" / "good.parquet", ["a"], [1])
    reports = {Path(r.source_uri).name: r for r in inbox.run_once(source)}
    assert reports["broken.parquet"].state == "quarantined"
    assert error in (reports["broken.parquet"].error or "")
    assert not path.exists()  # moved to the quarantine directory
    assert reports["good.parquet"].matched == 1


def test_the_command_line_ingests_once_and_shows_live_performance(
        catalog: Any, catalog_url: str, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from batchml.cli import app

    _scored(catalog, tmp_path, ROWS)
    path = _labels(tmp_path / "drop" / "day1.parquet", [r[0] for r in ROWS] + ["zz"],
                   [r[2] for r in ROWS] + [1])
    runner = CliRunner()
    common = ["--catalog", catalog_url, "--home", str(tmp_path / "home")]
    first = runner.invoke(app, ["labels", "ingest", str(path), "--id-column", "rid",
                                "--label-column", "y", *common])
    assert first.exit_code == 0, first.output
    assert "unknown id (never predicted in the lookback window): 1" in first.output
    again = runner.invoke(app, ["labels", "ingest", str(path), "--id-column", "rid",
                                "--label-column", "y", *common])
    assert again.exit_code == 0 and "no new label files" in again.output
    perf = runner.invoke(app, ["labels", "performance", "reviews", "--format", "json", *common])
    assert perf.exit_code == 0, perf.output
    [row] = [json.loads(line) for line in perf.output.splitlines() if line.strip()]
    assert (row["n"], row["accuracy"], row["auc"]) == (10, ACCURACY, pytest.approx(AUC))
    show = runner.invoke(app, ["models", "show", "reviews", *common], env={"COLUMNS": "200"})
    assert show.exit_code == 0 and "live performance (late labels)" in show.output
    missing = runner.invoke(app, ["labels", "ingest", str(path), *common],
                            env={"BATCHML_ID_COLUMN": ""})
    assert missing.exit_code == 1 and "BATCHML_ID_COLUMN" in missing.output


def test_a_worker_polls_the_labels_inbox(catalog: Any, catalog_url: str,
                                         tmp_path: Path) -> None:
    from batchml import Settings
    from batchml.worker import Worker

    _scored(catalog, tmp_path, ROWS)
    settings = Settings(home=tmp_path / "home", catalog_url=catalog_url,
                        labels_inbox=str(tmp_path / "labels"), id_column="rid",
                        label_column="y", isolate_scoring=False)
    _labels(tmp_path / "labels" / "day1.parquet", [r[0] for r in ROWS], [r[2] for r in ROWS])
    worker = Worker.for_source(settings)
    try:
        assert worker.labels is not None
        worker.run_once()  # nothing to score (no tagged run): the labels are ingested anyway
    finally:
        worker.close()
        worker.source.close()
    [perf] = live_performance(catalog, "reviews")
    assert perf["n"] == 10 and perf["accuracy"] == pytest.approx(ACCURACY)


def test_labels_from_an_s3_prefix_join_outputs_on_s3(catalog: Any, tmp_path: Path,
                                                     aws_env: str, s3_bucket: str) -> None:
    from batchml import Settings
    from batchml.sources import open_source
    from batchml.store import s3_client

    client = s3_client(aws_env, "us-east-1")
    _, local = _scored(catalog, tmp_path, ROWS)
    # the same output on S3: the catalog lists it there
    catalog.backend.sql(f"UPDATE batch_files SET output_uri = 's3://{s3_bucket}/out/x.parquet'",
                        write=True)
    client.upload_file(local, s3_bucket, "out/x.parquet")
    Path(local).unlink()
    labels = _labels(tmp_path / "l" / "day1.parquet", [r[0] for r in ROWS], [r[2] for r in ROWS])
    client.upload_file(str(labels), s3_bucket, "labels/day1.parquet")
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=aws_env, s3_region="us-east-1",
                        id_column="rid", label_column="y")
    inbox = LabelInbox(catalog, LabelConfig.from_settings(settings))
    source = open_source(f"s3://{s3_bucket}/labels", settings=settings)
    try:
        [report] = inbox.run_once(source)
        assert (report.state, report.matched) == ("ingested", 10)
        assert inbox.run_once(source) == []  # exactly once
    finally:
        source.close()
    [perf] = live_performance(catalog)
    assert (perf["n"], perf["accuracy"], perf["auc"]) == (10, ACCURACY, pytest.approx(AUC))


def test_several_classes_by_hand(catalog: Any, tmp_path: Path) -> None:
    """Three string classes: AUC one class against the rest and calibration per class,
    averaged over the classes."""
    rows = [("1", (0.7, 0.2, 0.1), "a"), ("2", (0.1, 0.8, 0.1), "b"),
            ("3", (0.2, 0.2, 0.6), "c"), ("4", (0.5, 0.4, 0.1), "b"),
            ("5", (0.3, 0.3, 0.4), "a"), ("6", (0.2, 0.6, 0.2), "b")]
    # predicted: a b c a c b -> rows 4 and 5 wrong: accuracy 4/6.
    # AUC a: positives 0.7, 0.3 vs negatives 0.1, 0.2, 0.5, 0.2: 4 + 3 = 7/8; b: 9/9; c: 5/5.
    # Calibration (sum |scores - positives| per tenth, over 6 rows): a 2.0, b 1.9, c 1.3.
    _scored(catalog, tmp_path, ROWS[:1])  # the model and a batch; its output is replaced
    [out] = [r["output_uri"] for r in catalog.sql(
        "SELECT output_uri FROM batch_files").to_dict("records")]
    p = [r[1] for r in rows]
    classes = ["a", "b", "c"]
    pq.write_table(pa.table({
        "rid": [r[0] for r in rows],
        "label": [classes[max(range(3), key=lambda k, q=q: q[k])] for q in p],
        **{f"proba_{c}": [q[k] for q in p] for k, c in enumerate(classes)},
        "scored_at": [DAY.isoformat()] * len(rows)}), out)
    inbox, source = _inbox(catalog, tmp_path)
    _labels(tmp_path / "labels" / "t.parquet", [r[0] for r in rows], [r[2] for r in rows])
    [report] = inbox.run_once(source)
    assert (report.matched, report.reasons) == (6, {})
    [perf] = live_performance(catalog)
    assert perf["accuracy"] == pytest.approx(4 / 6)
    assert perf["auc"] == pytest.approx((7 / 8 + 1 + 1) / 3)
    assert perf["calibration_error"] == pytest.approx((2.0 + 1.9 + 1.3) / 18)


def test_outputs_in_pieces_are_read_and_unreadable_ones_skipped(catalog: Any,
                                                                tmp_path: Path) -> None:
    _, one = _scored(catalog, tmp_path, ROWS[:6], name="one")
    _, two = _scored(catalog, tmp_path, ROWS[6:], name="two")
    # "one" as a file scored in pieces: parts beside a manifest, the output is the manifest
    pieces = Path(one).with_suffix("")
    pieces.mkdir()
    table = pq.read_table(one)
    pq.write_table(table.slice(0, 3), pieces / "part-00000.parquet")
    pq.write_table(table.slice(3), pieces / "part-00001.parquet")
    (pieces / "_manifest.json").write_text("{}")
    Path(one).unlink()
    catalog.backend.sql(f"UPDATE batch_files SET output_uri = '{pieces}/_manifest.json'"
                        f" WHERE output_uri = '{one}'", write=True)
    Path(two).write_bytes(b"not parquet")  # an output that cannot be read
    inbox, source = _inbox(catalog, tmp_path)
    _labels(tmp_path / "labels" / "t.parquet", [r[0] for r in ROWS], [r[2] for r in ROWS])
    [report] = inbox.run_once(source)
    assert (report.state, report.matched, report.unknown_ids) == ("ingested", 6, 4)


def test_two_workers_ingest_each_label_file_exactly_once(catalog: Any, tmp_path: Path) -> None:
    import threading

    _scored(catalog, tmp_path, ROWS)
    for i, (rid, _, truth) in enumerate(ROWS):
        _labels(tmp_path / "labels" / f"f{i}.parquet", [rid], [truth])
    config = LabelConfig(id_column="rid", label_column="y")
    results: dict[str, list[Any]] = {}
    start = threading.Barrier(2)

    def work(name: str) -> None:
        source = DirectorySource(tmp_path / "labels", use_events=False)
        inbox = LabelInbox(catalog, config, name=name)
        start.wait(timeout=30)
        results[name] = inbox.run_once(source, limit=1)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    reports = [r for rs in results.values() for r in rs]
    assert sorted(Path(r.source_uri).name for r in reports) == sorted(
        f"f{i}.parquet" for i in range(len(ROWS)))
    assert {r.state for r in reports} == {"ingested"}
    [perf] = live_performance(catalog)
    assert (perf["n"], perf["accuracy"]) == (10, pytest.approx(ACCURACY))
