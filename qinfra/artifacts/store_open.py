"""Which store a URI names: the one place that knows every store implementation, apart from
the types they share (qinfra.artifacts.stores), so no store module imports its chooser."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qinfra.artifacts.stores import Store, TransferSettings, checked_store_uri
from qinfra.core.artifact_uri import StoreScheme

if TYPE_CHECKING:
    from qinfra.artifacts.hashcache import HashCache


def open_store(
    uri: str, settings: TransferSettings | None = None, cache: HashCache | None = None
) -> Store:
    """The store for `s3://bucket[/prefix]` or `file:///abs/path`; ArtifactError otherwise.

    `cache` lets a file store skip re-reading objects it wrote whose identity is unchanged
    (S3 reports its own checksums, so it needs none)."""
    uri = checked_store_uri(uri)
    if uri.startswith(f"{StoreScheme.S3}://"):
        from qinfra.artifacts.s3store import S3Store

        return S3Store(uri, settings or TransferSettings())
    from qinfra.artifacts.filestore import FileStore

    return FileStore(uri, cache)
