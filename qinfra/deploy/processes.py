"""Processes qinfra starts and stops by id, and only by an id it can prove is still theirs.

A pid alone names whichever process holds it now: after a crash or a reboot it may be a
stranger's. So qinfra records a process's identity (pid, start time in clock ticks after boot,
boot id) when it starts one, and signals only a process whose identity still matches. Processes
of an update that was killed (the engine's dynamic provider and the program's language host)
record themselves too, so the next update can end the ones whose engine is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# What a long-lived server (llama-server, its supervisor and warm-up, the router, Prometheus) may
# take from the environment of whoever ran `qinfra up`: where things are, the locale, and the
# runtime knobs of the engine's libraries; nothing else, so no credential (AWS keys, HF_TOKEN,
# PULUMI_CONFIG_PASSPHRASE) outlives the command in a server's /proc/PID/environ.
SERVER_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "LD_LIBRARY_PATH",  # a llama.cpp build with shared ggml libraries finds them through it
    "PYTHONPATH",  # the router and the supervisor run qinfra from the same tree as the CLI
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
})
# LC_ALL, LC_CTYPE...; OpenMP's thread settings (OMP_NUM_THREADS...), ggml's runtime switches
# (GGML_CUDA_..., GGML_VK_...): settings, never credentials.
SERVER_ENV_PREFIXES = ("LC_", "OMP_", "GGML_")
ENGINE_DIR = "engine"  # under the run folder: one record per engine process of an update


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses): field 3
    (state) is item 0, field 4 (ppid) item 1, field 5 (pgrp) item 2, field 22 (starttime) item 19
    (proc(5))."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that will never reap it."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return fields is None or fields[0] != "Z"  # a zombie of ours is dead for our purposes


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Identity:
    """One process for as long as it lives: the kernel never gives two processes of one boot the
    same pid and start time."""

    pid: int
    start_ticks: int  # /proc/PID/stat field 22: when it started, in clock ticks after boot
    boot_id: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Identity | None:
        """The recorded identity, or None when `data` is not one (a hand-edited or old record)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(int(data["pid"]), int(data["start_ticks"]), str(data["boot_id"]))
        except (KeyError, TypeError, ValueError):
            return None


def identity(pid: int) -> Identity | None:
    """The identity of the live process `pid`, or None when no live process has it."""
    fields = _stat_fields(pid) if pid > 0 else None
    if fields is None or fields[0] == "Z":
        return None
    return Identity(pid, int(fields[19]), boot_id())


def parent(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def running(ident: Identity | None) -> bool:
    """`ident` is still running: its pid now belongs to the very process that was recorded."""
    return ident is not None and ident.pid > 0 and identity(ident.pid) == ident


def stop(ident: Identity | None, timeout_s: float = 10.0) -> bool:
    """SIGTERM the recorded process (its whole process group when it leads one, as servers
    started in their own session do), SIGKILL it if it lingers. A pid that another process
    holds now is never signalled. True when a process was signalled."""
    if not running(ident):
        return False
    assert ident is not None
    fields = _stat_fields(ident.pid)
    leader = fields is not None and int(fields[2]) == ident.pid
    kill = os.killpg if leader else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(ident.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(ident.pid, os.WNOHANG)
        if not running(ident):
            return True
        time.sleep(0.1)
    # The identity was proven above; a leader's group id stays reserved while any member lives.
    with contextlib.suppress(ProcessLookupError):
        kill(ident.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(ident.pid, 0)
    return True


# --- processes of an engine run, recorded so that a later run can end them --------------------


@dataclass(frozen=True)
class EngineProcess:
    """A process an update runs (dynamic provider, program, language host) and the Pulumi CLI
    that owns it: once the owner is gone the process serves nobody."""

    role: str
    process: Identity
    owner: Identity

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "process": self.process.to_json(), "owner": self.owner.to_json()}

    @classmethod
    def from_json(cls, data: object) -> EngineProcess | None:
        if not isinstance(data, dict):
            return None
        process, owner = Identity.from_json(data.get("process")), Identity.from_json(data.get("owner"))
        if process is None or owner is None:
            return None
        return cls(str(data.get("role", "")), process, owner)


def engine_records(run_dir: Path) -> Path:
    """Where the engine processes of the updates run from `run_dir` record themselves."""
    return run_dir / ENGINE_DIR


def record_engine_process(folder: Path, role: str, pid: int, owner_pid: int) -> None:
    """Record `pid` (of `role`) and its owner in `folder`; nothing when either is gone already.
    Best effort: a record that cannot be written must not fail the update it belongs to."""
    process, owner = identity(pid), identity(owner_pid)
    if process is None or owner is None:
        return
    record = EngineProcess(role, process, owner)
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{pid}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record.to_json()))
        os.replace(tmp, folder / f"{pid}.json")


def end_orphans(folder: Path) -> list[EngineProcess]:
    """End the recorded engine processes whose owner is gone (an update killed mid-way) and
    forget the records of processes that ended. A process whose owner still runs (a concurrent
    update) is left alone. Returns the processes ended."""
    ended: list[EngineProcess] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            record = EngineProcess.from_json(json.loads(path.read_text()))
        except (OSError, ValueError):
            record = None
        if record is not None and running(record.process):
            if running(record.owner):
                continue
            if stop(record.process, timeout_s=5.0):
                ended.append(record)
        path.unlink(missing_ok=True)
    return ended


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every long-lived server qinfra starts gets: the allow-listed names of
    this process's environment (SERVER_ENV_NAMES, SERVER_ENV_PREFIXES) plus `extra`, the
    settings the launch itself means. A server outlives the command that started it, so what
    that command's shell held (cloud keys, tokens, the state passphrase) must not reach it."""
    env = {k: v for k, v in os.environ.items()
           if k in SERVER_ENV_NAMES or k.startswith(SERVER_ENV_PREFIXES)}
    return {**env, **(extra or {})}


def launch_until_ready(argv: list[str], folder: Path, log: Path, ready: Callable[[], bool], *,
                       what: str, url: str, timeout_s: float, poll_s: float) -> subprocess.Popen[bytes]:
    """Start `argv` detached in its own session (so it outlives the Pulumi provider) with the
    allow-listed server_environment(), its output appended to `log`, and wait until `ready()`;
    a process that exits or overruns is ended and reported with the log's last lines, so a
    failed start leaves nothing running."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=server_environment(),
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=folder)
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{what} did not start on {url} (exit {proc.returncode}): "
                               f"{' | '.join(tail) or 'no output'} (full log: {log})")
        time.sleep(poll_s)
    return proc
