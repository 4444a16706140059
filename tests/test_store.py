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
