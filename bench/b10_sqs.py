"""B10: S3 event notifications through SQS to outputs, with moto's server.

A bucket notifies a *raw* SQS queue of every created object (moto's S3 -> SQS notifications);
a relay thread in this process moves the messages to the *watched* queue that
``batchml watch sqs://...`` (a subprocess, scorer process on, the sklearn text model) reads, so
that notifications can be lost or repeated on purpose. ``BATCHML_SQS_SWEEP_URI`` points at the
bucket prefix, listed at start and every ``b10_sweep_s``.

* **latency**: files of 1,000 rows put one at a time (``put_object`` of a staged file); from
  the put until the output parquet is in the outbox (its committed name, polled every 10 ms).
  The first file (model load) is reported apart. Floor: plain warm scoring of one such file
  (B2's floor script).
* **lost notifications**: ``b10_lost_files`` files put at once, 10% of their notifications
  dropped by the relay: every file must be scored (by the queue or the sweep); figure: the
  time until the last output, and the count.
* **storm**: ``b10_storm_files`` files whose notifications are each delivered 10 times: every
  file scored once; figures: outputs per file (must be exactly 1), ledger rows per file.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from .b2_latency import staged_files
from .common import Context, Figure, batchml_cli, child, figure, percentile, summary

_CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay(threading.Thread):
    """Moves notifications from the raw queue to the watched one: keys in ``drop`` are lost,
    the others sent ``copies`` times (both changed between phases)."""

    def __init__(self, sqs: Any, raw: str, watched: str) -> None:
        super().__init__(name="b10-relay", daemon=True)
        self.sqs, self.raw, self.watched = sqs, raw, watched
        self.drop: set[str] = set()
        self.copies = 1
        self.seen: set[str] = set()
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            msgs = self.sqs.receive_message(QueueUrl=self.raw, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=1).get("Messages", [])
            for m in msgs:
                keys = [unquote_plus(r["s3"]["object"]["key"])
                        for r in json.loads(m["Body"]).get("Records", [])]
                if keys and not any(k in self.drop for k in keys):
                    for _ in range(self.copies):
                        self.sqs.send_message(QueueUrl=self.watched, MessageBody=m["Body"])
                        self.sent += 1
                self.seen.update(keys)
                self.sqs.delete_message(QueueUrl=self.raw, ReceiptHandle=m["ReceiptHandle"])


def _outputs(outbox: Path, stem: str) -> list[Path]:
    return list(outbox.rglob(f"{stem}-*.parquet"))


def _wait(cond: Any, timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            raise RuntimeError(f"batchml watch exited with {proc.returncode}")
        time.sleep(0.01)
    return False


def run(ctx: Context) -> list[Figure]:
    import boto3
    from moto.server import ThreadedMotoServer

    n_lat, n_lost, n_storm = (ctx.sizes["b10_files"], ctx.sizes["b10_lost_files"],
                              ctx.sizes["b10_storm_files"])
    sweep_s = ctx.sizes["b10_sweep_s"]
    files = staged_files(ctx, "sqs", n_lat + 1, 1_000, seed0=9_000)
    small = staged_files(ctx, "sqs_small", 1, 100, seed0=9_500)[0]
    info = ctx.models()["sklearn_text"]
    floor_ans, _ = child("floor", {"flavor": info["flavor"], "model_file": info["model_file"],
                                   "inputs": [str(p) for p in files[:min(len(files), 20)]],
                                   "out_dir": str(ctx.dir("b10", "floor"))})
    floor = summary(floor_ans["seconds"])["median"]

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    kw = {"endpoint_url": endpoint, "region_name": "us-east-1",
          "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    s3, sqs = boto3.client("s3", **kw), boto3.client("sqs", **kw)
    bucket = "b10-inbox"
    s3.create_bucket(Bucket=bucket)
    raw = sqs.create_queue(QueueName="b10-raw")["QueueUrl"]
    watched = sqs.create_queue(QueueName="b10-watched")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=raw, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    relay = Relay(boto3.client("sqs", **kw), raw, watched)
    relay.start()

    home, env = ctx.fresh_home("sklearn_text", "b10")
    outbox = home / "outbox"
    env.update(_CREDS, BATCHML_S3_ENDPOINT_URL=endpoint, BATCHML_S3_REGION="us-east-1",
               BATCHML_OUTBOX=str(outbox), BATCHML_SQS_SWEEP_URI=f"s3://{bucket}/in",
               BATCHML_SQS_SWEEP_S=str(sweep_s))
    log_path = ctx.dir("b10") / "watch.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*batchml_cli(), "watch", f"sqs://{watched}"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    figs: list[Figure] = []
    try:
        latencies: list[float] = []
        first: float | None = None
        timeouts = 0
        for i, src in enumerate(files):
            stem = f"lat_{i:04d}"
            start = time.perf_counter()
            s3.upload_file(str(src), bucket, f"in/{stem}.parquet")
            if _wait(lambda s=stem: bool(_outputs(outbox, s)), 120, proc):
                latency = time.perf_counter() - start
            else:
                timeouts += 1
                latency = 120.0
            if i == 0:
                first = latency
            else:
                latencies.append(latency)
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        ctx.log(f"  B10 S3 event -> SQS -> output: p50 {p50:.3f} s, p95 {p95:.3f} s, "
                f"first {first:.2f} s")
        lat = figure("B10", "p50", f"S3 event -> SQS -> output p50 ({n_lat} files x 1,000 "
                     "rows, one at a time)", latencies, "s", floor=floor, target="<= 2 s",
                     met=p50 <= 2.0 and not timeouts,
                     notes=f"p95 {p95:.3f} s; first file (model load) {first:.2f} s"
                           + (f"; {timeouts} timed out (120 s)" if timeouts else ""))
        figs.append(lat)

        # lost notifications: 10% dropped, the sweep must find them
        names = [f"lost_{i:04d}" for i in range(n_lost)]
        relay.drop = {f"in/{n}.parquet"
                      for n in random.Random(10).sample(names, max(1, n_lost // 10))}
        start = time.perf_counter()
        for n in names:
            s3.upload_file(str(small), bucket, f"in/{n}.parquet")
        done = _wait(lambda: all(_outputs(outbox, n) for n in names), 3 * sweep_s + 120, proc)
        took = time.perf_counter() - start
        found = sum(bool(_outputs(outbox, n)) for n in names)
        ctx.log(f"  B10 lost notifications: {found}/{n_lost} scored in {took:.1f} s "
                f"({len(relay.drop)} notifications dropped, sweep every {sweep_s:g} s)")
        figs.append(figure(
            "B10", "lost_scored", f"files scored with {len(relay.drop)} of {n_lost} "
            "notifications lost", [found], "files", target=f"= {n_lost}",
            met=done and found == n_lost,
            notes=f"all scored {took:.1f} s after the first put; sweep every {sweep_s:g} s"))

        # storm: every notification delivered 10 times
        relay.drop, relay.copies = set(), 10
        names = [f"storm_{i:04d}" for i in range(n_storm)]
        sent_before = relay.sent
        for n in names:
            s3.upload_file(str(small), bucket, f"in/{n}.parquet")
        _wait(lambda: all(f"in/{n}.parquet" in relay.seen for n in names), 120, proc)

        def drained() -> bool:
            attrs = sqs.get_queue_attributes(QueueUrl=watched, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
            return set(attrs["Attributes"].values()) == {"0"}

        _wait(lambda: all(_outputs(outbox, n) for n in names) and drained(), 180, proc)
        per_file = [len(_outputs(outbox, n)) for n in names]
        dups = sum(c - 1 for c in per_file if c > 1)
        missing = sum(c == 0 for c in per_file)
        ctx.log(f"  B10 storm: {relay.sent - sent_before} notifications for {n_storm} files; "
                f"{dups} duplicate outputs, {missing} missing")
        figs.append(figure(
            "B10", "storm_duplicates", f"duplicate outputs, {n_storm} files each notified "
            "10 times", [dups], "outputs", target="0", met=dups == 0 and missing == 0,
            notes=f"{relay.sent - sent_before} notifications delivered; {missing} missing"))
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        relay.stop.set()
        relay.join(5)
        server.stop()
    return figs
