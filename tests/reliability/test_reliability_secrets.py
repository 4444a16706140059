"""8. Secrets: scoring against the moto S3 server with a unique random AWS secret key and access
key id, including deliberately failing calls (a bucket that does not exist as outbox, inbox and
artifact root). Everything batchml produces is searched for both values: every table of the
catalog (SQL dump) and the raw catalog file, the logs, the outbox objects and files, error
messages and CLI output, quarantine sidecars, and the service's ``service.json`` heartbeat.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import relhelp

from batchml import Catalog
from batchml.sources import S3PrefixSource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

pytestmark = [pytest.mark.reliability,
              pytest.mark.parametrize("rel_backend", relhelp.BOTH, indirect=True)]


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch, aws_env: str) -> dict[str, str]:
    key_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits)
                              for _ in range(16))
    secret = "sEcReT" + secrets.token_urlsafe(30)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    return {"key_id": key_id, "secret": secret}


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """Everything logged while the test runs: batchml at DEBUG, the rest at INFO (what
    `batchml serve` configures)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("batchml").setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("batchml").setLevel(logging.NOTSET)


def run_service_briefly(settings: Any, seconds: float) -> None:
    from batchml.service import Service

    service = Service(settings, idle_s=0.2)

    async def main() -> None:
        task = asyncio.create_task(service.run(None))
        await asyncio.sleep(seconds)
        service.request_stop()
        await asyncio.wait_for(task, 30)

    asyncio.run(main())


def test_credentials_never_leak(creds: dict[str, str], make_home: Any, s3_bucket: str,
                                aws_env: str, log_text: io.StringIO, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from batchml.cli import app
    from batchml.store import s3_client

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    client = s3_client(aws_env, "us-east-1")
    for i, body in enumerate([None, None, b"PAR1 not parquet PAR1"]):
        if body is None:
            buf = io.BytesIO()
            synthetic_reviews(15, seed=i).to_parquet(buf)
            body = buf.getvalue()
        client.put_object(Bucket=s3_bucket, Key=f"in/f{i}.parquet", Body=body)
    produced: list[str] = []

    # 1. scoring with a failing call: the outbox bucket does not exist
    missing = "s3://batchml-no-such-bucket/preds"
    home = make_home(outbox=missing, s3_endpoint_url=aws_env, s3_region="us-east-1")
    url_with_password = None
    if home.catalog_url:  # PostgreSQL: a password in the catalog URL must never show either
        creds["catalog_password"] = "pgPw" + secrets.token_urlsafe(20)
        url_with_password = home.catalog_url.replace(
            "batchml@", f"batchml:{creds['catalog_password']}@")
        from batchml import Settings

        home = Settings(**{**home.model_dump(), "catalog_url": url_with_password})
        assert home.catalog_password is not None  # moved out of the URL, kept as a secret
    worker = Worker(Catalog.from_settings(home),
                    S3PrefixSource(f"s3://{s3_bucket}/in/", client=client), home)
    worker.discover()
    report = worker.run_batch()
    produced += [repr(report), *(o.error or "" for o in report.outcomes)]
    # 2. the same files again into a real S3 outbox
    Catalog.from_settings(home).sql("UPDATE files SET state = 'discovered'", write=True)
    good = home.model_copy(update={"outbox": f"s3://{s3_bucket}/preds"})
    worker = Worker(Catalog.from_settings(good),
                    S3PrefixSource(f"s3://{s3_bucket}/in/", client=client), good)
    report = worker.run_batch()
    produced.append(repr(report))
    assert any(o.status == "scored" for o in report.outcomes), report
    for obj in client.list_objects_v2(Bucket=s3_bucket, Prefix="preds/")["Contents"]:
        produced.append(client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read()
                        .decode("latin-1"))
    # 3. the command line, with failing calls: missing inbox bucket, missing artifact bucket
    env = relhelp.worker_env(good, BATCHML_S3_ENDPOINT_URL=aws_env, BATCHML_S3_REGION="us-east-1")
    if url_with_password:
        env["BATCHML_CATALOG_URL"] = url_with_password
    runner = CliRunner()
    for argv in (["watch", "s3://batchml-no-such-bucket/in", "--once"],
                 ["sql", "SELECT count(*) AS n FROM predictions", "--format", "csv"],
                 ["status", "--format", "json"], ["files", "--format", "json"]):
        result = runner.invoke(app, argv, env=env)
        produced += [result.output, repr(result.exception)]
    doctor = runner.invoke(app, ["doctor"], env={**env, "BATCHML_ARTIFACT_ROOT":
                                                 "s3://batchml-no-such-bucket/artifacts"})
    assert doctor.exit_code == 1  # the artifact-store check failed
    produced += [doctor.output]
    # 4. the service itself, on a missing inbox bucket: heartbeat and logs
    svc = good.model_copy(update={"inbox": "s3://batchml-no-such-bucket/in"})
    run_service_briefly(svc, 2.0)
    heartbeat = Path(svc.home) / "service.json"
    assert heartbeat.exists()

    produced.append(log_text.getvalue())
    produced += relhelp.catalog_dump(home.catalog_target).values()
    # the home (catalog file, heartbeat, sidecars, anything) and Prefect's state (its database
    # holds the flow runs' parameters, which carry the settings)
    for path in [*Path(home.home).rglob("*"), *(tmp_path / "prefect").rglob("*")]:
        if path.is_file():
            produced.append(path.read_bytes().decode("latin-1"))
    everything = "\n".join(produced)
    assert "batchml-no-such-bucket" in everything  # the failures really happened ...
    assert "NoSuchBucket" in everything or "does not exist" in everything
    for what, value in creds.items():  # ... and never carried the credentials
        assert value not in everything, f"{what} leaked"
    print(f"\n[secrets] searched {len(everything):,} characters from catalog, logs, outputs, "
          "CLI, heartbeat: secret 0, access key id 0")
