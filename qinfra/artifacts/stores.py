"""The artifact store interface (S3 or a file:// tree), its value types, and open_store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from qinfra.artifacts.progress import ProgressFn
from qinfra.core.artifact_uri import STORE_URI_SHAPE, parse_store_uri
from qinfra.core.errors import ArtifactError

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig


MIB = 1024 * 1024
# Big enough that hashlib (which releases the GIL for updates over 2 KiB) spends its time in C,
# small enough that a few parallel readers stay in cache-friendly memory.
READ_BUFFER_BYTES = 4 * MIB
# Parallel stat (HEAD) requests when checking which objects a store already holds.
STAT_THREADS = 8
# Where a first push to a StagingStore sends files while it hashes them, before their artifact id
# is known: one folder per push. Not an artifact id, so `artifacts ls` and verify never see it;
# what a killed process leaves there is garbage that no artifact refers to.
STAGING_DIR = ".staging"


@dataclass(frozen=True)
class TransferSettings:
    """How S3 uploads and downloads are split and parallelised (boto3's TransferConfig)."""

    # 16 MiB parts (twice boto3's default): 1 GiB pushed in 7 s with them against 11 s with
    # 64 MiB parts (benchmarks/bench_push.py, moto). s3transfer grows the part size by itself
    # for a file that would pass S3's 10,000-part limit. Tests lower both to 5 MiB, S3's minimum.
    multipart_threshold_bytes: int = 16 * MIB
    multipart_chunk_bytes: int = 16 * MIB
    max_concurrency: int = 10

    def boto_config(self) -> TransferConfig:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold_bytes,
            multipart_chunksize=self.multipart_chunk_bytes,
            max_concurrency=self.max_concurrency,
            io_chunksize=1 * MIB,
        )


@dataclass(frozen=True)
class StoredObject:
    """An object as the store reports it: its size and the sha256 (hex) of what it holds, as
    far as the store can tell without a full read (None when it cannot)."""

    size: int
    sha256: str | None


@dataclass(frozen=True)
class Upload:
    """One local file to send to `key`, with the digest it was hashed to before the push."""

    path: Path
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Staging:
    """One local file to send to the staging key `key`, reading exactly `size` bytes (its size
    when it was stamped) and hashing them as they are sent."""

    path: Path
    key: str
    size: int


@dataclass(frozen=True)
class Move:
    """A staged object to publish at `key`, with the size and sha256 it was sent with."""

    staged_key: str
    key: str
    size: int
    sha256: str


class Store(Protocol):
    """What the push, verify and list code needs from a store; keys are relative to `uri`."""

    @property
    def uri(self) -> str: ...

    def check(self) -> None:
        """Raise ArtifactError when the store cannot be used (no bucket, no access, no network)."""

    def stat(self, key: str) -> StoredObject | None:
        """Size and digest of what `key` holds now (not merely what was recorded when it was
        written), so push re-sends a corrupted object; None when absent."""

    def upload(self, uploads: Sequence[Upload], progress: ProgressFn) -> None:
        """Send every file, then verify each against its size and sha256; ArtifactError if not."""

    def read(self, key: str) -> bytes | None: ...

    def write(self, key: str, data: bytes) -> None: ...

    def rehash(self, keys: Sequence[str], progress: ProgressFn) -> dict[str, StoredObject | None]:
        """Read every object back and hash what is actually stored; None for a missing one."""

    def list_dirs(self) -> list[str]:
        """Names of the top-level folders (prefixes) under the store."""


@runtime_checkable
class StagingStore(Store, Protocol):
    """A store that publishes a staged file without moving its bytes again (a rename), so a
    first push hashes each file while it sends it: one read of each byte, no hashing pass first.

    S3 is not one: publishing there is a server-side copy, which on moto cost about 4x what
    hashing first does (benchmarks/RESULTS.md), so an S3 push hashes, then uploads to the final
    keys.
    """

    def held_files(self) -> set[tuple[str, int]]:
        """(path inside its artifact, size) of every object under any artifact id: what the
        store may already hold of a push's files (one listing, no object read)."""

    def stage(self, items: Sequence[Staging], progress: ProgressFn) -> list[str]:
        """Write every file to its staging key, reading each byte once and hashing what is
        written; the sha256 (hex) of each, in order. ArtifactError when a file is shorter than
        its size."""

    def publish(self, moves: Sequence[Move], progress: ProgressFn) -> None:
        """Put each staged object at its key without copying it, checking its size; the digest
        it was written with then stands for what the key holds. ArtifactError if not."""

    def discard(self, keys: Sequence[str]) -> None:
        """Delete these keys where present (staged objects after a push, or after a failure)."""


def checked_store_uri(uri: str) -> str:
    """`uri` without trailing slashes; ArtifactError when it is not a store URI."""
    try:
        return parse_store_uri(uri)
    except ValueError:
        raise ArtifactError(
            f"store '{uri}' is neither {STORE_URI_SHAPE.replace(' or ', ' nor ')}. "
            "To fix: correct qinfra:artifacts.store or --to"
        ) from None


def sha256_matches(obj: StoredObject | None, size: int, sha256: str) -> bool:
    """True when a stored object is the one a manifest entry describes."""
    return obj is not None and obj.size == size and obj.sha256 == sha256
