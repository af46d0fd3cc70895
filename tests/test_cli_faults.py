"""Faults a careful operator meets, on the real local stack with the real Pulumi engine: reads of a
stack never deployed, edits without consent, a relative model path, a broken provider, a held
lock, a damaged state file, a long history (issue 10, items 4, 6, 7, 9, 12, 13).

One scenario in order (module scope): each step builds on the state the previous one left.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qinfra.core.demomodel import demo_config_json
from tests.local_stack import entered, qinfra, write_project

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A throwaway project: its own Pulumi.yaml (running qinfra's program), stacks, state, store."""
    root = tmp_path_factory.mktemp("faults")
    write_project(root)  # the demo model
    with entered(root):
        yield {"root": root, "stack_file": root / "stacks" / "Pulumi.local.yaml"}


def backend_stacks(root: Path) -> list[str]:
    """The stacks the file backend holds, as `pulumi stack ls` would list them."""
    folder = root / ".qinfra" / "state" / ".pulumi" / "stacks"
    return sorted(p.name.removesuffix(".json") for p in folder.rglob("*.json")) if folder.is_dir() else []


def test_reads_of_a_never_deployed_stack_create_nothing(project):
    for command in ("status", "history"):
        result = qinfra(command, "--stack", "local")
        assert result.exit_code == 3, result.output
        assert "stack local has never been deployed" in result.output
    assert backend_stacks(project["root"]) == []


@pytest.mark.parametrize("args", [
    ("rollback", "--stack", "local"),  # no --yes, no terminal
    ("rollout", "--stack", "local", "--percent", "10"),
])
def test_an_edit_without_a_terminal_leaves_the_stack_file(project, args):
    before = project["stack_file"].read_bytes()
    result = qinfra(*args, stdin="n\n")
    assert result.exit_code == 2, result.output
    assert "pass --yes" in result.output and "was not changed" in result.output
    assert project["stack_file"].read_bytes() == before


def test_artifacts_are_pushed_and_pinned(project):
    result = qinfra("artifacts", "push", "--stack", "local")
    assert result.exit_code == 0, result.output
    assert project["stack_file"].read_text().count(f"file://{project['root']}/store/sha256-") == 2


def _run_in_terminal(argv: list[str], answer: bytes, prompt: bytes) -> tuple[int, str]:
    """Run `argv` on a real pseudo-terminal; type `answer` once `prompt` appears."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                            cwd=Path.cwd(), start_new_session=True)
    os.close(terminal)
    seen, answered = b"", False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            seen += chunk
            if not answered and prompt in seen:
                os.write(controller, answer)
                answered = True
        elif proc.poll() is not None:
            break
    os.close(controller)
    return proc.wait(timeout=60), seen.decode(errors="replace")


@pytest.mark.parametrize("args", [
    ("rollback", "--stack", "local"),
    ("rollout", "--stack", "local", "--percent", "10"),
])
def test_an_edit_answered_no_restores_the_stack_file_exactly(project, args):
    """The preview needs the edit on disk (the engine reads the stack file); a "no" puts back
    every byte, comments included, and leaves no stack in the backend either."""
    before = project["stack_file"].read_bytes()
    code, output = _run_in_terminal([sys.executable, "-m", "qinfra", *args], b"n\n",
                                    b"Apply these changes")
    assert "Apply these changes" in output, output
    assert code == 1, output
    assert "left as it was" in output
    assert project["stack_file"].read_bytes() == before
    assert backend_stacks(project["root"]) == []


def test_a_relative_model_path_plans_and_previews(project, monkeypatch):
    """`./mymodel` means the folder beside Pulumi.yaml for `plan` (run from anywhere) and for
    the Pulumi program (run from its own folder)."""
    root = project["root"]
    (root / "mymodel").mkdir()
    (root / "mymodel" / "config.json").write_text(json.dumps(demo_config_json()))
    text = project["stack_file"].read_text().replace("id: qinfra-demo", "id: ./mymodel")
    (root / "stacks" / "Pulumi.rel.yaml").write_text(text)
    monkeypatch.chdir(root / "stacks")  # plan from a subfolder of the project
    result = qinfra("plan", "--stack", "rel", "--json")
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(root)
    result = qinfra("preview", "--stack", "rel", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["summary"].get("create")
    assert backend_stacks(root) == []  # preview created no stack to stay behind
    (root / "stacks" / "Pulumi.rel.yaml").unlink()


def _lock_files(root: Path) -> dict[Path, dict]:
    held = {}
    for lock in (root / ".qinfra" / "state" / ".pulumi" / "locks").rglob("*.json"):
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            held[lock] = json.loads(lock.read_text())
    return held


def test_a_provider_failure_is_one_line_naming_the_resource(project):
    """A tampered artifact fails inside the local target's dynamic provider: the user reads
    which resource failed and why; the provider's traceback stays in the log."""
    root = project["root"]
    text = project["stack_file"].read_text()
    artifact = text.split("artifact: file://", 1)[1].split("\n", 1)[0].strip()
    (gguf,) = Path(artifact).glob("*.gguf")
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    argv = [sys.executable, "-m", "qinfra", "up", "--stack", "local", "--yes"]
    update = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    held: dict[Path, dict] = {}
    while update.poll() is None:
        held = held or _lock_files(root)
        time.sleep(0.01)
    output = update.communicate()[0].decode()
    assert update.returncode == 1, output
    error = output[output.index("Error: "):]
    assert 'File "' not in error and "Traceback" not in error, error
    assert "local-baseline-artifact failed" in error and "failed verification" in error, error
    log = Path(error.split("Full log: ", 1)[1].split()[0])
    assert 'File "' in log.read_text()  # the traceback is kept, in the log
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    assert held, "the update never took a lock"
    project["lock"] = held


def test_a_concurrent_up_fails_before_any_preview(project):
    """A lock a real update took, put back with a live holder: `up` fails at once, printing no
    preview and no "applying"; `rollback --yes` leaves the stack file as it was."""
    holder = subprocess.Popen(["sleep", "120"])
    before = project["stack_file"].read_bytes()
    try:
        for lock, content in project["lock"].items():
            lock.parent.mkdir(parents=True, exist_ok=True)
            lock.write_text(json.dumps({**content, "pid": holder.pid}))
        for args in (("up",), ("rollback",)):
            started = time.monotonic()
            result = qinfra(*args, "--stack", "local", "--yes")
            assert result.exit_code == 1, result.output
            assert result.output.startswith(("Error: stack is locked", "--- a/")), result.output
            assert "pulumi cancel" in result.output and f"pid {holder.pid}" in result.output
            assert "applying" not in result.output and "plan (deployed" not in result.output
            assert time.monotonic() - started < 30
        assert project["stack_file"].read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
        for lock in project["lock"]:
            lock.unlink(missing_ok=True)


def test_a_truncated_state_file_points_at_the_backup(project):
    state = next((project["root"] / ".qinfra" / "state" / ".pulumi" / "stacks").rglob("local.json"))
    backup = state.with_name("local.json.bak")
    assert backup.is_file()
    intact = state.read_bytes()
    state.write_bytes(intact[: len(intact) // 2])
    for args in (("status",), ("up", "--yes")):
        result = qinfra(*args, "--stack", "local")
        assert result.exit_code == 1, result.output
        first = result.output.splitlines()[0]
        assert first.startswith("Error: the stack's state file is damaged"), result.output
        assert f"cp {backup} {state}" in result.output
    shutil.copyfile(backup, state)  # the advice works
    assert qinfra("status", "--stack", "local", "--json").exit_code == 0


def test_history_is_paged_with_real_numbers_and_failures(project):
    assert qinfra("destroy", "--stack", "local", "--yes").exit_code == 0
    every = json.loads(qinfra("history", "--stack", "local", "--json").output)
    assert [r["version"] for r in every] == list(range(len(every), 0, -1))
    assert "failed" in {r["result"] for r in every}  # the tampered up is on record
    newest = json.loads(qinfra("history", "--stack", "local", "--limit", "1", "--json").output)
    assert newest == every[:1]
    second = json.loads(qinfra("history", "--stack", "local", "--limit", "1", "--page", "2",
                               "--json").output)
    assert second == every[1:2]
    table = qinfra("history", "--stack", "local", "--limit", "1")
    assert f"entries 1-1 of {len(every)}" in table.output and "--page 2" in table.output
