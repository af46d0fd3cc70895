"""How long artifact steps report bytes done: the CLI draws rich bars, tests count, --json drops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ProgressFn = Callable[[int], None]
# The total of a step whose length is not known (a recipe's tool run): one call ends it.
UNKNOWN = -1


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
