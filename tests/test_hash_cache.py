"""The persistent hash cache: trusted only while a file's identity is unchanged, never by verify."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from qinfra.artifacts import filestore
from qinfra.artifacts.fetch import fetch
from qinfra.artifacts.filestore import FileStore
from qinfra.artifacts.hashcache import FileStamp, HashCache
from qinfra.artifacts.hashing import Hasher, SourceFile
from qinfra.artifacts.progress import NO_PROGRESS
from qinfra.artifacts.push import push
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import MIB
from qinfra.artifacts.verify import verify

SIZE = 1 * MIB + 5


def _file(path: Path, fill: bytes = b"a") -> Path:
    path.write_bytes(fill * SIZE)
    return path


def _age(path: Path, seconds: int = 3600) -> None:
    """Move mtime into the past (ctime, which no user can set, stays at now)."""
    old = time.time_ns() - seconds * 1_000_000_000
    os.utime(path, ns=(old, old))


def _hash_fresh(cache_file: Path, path: Path) -> tuple[str, int]:
    """A digest as a new process would get it: a cache loaded from disk and an empty memo.
    Returns the digest and the bytes read to make it."""
    hasher = Hasher(cache=HashCache(cache_file, racy_window_ns=0))
    [hashed] = hasher.hash_files([SourceFile(path.name, path)], NO_PROGRESS)
    return hashed.entry.sha256, hasher.hashed_bytes


def test_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path, cache = _file(tmp_path / "w.bin"), tmp_path / "cache.json"
    first = _hash_fresh(cache, path)
    assert first == (hashlib.sha256(b"a" * SIZE).hexdigest(), SIZE)
    assert _hash_fresh(cache, path) == (first[0], 0)


def test_edit_in_place_with_mtime_restored_misses_the_cache(tmp_path: Path) -> None:
    path, cache = _file(tmp_path / "w.bin"), tmp_path / "cache.json"
    _age(path)
    before = os.stat(path)
    digest, _ = _hash_fresh(cache, path)
    time.sleep(0.01)  # past the filesystem's timestamp tick, as any later edit would be
    with open(path, "r+b") as f:  # same inode, same size
        f.write(b"b")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    changed = _hash_fresh(cache, path)
    assert changed == (hashlib.sha256(b"b" + b"a" * (SIZE - 1)).hexdigest(), SIZE)
    assert changed[0] != digest


def test_touched_file_is_rehashed_and_found_equal(tmp_path: Path) -> None:
    path, cache = _file(tmp_path / "w.bin"), tmp_path / "cache.json"
    digest, _ = _hash_fresh(cache, path)
    time.sleep(0.01)
    os.utime(path)  # touch: new mtime, same bytes
    assert _hash_fresh(cache, path) == (digest, SIZE)
    assert _hash_fresh(cache, path) == (digest, 0)  # and remembered again


def test_replaced_file_is_rehashed(tmp_path: Path) -> None:
    path, cache = _file(tmp_path / "w.bin"), tmp_path / "cache.json"
    _age(path)
    digest, _ = _hash_fresh(cache, path)
    old = os.stat(path)
    other = _file(tmp_path / "new.bin", b"c")
    os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))  # same size and mtime, new inode
    os.replace(other, path)
    assert os.stat(path).st_ino != old.st_ino
    assert _hash_fresh(cache, path) == (hashlib.sha256(b"c" * SIZE).hexdigest(), SIZE)
    assert digest != hashlib.sha256(b"c" * SIZE).hexdigest()


@pytest.mark.parametrize(
    "content",
    [
        b"",  # truncated by a crash
        b"{not json",  # torn write by another tool
        b'{"version": 99, "entries": {}}',  # written by a future qinfra
        b'{"version": 1, "entries": {"/x": [1, 2]}}',  # a damaged row
        b"[]",  # valid JSON, wrong shape
    ],
)
def test_corrupt_cache_file_is_ignored_and_rebuilt(tmp_path: Path, content: bytes) -> None:
    path, cache = _file(tmp_path / "w.bin"), tmp_path / "cache.json"
    cache.write_bytes(content)
    digest, read = _hash_fresh(cache, path)
    assert (digest, read) == (hashlib.sha256(b"a" * SIZE).hexdigest(), SIZE)
    assert _hash_fresh(cache, path) == (digest, 0)  # rewritten whole


def test_recently_changed_file_is_not_remembered(tmp_path: Path) -> None:
    """A file written within the racy window may change again inside one timestamp tick."""
    path = _file(tmp_path / "w.bin")
    cache = HashCache(tmp_path / "cache.json")  # the default window
    assert not cache.record(path, FileStamp.of(os.stat(path)), "0" * 64)
    assert cache.lookup(path, FileStamp.of(os.stat(path))) is None


def test_file_store_rehashes_an_object_edited_in_place(tmp_path: Path) -> None:
    """The file store's own cache entry (what it wrote) dies with any change to the object."""
    src = _file(tmp_path / "w.bin")
    store = FileStore(f"file://{tmp_path}/store", HashCache(tmp_path / "c.json"))
    result = push(fetch(str(src)), store)
    stored = tmp_path / "store" / result.artifact_id / "w.bin"
    before = os.stat(stored)
    time.sleep(0.01)
    with open(stored, "r+b") as f:
        f.write(b"z")
    os.utime(stored, ns=(before.st_atime_ns, before.st_mtime_ns))
    obj = store.stat(f"{result.artifact_id}/w.bin")
    assert obj is not None and obj.sha256 == hashlib.sha256(b"z" + b"a" * (SIZE - 1)).hexdigest()
    assert not verify(result.uri).ok  # verify reads every byte, cache or not


def test_repush_with_a_fresh_process_reads_no_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`qinfra up` after a push: the source and the file store are both answered by the cache."""
    src = _file(tmp_path / "w.bin")
    _age(src)
    cache_file = tmp_path / "cache.json"

    def fresh_push() -> tuple[int, int]:
        cache = HashCache(cache_file, racy_window_ns=0)
        hasher = Hasher(cache=cache)
        result = push(fetch(str(src)), open_store(f"file://{tmp_path}/store", cache=cache),
                      hasher=hasher)
        return hasher.hashed_bytes, result.uploaded_bytes

    assert fresh_push() == (SIZE, SIZE)
    store_reads: list[Path] = []
    real_hash_file = filestore._hash_file

    def counting(path: Path, progress: filestore.ProgressFn) -> str:
        store_reads.append(path)
        return real_hash_file(path, progress)

    monkeypatch.setattr(filestore, "_hash_file", counting)
    assert fresh_push() == (0, 0)
    assert store_reads == []
