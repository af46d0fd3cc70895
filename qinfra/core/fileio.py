"""Atomic file replacement: a reader sees the old file or the whole new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` for the block to create; rename it over `path`
    when the block succeeds, remove it whatever happens.

    For files another writer produces (llama-quantize, the GGUF writer). The name is unique and
    the file is created by the caller, so the umask applies (mkstemp's 0600 would survive the
    rename). Beside `path` means the same filesystem, where os.replace is atomic.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_atomic(path: Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file that appears at `path`, complete and synced to disk, only if the block
    succeeds. `mode` sets the permission bits; None keeps those of the file it replaces, or
    the umask's default for a new file. OSError from the filesystem propagates unchanged."""
    path = Path(path)
    keep = path.stat().st_mode & 0o7777 if mode is None and path.exists() else mode
    with replacing(path) as tmp:
        with open(tmp, "xb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if keep is not None:
            os.chmod(tmp, keep)


def write_atomic(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Replace `path` with `data` (str is written as UTF-8, newlines untouched) in one rename;
    an interrupt leaves the old file or the new one. `mode` as in open_atomic."""
    with open_atomic(path, mode=mode) as out:
        out.write(data.encode() if isinstance(data, str) else data)
