"""`qinfra history` against the real Pulumi engine with more updates than the CLI's page of 10:
every update is listed, once, under the engine's own number (the Pulumi CLI's `stack history`
as the reference), and a number names the same update after later updates.

The updates are refreshes of a stack that holds no resources: real entries of the stack's
history that start no program and no server (a second or two each).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qinfra.deploy.engine import Deployer
from tests.local_stack import entered, qinfra, write_project

pytestmark = pytest.mark.real
FIRST, LATER = 12, 3  # more than Pulumi's default page of 10, then a few more


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("history")
    write_project(root)
    with entered(root, destroy=False):  # nothing is ever deployed: no server to stop
        yield root


def _refresh(times: int) -> None:
    deployer = Deployer("local")
    stack = deployer.stack()
    for i in range(times):
        stack.refresh(message=f"refresh {i}")


def _rows(*args: str) -> list[dict[str, Any]]:
    result = qinfra("history", "--stack", "local", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _engine_numbers(root: Path) -> list[int]:
    """The Pulumi CLI's own numbers for the stack's updates, newest first, in one large page."""
    deployer = Deployer("local")
    binary = deployer._command().command
    out = subprocess.run([binary, "stack", "history", "--stack", "local", "--json",
                          "--page-size", "1000", "--page", "1"], cwd=root, env={
                              **os.environ, **deployer.env()},
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [int(entry.get("version") or 0) for entry in json.loads(out)]


def test_history_lists_every_update_under_a_stable_number(project):
    _refresh(FIRST)
    first = _rows("--limit", "0")
    assert len(first) == FIRST, [r["version"] for r in first]  # not only the newest 10
    assert [r["kind"] for r in first] == ["refresh"] * FIRST
    numbers = [r["version"] for r in first]
    assert numbers == sorted(set(numbers), reverse=True)  # each its own, newest first
    engine = _engine_numbers(project)
    assert len(engine) == FIRST
    if any(engine):  # a backend that numbers its updates: its numbers, not positions
        assert numbers == engine
    else:  # Pulumi's diy backend records 0: numbered from the oldest, 1
        assert numbers == list(range(FIRST, 0, -1))

    _refresh(LATER)
    later = _rows("--limit", "0")
    assert len(later) == FIRST + LATER
    # the updates listed before keep their numbers (and each number its update)
    assert later[LATER:] == first
    assert later[0]["version"] == max(numbers) + LATER
    # the default page (20) holds them all; a page of 10 leaves the oldest to page 2
    assert _rows() == later
    assert [r["version"] for r in _rows("--limit", "10", "--page", "2")] == [
        r["version"] for r in later[10:]]
