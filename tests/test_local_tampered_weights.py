"""Issue 10, item 1, on the real local stack (Pulumi engine, llama-server): weights changed in the
file store after the push are never served, not even by the restart of a killed server.

One scenario in order (module scope), in a throwaway project like tests/test_engine_local.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from qinfra.core.artifact_uri import parse_artifact_uri
from tests.test_engine_local import complete, listening, project, qinfra

pytestmark = pytest.mark.real
__all__ = ["project"]  # the module-scoped throwaway project, shared with test_engine_local


def _baseline_gguf(root: Path) -> tuple[Path, str]:
    """The pinned baseline's GGUF in the file store, and the sha256 its manifest records."""
    text = (root / "stacks" / "Pulumi.local.yaml").read_text()
    uri = next(
        line.split("artifact:", 1)[1].strip()
        for line in text.splitlines()
        if "artifact:" in line and "sha256-" in line
    )  # baseline is listed first
    folder = Path(parse_artifact_uri(uri).store.removeprefix("file://"))
    aid = parse_artifact_uri(uri).artifact_id
    manifest = json.loads((folder / aid / "manifest.json").read_bytes())
    [entry] = manifest["files"]
    return folder / aid / entry["path"], entry["sha256"]


def _kill(pid_file: Path, port: int) -> None:
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while listening(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not listening(port)


def test_up_serves(project: dict) -> None:
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert complete(project["port"])["choices"]


def test_a_restart_refuses_tampered_weights(project: dict) -> None:
    gguf, recorded = _baseline_gguf(project["root"])
    before = os.stat(gguf)
    time.sleep(0.01)
    with open(gguf, "r+b") as f:  # one byte, in place, its mtime put back
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(gguf, ns=(before.st_atime_ns, before.st_mtime_ns))
    tampered = hashlib.sha256(gguf.read_bytes()).hexdigest()
    _kill(project["root"] / ".qinfra" / "run" / "local" / "baseline" / "server.pid",
          project["port"] + 1)  # the baseline engine, behind the router

    result = qinfra("up", "--stack", "local", "--yes")
    assert result.exit_code != 0, result.output
    output = " ".join(result.output.split())  # the engine may wrap long lines
    assert "cannot be served" in output and gguf.name in output
    assert f"has sha256 {tampered}" in output and f"says sha256 {recorded}" in output
    assert not listening(project["port"] + 1)  # the tampered file was not served


def test_push_repairs_the_store_and_up_serves_again(project: dict) -> None:
    repaired = qinfra("artifacts", "push", "--stack", "local", "--json")
    assert repaired.exit_code == 0, repaired.output
    out = json.loads(repaired.output)
    assert out["diff"] == ""  # same content, same pin
    assert out["variants"]["baseline"]["uploaded_bytes"] > 0  # the corrupt file was sent again
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert complete(project["port"])["choices"]


def test_destroy(project: dict) -> None:
    assert qinfra("destroy", "--stack", "local", "--yes").exit_code == 0
    assert not listening(project["port"])
