"""Stores against a real S3 endpoint (moto server over HTTP) and a file:// directory."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from qinfra.artifacts.filestore import FileStore
from qinfra.artifacts.s3store import SHA256_METADATA_KEY, S3Store
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import (
    MIB,
    Store,
    StoredObject,
    Upload,
)
from qinfra.core.errors import ArtifactError
from tests.s3server import SMALL_PARTS

# A 12 MiB file is the smallest that uploads in more than two 5 MiB parts; four threads send
# its parts at once, as a real push does.
PARALLEL_PARTS = dataclasses.replace(SMALL_PARTS, max_concurrency=4)


_ACL_HEADERS = ("x-amz-acl", "x-amz-grant-")


def _file(path: Path, size: int, seed: int = 0) -> Upload:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    path.write_bytes(data)
    return Upload(path, f"art/{path.name}", size, hashlib.sha256(data).hexdigest())


def _counter() -> tuple[list[int], Callable[[int], None]]:
    seen: list[int] = []
    return seen, seen.append


def test_upload_then_stat_and_rehash(store: Store, tmp_path: Path) -> None:
    store.check()
    item = _file(tmp_path / "w.bin", 12 * MIB + 3)
    seen, progress = _counter()
    store.upload([item], progress)
    assert sum(seen) == item.size
    assert store.stat(item.key) == StoredObject(item.size, item.sha256)
    assert store.stat("art/absent") is None
    _, rehashed = _counter()
    found = store.rehash([item.key, "art/absent"], rehashed)
    assert found == {item.key: StoredObject(item.size, item.sha256), "art/absent": None}
    assert store.list_dirs() == ["art"]


def test_write_and_read_bytes(store: Store) -> None:
    store.check()
    assert store.read("a/manifest.json") is None
    store.write("a/manifest.json", b"{}")
    assert store.read("a/manifest.json") == b"{}"


def test_s3_multipart_object_is_encrypted_checksummed_and_private(
    s3_bucket: str, tmp_path: Path
) -> None:
    store = open_store(f"s3://{s3_bucket}/models", PARALLEL_PARTS)
    assert isinstance(store, S3Store)
    sent: list[dict[str, str]] = []
    store._client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.append(dict(request.headers))
    )
    big = _file(tmp_path / "big.bin", 12 * MIB + 1)
    small = _file(tmp_path / "small.bin", 1000, seed=1)
    store.upload([big, small], lambda _: None)
    acl_headers = [h for headers in sent for h in headers if h.lower().startswith(_ACL_HEADERS)]
    assert sent and not acl_headers  # never an ACL, so the bucket's private default holds
    client = boto3.client("s3")
    heads = {
        u.key: client.head_object(Bucket=s3_bucket, Key=f"models/{u.key}", ChecksumMode="ENABLED")
        for u in (big, small)
    }
    assert heads[big.key]["ETag"].endswith('-3"')  # three parts: 5 + 5 + 2 MiB
    assert "-" not in heads[small.key]["ETag"]  # one PUT
    for u in (big, small):
        head = heads[u.key]
        assert head["ServerSideEncryption"] == "AES256"
        assert head["Metadata"][SHA256_METADATA_KEY] == u.sha256
        assert head["ChecksumSHA256"]  # S3 checked every part (or the PUT) it received
    # For one PUT the server's own SHA256 of what it received is the manifest digest.
    assert base64.b64decode(heads[small.key]["ChecksumSHA256"]).hex() == small.sha256
    # (moto answers GetObjectAcl for multipart objects with a 500, so only the PUT is asked.)
    acl = client.get_object_acl(Bucket=s3_bucket, Key=f"models/{small.key}")
    assert [g["Grantee"]["Type"] for g in acl["Grants"]] == ["CanonicalUser"]


def test_s3_upload_caught_when_store_disagrees(s3_bucket: str, tmp_path: Path) -> None:
    """Post-upload verification: a digest that does not describe the bytes is refused."""
    store = open_store(f"s3://{s3_bucket}", PARALLEL_PARTS)
    item = _file(tmp_path / "w.bin", 100)
    wrong = Upload(item.path, item.key, item.size, "0" * 64)
    with pytest.raises(ArtifactError, match="does not match its manifest entry after upload"):
        store.upload([wrong], lambda _: None)


def test_rehash_sees_tampering(store: Store, tmp_path: Path) -> None:
    store.check()
    item = _file(tmp_path / "w.bin", 2048)
    store.upload([item], lambda _: None)
    if isinstance(store, S3Store):  # overwrite in place, keeping the recorded digest
        boto3.client("s3").put_object(
            Bucket=store.bucket,
            Key=f"{store.prefix}/{item.key}",
            Body=b"x" * 2048,
            Metadata={SHA256_METADATA_KEY: item.sha256},
        )
    else:
        assert isinstance(store, FileStore)
        (store.root / item.key).write_bytes(b"x" * 2048)
    found = store.rehash([item.key], lambda _: None)[item.key]
    assert found == StoredObject(2048, hashlib.sha256(b"x" * 2048).hexdigest())


def test_missing_bucket_is_named_with_endpoint_and_fix(s3_endpoint: str) -> None:
    store = open_store("s3://no-such-bucket-qinfra/models")
    with pytest.raises(ArtifactError) as err:
        store.check()
    assert err.value.message == (
        f"bucket 'no-such-bucket-qinfra' does not exist at endpoint {s3_endpoint}; "
        "create it or fix qinfra:artifacts.store"
    )


def test_unreachable_endpoint_names_the_setting(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ArtifactError, match="AWS_ENDPOINT_URL"):
        open_store("s3://bucket-x").check()


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/models",  # not a store scheme
        "file://relative/path",  # a host, not an absolute path
        "s3://",  # no bucket
    ],
)
def test_bad_store_uris_are_refused(uri: str) -> None:
    with pytest.raises(ArtifactError, match="To fix"):
        open_store(uri)


def test_file_store_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(f"file://{tmp_path}")
    store.write("a/f", b"old")

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.write("a/f", b"new")
    assert (tmp_path / "a" / "f").read_bytes() == b"old"
    assert os.listdir(tmp_path / "a") == ["f"]  # no temporary file left behind


def test_file_store_copy_refuses_changed_source(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}/store")
    item = _file(tmp_path / "w.bin", 100)
    item.path.write_bytes(b"y" * 100)  # changed after it was hashed
    with pytest.raises(ArtifactError, match="changed after it was hashed"):
        store.upload([item], lambda _: None)
    assert store.stat(item.key) is None
