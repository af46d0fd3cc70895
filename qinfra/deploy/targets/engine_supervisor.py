"""The local target's engine supervisor: what a dead llama-server gets, and how healthy each is.

A local engine is started as `python -m qinfra.deploy.targets.engine_supervisor ... -- /bin/sh
server.sh`, as systemd's Restart=on-failure keeps the engines of the aws target: a llama-server
that exits (crash, OOM kill, a stray `kill`) is started again after a backoff (1, 2, 4 ... 30 s,
back to 1 s once an engine served STABLE_S), its weights re-hashed against the manifest first,
each restart counted in supervisor.json and logged in restarts.log. A deliberate stop is a
SIGTERM to the supervisor (qinfra signals only the supervisor's recorded identity); it stops
its engine and exits without a restart. Failing weights end the supervisor at once, and
MAX_FAILED_STARTS starts in a row that never answered /health end it too: the next `qinfra up`
starts it again (and refuses the same weights with the same message).

What qinfra records: server.identity is the supervisor's identity (what `stop` signals), server.pid
the engine's pid (what other tools read), supervisor.json the engine's identity and state. The
engine runs in its own process group, dies with the supervisor (PR_SET_PDEATHSIG), and is
signalled only by the supervisor, its parent: a child's pid is not reused before its parent
reaps it, so that pid is provably the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from qinfra.deploy.processes import Identity, identity, running

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec

PID_FILE = "server.pid"  # the engine's pid alone, as other tools read pid files
IDENTITY_FILE = "server.identity"  # the supervisor's pid with its start time: what qinfra stops
STATE_FILE = "supervisor.json"
RESTART_LOG = "restarts.log"
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # wait before restart n (the last one repeats)
STABLE_S = 60.0  # an engine that served this long starts the backoff over
MAX_FAILED_STARTS = 5  # starts in a row that never answered /health: give up, leave it to `up`
STOP_GRACE_S = 7.0  # < processes.stop's 10 s, so the engine ends before the supervisor is killed
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1  # prctl(2)


class EngineState(StrEnum):
    """What the supervisor is doing with its engine (supervisor.json's `state`)."""

    STARTING = "starting"  # launched, /health not answered yet
    SERVING = "serving"  # /health answered since the last (re)start
    RESTARTING = "restarting"  # exited unexpectedly; waiting out the backoff
    REFUSED = "refused"  # the weights failed their hash check: not restarted
    GAVE_UP = "gave-up"  # MAX_FAILED_STARTS failed starts in a row
    STOPPED = "stopped"  # stopped by qinfra (rollback, destroy, a new start)


# --- the supervising process ------------------------------------------------------------------


@dataclass
class _Supervisor:
    folder: Path
    endpoint: str
    artifact: str
    hash_cache: Path
    command: list[str]
    child: subprocess.Popen[bytes] | None = None
    stopping: bool = False
    restarts: int = 0
    last_exit: str | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """A deliberate stop: pass it to the engine's group and restart nothing."""
        self.stopping = True
        child = self.child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)  # our unreaped child: the pid is still it

    def log(self, line: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with contextlib.suppress(OSError), open(self.folder / RESTART_LOG, "a") as out:
            out.write(f"{stamp} {line}\n")
        print(f"qinfra-supervisor: {line}", file=sys.stderr, flush=True)

    def write_state(self, state: EngineState) -> None:
        child = self.child
        engine = identity(child.pid) if child is not None and child.returncode is None else None
        doc = {"state": state.value, "restarts": self.restarts, "last_exit": self.last_exit,
               "engine": engine.to_json() if engine else None, "supervisor": os.getpid(),
               "since": time.time()}
        _write_atomic(self.folder / STATE_FILE, json.dumps(doc) + "\n")

    def spawn(self) -> subprocess.Popen[bytes]:
        parent = os.getpid()
        libc = ctypes.CDLL(None, use_errno=True)

        def setup() -> None:  # in the child, before exec: own group, dies with us
            os.setpgid(0, 0)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # we died before prctl took
                os._exit(1)

        child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, cwd=self.folder,
                                 preexec_fn=setup)
        self.child = child
        _write_atomic(self.folder / PID_FILE, f"{child.pid}\n")
        return child

    def watch(self, child: subprocess.Popen[bytes]) -> tuple[int, float | None]:
        """Wait for the engine to exit, noting when /health first answered (None: never)."""
        served_at: float | None = None
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return child.wait(timeout=_POLL_S), served_at
            if self.stopping:  # told to stop: the engine gets STOP_GRACE_S, then SIGKILL
                self.end_child()
                continue
            if served_at is None and _answers(self.endpoint):
                served_at = time.monotonic()
                self.write_state(EngineState.SERVING)

    def end_child(self) -> None:
        child = self.child
        if child is None or child.returncode is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=STOP_GRACE_S)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    def verified(self) -> bool:
        """The weights still match their manifest: a file changed since the push is never served."""
        from qinfra.artifacts.hashcache import HashCache
        from qinfra.artifacts.verify import verify_before_serving

        try:
            verify_before_serving(self.artifact, HashCache(self.hash_cache))
        except Exception as exc:  # any doubt about the weights refuses them
            self.log(f"not restarted: {getattr(exc, 'message', None) or exc}")
            return False
        return True

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        failed = 0  # starts in a row that never answered /health
        streak = 0  # restarts since an engine last served STABLE_S: the backoff's step
        first = True
        while True:
            if not first:
                if not self.verified():
                    self.write_state(EngineState.REFUSED)
                    return 3
                self.restarts += 1
            if self.stopping:
                break
            started = time.monotonic()
            child = self.spawn()
            if self.stopping:  # the signal came while it started
                self.on_signal(signal.SIGTERM, None)
            self.write_state(EngineState.STARTING)
            code, served_at = self.watch(child)
            if self.stopping:
                break
            self.last_exit = f"exit {code}" if code >= 0 else f"signal {-code}"
            if first and served_at is None:  # a failed first start fails the start itself
                self.write_state(EngineState.STOPPED)
                return code if code > 0 else 1
            first = False
            failed = 0 if served_at is not None else failed + 1
            if failed >= MAX_FAILED_STARTS:
                self.log(f"engine pid {child.pid} ended ({self.last_exit}); {failed} starts in a row "
                         "never answered /health: giving up until the next `qinfra up`")
                self.write_state(EngineState.GAVE_UP)
                return 1
            if served_at is not None and time.monotonic() - served_at >= STABLE_S:
                streak = 0
            delay = BACKOFF_S[min(streak, len(BACKOFF_S) - 1)]
            streak += 1
            self.log(f"engine pid {child.pid} ended unexpectedly ({self.last_exit}) after "
                     f"{time.monotonic() - started:.1f} s; restart {self.restarts + 1} in {delay:.0f} s")
            self.write_state(EngineState.RESTARTING)
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.stopping:
                break
        self.end_child()
        self.write_state(EngineState.STOPPED)
        return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(text)
        os.replace(tmp, path)


def _answers(endpoint: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def argv(folder: Path, endpoint: str, artifact: str, hash_cache: Path, command: list[str]) -> list[str]:
    """The command line that supervises `command` (the engine's server.sh) in `folder`."""
    return [sys.executable, "-m", __name__, "--folder", str(folder), "--endpoint", endpoint,
            "--artifact", artifact, "--hash-cache", str(hash_cache), "--", *command]


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qinfra-engine-supervisor")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--hash-cache", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    return _Supervisor(ns.folder, ns.endpoint, ns.artifact, ns.hash_cache, command).run()


# --- what a variant's engine looks like from outside --------------------------------------------


@dataclass(frozen=True)
class EngineHealth:
    """One variant's local engine: healthy only when its supervisor is ours and running, the
    engine it names is alive and /health answers. `state` and `restarts` say what happened."""

    variant: str
    supervised: bool
    engine_alive: bool
    serving: bool
    state: str  # an EngineState value, or "absent" when nothing was started
    restarts: int
    last_exit: str | None

    @property
    def healthy(self) -> bool:
        return self.supervised and self.engine_alive and self.serving

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "healthy": self.healthy, "supervised": self.supervised,
                "engine_alive": self.engine_alive, "serving": self.serving, "state": self.state,
                "restarts": self.restarts, "last_exit": self.last_exit}


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    return {}


def engine_health(variant: str, folder: Path, endpoint: str) -> EngineHealth:
    """The engine a variant's run folder records, checked against the live processes."""
    supervisor = Identity.from_json(_read_json(folder / IDENTITY_FILE))
    state = _read_json(folder / STATE_FILE)
    supervised = running(supervisor)
    engine_alive = supervised and running(Identity.from_json(state.get("engine")))
    return EngineHealth(
        variant=variant, supervised=supervised, engine_alive=engine_alive,
        serving=engine_alive and _answers(endpoint),
        state=str(state.get("state", "absent")) if supervisor else "absent",
        restarts=int(state.get("restarts") or 0), last_exit=state.get("last_exit"))


def local_engines_health(engines: Mapping[str, str], stack_run_dir: Path) -> dict[str, EngineHealth]:
    """Per variant that should run an engine (`engines`: variant -> endpoint, e.g. from
    router_process.router_config(spec).replicas), its health from .qinfra/run/<stack>/<variant>.
    For `qinfra status` (non-zero exit when any is unhealthy) and the tests."""
    return {v: engine_health(v, stack_run_dir / v, url) for v, url in engines.items()}


def stack_engines_health(spec: StackSpec, run_dir: Path) -> dict[str, EngineHealth]:
    """local_engines_health for each variant the stack file gives traffic (a variant at 0% has
    no engine to be healthy); `run_dir` is the local target's run folder (.qinfra/run)."""
    from qinfra.deploy.targets.router_process import router_config

    engines = {str(v): urls[0] for v, urls in router_config(spec).replicas.items() if urls}
    return local_engines_health(engines, run_dir / spec.name)


if __name__ == "__main__":
    sys.exit(main())
