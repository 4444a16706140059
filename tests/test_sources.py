"""File sources: a local directory, an S3 prefix (polling) and S3 -> SQS notifications, the
S3 ones on moto's standalone server over HTTP."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import boto3
import pandas as pd
import pytest

from batchml.catalog import FileRecord
from batchml.sources import DirectorySource, S3PrefixSource, SQSSource, is_candidate_name
from batchml.store import s3_client


def write_parquet(path: Path, n: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"review": ["good"] * n}).to_parquet(path)
    return path


@pytest.mark.parametrize(("name", "ok"), [
    ("reviews.parquet", True), ("REVIEWS.PARQUET", True), (".hidden.parquet", False),
    ("_SUCCESS", False), ("_tmp.parquet", False), ("x.parquet.tmp", False),
    ("x.parquet.part", False), ("~lock.parquet", False), ("notes.csv", False),
])
def test_candidate_names(name: str, ok: bool) -> None:
    assert is_candidate_name(name) is ok


def test_directory_sees_complete_files_only(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    src = DirectorySource(inbox, settle_s=0.5, use_events=False)
    done = write_parquet(inbox / "a.parquet")
    write_parquet(inbox / "sub" / "b.parquet")
    write_parquet(inbox / ".c.parquet")  # hidden temp name of a writer
    (inbox / "_SUCCESS").write_text("")
    half = inbox / "half.parquet"  # written in place, not finished: no PAR1 footer yet
    half.write_bytes(done.read_bytes()[:-10])
    uris = [r.uri for r in src.poll()]
    assert uris == [str(inbox / "a.parquet"), str(inbox / "sub" / "b.parquet")]
    # once it stops changing for settle_s it is taken anyway (and will be quarantined)
    old = time.time() - 5
    os.utime(half, (old, old))
    assert str(half) in [r.uri for r in src.poll()]


def test_directory_events_wake_the_watcher(tmp_path: Path) -> None:
    src = DirectorySource(tmp_path / "in", use_events=True)
    try:
        start = time.perf_counter()
        write_parquet(tmp_path / "in" / "x.parquet")
        src.wait(5)
        assert time.perf_counter() - start < 4  # woken by inotify, not the 5 s timeout
    finally:
        src.close()


def test_directory_quarantine_keeps_bytes_and_reason(tmp_path: Path) -> None:
    src = DirectorySource(tmp_path / "in", quarantine_dir=tmp_path / "q", use_events=False)
    bad = tmp_path / "in" / "bad.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not parquet")
    rec = FileRecord("f" * 32, str(bad), None, 11, None, "claimed", 1)
    moved = Path(src.quarantine(rec, "not readable parquet") or "")
    assert not bad.exists() and moved.read_bytes() == b"not parquet"
    sidecar = json.loads(Path(str(moved) + ".error.json").read_text())
    assert sidecar["error"] == "not readable parquet"


def test_directory_refuses_paths_outside_inbox(tmp_path: Path) -> None:
    from batchml.errors import ConfigError

    src = DirectorySource(tmp_path / "in", use_events=False)
    rec = FileRecord("f" * 32, str(tmp_path / "in" / ".." / "secret.parquet"), None, 1, None,
                     "claimed", 1)
    with pytest.raises(ConfigError, match="outside the inbox"):
        src.quarantine(rec, "x")


def test_s3_prefix_polling_paginates_and_sees_new_etags(tmp_path: Path, s3_bucket: str,
                                                         aws_env: str) -> None:
    client = s3_client(aws_env)
    local = write_parquet(tmp_path / "x.parquet")
    for i in range(23):
        client.upload_file(str(local), s3_bucket, f"in/f{i:02d}.parquet")
    client.put_object(Bucket=s3_bucket, Key="in/_SUCCESS", Body=b"")
    client.put_object(Bucket=s3_bucket, Key="other/f.parquet", Body=b"x")
    src = S3PrefixSource(f"s3://{s3_bucket}/in/", client=client, page_size=5)
    first = src.poll()
    assert len(first) == 23 and all(r.etag for r in first)
    write_parquet(local, n=7)
    client.upload_file(str(local), s3_bucket, "in/f00.parquet")  # modified: new ETag
    second = {r.uri: r for r in src.poll()}
    old = {r.uri: r for r in first}
    key = f"s3://{s3_bucket}/in/f00.parquet"
    assert second[key].file_id != old[key].file_id
    assert second[f"s3://{s3_bucket}/in/f01.parquet"].file_id == \
        old[f"s3://{s3_bucket}/in/f01.parquet"].file_id
    rec = FileRecord(second[key].file_id, key, second[key].etag, None, None, "claimed", 1)
    with src.fetch(rec) as path:
        assert len(pd.read_parquet(path)) == 7


def test_sqs_notifications_end_to_end(tmp_path: Path, s3_bucket: str, aws_env: str) -> None:
    s3 = s3_client(aws_env)
    sqs = boto3.client("sqs", endpoint_url=aws_env, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"q-{s3_bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=s3_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    local = write_parquet(tmp_path / "x.parquet")
    keys = ["in/plain.parquet", "in/red flower+1.parquet", "in/year=2026/ü.parquet",
            "in/notes.txt"]
    for key in keys:
        s3.upload_file(str(local), s3_bucket, key)
    sqs.send_message(QueueUrl=queue_url, MessageBody="this is not json")
    rejected: list[tuple] = []
    src = SQSSource(queue_url, sqs=sqs, s3=s3, wait_s=1,
                    on_rejected=lambda *a: rejected.append(a))
    found = []
    for _ in range(5):
        found += src.poll()
        src.ack()
    assert sorted(r.uri for r in found) == sorted(f"s3://{s3_bucket}/{k}" for k in keys[:3])
    assert all(r.etag for r in found)
    assert len(rejected) == 1
    assert "message is not valid JSON" in rejected[0][3]
    assert rejected[0][2] == "this is not json"
    # every message was deleted after ack: nothing left on the queue
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    assert attrs == {"ApproximateNumberOfMessages": "0",
                     "ApproximateNumberOfMessagesNotVisible": "0"}
    rec = next(r for r in found if "flower" in r.uri)
    with src.fetch(FileRecord(rec.file_id, rec.uri, rec.etag, None, None, "claimed", 1)) as p:
        assert len(pd.read_parquet(p)) == 3
