"""Faults on the real local stack (real Pulumi engine, real llama-servers): taken ports, a pid
that a stranger took over, a `qinfra up` killed mid-apply, and the API key kept out of every
process environment.

One scenario in order (module scope): each step builds on the state the previous one left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qinfra.deploy.processes import Identity, alive, identity
from qinfra.deploy.targets import local
from tests.local_stack import entered, qinfra, write_project

pytestmark = pytest.mark.real
KEY = "sk-local-faults-not-a-real-key"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A throwaway project whose local stack requires an API key (a Pulumi secret), with its
    artifacts pushed and pinned."""
    root = tmp_path_factory.mktemp("faults")
    port = write_project(root)  # the router on port, the engines on port + 1 and port + 2
    with entered(root):
        from pulumi import automation as auto

        from qinfra.deploy.engine import Deployer

        pushed = qinfra("artifacts", "push", "--stack", "local")
        assert pushed.exit_code == 0, pushed.output
        # how a user sets it: `pulumi config set --secret qinfra:api_key ...`
        Deployer("local").stack().set_config("qinfra:api_key", auto.ConfigValue(KEY, secret=True))
        assert KEY not in (root / "stacks" / "Pulumi.local.yaml").read_text()
        yield {"root": root, "port": port, "run": root / ".qinfra" / "run"}


def _request(port: int, key: str | None) -> int:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _server(project: dict[str, Any], variant: str) -> Identity:
    recorded = local.recorded_server(project["run"] / "local" / variant)
    assert recorded is not None and identity(recorded.pid) == recorded, variant
    return recorded


@contextlib.contextmanager
def _stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process whose pid a stale record will name."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _name_stranger(folder: Path, stranger: int, was: Identity) -> None:
    """The pid files as a crash leaves them once `stranger` has taken over the pid: the pid is
    the stranger's, the start time is still the dead server's."""
    (folder / local.PID_FILE).write_text(f"{stranger}\n")
    fake = Identity(stranger, was.start_ticks, was.boot_id)
    (folder / local.IDENTITY_FILE).write_text(json.dumps(fake.to_json()))


def test_taken_ports_fail_at_once_naming_every_variant(project):
    """Both ports held: `up` fails in seconds (not after the 61 s warm-up) with both errors."""
    held = []
    for port in (project["port"] + 1, project["port"] + 2):  # the engines, behind the router
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        held.append(s)
    try:
        started = time.monotonic()
        result = qinfra("up", "--stack", "local", "--yes")
        assert result.exit_code == 1, result.output
        assert time.monotonic() - started < 45
        assert f"baseline: port {project['port'] + 1} on 127.0.0.1 is taken" in result.output
        assert f"quantized: port {project['port'] + 2} on 127.0.0.1 is taken" in result.output
    finally:
        for s in held:
            s.close()
    assert not list(project["run"].rglob(local.PID_FILE))


def test_the_api_key_reaches_the_server_as_a_0600_file_only(project):
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    for variant, port in (("baseline", project["port"] + 1), ("quantized", project["port"] + 2)):
        server = _server(project, variant)
        environ = Path(f"/proc/{server.pid}/environ").read_bytes()
        assert KEY.encode() not in environ and b"LLAMA_API_KEY=" not in environ
        key_file = project["run"] / "local" / variant / local.KEY_FILE
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert _request(port, None) == 401
        assert _request(port, KEY) == 200


def test_a_server_that_exits_fails_the_start_at_once(project, tmp_path):
    """The warm-up watches the server: one that cannot bind its port ends the wait at once."""
    folder = project["run"] / "local" / "baseline"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = {**local._server_env({}, folder / local.KEY_FILE),
               "QINFRA_PORT": str(held.getsockname()[1])}
        log = tmp_path / "server.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(["/bin/sh", str(folder / "server.sh")], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started = time.monotonic()
        try:
            with pytest.raises(RuntimeError, match="baseline exited with code"):
                local._await_warm(proc, folder / "warmup.sh", env, "baseline", log)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.monotonic() - started < 20


def _set_state(variant: str, pid: int, ident: Identity) -> None:
    """Make the recorded state name `pid` for the variant's server (a pid reused since)."""
    from qinfra.deploy.engine import Deployer

    stack = Deployer("local").stack()
    exported = stack.export_stack()
    for resource in exported.deployment["resources"]:
        if resource["urn"].endswith(f"::local-{variant}"):
            resource["outputs"]["pid"] = pid
            resource["outputs"]["identity"] = Identity(pid, ident.start_ticks,
                                                       ident.boot_id).to_json()
    stack.import_stack(exported)


def test_a_reused_pid_is_never_signalled_by_up(project):
    """The quantized server dies; its pid file and the state now name a stranger's process."""
    folder = project["run"] / "local" / "quantized"
    dead = _server(project, "quantized")
    os.killpg(dead.pid, signal.SIGKILL)
    with _stranger() as stranger:
        _name_stranger(folder, stranger.pid, dead)
        _set_state("quantized", stranger.pid, dead)
        result = qinfra("up", "--stack", "local", "--yes", "--json")
        assert result.exit_code == 0, result.output
        assert stranger.poll() is None and alive(stranger.pid)
        assert _server(project, "quantized").pid != stranger.pid
        assert _request(project["port"] + 2, KEY) == 200


def _session(sid: int) -> list[Identity]:
    """Live processes of session `sid` (an update started with start_new_session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and (ident := identity(int(entry.name))) is not None:
                    found.append(ident)
    return found


def test_a_killed_up_leaves_no_engine_process_behind(project):
    """SIGKILL the whole group of `qinfra up` while a server warms up: the next `up` ends the
    dynamic provider and program it left, says so, and converges."""
    stack = project["root"] / "stacks" / "Pulumi.local.yaml"
    stack.write_text(stack.read_text().replace("threads: 2", "threads: 1"))
    update = subprocess.Popen([sys.executable, "-m", "qinfra", "up", "--stack", "local", "--yes",
                               "--json"], cwd=project["root"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while update.poll() is None and time.monotonic() < deadline and not _warming(project):
        time.sleep(0.05)
    os.killpg(update.pid, signal.SIGKILL)
    update.wait()
    left = [p for p in _session(update.pid) if p.pid != update.pid]
    assert left, "the killed update left no process: nothing to prove"
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert "ended the dynamic provider" in result.output
    time.sleep(0.5)  # warm-up children of the ended provider go with its process group
    assert [p for p in left if identity(p.pid) == p] == []
    for port in (project["port"] + 1, project["port"] + 2):
        assert _request(port, KEY) == 200


def _warming(project: dict[str, Any]) -> bool:
    """A warm-up script of this project runs: the update is mid-apply."""
    script = str(project["run"] / "local").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if script in cmdline and b"warmup.sh" in cmdline:
                    return True
    return False


def test_destroy_spares_a_stranger_and_leaves_no_pid_or_key_file(project):
    folder = project["run"] / "local" / "baseline"
    server = _server(project, "baseline")
    with _stranger() as stranger:
        # a stale record beside the live one: a crash's leftover whose pid was reused
        _name_stranger(project["run"] / "local" / "quantized", stranger.pid,
                       _server(project, "quantized"))
        result = qinfra("destroy", "--stack", "local", "--yes")
        assert result.exit_code == 0, result.output
        assert stranger.poll() is None and alive(stranger.pid)
    assert not alive(server.pid)
    for name in (local.PID_FILE, local.IDENTITY_FILE, local.KEY_FILE):
        assert not list(project["run"].rglob(name)), name
    assert not (folder / local.KEY_FILE).exists()


def test_up_asks_its_question_with_the_stacks_api_key(project):
    """Issue 26.13: with qinfra:api_key set, the question `up` ends with got 401 from both
    variants and `up` exited 0. It asks with the key the engines were started with (never
    printed: the curl names $QINFRA_API_KEY), and an answer that fails fails `up`."""
    result = qinfra("up", "--stack", "local", "--yes")
    assert result.exit_code == 0, result.output
    answers = [line for line in result.output.splitlines() if "->" in line]
    assert [line.split()[0] for line in answers] == ["baseline", "quantized"], result.output
    assert not any("failed" in line for line in answers), result.output
    assert "Authorization: Bearer $QINFRA_API_KEY" in result.output
    assert KEY not in result.output


def test_up_fails_when_its_question_is_not_answered(project, monkeypatch):
    """A wrong key (as a stale key file would give): both answers fail, and so does `up`."""
    import qinfra.deploy.demo_question as demo

    monkeypatch.setattr(demo, "api_key", lambda run_dir, stack: "sk-wrong")
    result = qinfra("up", "--stack", "local", "--yes")
    assert result.exit_code == 1, result.output
    assert "HTTP 401" in result.output
    assert "deployed, but baseline, quantized did not answer" in result.output
