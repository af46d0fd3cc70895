"""Test data for the benchmarks: incompressible files of a given size."""

from __future__ import annotations

import os
from pathlib import Path

MIB = 1024 * 1024


def write_random(path: Path, size: int) -> None:
    """`size` random bytes, written a MiB at a time so 1 GiB needs no 1 GiB buffer."""
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
        out.write(os.urandom(size % MIB))
