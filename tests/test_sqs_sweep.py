"""An SQS inbox against moto's server, with the notifications relayed by the test so they can be
lost or repeated: files whose notification never came are found by the periodic listing of
the bucket prefix (BATCHML_SQS_SWEEP_URI), and a storm where every notification arrives ten
times scores every file once."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pandas as pd
import pytest

from batchml import Catalog, Settings
from batchml.sources import open_source
from batchml.store import S3Health, s3_client
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker


@pytest.fixture
def queues(s3_bucket: str, aws_env: str) -> dict[str, Any]:
    """The bucket notifies a raw queue; the worker watches another, fed by :func:`relay`."""
    sqs = boto3.client("sqs", endpoint_url=aws_env, region_name="us-east-1")
    raw = sqs.create_queue(QueueName=f"raw-{s3_bucket}")["QueueUrl"]
    watched = sqs.create_queue(QueueName=f"watched-{s3_bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=raw, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3 = s3_client(aws_env)
    s3.put_bucket_notification_configuration(Bucket=s3_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    return {"sqs": sqs, "s3": s3, "raw": raw, "watched": watched, "bucket": s3_bucket}


def relay(q: dict[str, Any], expect: int, *, drop: set[str], copies: int = 1) -> int:
    """Move the raw queue's notifications to the watched queue until ``expect`` object keys
    were seen: those in ``drop`` are lost, the others sent ``copies`` times. Returns how many
    object notifications were sent."""
    sqs, seen, sent = q["sqs"], set(), 0
    deadline = time.monotonic() + 60
    while len(seen) < expect:
        assert time.monotonic() < deadline, f"only {len(seen)} of {expect} notifications came"
        msgs = sqs.receive_message(QueueUrl=q["raw"], MaxNumberOfMessages=10,
                                   WaitTimeSeconds=1).get("Messages", [])
        for m in msgs:
            keys = [unquote_plus(r["s3"]["object"]["key"])  # keys come URL-encoded
                    for r in json.loads(m["Body"]).get("Records", [])]
            seen.update(keys)
            if not any(k in drop for k in keys):  # s3:TestEvent (no records) passes too
                for _ in range(copies):
                    sqs.send_message(QueueUrl=q["watched"], MessageBody=m["Body"])
                    sent += bool(keys)
            sqs.delete_message(QueueUrl=q["raw"], ReceiptHandle=m["ReceiptHandle"])
    return sent


def _settings(module_tagged_home: Settings, tmp_path: Path, q: dict[str, Any],
              aws_env: str, **kw: Any) -> Settings:
    return module_tagged_home.model_copy(update={
        "outbox": str(tmp_path / "outbox"), "quarantine": str(tmp_path / "quarantine"),
        "s3_endpoint_url": aws_env, "s3_region": "us-east-1",
        "sqs_sweep_uri": f"s3://{q['bucket']}/in", **kw})


def _upload(q: dict[str, Any], tmp_path: Path, names: list[str]) -> None:
    local = tmp_path / "x.parquet"
    for i, name in enumerate(names):
        synthetic_reviews(20, seed=i).to_parquet(local)
        q["s3"].upload_file(str(local), q["bucket"], f"in/{name}")


def _worker(settings: Settings, q: dict[str, Any]) -> Worker:
    cat = Catalog.from_settings(settings)
    source = open_source(f"sqs://{q['watched']}", settings=settings, on_rejected=None,
                         health=S3Health())
    return Worker(cat, source, settings)


def _scored(settings: Settings) -> pd.DataFrame:
    outs = list(Path(settings.outbox).rglob("*.parquet"))
    return pd.concat([pd.read_parquet(p, columns=["input_uri"]) for p in outs]) \
        if outs else pd.DataFrame({"input_uri": []})


def test_the_sweep_finds_files_whose_notification_never_came(
        module_tagged_home: Settings, tmp_path: Path, queues: dict[str, Any],
        aws_env: str) -> None:
    settings = _settings(module_tagged_home, tmp_path, queues, aws_env, sqs_sweep_s=0.5)
    worker = _worker(settings, queues)
    worker.run_once()  # the start-up sweep: nothing there yet
    assert worker.source.sweeps == 1  # type: ignore[attr-defined]
    names = [f"f{i:02d}.parquet" for i in range(20)]
    lost = set(random.Random(7).sample(names, 2))
    _upload(queues, tmp_path, names)
    relay(queues, len(names), drop={f"in/{n}" for n in lost})
    deadline = time.monotonic() + 60
    while len(_scored(settings)) < 20 * len(names):
        assert time.monotonic() < deadline, _scored(settings)["input_uri"].value_counts()
        worker.run_once()  # polls the queue; lists the prefix every 0.5 s
    counts = _scored(settings)["input_uri"].value_counts()
    assert set(counts.index) == {f"s3://{queues['bucket']}/in/{n}" for n in names}
    assert set(counts) == {20}  # each file's 20 rows, once
    assert worker.source.sweeps >= 2  # type: ignore[attr-defined]


def test_without_a_sweep_lost_notifications_stay_lost(
        module_tagged_home: Settings, tmp_path: Path, queues: dict[str, Any],
        aws_env: str) -> None:
    """The control: the same loss with no BATCHML_SQS_SWEEP_URI leaves those files unscored
    (so the test above measures the sweep, not a second way in)."""
    settings = _settings(module_tagged_home, tmp_path, queues, aws_env, sqs_sweep_uri=None)
    names = [f"g{i}.parquet" for i in range(4)]
    _upload(queues, tmp_path, names)
    relay(queues, len(names), drop={"in/g0.parquet"})
    worker = _worker(settings, queues)
    for _ in range(3):
        worker.run_once()
    assert sorted(_scored(settings)["input_uri"].unique()) == \
        [f"s3://{queues['bucket']}/in/{n}" for n in names[1:]]


def test_a_notification_storm_scores_each_file_once(
        module_tagged_home: Settings, tmp_path: Path, queues: dict[str, Any],
        aws_env: str) -> None:
    settings = _settings(module_tagged_home, tmp_path, queues, aws_env)
    names = [f"s{i:02d}.parquet" for i in range(10)]
    _upload(queues, tmp_path, names)
    assert relay(queues, len(names), drop=set(), copies=10) == 100
    worker = _worker(settings, queues)
    deadline = time.monotonic() + 60
    while True:
        worker.run_once()
        depth = queues["sqs"].get_queue_attributes(
            QueueUrl=queues["watched"], AttributeNames=["ApproximateNumberOfMessages"])
        if depth["Attributes"]["ApproximateNumberOfMessages"] == "0":
            break
        assert time.monotonic() < deadline
    worker.run_once()
    counts = _scored(settings)["input_uri"].value_counts()
    assert len(counts) == len(names) and set(counts) == {20}
    cat = Catalog.from_settings(settings)
    files = cat.sql("SELECT count(*) AS n, count(DISTINCT source_uri) AS uris FROM files"
                    " WHERE source_uri LIKE ?", [f"s3://{queues['bucket']}/%"])
    assert files["n"][0] == files["uris"][0] == len(names)
