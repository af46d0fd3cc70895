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

from qinfra.artifacts.progress import ProgressFn
from qinfra.artifacts.stores import READ_BUFFER_BYTES, StoredObject, Upload, checked_store_uri
from qinfra.core.errors import ArtifactError
from qinfra.core.fileio import open_atomic

# user.* extended attribute where FileStore records the sha256 (hex) of what it wrote, so a
# re-push need not re-read the file.
SHA256_XATTR = "user.qinfra.sha256"


class FileStore:
    """A directory tree; every write goes to a temporary file renamed into place, so a file at
    its final path is always complete."""

    def __init__(self, uri: str) -> None:
        self._uri = checked_store_uri(uri)
        parsed = urlparse(self._uri)
        assert parsed.scheme == "file", uri  # open_store picks the store by scheme
        self.root = Path(unquote(parsed.path))

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
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        try:
            recorded: str | None = os.getxattr(path, SHA256_XATTR).decode()
        except OSError:  # no xattr support here, or written by hand: hash what is there
            recorded = _hash_file(path, lambda _: None)
        return StoredObject(size=size, sha256=recorded)

    def upload(self, uploads: Sequence[Upload], progress: ProgressFn) -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(self._copy, item, progress) for item in uploads]:
                future.result()

    def _copy(self, item: Upload, progress: ProgressFn) -> None:
        """Copy while hashing the bytes written: the digest is the post-upload verification."""
        dest = self.root / item.key
        with self._writing(dest) as out, open(item.path, "rb") as src:
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
        with contextlib.suppress(OSError):
            os.setxattr(dest, SHA256_XATTR, item.sha256.encode())

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        dest = self.root / key
        with self._writing(dest) as out:
            out.write(data)
        with contextlib.suppress(OSError):
            os.setxattr(dest, SHA256_XATTR, hashlib.sha256(data).hexdigest().encode())

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

    @contextlib.contextmanager
    def _writing(self, dest: Path) -> Iterator[BinaryIO]:
        """A file object for `dest` that only appears there, complete and synced, on success."""
        with contextlib.ExitStack() as stack:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(open_atomic(dest, mode=0o644))
            except OSError as exc:
                raise ArtifactError(
                    f"cannot write {dest}: {exc.strerror}. To fix: choose a writable store"
                ) from None
            yield out


def _hash_file(path: Path, progress: ProgressFn) -> str:
    digest = hashlib.sha256()
    buf = bytearray(READ_BUFFER_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            progress(n)
    return digest.hexdigest()
