"""The file:// store: a directory tree written through atomic renames."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from qinfra.artifacts.hashcache import FileStamp, HashCache
from qinfra.artifacts.hashing import HashingReader
from qinfra.artifacts.progress import ProgressFn
from qinfra.artifacts.stores import (
    READ_BUFFER_BYTES,
    Move,
    Staging,
    StoredObject,
    Upload,
    checked_store_uri,
)
from qinfra.core.artifact_uri import is_artifact_id
from qinfra.core.errors import ArtifactError
from qinfra.core.fileio import open_atomic


class FileStore:
    """A directory tree; every write goes to a temporary file renamed into place, so a file at
    its final path is always complete.

    stat() reports what a file holds now: the digest of what this store wrote is remembered in
    `cache` by the stored file's identity, and any other file (changed in place, written by
    hand, no cache) is hashed. Nothing recorded beside the file (an xattr) is trusted, since an
    in-place edit keeps it.
    """

    def __init__(self, uri: str, cache: HashCache | None = None) -> None:
        self._uri = checked_store_uri(uri)
        parsed = urlparse(self._uri)
        assert parsed.scheme == "file", uri  # open_store picks the store by scheme
        self.root = Path(unquote(parsed.path))
        self.cache = cache or HashCache(None)

    @property
    def uri(self) -> str:
        return self._uri

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create store directory {self.root}: {exc.strerror}. To fix: choose a "
                "writable qinfra:artifacts.store"
            ) from None

    def stat(self, key: str) -> StoredObject | None:
        path = self.root / key
        try:
            stamp = FileStamp.of(path.stat())
        except FileNotFoundError:
            return None
        digest = self.cache.lookup(path, stamp)
        if digest is None:
            digest = _hash_file(path, lambda _: None)
            if FileStamp.of(path.stat()) == stamp:
                self.cache.record(path, stamp, digest)
        return StoredObject(size=stamp.size, sha256=digest)

    def upload(self, uploads: Sequence[Upload], progress: ProgressFn) -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(self._copy, item, progress) for item in uploads]:
                future.result()

    def _copy(self, item: Upload, progress: ProgressFn) -> None:
        """Copy while hashing the bytes written: the digest is the post-upload verification."""
        dest = self.root / item.key
        with self._writing(dest, item.sha256) as out, open(item.path, "rb") as src:
            digest, size = hashlib.sha256(), 0
            buf = bytearray(READ_BUFFER_BYTES)
            view = memoryview(buf)
            while n := src.readinto(buf):
                digest.update(view[:n])
                out.write(view[:n])
                size += n
                progress(n)
            if size != item.size or digest.hexdigest() != item.sha256:
                raise ArtifactError(
                    f"{item.path} changed after it was hashed: copied {size} bytes with sha256 "
                    f"{digest.hexdigest()}, expected {item.size} bytes, sha256 {item.sha256}. "
                    "To fix: stop whatever writes it and push again"
                )

    def stage(self, items: Sequence[Staging], progress: ProgressFn) -> list[str]:
        """Copy each file to its staging path while hashing it: one read of each byte."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda item: self._stage_one(item, progress), items))

    def _stage_one(self, item: Staging, progress: ProgressFn) -> str:
        reader = HashingReader(item.path, item.size)
        try:
            with self._writing(self.root / item.key, None) as out:
                while chunk := reader.read(READ_BUFFER_BYTES):
                    out.write(chunk)
                    progress(len(chunk))
        finally:
            reader.close()
        return reader.hexdigest()

    def publish(self, moves: Sequence[Move], progress: ProgressFn) -> None:
        """Rename each staged file into place (same filesystem: nothing is copied); the digest
        it was written with is remembered for its final identity."""
        for move in moves:
            src, dest = self.root / move.staged_key, self.root / move.key
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
                stamp = FileStamp.of(dest.stat())
            except OSError as exc:
                raise ArtifactError(
                    f"cannot move {src} to {dest}: {exc.strerror}. To fix: push again"
                ) from None
            if stamp.size != move.size:
                raise ArtifactError(f"{dest} holds {stamp.size} bytes after its move, expected "
                                    f"{move.size}. To fix: push again")
            self.cache.record(dest, stamp, move.sha256, written_here=True)
            progress(move.size)

    def discard(self, keys: Sequence[str]) -> None:
        """Delete the files, then their folders as they empty (up to the store's root)."""
        for key in keys:
            path = self.root / key
            path.unlink(missing_ok=True)
            for parent in path.parents:
                if parent == self.root or self.root not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:  # not empty (or gone): its other files are someone else's
                    break

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        with self._writing(self.root / key, hashlib.sha256(data).hexdigest()) as out:
            out.write(data)

    def rehash(self, keys: Sequence[str], progress: ProgressFn) -> dict[str, StoredObject | None]:
        def one(key: str) -> StoredObject | None:
            path = self.root / key
            if not path.is_file():
                return None
            digest = _hash_file(path, progress)
            return StoredObject(size=path.stat().st_size, sha256=digest)

        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(zip(keys, pool.map(one, keys), strict=True))

    def list_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def held_files(self) -> set[tuple[str, int]]:
        held: set[tuple[str, int]] = set()
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            if folder.is_dir() and is_artifact_id(folder.name):
                held.update((f.relative_to(folder).as_posix(), f.stat().st_size)
                            for f in folder.rglob("*") if f.is_file())
        return held

    @contextlib.contextmanager
    def _writing(self, dest: Path, sha256: str | None) -> Iterator[BinaryIO]:
        """A file object for `dest` that only appears there, complete and synced, on success;
        then `sha256` (what the caller wrote), if given, is remembered for its new identity."""
        with contextlib.ExitStack() as stack:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(open_atomic(dest, mode=0o644))
            except OSError as exc:
                raise ArtifactError(
                    f"cannot write {dest}: {exc.strerror}. To fix: choose a writable store"
                ) from None
            yield out
        if sha256 is not None:
            self.cache.record(dest, FileStamp.of(dest.stat()), sha256, written_here=True)


def _hash_file(path: Path, progress: ProgressFn) -> str:
    digest = hashlib.sha256()
    buf = bytearray(READ_BUFFER_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            progress(n)
    return digest.hexdigest()
