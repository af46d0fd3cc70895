"""The product as users meet it, with the real Pulumi engine, real llama-servers and the router
in front of them: up, serve, restore a killed server, refuse a concurrent up, roll back as a
stack-file diff, history, destroy. The stack is the shipped local one on the demo model.

One scenario in order (module scope): each step builds on the state the previous one left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qinfra.deploy.processes import alive
from tests.local_stack import entered, free_ports, listening, qinfra, write_project

pytestmark = pytest.mark.real
# what other scenario modules take from here (free_ports: test_auto_rollout and the shadow test)
__all__ = ["complete", "free_ports", "listening", "project", "qinfra"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A throwaway project: its own Pulumi.yaml (running qinfra's program), stacks, state, store."""
    root = tmp_path_factory.mktemp("project")
    port = write_project(root)
    with entered(root):
        yield {"root": root, "port": port, "pids": []}


def complete(port: int, user: str | None = None) -> dict:
    """One chat completion at `port`; through the router, its x-qinfra-variant as `_variant`."""
    body = json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}).encode()
    headers = {"Content-Type": "application/json"} | ({"X-Qinfra-User": user} if user else {})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as response:
        return {**json.loads(response.read()), "_variant": response.headers.get("x-qinfra-variant")}


def test_broken_stack_file_is_refused_before_the_engine_starts(project):
    path = project["root"] / "stacks" / "Pulumi.broken.yaml"
    path.write_text(
        (project["root"] / "stacks" / "Pulumi.local.yaml")
        .read_text()
        .replace("stage: ab_test", "stage: halfway")
    )
    result = qinfra("up", "--stack", "broken", "--yes")
    assert result.exit_code == 2
    assert "qinfra:rollout.stage: got 'halfway'" in result.output
    assert not (project["root"] / ".qinfra").exists()  # no engine, no state, no logs
    path.unlink()


def test_up_serves_both_variants(project):
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)["outputs"]
    variants = outputs["variants"]
    assert variants["baseline"]["weight_percent"] == 50 == variants["quantized"]["weight_percent"]
    assert variants["quantized"]["format"] == "gguf-q4_k_m"
    assert outputs["endpoint"] == f"http://127.0.0.1:{project['port']}"  # the router
    for name, port in (("baseline", project["port"] + 1), ("quantized", project["port"] + 2)):
        assert variants[name]["endpoint"] == f"http://127.0.0.1:{port}"
        assert variants[name]["artifact_uri"].startswith(f"file://{project['root']}/store/sha256-")
        assert complete(port)["choices"][0]["message"]["role"] == "assistant"
    run = project["root"] / ".qinfra" / "run" / "local"
    project["pids"] += [int((run / v / "server.pid").read_text())
                        for v in ("baseline", "quantized", "router")]
    # through the router: each user keeps its variant, and at 50% both variants serve someone
    seen = {complete(project["port"], f"user-{i}")["_variant"] for i in range(12)}
    assert seen == {"baseline", "quantized"}
    first = complete(project["port"], "user-1")["_variant"]
    assert all(complete(project["port"], "user-1")["_variant"] == first for _ in range(3))
    # up pinned the artifacts it pushed into the stack file
    text = (project["root"] / "stacks" / "Pulumi.local.yaml").read_text()
    assert text.count("artifact: file://") == 2


def test_status_json_has_the_variants_output(project):
    result = qinfra("status", "--stack", "local", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    outputs = data["outputs"]
    assert set(outputs["variants"]) == {"baseline", "quantized"}
    assert outputs["stage"] == "ab_test"
    assert data["health"] == {"baseline": "ok", "quantized": "ok"}
    assert outputs["endpoint"] == f"http://127.0.0.1:{project['port']}"
    assert data["endpoint_health"] == "ok"
    text = qinfra("status", "--stack", "local")
    assert text.exit_code == 0
    assert text.output.splitlines()[0] == f"endpoint: {outputs['endpoint']}"  # the front door first


def test_preview_compares_with_the_plan_up_recorded(project):
    result = qinfra("preview", "--stack", "local", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]
    assert plan["deployed"] == {"state": "recorded", "problem": None}
    assert plan["usd_per_hour"]["before"] == plan["usd_per_hour"]["after"]
    for name, delta in plan["variants"].items():
        assert delta["before"] == delta["after"], name  # the stack file is what was deployed
    assert plan["variants"]["baseline"]["after"]["sized_for_percent"] == 100
    # the router's row: as deployed, one process on the stack's port
    assert plan["router"]["before"] == plan["router"]["after"]
    assert plan["router"]["after"]["port"] == project["port"]
    assert plan["router"]["after"]["replicas"] == 1


def test_a_killed_server_is_restored_by_the_next_up(project):
    pid_file = project["root"] / ".qinfra" / "run" / "local" / "quantized" / "server.pid"
    pid = int(pid_file.read_text())
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while listening(project["port"] + 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not listening(project["port"] + 2)
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert complete(project["port"] + 2)["choices"]
    assert int(pid_file.read_text()) != pid
    project["pids"].append(int(pid_file.read_text()))


def _capture_lock(project: dict, argv: list[str], kill: bool) -> tuple[subprocess.Popen, dict]:
    """Start an update in its own process group and copy the lock files it takes."""
    update = subprocess.Popen(argv, cwd=project["root"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    locks = project["root"] / ".qinfra" / "state" / ".pulumi" / "locks"
    held: dict[Path, dict] = {}
    deadline = time.monotonic() + 120
    while not held and update.poll() is None and time.monotonic() < deadline:
        for lock in locks.rglob("*.json"):
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                held[lock] = json.loads(lock.read_text())
        time.sleep(0.01)
    if kill:
        os.killpg(update.pid, signal.SIGKILL)
    update.communicate(timeout=300)
    assert held, "the update never took a lock"
    return update, held


def test_a_concurrent_up_is_refused_by_the_lock(project):
    """A second up while another holds the lock fails fast, naming who holds it and since when.

    The lock is the one a real update took, put back after that update ended with its holder
    standing for a still-running update (a live process), so the refusal does not depend on
    how fast the first update was.
    """
    stack = project["root"] / "stacks" / "Pulumi.local.yaml"
    stack.write_text(stack.read_text().replace("threads: 2", "threads: 1"))
    argv = [sys.executable, "-m", "qinfra", "up", "--stack", "local", "--yes", "--json"]
    first, held = _capture_lock(project, argv, kill=False)
    assert first.returncode == 0
    holder = subprocess.Popen(["sleep", "120"])
    try:
        for lock, content in held.items():
            lock.write_text(json.dumps({**content, "pid": holder.pid}))
        started = time.monotonic()
        second = qinfra("up", "--stack", "local", "--yes")
        assert second.exit_code == 1
        assert "locked" in second.output and "pulumi cancel" in second.output
        assert f"pid {holder.pid}" in second.output  # who holds it (and since when, beside it)
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
        for lock in held:
            lock.unlink(missing_ok=True)


def test_an_interrupted_up_is_repaired_by_the_next(project):
    """SIGKILL an update mid-way (qinfra, the engine and the provider): the next up clears the
    dead process's lock, stops any server the interrupted update left, and serves both again."""
    stack = project["root"] / "stacks" / "Pulumi.local.yaml"
    stack.write_text(stack.read_text().replace("threads: 1", "threads: 2"))
    argv = [sys.executable, "-m", "qinfra", "up", "--stack", "local", "--yes", "--json"]
    _, held = _capture_lock(project, argv, kill=True)
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    for lock in held:
        assert not lock.exists()
    for port in (project["port"], project["port"] + 1, project["port"] + 2):
        assert complete(port)["choices"]
    run = project["root"] / ".qinfra" / "run" / "local"
    project["pids"] += [int((run / v / "server.pid").read_text()) for v in ("baseline", "quantized")]


def test_rollback_is_a_stack_file_diff_and_a_baseline_only_deployment(project):
    result = qinfra("rollback", "--stack", "local", "--yes")
    assert result.exit_code == 0, result.output
    diff = [line for line in result.output.splitlines() if line[:1] in "+-"]
    assert diff == ["--- a/Pulumi.local.yaml", "+++ b/Pulumi.local.yaml",
                    "-    stage: ab_test", "-    quantized_percent: 50",
                    "+    stage: rollback", "+    quantized_percent: 0"]
    text = (project["root"] / "stacks" / "Pulumi.local.yaml").read_text()
    assert "stage: rollback" in text and "quantized_percent: 0" in text
    assert "# The embedded default" in text  # comments survive the rewrite
    assert complete(project["port"] + 1)["choices"]
    assert complete(project["port"], "user-1")["_variant"] == "baseline"  # the router: 0% quantized
    assert not listening(project["port"] + 2)
    outputs = json.loads(qinfra("status", "--stack", "local", "--json").output)["outputs"]
    assert outputs["variants"]["baseline"]["weight_percent"] == 100
    assert outputs["variants"]["quantized"]["replicas"] == 0
    health = json.loads(qinfra("status", "--stack", "local", "--json").output)["health"]
    assert health == {"baseline": "ok"}  # the quantized variant has no endpoint at 0%


def test_history_shows_every_update(project):
    result = qinfra("history", "--stack", "local", "--json")
    rows = json.loads(result.output)
    updates = [r for r in rows if r["kind"] == "update"]
    assert [r["stage"] for r in updates][:2] == ["rollback", "ab_test"]
    assert updates[0]["traffic_percent"] == {"baseline": 100, "quantized": 0}
    assert updates[-1]["traffic_percent"] == {"baseline": 50, "quantized": 50}
    # every update its own number, newest first (the file backend records none itself)
    assert [r["version"] for r in rows] == list(range(len(rows), 0, -1))
    assert all(r["artifacts"]["quantized"].startswith("file://") for r in updates)


def test_destroy_stops_every_process(project):
    result = qinfra("destroy", "--stack", "local", "--yes")
    assert result.exit_code == 0, result.output
    assert not listening(project["port"])
    assert not list((project["root"] / ".qinfra" / "run").rglob("server.pid"))
    for pid in project["pids"]:
        assert not alive(pid)
