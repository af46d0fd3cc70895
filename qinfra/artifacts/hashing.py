"""Hashing the files of an artifact once per push, in parallel, and noticing files that change."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from qinfra.artifacts.hashcache import FileStamp, HashCache
from qinfra.artifacts.manifest import FileEntry, Manifest, Recipe
from qinfra.artifacts.progress import Progress, ProgressFn
from qinfra.artifacts.stores import READ_BUFFER_BYTES
from qinfra.core.errors import ArtifactError


@dataclass(frozen=True)
class SourceFile:
    """A local file and the relative path it takes inside the artifact."""

    path: str
    source: Path


@dataclass(frozen=True)
class HashedFile:
    entry: FileEntry
    source: Path
    stamp: FileStamp


class Hasher:
    """Hashes files on a thread pool (hashlib releases the GIL on large updates) and remembers
    every digest by stamp, so one push never reads a file twice to hash it; with a HashCache,
    later pushes (other processes) do not read an unchanged file at all."""

    def __init__(
        self,
        workers: int | None = None,
        buffer_bytes: int = READ_BUFFER_BYTES,
        cache: HashCache | None = None,
    ) -> None:
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.buffer_bytes = buffer_bytes
        self.cache = cache
        self.hashed_bytes = 0
        self._memo: dict[FileStamp, str] = {}
        self._lock = threading.Lock()

    def unknown(self, files: Sequence[SourceFile]) -> dict[FileStamp, SourceFile]:
        """The files (one per identity) whose digest neither this hasher nor the cache knows:
        what a push must read. Reads no file."""
        return self._unknown(files, [FileStamp.of(stat_source(f.source)) for f in files])

    def _unknown(self, files: Sequence[SourceFile],
                 stamps: list[FileStamp]) -> dict[FileStamp, SourceFile]:
        todo: dict[FileStamp, SourceFile] = {}
        for f, s in zip(files, stamps, strict=True):
            if s in self._memo or s in todo:
                continue
            if self.cache and (known := self.cache.lookup(f.source, s)):
                self._memo[s] = known
            else:
                todo[s] = f
        return todo

    def remember(self, path: Path, stamp: FileStamp, digest: str, read: int) -> None:
        """A digest computed elsewhere (while the file was uploaded), for a file read whole
        under `stamp`: kept like one hashed here, so later pushes need not read it again."""
        with self._lock:
            self._memo[stamp] = digest
            self.hashed_bytes += read
        if self.cache:
            self.cache.record(path, stamp, digest)

    def hash_files(self, files: Sequence[SourceFile], progress: Progress) -> list[HashedFile]:
        stamps = [FileStamp.of(stat_source(f.source)) for f in files]
        todo = self._unknown(files, stamps)
        if todo:
            report = progress.start("hashing", sum(s.size for s in todo))
            with ThreadPoolExecutor(self.workers) as pool:
                digests = pool.map(lambda item: self._hash(item[1].source, item[0], report),
                                   todo.items())
                for (stamp, f), digest in zip(todo.items(), digests, strict=True):
                    self._memo[stamp] = digest
                    if self.cache:
                        self.cache.record(f.source, stamp, digest)
            if self.cache:
                self.cache.save()
        return self._results(files, stamps)

    def manifest(self, files: Sequence[SourceFile], progress: Progress,
                 recipe: Recipe | None = None) -> Manifest:
        """The manifest `files` would have as an artifact (its id names them: a made artifact's
        source, a quantized variant's baseline), hashing only what is not known yet."""
        return Manifest(tuple(h.entry for h in self.hash_files(files, progress)), recipe)

    def _results(self, files: Sequence[SourceFile], stamps: list[FileStamp]) -> list[HashedFile]:
        return [
            HashedFile(FileEntry(f.path, s.size, self._memo[s]), f.source, s)
            for f, s in zip(files, stamps, strict=True)
        ]

    def _hash(self, path: Path, before: FileStamp, progress: ProgressFn) -> str:
        digest, read = hashlib.sha256(), 0
        buf = bytearray(self.buffer_bytes)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            # Read no further than the size it had: a file that keeps growing must not keep
            # this loop going; the stamps below catch the growth.
            while read < before.size and (n := f.readinto(view[: before.size - read])):
                digest.update(view[:n])
                read += n
                progress(n)
            during = FileStamp.of(os.fstat(f.fileno()))
        after = FileStamp.of(stat_source(path))
        if not before == during == after or read != before.size:
            raise ArtifactError(
                f"{path} changed while it was being hashed (size {before.size} -> {after.size} "
                f"bytes, {read} read; ctime_ns {before.ctime_ns} -> {after.ctime_ns}). To fix: "
                "wait for whatever writes it to finish, then push again"
            )
        with self._lock:
            self.hashed_bytes += read
        return digest.hexdigest()


class HashingReader:
    """The first `size` bytes of a file (its size when stamped: a file that keeps growing does
    not keep a copy going) as a read-only stream that hashes what it hands out, so the digest is
    of exactly the bytes written elsewhere. Opens on the first read, closes at the end."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.read_bytes = 0
        self._digest = hashlib.sha256()
        self._file: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, amount: int | None = -1) -> bytes:
        left = self.size - self.read_bytes
        want = left if amount is None or amount < 0 else min(amount, left)
        if want <= 0:
            self.close()
            return b""
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 -- closed at the end or by close()
        data = self._file.read(want)
        self._digest.update(data)
        self.read_bytes += len(data)
        if not data:
            self.close()
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def hexdigest(self) -> str:
        """The sha256 of the whole file as stamped; ArtifactError when it ended early."""
        if self.read_bytes != self.size:
            raise ArtifactError(
                f"{self.path} changed while it was being sent: {self.read_bytes} of {self.size} "
                "bytes read. To fix: wait for whatever writes it to finish, then push again"
            )
        return self._digest.hexdigest()


def stat_source(path: Path) -> os.stat_result:
    """os.stat of a file to push; ArtifactError naming it when it cannot be read."""
    try:
        return os.stat(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror}") from None
