"""How long artifact steps report bytes done: the CLI draws rich bars, tests count, --json drops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ProgressFn = Callable[[int], None]


class Progress(Protocol):
    """Where long steps (hashing, uploading, verifying) report their bytes."""

    @property
    def visible(self) -> bool: ...

    def start(self, description: str, total_bytes: int) -> ProgressFn: ...


class NoProgress:
    """Reports nothing (--json, library use)."""

    visible = False

    def start(self, description: str, total_bytes: int) -> ProgressFn:
        return _ignore


def _ignore(_: int) -> None:
    return None


NO_PROGRESS = NoProgress()
