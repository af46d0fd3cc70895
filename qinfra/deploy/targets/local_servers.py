"""What the local target's servers share, apart from the target's program: the run folder and
what each server's folder records (identity, pid, key file), ports, and the dynamic-provider
base that stops and refreshes a server by its recorded identity. The local target and its
Prometheus both build on it; it imports neither."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pulumi.dynamic as dyn

from qinfra.core.paths import project_root
from qinfra.deploy.processes import (
    Identity,
    engine_records,
    identity,
    parent,
    record_engine_process,
    running,
    stop,
)
from qinfra.deploy.project import RUN_DIR_ENV, Project
from qinfra.deploy.targets import engine_supervisor
from qinfra.deploy.targets.engine_supervisor import IDENTITY_FILE, PID_FILE

KEY_FILE = "api-key"
__all__ = ["IDENTITY_FILE", "KEY_FILE", "PID_FILE", "RUN_DIR_ENV"]


def run_dir() -> Path:
    """Where pid files, logs and scripts live: the project's run folder (Project.run_dir, which
    $QINFRA_RUN_DIR overrides), found from the working directory: a dynamic provider runs in the
    program's folder."""
    return Project(project_root() or Path.cwd().resolve()).run_dir


# --- what one variant's run folder records ---------------------------------------------------


def recorded_server(folder: Path) -> Identity | None:
    """The server the folder records. A pid file without an identity (written before identities
    were recorded) counts only for an engine of such a start (llama-server: the engine rows'
    legacy_exe) running in this folder, where qinfra starts it."""
    with contextlib.suppress(OSError, ValueError):
        return Identity.from_json(json.loads((folder / IDENTITY_FILE).read_text()))
    with contextlib.suppress(OSError, ValueError):
        return _legacy(int((folder / PID_FILE).read_text()), folder)
    return None


def _legacy(pid: int, folder: Path) -> Identity | None:
    """`pid` as identified before identities were recorded: an engine that such starts ran (its
    executable named in a legacy_exe of serving/engines.py's rows) with `folder` as cwd;
    when its parent is the engine supervisor of that folder (its /proc cmdline says so), the
    supervisor, which is what must be stopped (stopping the engine alone restarts it)."""
    from qinfra.serving.engines import legacy_exes

    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe")).name
        ours = (any(exe.startswith(name) for name in legacy_exes())
                and Path(os.readlink(f"/proc/{pid}/cwd")) == folder.resolve())
        above = parent(pid)
        supervised = ours and above > 0 and engine_supervisor.__name__.encode() in Path(
            f"/proc/{above}/cmdline").read_bytes() and Path(
            os.readlink(f"/proc/{above}/cwd")) == folder.resolve()
    except OSError:
        return None
    if supervised:
        return identity(above)
    return identity(pid) if ours else None


def server_of(props: dict[str, Any]) -> Identity | None:
    """The server a resource's state names: its identity, or the bare pid of older state."""
    recorded = Identity.from_json(props.get("identity"))
    if recorded is None and props.get("pid") and props.get("run_dir"):
        recorded = _legacy(int(props["pid"]), Path(props["run_dir"]))
    return recorded


def forget(folder: Path) -> None:
    """Remove what a stopped server leaves: its pid, its identity, the key file it read and its
    supervisor's state (restarts.log stays: the record of what died and when)."""
    for name in (PID_FILE, IDENTITY_FILE, KEY_FILE, engine_supervisor.STATE_FILE):
        (folder / name).unlink(missing_ok=True)


def stop_recorded(folder: Path) -> None:
    """Stop the server an interrupted update started but never recorded in state, if the folder
    proves it is still that server, and forget it."""
    stop(recorded_server(folder))
    forget(folder)


def record(folder: Path, ident: Identity, pid_file: bool = True) -> None:
    """Record the process qinfra started (and stops); without `pid_file` the pid file is left to
    the process itself (an engine's supervisor writes its engine's pid there)."""
    if pid_file:
        (folder / PID_FILE).write_text(f"{ident.pid}\n")
    (folder / IDENTITY_FILE).write_text(json.dumps(ident.to_json()) + "\n")


def engine_key(folders: Iterable[Path]) -> str | None:
    """The API key the local engines were started with: the 0600 file qinfra keeps beside each
    while it runs (the first of `folders` that holds one); None where none does."""
    for folder in folders:
        with contextlib.suppress(OSError, IndexError):
            return (folder / KEY_FILE).read_text().splitlines()[0].strip() or None
    return None


# --- ports ----------------------------------------------------------------------------------


def port_of(endpoint: str) -> int:
    return int(urllib.parse.urlsplit(endpoint).port or 80)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Another socket holds host:port: a bind test with SO_REUSEADDR, as llama-server binds, so
    the TIME_WAIT connections of a server just stopped do not count."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def taken_message(variant: str, port: int) -> str:
    return (f"{variant}: port {port} on 127.0.0.1 is taken by another process (see `ss -ltnp "
            f"'sport = :{port}'`)")


def note_provider() -> None:
    """Record this dynamic-provider process, so that the next update ends it if the engine that
    started it is killed (it would otherwise keep starting servers nobody records)."""
    global _noted
    if not _noted:
        _noted = True
        record_engine_process(engine_records(run_dir()), "dynamic provider", os.getpid(),
                              os.getppid())


_noted = False


class ServerProvider(dyn.ResourceProvider):
    """What the local servers' providers share. Their state is the process's identity, so
    delete signals only that very process; read (refresh) reports a server that died or does not
    answer `ready` as gone, so the next `up` starts it again."""

    @staticmethod
    def ready(endpoint: str) -> bool:
        raise NotImplementedError

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        note_provider()
        return dyn.CheckResult(news, [])

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        note_provider()
        stop(server_of(props))
        stop_recorded(Path(props["run_dir"]))

    def read(self, id_: str, props: dict[str, Any]) -> dyn.ReadResult:
        if not (running(server_of(props)) and self.ready(props["endpoint"])):
            return dyn.ReadResult(id_=id_, outs={**props, "pid": 0, "identity": None})
        return dyn.ReadResult(id_=id_, outs=props)


def launch_recorded(props: dict[str, Any], what: str,
                    start: Callable[[Path, int, Any], subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Start `what` (the router, Prometheus) on its endpoint's port in its run folder, after
    stopping whatever that folder recorded, and record the new process's identity."""
    folder = Path(props["run_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    stop_recorded(folder)
    port = port_of(props["endpoint"])
    if port_taken(port):
        raise RuntimeError(taken_message(what, port))
    ident = identity(start(folder, port, props["config"]).pid)
    if ident is None:
        raise RuntimeError(f"{what} exited right after it started (log: {folder})")
    record(folder, ident)
    return {**props, "pid": ident.pid, "identity": ident.to_json(),
            "log": str(folder / f"{what}.log")}


