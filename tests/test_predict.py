"""Prediction end to end: files land, are scored exactly once with lineage, bad files are
quarantined with a reason, and nothing stops the worker."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchml import Catalog, Settings
from batchml.catalog import Ledger
from batchml.scoring import LINEAGE
from batchml.sources import DirectorySource, S3PrefixSource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker


@pytest.fixture(scope="module")
def trained(module_tagged_home: Settings) -> Settings:
    """A home with a tagged training run (scikit-learn text model on synthetic reviews)."""
    return module_tagged_home


def fresh(trained: Settings, tmp_path: Path, **kw) -> Settings:  # type: ignore[no-untyped-def]
    """Same catalog and model, but a private inbox/outbox/quarantine per test."""
    return trained.model_copy(update={"inbox": str(tmp_path / "inbox"),
                                      "outbox": str(tmp_path / "outbox"),
                                      "quarantine": str(tmp_path / "quarantine"), **kw})


def drop(path: Path, frame: pd.DataFrame) -> Path:
    """Land a file the way the contract says: write a temp name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    frame.to_parquet(tmp)
    tmp.rename(path)
    return path


def worker_for(settings: Settings, **kw) -> Worker:  # type: ignore[no-untyped-def]
    cat = Catalog.from_settings(settings)
    src = DirectorySource(settings.inbox, quarantine_dir=settings.quarantine, use_events=False)
    return Worker(cat, src, settings, **kw)


def drain(worker: Worker) -> list:  # type: ignore[type-arg]
    worker.discover()
    outcomes = []
    while (rep := worker.run_batch(limit=4)).outcomes:
        outcomes += rep.outcomes
    return outcomes


def test_directory_files_scored_once_with_lineage(trained: Settings, tmp_path: Path) -> None:
    settings = fresh(trained, tmp_path)
    frames = {f"reviews-{i}.parquet": synthetic_reviews(50 + i, seed=10 + i) for i in range(5)}
    for name, frame in frames.items():
        drop(Path(settings.inbox) / name, frame)
    worker = worker_for(settings)
    outcomes = drain(worker)
    assert sorted(Path(o.source_uri).name for o in outcomes) == sorted(frames)
    assert {o.status for o in outcomes} == {"scored"}
    model_run = Catalog.from_settings(settings).latest_run("train", tag="deployment_candidate")
    hits = total = 0
    for o in outcomes:
        out = pq.read_table(o.output_uri)
        frame = frames[Path(o.source_uri).name]
        assert out.num_rows == len(frame) == o.rows
        got = out.to_pandas()
        assert got["review_id"].tolist() == frame["review_id"].tolist()  # carried through
        assert got["row_index"].tolist() == list(range(len(frame)))
        assert set(LINEAGE) <= set(got.columns)
        assert set(got["model_run_id"]) == {model_run.id}
        assert set(got["input_uri"]) == {o.source_uri}
        assert got["proba"].between(0, 1).all()
        # labels follow the threshold the model recorded at training (chosen on validation)
        threshold = model_run.load_model().threshold
        assert (got["label"] == (got["proba"] >= threshold).astype(int)).all()
        assert o.positives == int(got["label"].sum())
        assert b"batchml.lineage" in out.schema.metadata
        hits += int((got["label"].to_numpy() == frame["labels"].to_numpy()).sum())
        total += len(frame)
    # the scored files agree with the labels about as well as validation said they would
    assert hits / total > model_run.metrics["accuracy"] - 0.1
    assert drain(worker) == []  # exactly once: nothing left to do
    assert drain(worker_for(settings)) == []  # a restarted watcher agrees
    outputs = Catalog.from_settings(settings).sql(
        "SELECT * FROM prediction_outputs WHERE source_uri LIKE ?", [f"{settings.inbox}%"])
    assert len(outputs) == 5 and set(outputs["model_flavor"]) == {"sklearn"}
    assert not list(Path(settings.outbox).rglob(".tmp-*"))


def test_dead_worker_claim_is_taken_over(trained: Settings, tmp_path: Path) -> None:
    settings = fresh(trained, tmp_path)
    for i in range(3):
        drop(Path(settings.inbox) / f"f{i}.parquet", synthetic_reviews(20, seed=i))
    dead = worker_for(settings)
    dead.discover()
    claimed = dead.ledger.claim(dead.name, limit=2, lease_s=3)  # then it "dies"
    assert len(claimed) == 2
    survivor = worker_for(settings)
    first = drain(survivor)
    assert len(first) == 1  # the two claimed files are not touched while the lease holds
    threading.Event().wait(3.1)
    second = drain(survivor)
    assert sorted(o.source_uri for o in second) == sorted(r.source_uri for r in claimed)
    assert len(list(Path(settings.outbox).rglob("*.parquet"))) == 3


def test_no_model_keeps_files_pending(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    drop(Path(settings.inbox) / "a.parquet", synthetic_reviews(10))
    worker = worker_for(settings)
    worker.discover()
    report = worker.run_batch()
    assert report.outcomes == [] and "No successful run of flow 'train' tagged" in str(
        report.error)
    assert Ledger(worker.catalog).counts()["discovered"] == 1


def bad_inputs(inbox: Path) -> dict[str, str]:
    """name -> expected fragment of the quarantine reason."""
    inbox.mkdir(parents=True, exist_ok=True)
    good = synthetic_reviews(30)
    (inbox / "csv.parquet").write_text("review,labels\nhello,1\n")
    (inbox / "empty.parquet").write_bytes(b"")
    drop(inbox / "ok.parquet", good)
    raw = (inbox / "ok.parquet").read_bytes()
    (inbox / "truncated.parquet").write_bytes(raw[: len(raw) // 2] + b"PAR1")
    drop(inbox / "int_text.parquet", pd.DataFrame({"review": [1, 2, 3]}))
    drop(inbox / "no_review.parquet", pd.DataFrame({"text": ["a"]}))
    drop(inbox / "null_review.parquet", pd.DataFrame({"review": ["a", None]}))
    drop(inbox / "zero_rows.parquet", pd.DataFrame({"review": pd.Series([], dtype=str)}))
    old = time.time() - 60  # files with no parquet footer are taken once they stop changing
    for name in ("csv.parquet", "empty.parquet"):
        os.utime(inbox / name, (old, old))
    return {
        "csv.parquet": "not readable parquet",
        "empty.parquet": "empty (0 bytes)",
        "truncated.parquet": "not readable parquet",
        "int_text.parquet": "review",
        "no_review.parquet": "'review' is missing",
        "null_review.parquet": "null",
        "zero_rows.parquet": "zero rows",
    }


def test_bad_files_are_quarantined_with_reasons(trained: Settings, tmp_path: Path) -> None:
    settings = fresh(trained, tmp_path)
    expected = bad_inputs(Path(settings.inbox))
    outcomes = {Path(o.source_uri).name: o for o in drain(worker_for(settings))}
    assert outcomes.pop("ok.parquet").status == "scored"
    assert set(outcomes) == set(expected)
    for name, fragment in expected.items():
        o = outcomes[name]
        assert o.status == "quarantined", (name, o)
        assert fragment in (o.error or ""), (name, o.error)
        assert not (Path(settings.inbox) / name).exists()  # moved, bytes kept
    kept = list(Path(settings.quarantine).glob("*.parquet"))
    assert len(kept) == len(expected)
    assert len(list(Path(settings.quarantine).glob("*.error.json"))) == len(expected)
    listed = Ledger(worker_for(settings).catalog).files("quarantined")
    assert set(expected) <= {Path(u).name for u in listed["source_uri"]}


def test_file_deleted_between_discovery_and_read(trained: Settings, tmp_path: Path) -> None:
    settings = fresh(trained, tmp_path)
    path = drop(Path(settings.inbox) / "gone.parquet", synthetic_reviews(5))
    worker = worker_for(settings)
    worker.discover()
    path.unlink()
    (o,) = worker.run_batch().outcomes
    assert o.status == "failed" and "deleted before it could be read" in (o.error or "")


PARQUET_TESTING = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "testdata" /
                          "parquet-testing").rglob("*.parquet*"))


def test_every_parquet_testing_file_is_scored_or_quarantined(trained: Settings,
                                                              tmp_path: Path) -> None:
    assert len(PARQUET_TESTING) > 50
    settings = fresh(trained, tmp_path)
    inbox = Path(settings.inbox)
    inbox.mkdir(parents=True)
    root = PARQUET_TESTING[0].parents[1]
    for src in PARQUET_TESTING:
        rel = src.relative_to(root)
        name = "__".join(rel.parts)
        if not name.endswith(".parquet"):
            name += ".parquet"
        (inbox / name).write_bytes(src.read_bytes())
    outcomes = {Path(o.source_uri).name: o for o in drain(worker_for(settings))}
    assert len(outcomes) == len(PARQUET_TESTING)
    index = {e["file"]: e for e in json.loads((root / "index.json").read_text())}
    for src in PARQUET_TESTING:
        rel = str(src.relative_to(root))
        name = "__".join(Path(rel).parts)
        o = outcomes[name if name.endswith(".parquet") else name + ".parquet"]
        assert o.status == "quarantined", o  # none of them has the model's 'review' column
        footer_error = index[rel]["metadata_error"]
        if footer_error or rel.endswith(".encrypted") and "plaintext" not in rel:
            # the footer itself cannot be read: the reason is the underlying error
            assert "is not readable parquet" in (o.error or ""), o.error
            if footer_error:
                assert footer_error.split(": ", 1)[1][:30] in (o.error or "")
        else:
            assert "column 'review' is missing; the model expects string" in (o.error or "")


def test_s3_inbox_and_outbox(trained: Settings, tmp_path: Path, s3_bucket: str,
                             aws_env: str) -> None:
    from batchml.store import s3_client

    client = s3_client(aws_env)
    settings = fresh(trained, tmp_path, outbox=f"s3://{s3_bucket}/out", s3_endpoint_url=aws_env)
    frame = synthetic_reviews(40, seed=3)
    local = tmp_path / "x.parquet"
    frame.to_parquet(local)
    for key in ("in/a.parquet", "in/b c+d.parquet"):
        client.upload_file(str(local), s3_bucket, key)
    client.put_object(Bucket=s3_bucket, Key="in/broken.parquet", Body=b"PAR1garbagePAR1")
    src = S3PrefixSource(f"s3://{s3_bucket}/in/", client=client)
    worker = Worker(Catalog.from_settings(settings), src, settings)
    outcomes = drain(worker)
    by_key = {o.source_uri.rsplit("/", 1)[-1]: o for o in outcomes}
    assert by_key["broken.parquet"].status == "quarantined"
    for key in ("a.parquet", "b c+d.parquet"):
        o = by_key[key]
        assert o.status == "scored" and o.output_uri.startswith(f"s3://{s3_bucket}/out/")
        body = client.get_object(Bucket=s3_bucket, Key=o.output_uri.split("/", 3)[3])["Body"]
        got = pd.read_parquet(__import__("io").BytesIO(body.read()))
        assert len(got) == 40 and set(got["input_uri"]) == {o.source_uri}
    assert drain(worker) == []
    # a modified object (new ETag) is new work
    client.upload_file(str(local), s3_bucket, "in/a.parquet", ExtraArgs={"Metadata": {"v": "2"}})
    frame.head(7).to_parquet(local)
    client.upload_file(str(local), s3_bucket, "in/a.parquet")
    again = drain(worker)
    assert [o.rows for o in again] == [7]


EXAMPLE_QUERIES = {
    "which files were scored by which model, how many rows and positives":
        "SELECT source_uri, model_run_id, model_flavor, rows, positives FROM prediction_outputs"
        " WHERE status = 'scored' ORDER BY source_uri",
    "positive rate per model run":
        "SELECT model_run_id, sum(rows) AS rows, sum(positives) / sum(rows) AS positive_rate"
        " FROM prediction_outputs WHERE status = 'scored' GROUP BY ALL",
    "the predictions themselves joined to their lineage":
        "SELECT p.review_id, p.label, p.proba, o.source_uri, o.model_flavor"
        " FROM predictions p JOIN prediction_outputs o ON o.source_uri = p.input_uri"
        " ORDER BY p.review_id",
}


def test_outputs_queryable_in_sql(trained: Settings, tmp_path: Path) -> None:
    settings = fresh(trained, tmp_path)
    for i in range(3):
        drop(Path(settings.inbox) / f"q{i}.parquet", synthetic_reviews(10, seed=20 + i)
             .assign(review_id=lambda f, i=i: f.review_id + 100 * i))
    worker = worker_for(settings)
    outcomes = drain(worker)
    cat = worker.catalog
    per_file = cat.sql(EXAMPLE_QUERIES["which files were scored by which model, how many rows "
                                       "and positives"])
    mine = per_file[per_file["source_uri"].str.startswith(str(settings.inbox))]
    assert mine["rows"].tolist() == [10, 10, 10]
    assert sum(mine["positives"]) == sum(o.positives for o in outcomes)
    rate = cat.sql(EXAMPLE_QUERIES["positive rate per model run"])
    assert rate["positive_rate"].between(0, 1).all()
    joined = cat.sql(EXAMPLE_QUERIES["the predictions themselves joined to their lineage"])
    ours = joined[joined["source_uri"].str.startswith(str(settings.inbox))]
    assert len(ours) == 30 and ours["review_id"].is_unique
    # the same view works from a plain duckdb session on the catalog file
    import duckdb

    cat.db.close()
    con = duckdb.connect(str(settings.catalog_file), read_only=True)
    n = con.execute("SELECT count(*) FROM predictions WHERE input_uri LIKE ?",
                    [f"{settings.inbox}%"]).fetchone()
    con.close()
    assert n == (30,)


def test_s3_outbox_queryable_without_extensions(trained: Settings, tmp_path: Path,
                                                s3_bucket: str, aws_env: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from batchml.cli import app

    settings = fresh(trained, tmp_path, outbox=f"s3://{s3_bucket}/preds",
                     s3_endpoint_url=aws_env)
    drop(Path(settings.inbox) / "s.parquet", synthetic_reviews(12, seed=5))
    assert [o.status for o in drain(worker_for(settings))] == ["scored"]
    for key, value in {"BATCHML_OUTBOX": settings.outbox, "BATCHML_S3_ENDPOINT_URL": aws_env,
                       "BATCHML_S3_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, str(value))
    result = CliRunner().invoke(app, ["sql", "SELECT count(*) AS n, min(model_flavor) AS f "
                                      "FROM predictions", "--format", "csv",
                                      "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["n,f", "12,sklearn"]


def test_s3_sqs_notifications_scored_once_across_restart(trained: Settings, tmp_path: Path,
                                                         s3_bucket: str, aws_env: str) -> None:
    import boto3

    from batchml.sources import SQSSource
    from batchml.store import s3_client

    s3 = s3_client(aws_env)
    sqs = boto3.client("sqs", endpoint_url=aws_env, region_name="us-east-1")
    queue = sqs.create_queue(QueueName=f"n-{s3_bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=s3_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    settings = fresh(trained, tmp_path)
    local = tmp_path / "x.parquet"

    def upload(key: str, seed: int) -> None:
        synthetic_reviews(30, seed=seed).to_parquet(local)
        s3.upload_file(str(local), s3_bucket, key)

    def worker() -> Worker:
        return Worker(Catalog.from_settings(settings),
                      SQSSource(queue, sqs=sqs, s3=s3, wait_s=1), settings)

    def drain_queue(w: Worker) -> list:  # type: ignore[type-arg]
        outcomes = []
        for _ in range(4):  # a few polls: moto delivers notifications asynchronously
            outcomes += drain(w)
        return outcomes

    upload("in/a.parquet", 1)
    upload("in/b b.parquet", 2)
    first = drain_queue(worker())
    upload("in/c.parquet", 3)  # lands while the watcher is down
    upload("in/a.parquet", 4)  # a new version of a: new ETag, new work
    second = drain_queue(worker())  # restarted watcher
    keys = sorted(o.source_uri.rsplit("/", 1)[-1] for o in first + second)
    assert keys == ["a.parquet", "a.parquet", "b b.parquet", "c.parquet"]
    assert {o.status for o in first + second} == {"scored"}
    for o in first + second:
        body = s3.get_object(Bucket=s3_bucket, Key=o.source_uri.split("/", 3)[3])
        out = pd.read_parquet(o.output_uri)
        assert set(out["input_uri"]) == {o.source_uri} and len(out) == 30
        if o in second and o.source_uri.endswith("a.parquet"):
            assert set(out["input_etag"]) == {body["ETag"].strip('"')}
    assert drain_queue(worker()) == []  # nothing is scored twice


def test_predict_files_library_call(trained: Settings, tmp_path: Path) -> None:
    """`batchml predict`'s library half: a directory expands to its complete parquet files,
    each is scored once into the given folder, a second call skips them, progress is told."""
    from batchml.predict import expand_inputs, predict_files

    settings = fresh(trained, tmp_path)
    folder = tmp_path / "named"
    for i, n in enumerate((30, 40, 50)):
        drop(folder / f"f{i}.parquet", synthetic_reviews(n, seed=i))
    (folder / "_SUCCESS").write_text("")
    (folder / ".f9.parquet.tmp").write_bytes(b"half")
    assert sorted(Path(u).name for u in expand_inputs([str(folder)])) == [
        "f0.parquet", "f1.parquet", "f2.parquet"]
    seen: list[tuple[int, int]] = []
    result = predict_files(settings, [str(folder)], output=tmp_path / "out", batch_files=2,
                           on_progress=lambda done, total: seen.append((done, total)))
    assert result.all_scored and result.skipped == []
    assert sorted(o.rows for r in result.reports for o in r.outcomes) == [30, 40, 50]
    assert seen == [(2, 3), (3, 3)]
    assert len(list((tmp_path / "out").rglob("*.parquet"))) == 3
    again = predict_files(settings, [str(folder)], output=tmp_path / "out")
    assert again.reports == [] and len(again.skipped) == 3


def test_predict_files_without_a_model_raises(tmp_path: Path) -> None:
    from batchml.errors import ModelNotFound
    from batchml.predict import predict_files

    path = drop(tmp_path / "a.parquet", synthetic_reviews(5))
    with pytest.raises(ModelNotFound, match="No successful run of flow 'train' tagged"):
        predict_files(Settings(home=tmp_path / "home"), [str(path)])
