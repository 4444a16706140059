"""Artifact stores: a local directory and S3 on moto's standalone server over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchml import ArtifactNotFound, ChecksumMismatch, open_store
from batchml.errors import ArtifactError, ConfigError, StorageUnavailable
from batchml.store import LocalStore, S3Store, sha256_bytes


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "local":
        return open_store(str(tmp_path / "artifacts"))
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("aws_env")
    return open_store(f"s3://{bucket}/team/a", endpoint_url=endpoint, region="us-east-1")


def test_put_get_list_exists_delete(store) -> None:  # type: ignore[no-untyped-def]
    first = store.put("runs/train/1/model.bin", b"\x00\x01model")
    store.put("runs/train/1/plots/roc.png", b"png")
    assert first.sha256 == sha256_bytes(b"\x00\x01model") and first.size == 7
    assert store.get(first.uri) == b"\x00\x01model"
    assert store.get(first.uri, sha256=first.sha256) == b"\x00\x01model"
    assert store.exists(first.uri)
    assert store.list("runs/train/1") == sorted([first.uri, store.uri("runs/train/1/plots/roc.png")])
    store.delete(first.uri)
    assert not store.exists(first.uri)
    with pytest.raises(ArtifactNotFound):
        store.get(first.uri)


def test_overwrite_replaces_whole_object(store) -> None:  # type: ignore[no-untyped-def]
    store.put("k", b"a" * 1000)
    second = store.put("k", b"b")
    assert store.get(second.uri) == b"b"


def test_checksum_mismatch_is_refused(store) -> None:  # type: ignore[no-untyped-def]
    obj = store.put("model.keras", b"original")
    store.put("model.keras", b"tampered")
    with pytest.raises(ChecksumMismatch, match="model.keras.*refusing to load") as info:
        store.get(obj.uri, sha256=obj.sha256)
    assert "retrain" in str(info.value)


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_keys_cannot_escape_the_root(store, key: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ArtifactError, match="Invalid artifact key"):
        store.put(key, b"x")


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(5):
        store.put("a/b.bin", bytes([i]) * 10_000)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]


def test_local_store_refuses_uris_outside_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    (tmp_path / "secret").write_text("x")
    with pytest.raises(ArtifactError, match="outside the artifact root"):
        store.get(str(tmp_path / "root" / ".." / "secret"))


def test_s3_missing_bucket_names_the_problem(aws_env: str) -> None:
    store = S3Store("s3://no-such-bucket-xyz/p", endpoint_url=aws_env, region="us-east-1")
    with pytest.raises(ArtifactError, match="bucket of s3://no-such-bucket-xyz/p/k does not exist"):
        store.put("k", b"x")


def test_s3_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    store = S3Store("s3://b/p", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1")
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StorageUnavailable, match="S3 unreachable") as info:
        store.get("s3://b/p/k")
    assert info.value.transient


@pytest.mark.parametrize(("root", "message"), [
    ("ftp://host/x", "Unsupported artifact root"),
    ("s3://", "not an s3://bucket/prefix URI"),
])
def test_bad_roots(root: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_store(root)


def test_catalog_on_s3_artifacts(tmp_path: Path, s3_bucket: str, aws_env: str) -> None:
    from batchml import Catalog

    cat = Catalog(tmp_path / "c.duckdb", store=open_store(f"s3://{s3_bucket}/art",
                                                          endpoint_url=aws_env))
    run = cat.create_run("train")
    info = run.log_artifact("report.md", b"# hi")
    assert info["uri"] == f"s3://{s3_bucket}/art/runs/train/1/report.md"
    assert run.fetch_artifact("report.md") == b"# hi"


# --- S3 call health: a tracker made by the entry point and passed down (no module state) ---


def test_s3_health_counts_only_the_clients_it_was_given(tmp_path: Path, s3_bucket: str,
                                                        aws_env: str) -> None:
    """Each client counts into the tracker it was made with; one made without counts into
    no shared place, so nothing is written for `batchml status`."""
    from batchml.store import S3Health, s3_client, s3_health_summary

    health = S3Health(tmp_path / "s3-health")
    counted = s3_client(aws_env, "us-east-1", health=health)
    private = s3_client(aws_env, "us-east-1")
    counted.list_objects_v2(Bucket=s3_bucket)
    private.list_objects_v2(Bucket=s3_bucket)
    private.list_objects_v2(Bucket=s3_bucket)
    assert health.totals["calls"] == 1 and health.totals["attempts"] == 1
    health.flush()
    summary = s3_health_summary(tmp_path / "s3-health")
    assert summary is not None and summary["calls"] == 1 and summary["processes"] == 1
    other = S3Health()  # no directory: counts, never writes
    s3_client(aws_env, "us-east-1", health=other).list_objects_v2(Bucket=s3_bucket)
    other.flush()
    assert other.totals["calls"] == 1 and len(list((tmp_path / "s3-health").iterdir())) == 1


def test_two_trackers_of_one_process_share_a_directory(tmp_path: Path) -> None:
    """Trackers write one file each: neither overwrites the other's counts, and the summary
    still counts one process."""
    from batchml.store import S3Health, s3_health_summary

    a, b = S3Health(tmp_path), S3Health(tmp_path)
    a._count(calls=2, attempts=3, failed_attempts=1, retries=1, code="503")
    b._count(calls=1, attempts=1)
    a.flush()
    b.flush()
    assert len(list(tmp_path.glob("*.json"))) == 2
    summary = s3_health_summary(tmp_path)
    assert summary is not None
    assert (summary["calls"], summary["attempts"], summary["failed_attempts"]) == (3, 4, 1)
    assert summary["processes"] == 1 and summary["faults"] == {"503": 1}


def test_the_worker_of_an_entry_point_counts_into_batchml_status(
        tmp_path: Path, s3_bucket: str, aws_env: str) -> None:
    """`Worker.for_source` (watch, serve, bridge) makes one tracker for the source and the
    outbox client; its counts are what `batchml status` shows (HOME/s3-health)."""
    from batchml import Settings
    from batchml.status import collect_status
    from batchml.store import HEALTH_DIR
    from batchml.worker import Worker

    settings = Settings(home=tmp_path / "home", s3_endpoint_url=aws_env, s3_region="us-east-1",
                        isolate_scoring=False)
    worker = Worker.for_source(settings, f"s3://{s3_bucket}/in/")
    assert worker.health is not None and worker.source.health is worker.health
    worker.discover()
    worker.discover()
    assert worker.health.totals["calls"] == 2
    worker.health.flush()
    assert [p.parent.name for p in (settings.home / HEALTH_DIR).glob("*.json")] == [HEALTH_DIR]
    info = collect_status(worker.catalog, settings, {"up": False})
    assert info["s3"]["calls"] == 2 and info["s3"]["error_rate"] == 0.0
