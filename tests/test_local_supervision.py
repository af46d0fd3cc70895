"""The local stack's long-lived servers, on the demo model with the real Pulumi engine,
llama-servers, router and Prometheus: none holds the invoking shell's secrets, a killed engine is
restarted by its supervisor (its weights re-checked first), and a deliberate rollback or destroy
restarts nothing.

One scenario in order (module scope): each step builds on the state the previous one left.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qinfra.deploy.processes import Identity, alive, identity, running
from qinfra.deploy.stackfile import update_stack_file
from qinfra.deploy.targets import engine_supervisor
from tests.local_stack import entered, listening, qinfra, write_project

pytestmark = pytest.mark.real
# Set in the shell that runs `up`: no server the stack starts may hold any of them.
MARKERS = {
    "QINFRA_TEST_SECRET_MARKER": "qinfra-marker-generic-7f3a",
    "AWS_SECRET_ACCESS_KEY": "qinfra-marker-aws-7f3a",
    "HF_TOKEN": "qinfra-marker-hf-7f3a",
    "PULUMI_CONFIG_PASSPHRASE": "qinfra-marker-passphrase-7f3a",
}
# Enough analysis for the local target to run its own Prometheus (a server like the others).
ANALYSIS = {"scrape_interval_s": 0.5, "initial_delay_s": 0.5, "interval_s": 6.0, "windows": 1,
            "min_requests": 10}
RESTART_BOUND_S = 30.0  # backoff 1 s + the demo model's start and warm answer, on 2 busy cores
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("supervision")
    port = write_project(root)
    stack = root / "stacks" / "Pulumi.local.yaml"
    update_stack_file(stack, {"qinfra:analysis": ANALYSIS})
    # the shipped salt is for the empty passphrase: this stack gets one from the marker instead
    stack.write_text("".join(line for line in stack.read_text().splitlines(keepends=True)
                             if not line.startswith("encryptionsalt:")))
    with entered(root, env=MARKERS):
        yield {"root": root, "port": port, "run": root / ".qinfra" / "run" / "local"}
    if FIGURES:
        print(f"\nsupervision figures: {json.dumps(FIGURES)}")


def _recorded(folder: Path) -> Identity:
    found = Identity.from_json(json.loads((folder / engine_supervisor.IDENTITY_FILE).read_text()))
    assert running(found), f"{folder.name}: its recorded process is not running"
    assert found is not None
    return found


def _session(sid: int) -> list[int]:
    """Every live process in session `sid` (a server and whatever it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid:  # field 6: session id
                found.append(int(entry.name))
    return found


def _exe(pid: int) -> str:
    return Path(os.readlink(f"/proc/{pid}/exe")).name


def _engine_pid(folder: Path) -> int:
    pid = int((folder / engine_supervisor.PID_FILE).read_text())
    assert _exe(pid).startswith("llama-server"), f"{folder}/server.pid names {_exe(pid)}"
    return pid


def _ask(port: int, user: str, timeout_s: float = 30) -> tuple[int, str]:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", "X-Qinfra-User": user})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            response.read()
            return response.status, response.headers.get("x-qinfra-variant", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("x-qinfra-variant", "")
    except OSError:
        return 0, ""


def _health(project: dict[str, Any]) -> dict[str, engine_supervisor.EngineHealth]:
    """Per variant the stack file gives traffic, its engine's health (what `status` asks)."""
    from qinfra.core.spec import load_stack

    return engine_supervisor.stack_engines_health(load_stack("local"), project["run"].parent)


def test_up_from_a_shell_holding_secrets(project):
    for name, value in MARKERS.items():
        assert os.environ[name] == value  # the shell `up` runs from holds them
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert all(h.healthy for h in _health(project).values()), _health(project)


def test_no_server_holds_the_shells_secrets(project):
    folders = {name: project["run"] / name for name in ("baseline", "quantized", "router",
                                                        "prometheus")}
    missing = [name for name, folder in folders.items()
               if not (folder / engine_supervisor.IDENTITY_FILE).is_file()]
    assert not missing, f"the stack started no {missing} (nothing to check)"
    checked: dict[str, list[str]] = {}
    for name, folder in folders.items():
        for pid in _session(_recorded(folder).pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                exe = _exe(pid)
            except OSError:
                continue  # ended meanwhile
            env = dict(kv.split(b"=", 1) for kv in environ.split(b"\0") if b"=" in kv)
            held = sorted({k for k, v in MARKERS.items()
                           if k.encode() in env or any(v.encode() in x for x in env.values())})
            assert not held, f"{name}: pid {pid} ({exe}) holds {held}"
            assert b"PATH" in env, f"{name}: pid {pid} ({exe}) has no PATH"
            checked.setdefault(name, []).append(exe)
    engines = [exe for name in ("baseline", "quantized") for exe in checked[name]]
    assert sum(exe.startswith("llama-server") for exe in engines) == 2, checked
    assert any(exe.startswith("prometheus") for exe in checked["prometheus"]), checked


def test_a_killed_engine_is_restarted_and_serves_again(project):
    folder = project["run"] / "quantized"
    supervisor, engine = _recorded(folder), _engine_pid(folder)
    users = [f"u{i}" for i in range(60)]
    quantized_users = [u for u in users if _ask(project["port"], u)[1] == "quantized"][:4]
    assert quantized_users, "no user is routed to the quantized variant at 50%"
    counts = {"sent": 0, "failed": 0}
    stop = threading.Event()

    def load(user: str) -> None:
        while not stop.is_set():
            status, _ = _ask(project["port"], user, timeout_s=10)
            counts["sent"] += 1
            counts["failed"] += status != 200
            time.sleep(0.02)

    workers = [threading.Thread(target=load, args=(u,), daemon=True) for u in quantized_users]
    for w in workers:
        w.start()
    time.sleep(1.0)
    before = dict(counts)
    os.kill(engine, signal.SIGKILL)  # proven a llama-server above; not qinfra's doing
    killed = time.monotonic()
    while alive(engine) and time.monotonic() - killed < 5:
        time.sleep(0.01)
    assert not _health(project)["quantized"].healthy  # the dead engine is said, at once
    while not _health(project)["quantized"].healthy:
        assert time.monotonic() - killed < RESTART_BOUND_S, (
            f"the quantized engine did not come back within {RESTART_BOUND_S} s: "
            f"{_health(project)['quantized']}; {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.05)
    back = time.monotonic() - killed
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    FIGURES["outage_s"] = round(back, 2)
    FIGURES["requests_through_router_during_kill"] = counts["sent"] - before["sent"]
    FIGURES["failed_through_router"] = counts["failed"] - before["failed"]
    assert _ask(project["port"] + 2, "direct")[0] == 200  # the engine itself answers
    health = _health(project)["quantized"]
    assert health.restarts == 1 and health.last_exit == "signal 9", health
    assert _recorded(folder) == supervisor  # the same supervisor, a new engine
    assert _engine_pid(folder) != engine
    assert "restart 1" in (folder / engine_supervisor.RESTART_LOG).read_text()
    assert _health(project)["baseline"].restarts == 0


def test_a_restart_refuses_tampered_weights(project):
    from tests.test_local_tampered_weights import _baseline_gguf  # the store's layout, one place

    gguf, _ = _baseline_gguf(project["root"])
    folder = project["run"] / "baseline"
    before = os.stat(gguf)
    with open(gguf, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(gguf, ns=(before.st_atime_ns, before.st_mtime_ns))
    supervisor = _recorded(folder)
    try:
        os.kill(_engine_pid(folder), signal.SIGKILL)
        deadline = time.monotonic() + RESTART_BOUND_S
        while running(supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(supervisor), "the supervisor neither restarted nor refused"
        assert not listening(project["port"] + 1)  # the tampered file was not served
        assert "not restarted" in (folder / engine_supervisor.RESTART_LOG).read_text()
        assert not _health(project)["baseline"].healthy
    finally:
        with open(gguf, "r+b") as f:  # put the byte back: the artifact is whole again
            f.seek(before.st_size // 2)
            f.write(byte)
        os.utime(gguf, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = qinfra("up", "--stack", "local", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert _health(project)["baseline"].healthy


def test_a_rollback_stops_the_quantized_engine_for_good(project):
    folder = project["run"] / "quantized"
    supervisor, engine = _recorded(folder), _engine_pid(folder)
    log = (folder / engine_supervisor.RESTART_LOG).read_text()
    result = qinfra("rollback", "--stack", "local", "--yes")
    assert result.exit_code == 0, result.output
    time.sleep(engine_supervisor.BACKOFF_S[0] + 3)  # longer than a restart would wait
    assert not running(supervisor) and identity(engine) is None
    assert not listening(project["port"] + 2)
    assert not (folder / engine_supervisor.PID_FILE).exists()
    assert (folder / engine_supervisor.RESTART_LOG).read_text() == log  # no restart logged


def test_destroy_stops_every_server_for_good(project):
    folders = [project["run"] / n for n in ("baseline", "router", "prometheus")]
    sessions = {f.name: _recorded(f).pid for f in folders}
    engine = _engine_pid(project["run"] / "baseline")
    result = qinfra("destroy", "--stack", "local", "--yes")
    assert result.exit_code == 0, result.output
    time.sleep(engine_supervisor.BACKOFF_S[0] + 3)
    for name, sid in sessions.items():
        assert _session(sid) == [], f"{name}: processes left in its session"
    assert not alive(engine)
    for port in (project["port"], project["port"] + 1, project["port"] + 2):
        assert not listening(port)
