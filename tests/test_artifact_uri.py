"""The one store and artifact URI rule the schema, the artifact code and the renderers share."""

from __future__ import annotations

import pytest

from qinfra.core.artifact_uri import (
    ArtifactUri,
    StoreScheme,
    artifact_uri,
    parse_artifact_uri,
    parse_store_uri,
)

AID = "sha256-" + "ab" * 32


@pytest.mark.parametrize(
    ("uri", "store", "scheme"),
    [
        (f"s3://acme/llama/{AID}/", "s3://acme/llama", StoreScheme.S3),  # as push prints it
        (f"s3://acme/{AID}", "s3://acme", StoreScheme.S3),  # no trailing slash: same artifact
        (f"file:///srv/store/{AID}/", "file:///srv/store", StoreScheme.FILE),
    ],
)
def test_artifact_uris_parse(uri: str, store: str, scheme: StoreScheme) -> None:
    parsed = parse_artifact_uri(uri)
    assert parsed == ArtifactUri(store, AID)
    assert (parsed.scheme, parsed.manifest_sha256) == (scheme, "ab" * 32)
    assert str(parsed) == f"{store}/{AID}/" == artifact_uri(store + "/", AID)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://acme/llama/sha256-abc/",  # id too short
        f"s3://acme/llama/sha256-{'AB' * 32}/",  # upper-case hex: not what push writes
        f"{AID}/",  # no store
        f"s3:///{AID}/",  # no bucket
        f"file://host/{AID}/",  # a host, not an absolute path
        f"gs://acme/{AID}/",  # not a store qinfra reads
        "s3://acme/llama/",  # a store, not an artifact in it
    ],
)
def test_anything_else_is_refused_with_the_shape(uri: str) -> None:
    with pytest.raises(ValueError, match=r"<store>/sha256-<64 hex digits>/.*To fix"):
        parse_artifact_uri(uri)


@pytest.mark.parametrize(
    ("uri", "normal"),
    [("s3://bucket", "s3://bucket"), ("s3://bucket/pre/", "s3://bucket/pre"),
     ("file:///abs/path/", "file:///abs/path")],
)
def test_store_uris(uri: str, normal: str) -> None:
    assert parse_store_uri(uri) == normal


@pytest.mark.parametrize("uri", ["s3://", "s3:///x", "file://rel/path", "http://h/x", "/abs"])
def test_bad_store_uris(uri: str) -> None:
    with pytest.raises(ValueError, match=r"s3://bucket\[/prefix\] or file:///absolute/path"):
        parse_store_uri(uri)
