"""The one rule for store and artifact URIs, shared by the stack schema, the artifact code and
the render contexts, so a URI the schema accepts is one every later step can use."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote, urlparse

# An artifact is named by the sha256 of its manifest.json (see qinfra.artifacts.manifest).
ARTIFACT_ID = re.compile(r"sha256-(?P<hex>[0-9a-f]{64})")
STORE_URI_SHAPE = "s3://bucket[/prefix] or file:///absolute/path"
ARTIFACT_URI_SHAPE = "<store>/sha256-<64 hex digits>/"


class StoreScheme(StrEnum):
    S3 = "s3"
    FILE = "file"


def parse_store_uri(uri: str) -> str:
    """`uri` without trailing slashes when it is s3://bucket[/prefix] or file:///absolute/path.

    Raises ValueError saying what is expected; callers wrap it in their own error type.
    """
    if _dot_segments(uri):
        raise ValueError(f"must be {STORE_URI_SHAPE} without '.' or '..' path segments")
    if uri.startswith("s3://") and urlparse(uri).netloc:
        return uri.rstrip("/")
    if uri.startswith("file:///"):
        return uri.rstrip("/") if len(uri.rstrip("/")) > len("file://") else "file:///"
    raise ValueError(f"must be {STORE_URI_SHAPE}")


@dataclass(frozen=True)
class ArtifactUri:
    """A pinned artifact: the store it lives in and its id; str() is the canonical URI."""

    store: str
    artifact_id: str

    def __str__(self) -> str:
        # The trailing slash marks a prefix (a folder of files), not an object.
        return f"{self.store}/{self.artifact_id}/"

    @property
    def scheme(self) -> StoreScheme:
        return StoreScheme(urlparse(self.store).scheme)

    @property
    def manifest_sha256(self) -> str:
        """The artifact id names the sha256 of its manifest.json."""
        return self.artifact_id.removeprefix("sha256-")


def is_artifact_id(name: str) -> bool:
    return ARTIFACT_ID.fullmatch(name) is not None


def artifact_uri(store_uri: str, artifact_id: str) -> str:
    """`<store>/sha256-<hex>/` for an artifact of the (already checked) store at `store_uri`."""
    return str(ArtifactUri(store_uri.rstrip("/"), artifact_id))


def parse_artifact_uri(uri: str) -> ArtifactUri:
    """Split `<store>/sha256-<64 hex>/` (trailing slash optional) into store and id.

    Raises ValueError saying what is expected; callers wrap it in their own error type.
    """
    if _dot_segments(uri):
        raise ValueError(f"must be {ARTIFACT_URI_SHAPE} without '.' or '..' path segments. "
                         "To fix: pin it with `qinfra artifacts push --stack`")
    store, _, last = uri.rstrip("/").rpartition("/")
    if is_artifact_id(last):
        with contextlib.suppress(ValueError):
            return ArtifactUri(parse_store_uri(store), last)
    raise ValueError(f"must be {ARTIFACT_URI_SHAPE}, <store> being {STORE_URI_SHAPE}. To fix: "
                     "pin it with `qinfra artifacts push --stack`")


def _dot_segments(uri: str) -> bool:
    """One artifact, one spelling: `..` could name content outside the store a stack declares,
    and a pin must read as exactly what runs, so '.' and '..' segments are refused."""
    # Decoded as the file store decodes its path, so %2e%2e is caught too.
    return any(unquote(part) in {".", ".."} for part in urlparse(uri).path.split("/"))
