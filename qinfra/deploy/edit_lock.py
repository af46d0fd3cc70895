"""One stack file edited by one qinfra change at a time: an advisory lock held from the edit
through the preview and the apply, so two concurrent changes can never deploy a file that
neither of them previewed. The kernel drops it when its holder dies: no stale lock to clear."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from qinfra.core.errors import DeployError

_POLL_S = 0.2


def lock_path(state_root: Path, stack: str) -> Path:
    return state_root / "locks" / f"{stack}.edit.lock"


def _holder(path: Path) -> str:
    try:
        doc = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another qinfra command"
    return f"pid {doc.get('pid', '?')} ({doc.get('command', '?')}, since {doc.get('since', '?')})"


@contextlib.contextmanager
def edit_lock(state_root: Path, stack: str, wait_s: float = 0.0,
              waiting: object = None) -> Iterator[None]:
    """Hold stack `stack`'s edit lock for the block. Waits up to `wait_s` for a holder (calling
    `waiting(holder)` once, when there is one), then fails naming the holder; the file is left
    as it was because nothing was edited yet."""
    path = lock_path(state_root, stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DeployError(
                        f"stack {stack} is being changed by {_holder(path)}; nothing was edited. "
                        "Wait for it to finish (or stop it), then run this again") from None
                if not told and callable(waiting):
                    waiting(_holder(path))
                    told = True
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": " ".join(
            [Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
