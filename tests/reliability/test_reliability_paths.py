"""6. Keys and paths: input names with spaces, unicode, 200 characters, names that collide
after normalisation ("a b" / "a_b" / "A?B"), and S3 keys with "../", "%2F" and absolute-looking
parts. Outputs stay under the outbox root, never overwrite each other (one output per input),
and nothing is written outside the configured roots (the directory tree and Python's temp
directory are compared before and after; for S3, every key of the bucket).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import relhelp

from batchml import Catalog
from batchml.catalog import FileRef, Ledger
from batchml.sources import DirectorySource, S3PrefixSource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

pytestmark = pytest.mark.reliability

LOCAL_NAMES = [
    "a b.parquet", "a_b.parquet", "A?B.parquet", "a?b.parquet", "A B.parquet", "a  b.parquet",
    "résumé 日本語 ü.parquet", "emoji 🙂.parquet", "caf\u00e9.parquet", "cafe\u0301.parquet",
    "x" * 192 + ".parquet", "it's \"quoted\"; DROP TABLE files; --.parquet",
    "back\\slash.parquet", "tab\there.parquet", "new\nline.parquet", "-rf.parquet",
    "%2F..%2Fetc%2Fpasswd.parquet", "sub dir/a b.parquet", "sub dir/deeper/a b.parquet",
]
# hidden names are never taken (the landing contract): they must stay untouched
LOCAL_HIDDEN = ["..%2F..%2Fx.parquet", ".a b.parquet", "_a b.parquet"]

S3_KEYS = [
    "in/../x.parquet", "in/../../etc/passwd.parquet", "in/sub/../../z.parquet",
    "in/./y.parquet", "in//etc/x.parquet", "in/a%2Fb.parquet", "in/a%2F..%2F..%2Fc.parquet",
    "in/a b.parquet", "in/a_b.parquet", "in/A B.parquet", "in/a+b.parquet",
    "in/über.parquet", "in/" + "k" * 200 + ".parquet",
]
S3_HIDDEN = ["in/..parquet.parquet", "in/.hidden.parquet", "in/_SUCCESS"]


def frame(i: int) -> pd.DataFrame:
    return synthetic_reviews(7 + i, seed=i).assign(review_id=lambda f: f.review_id + 1000 * i)


def drain(worker: Worker) -> list[Any]:
    worker.discover()
    outcomes = []
    while (rep := worker.run_batch(limit=7)).outcomes:
        assert rep.error is None, rep.error
        outcomes += rep.outcomes
    assert rep.error is None, rep.error
    return outcomes


def check_outputs(outcomes: list[Any], expected: dict[str, int], outbox_root: str) -> None:
    assert sorted(o.source_uri for o in outcomes) == sorted(expected)
    assert {o.status for o in outcomes} == {"scored"}, [(o.source_uri, o.error)
                                                       for o in outcomes]
    uris = [o.output_uri for o in outcomes]
    assert len(set(uris)) == len(uris)  # never the same output for two inputs
    for o in outcomes:
        assert o.rows == expected[o.source_uri]
        if outbox_root.startswith("s3://"):
            key = o.output_uri[len(outbox_root) + 1:]
            assert o.output_uri.startswith(outbox_root + "/")
            assert all(part not in ("", ".", "..") for part in key.split("/")), key
        else:
            out = Path(o.output_uri)
            assert out.resolve().is_relative_to(Path(outbox_root).resolve())
            assert len(out.name.encode()) <= 255 and out.is_file()


def test_local_names_stay_under_roots_one_output_each(home: Any, tmp_path: Path,
                                                      private_tmpdir: Path) -> None:
    inbox = Path(home.inbox)
    expected = {}
    for i, name in enumerate(LOCAL_NAMES):
        expected[str(relhelp.land(inbox / name, frame(i)))] = 7 + i
    for name in LOCAL_HIDDEN:
        frame(0).to_parquet(inbox / name)
    roots = [Path(home.home)]
    before = relhelp.tree(tmp_path, skip=roots)
    worker = Worker(Catalog.from_settings(home), DirectorySource(
        inbox, quarantine_dir=home.quarantine, use_events=False), home)
    outcomes = drain(worker)
    check_outputs(outcomes, expected, str(home.outbox))
    by_input = relhelp.outputs_by_input(Path(home.outbox))
    assert sorted(by_input) == sorted(expected)
    assert all(len(v) == 1 for v in by_input.values())
    for uri, (out,) in by_input.items():  # the right rows went to the right output
        got = pd.read_parquet(out, columns=["review_id"])
        i = LOCAL_NAMES.index(str(Path(uri).relative_to(inbox)))
        assert got["review_id"].tolist() == frame(i)["review_id"].tolist()
    assert relhelp.tree(tmp_path, skip=roots) == before  # nothing outside the home changed
    assert list(private_tmpdir.iterdir()) == []
    # only the configured places inside the home were written
    written = {p.relative_to(home.home).parts[0] for p in Path(home.home).rglob("*")
               if p.is_file()}
    assert written <= {"inbox", "outbox", "catalog.duckdb", "catalog.duckdb.lock",
                       "catalog.duckdb.wlock", "catalog.duckdb.waiting", "catalog.duckdb.wal",
                       "catalog.readonly.duckdb"}
    assert drain(worker) == []
    ledger = set(Ledger(worker.catalog).files()["source_uri"])
    assert not {str(inbox / n) for n in LOCAL_HIDDEN} & ledger
    assert all((inbox / n).exists() for n in LOCAL_HIDDEN)
    print(f"\n[paths] local names={len(LOCAL_NAMES)} outputs={len(by_input)} overwrites=0 "
          "outside-writes=0")


@pytest.mark.parametrize("outbox_kind", ["local", "s3"])
def test_s3_keys_stay_under_roots_one_output_each(outbox_kind: str, make_home: Any,
                                                 s3_bucket: str, aws_env: str, tmp_path: Path,
                                                 private_tmpdir: Path) -> None:
    from batchml.store import s3_client

    client = s3_client(aws_env, "us-east-1")
    outbox = f"s3://{s3_bucket}/out" if outbox_kind == "s3" else str(tmp_path / "home" /
                                                                       "outbox")
    home = make_home(outbox=outbox, s3_endpoint_url=aws_env, s3_region="us-east-1")
    expected = {}
    for i, key in enumerate(S3_KEYS):
        buf = io.BytesIO()
        frame(i).to_parquet(buf)
        client.put_object(Bucket=s3_bucket, Key=key, Body=buf.getvalue())
        expected[f"s3://{s3_bucket}/{key}"] = 7 + i
    for key in S3_HIDDEN:
        client.put_object(Bucket=s3_bucket, Key=key, Body=buf.getvalue())
    keys_before = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    buckets_before = {b["Name"] for b in client.list_buckets()["Buckets"]}
    roots = [Path(home.home)]
    before = relhelp.tree(tmp_path, skip=roots)
    src = S3PrefixSource(f"s3://{s3_bucket}/in/", client=client)
    worker = Worker(Catalog.from_settings(home), src, home)
    outcomes = drain(worker)
    check_outputs(outcomes, expected, outbox)
    keys_after = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    new_keys = keys_after - keys_before
    if outbox_kind == "s3":
        assert len(new_keys) == len(S3_KEYS)
        assert all(k.startswith("out/") for k in new_keys), new_keys
        for o in outcomes:  # each output holds its own input's rows
            key = o.output_uri.split("/", 3)[3]
            got = pd.read_parquet(io.BytesIO(client.get_object(Bucket=s3_bucket,
                                                               Key=key)["Body"].read()))
            assert set(got["input_uri"]) == {o.source_uri}
    else:
        assert new_keys == set()
        by_input = relhelp.outputs_by_input(Path(outbox))
        assert sorted(by_input) == sorted(expected)
        assert all(len(v) == 1 for v in by_input.values())
    assert {b["Name"] for b in client.list_buckets()["Buckets"]} == buckets_before
    ledger = set(Ledger(worker.catalog).files()["source_uri"])
    assert not {f"s3://{s3_bucket}/{k}" for k in S3_HIDDEN} & ledger
    assert relhelp.tree(tmp_path, skip=roots) == before
    assert list(private_tmpdir.iterdir()) == []  # downloads and uploads cleaned up
    print(f"\n[paths] s3 keys={len(S3_KEYS)} outbox={outbox_kind} outputs={len(outcomes)} "
          "overwrites=0 outside-writes=0")


def test_s3_keys_with_query_and_fragment_characters_are_scored(make_home: Any, s3_bucket: str,
                                                               aws_env: str) -> None:
    from batchml.store import s3_client

    client = s3_client(aws_env, "us-east-1")
    home = make_home(s3_endpoint_url=aws_env, s3_region="us-east-1")
    expected = {}
    for i, key in enumerate(["in/A?B.parquet", "in/a#b.parquet", "in/a?b#c.parquet"]):
        buf = io.BytesIO()
        frame(i).to_parquet(buf)
        client.put_object(Bucket=s3_bucket, Key=key, Body=buf.getvalue())
        expected[f"s3://{s3_bucket}/{key}"] = 7 + i
    worker = Worker(Catalog.from_settings(home),
                    S3PrefixSource(f"s3://{s3_bucket}/in/", client=client), home)
    outcomes = drain(worker)
    check_outputs(outcomes, expected, str(home.outbox))


def test_symlink_out_of_the_inbox_is_refused_without_stalling(home: Any, tmp_path: Path) -> None:
    inbox = Path(home.inbox)
    secret = tmp_path / "outside" / "secret.parquet"
    relhelp.land(secret, frame(1))
    before = secret.read_bytes()
    os.symlink(secret, inbox / "a-link.parquet")
    names = [str(relhelp.land(inbox / f"b-{i}.parquet", frame(i))) for i in range(3)]
    worker = Worker(Catalog.from_settings(home), DirectorySource(
        inbox, quarantine_dir=home.quarantine, use_events=False), home)
    worker.discover()
    outcomes = []
    for _ in range(5):
        rep = worker.run_batch()
        outcomes += rep.outcomes
    by_name = {Path(o.source_uri).name: o for o in outcomes}
    assert by_name["a-link.parquet"].status in ("quarantined", "failed")
    assert "outside the inbox" in (by_name["a-link.parquet"].error or "")
    assert all(by_name[Path(n).name].status == "scored" for n in names)
    assert secret.read_bytes() == before  # never moved, never written
    assert not any(str(secret) == lineage_uri for lineage_uri in
                   relhelp.outputs_by_input(Path(home.outbox)))


def test_bad_file_with_a_long_name_is_quarantined(home: Any) -> None:
    inbox = Path(home.inbox)
    bad = inbox / ("b" * 240 + ".parquet")
    bad.write_bytes(b"not parquet at all")
    relhelp.age(bad)
    good = str(relhelp.land(inbox / "good.parquet", frame(2)))
    worker = Worker(Catalog.from_settings(home), DirectorySource(
        inbox, quarantine_dir=home.quarantine, use_events=False), home)
    worker.discover()
    outcomes = {}
    for _ in range(3):
        for o in worker.run_batch().outcomes:
            outcomes[o.source_uri] = o
    assert outcomes[str(bad)].status == "quarantined", outcomes
    assert outcomes[good].status == "scored"


def test_pending_file_of_another_source_does_not_block_the_inbox(home: Any,
                                                                 tmp_path: Path) -> None:
    elsewhere = relhelp.land(tmp_path / "elsewhere" / "x.parquet", frame(3))
    cat = Catalog.from_settings(home)
    st = elsewhere.stat()
    from datetime import UTC, datetime

    # what `batchml predict /elsewhere/x.parquet` records before it scores
    Ledger(cat).discover([FileRef(str(elsewhere), None, st.st_size,
                                  datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC))])
    inbox = Path(home.inbox)
    names = [str(relhelp.land(inbox / f"mine-{i}.parquet", frame(i))) for i in range(3)]
    worker = Worker(cat, DirectorySource(inbox, quarantine_dir=home.quarantine,
                                         use_events=False), home)
    worker.discover()
    scored = []
    for _ in range(3):
        scored += [o.source_uri for o in worker.run_batch().outcomes if o.status == "scored"]
    assert sorted(scored) == sorted(names)
    assert elsewhere.exists()
