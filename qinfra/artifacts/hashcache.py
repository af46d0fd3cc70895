"""A persistent sha256 cache keyed by a file's identity, so an unchanged artifact is not re-read.

Like git's index, rsync and restic, a digest is trusted only while the file's identity (device,
inode, size, mtime_ns and ctime_ns) is exactly what it was when the bytes were hashed. ctime
cannot be set back by a user, so an in-place edit with its mtime restored still misses. The cache
is an optimisation for push and server start only: `qinfra artifacts verify` never reads it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path

from qinfra.core.fileio import write_atomic

CACHE_VERSION = 1
HASH_CACHE_NAME = "hash-cache.json"
# A file changed within this long before it was hashed may change again inside the same
# timestamp tick without its mtime or ctime moving (git's "racily clean" entries). Such digests
# are used for this run but not remembered. 1 s covers filesystems with whole-second times.
RACY_WINDOW_NS = 1_000_000_000


@dataclass(frozen=True)
class FileStamp:
    """What identifies a file's content without reading it; any change means re-hash."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """Digests by absolute path and stamp, loaded from and saved to one JSON file.

    A missing, unreadable or corrupt file reads as an empty cache (rebuilt on the next save),
    never as an error: losing it costs one re-hash. Saves are atomic renames; with two writers
    the last one wins, which again only costs a re-hash. Thread-safe.
    """

    def __init__(self, path: Path | None, racy_window_ns: int = RACY_WINDOW_NS) -> None:
        self.path = path
        self.racy_window_ns = racy_window_ns
        self._entries: dict[str, tuple[FileStamp, str]] = _load(path) if path else {}
        self._dirty = False
        self._lock = threading.Lock()

    def lookup(self, path: Path, stamp: FileStamp) -> str | None:
        """The digest recorded for `path` when it had exactly `stamp`, else None."""
        with self._lock:
            found = self._entries.get(str(Path(path).absolute()))
        return found[1] if found and found[0] == stamp else None

    def record(
        self, path: Path, stamp: FileStamp, sha256: str, *, written_here: bool = False
    ) -> bool:
        """Remember `sha256` for `path` at `stamp`, unless the file changed too recently to
        trust its timestamps (see RACY_WINDOW_NS). True when remembered.

        `written_here`: this process wrote those bytes to a private temporary file and just
        renamed it to `path`, so no other writer can have changed it unseen; no window applies.
        """
        recent = time.time_ns() - max(stamp.mtime_ns, stamp.ctime_ns) < self.racy_window_ns
        if recent and not written_here:
            self.forget(path)
            return False
        with self._lock:
            self._entries[str(Path(path).absolute())] = (stamp, sha256)
            self._dirty = True
        return True

    def forget(self, path: Path) -> None:
        with self._lock:
            if self._entries.pop(str(Path(path).absolute()), None) is not None:
                self._dirty = True

    def save(self) -> None:
        """Write the cache if anything changed; a failure to write is ignored (it is a cache)."""
        with self._lock:
            if self.path is None or not self._dirty:
                return
            doc = {
                "version": CACHE_VERSION,
                "entries": {p: [*astuple(s), d] for p, (s, d) in self._entries.items()},
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, json.dumps(doc, separators=(",", ":")))
            except OSError:
                return
            self._dirty = False


def _load(path: Path) -> dict[str, tuple[FileStamp, str]]:
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("version") != CACHE_VERSION:
            return {}
        entries: dict[str, tuple[FileStamp, str]] = {}
        for name, row in doc["entries"].items():
            *ids, digest = row
            if len(ids) != 5 or not all(type(i) is int for i in ids) or not _is_hex(digest):
                continue  # a damaged row is dropped, the rest still count
            entries[str(name)] = (FileStamp(*ids), digest)
        return entries
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _is_hex(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value)
    )
