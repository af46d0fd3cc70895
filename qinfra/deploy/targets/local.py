"""The local target: the pinned artifact checked in its file store, one real llama-server per
variant that takes traffic, and qinfra's router in front of them on qinfra:serving.port, as
Pulumi dynamic resources whose state is the process's identity.

A server is signalled only when its recorded identity (pid and start time) still matches, so a
pid that another process took over is never killed; the API key reaches the server as a file
only it and its user may read, never through the environment."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dyn

from qinfra.core.errors import DeployError
from qinfra.core.spec import Variant
from qinfra.deploy.processes import (
    Identity,
    engine_records,
    identity,
    parent,
    record_engine_process,
    running,
    stop,
)
from qinfra.deploy.targets import Deployed, DeployInput, router_process, variant_output

RUN_DIR_ENV = "QINFRA_RUN_DIR"
PID_FILE = "server.pid"  # the pid alone, as other tools read pid files
IDENTITY_FILE = "server.identity"  # the pid with its start time: what proves it is ours
KEY_FILE = "api-key"
# llama-server --help: "--api-key-file FNAME ... one per line (env: LLAMA_ARG_API_KEY_FILE)".
KEY_FILE_ENV = "LLAMA_ARG_API_KEY_FILE"
_POLL_S = 0.1


def run_dir() -> Path:
    """Where pid files, logs and scripts live: $QINFRA_RUN_DIR, else .qinfra/run of the project."""
    if env := os.environ.get(RUN_DIR_ENV):
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder / ".qinfra" / "run"
    return here / ".qinfra" / "run"


# --- what one variant's run folder records ---------------------------------------------------


def recorded_server(folder: Path) -> Identity | None:
    """The server the folder records. A pid file without an identity (written before identities
    were recorded) counts only for a llama-server running in this folder, where qinfra starts it."""
    with contextlib.suppress(OSError, ValueError):
        return Identity.from_json(json.loads((folder / IDENTITY_FILE).read_text()))
    with contextlib.suppress(OSError, ValueError):
        return _legacy(int((folder / PID_FILE).read_text()), folder)
    return None


def _legacy(pid: int, folder: Path) -> Identity | None:
    """`pid` as identified before identities were recorded: llama-server with `folder` as cwd."""
    try:
        ours = (Path(os.readlink(f"/proc/{pid}/exe")).name.startswith("llama-server")
                and Path(os.readlink(f"/proc/{pid}/cwd")) == folder.resolve())
    except OSError:
        return None
    return identity(pid) if ours else None


def _server_of(props: dict[str, Any]) -> Identity | None:
    """The server a resource's state names: its identity, or the bare pid of older state."""
    recorded = Identity.from_json(props.get("identity"))
    if recorded is None and props.get("pid") and props.get("run_dir"):
        recorded = _legacy(int(props["pid"]), Path(props["run_dir"]))
    return recorded


def _forget(folder: Path) -> None:
    """Remove what a stopped server leaves: its pid, its identity and the key file it read."""
    for name in (PID_FILE, IDENTITY_FILE, KEY_FILE):
        (folder / name).unlink(missing_ok=True)


def _stop_recorded(folder: Path) -> None:
    """Stop the server an interrupted update started but never recorded in state, if the folder
    proves it is still that server, and forget it."""
    stop(recorded_server(folder))
    _forget(folder)


def _record(folder: Path, ident: Identity) -> None:
    (folder / PID_FILE).write_text(f"{ident.pid}\n")
    (folder / IDENTITY_FILE).write_text(json.dumps(ident.to_json()) + "\n")


def _write_key(path: Path, key: str) -> None:
    """The key, one line, in a file created 0600 (never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def _taken_message(variant: str, port: int) -> str:
    return (f"{variant}: port {port} on 127.0.0.1 is taken by another process (see `ss -ltnp "
            f"'sport = :{port}'`)")


def check_ports(stack: str, ports: dict[str, int]) -> None:
    """Refuse, naming every variant's taken port at once, before any server starts. Skipped
    while a server of the stack runs: it may hold a port it is about to give up, and each
    start checks its own port again."""
    folders = [run_dir() / stack / name
               for name in (*Variant, router_process.ROUTER_DIR, "prometheus")]
    if any(running(recorded_server(folder)) for folder in folders):
        return
    taken = [_taken_message(name, port) for name, port in ports.items() if port_taken(port)]
    if taken:
        raise DeployError(f"stack {stack} cannot start its servers: {'; '.join(taken)}. To fix: "
                          "stop what holds the port, or set qinfra:serving.port to a free range")


# --- process handling (runs inside the dynamic provider process) --------------------------------


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _server_env(props: dict[str, Any], key_file: Path | None) -> dict[str, str]:
    """The environment of server.sh and warmup.sh: none of the user's llama-server settings,
    and the key only as the path of its file."""
    from qinfra.serving.llamacpp import find_binary

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LLAMA_ARG_") and k != "LLAMA_API_KEY"}
    env["LLAMA_SERVER"] = str(find_binary("llama-server"))
    if key_file is not None:
        env[KEY_FILE_ENV] = str(key_file)
    return env


def _await_warm(proc: subprocess.Popen[bytes], warmup: Path, env: dict[str, str], variant: str,
                log: Path) -> None:
    """Run the warm-up while watching the server: a server that exits (a port taken after the
    check, a model it cannot load) fails the start at once, not when the warm-up gives up."""
    warm = subprocess.Popen(["/bin/sh", str(warmup)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        while warm.poll() is None and proc.poll() is None:
            time.sleep(_POLL_S)
    finally:
        if warm.poll() is None:
            warm.kill()
        stderr = (warm.communicate()[1] or b"").decode(errors="replace").strip()
    if proc.poll() is not None:
        raise RuntimeError(f"llama-server for {variant} exited with code {proc.returncode} before "
                           f"it was healthy: {_last_line(log)} (full log: {log})")
    if warm.returncode != 0:
        raise RuntimeError(f"llama-server for {variant} did not become healthy and warm "
                           f"({stderr or 'warm-up failed'}): {_last_line(log)} (full log: {log})")


def _start(props: dict[str, Any]) -> dict[str, Any]:
    """Write the rendered scripts (and the key file), launch the server detached in its own
    session, record its identity, wait for /health and one warm-up completion; on any failure
    stop it and leave no pid or key file behind."""
    from qinfra.artifacts.fetch import project_hash_cache
    from qinfra.artifacts.verify import verify_before_serving
    from qinfra.core.fileio import write_atomic

    # Every start and restart re-checks the weights (cheaply, through the hash cache): a file
    # changed after the push must never be served.
    verify_before_serving(props["artifact"], project_hash_cache())
    folder = Path(props["run_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    _stop_recorded(folder)
    port = port_of(props["endpoint"])
    if port_taken(port):
        raise RuntimeError(_taken_message(props["variant"], port))
    server, warmup, log = folder / "server.sh", folder / "warmup.sh", folder / "server.log"
    for path, text in ((server, props["server_sh"]), (warmup, props["warmup_sh"])):
        write_atomic(path, text, mode=0o755)
    key_file = folder / KEY_FILE if props.get("api_key") else None
    if key_file is not None:
        _write_key(key_file, props["api_key"])
    env = _server_env(props, key_file)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["/bin/sh", str(server)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                cwd=folder)
    ident = identity(proc.pid)  # read at once: a start time does not change when sh execs
    try:
        if ident is not None:
            _record(folder, ident)
        _await_warm(proc, warmup, env, props["variant"], log)
    except BaseException:
        stop(ident)
        proc.poll()  # reap it, whichever way it ended
        _forget(folder)
        raise
    assert ident is not None  # a server that had exited failed _await_warm
    return {**props, "pid": ident.pid, "identity": ident.to_json(), "log": str(log)}


def _note_provider() -> None:
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
        _note_provider()
        return dyn.CheckResult(news, [])

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        _note_provider()
        stop(_server_of(props))
        _stop_recorded(Path(props["run_dir"]))

    def read(self, id_: str, props: dict[str, Any]) -> dyn.ReadResult:
        if not (running(_server_of(props)) and self.ready(props["endpoint"])):
            return dyn.ReadResult(id_=id_, outs={**props, "pid": 0, "identity": None})
        return dyn.ReadResult(id_=id_, outs=props)


def launch_recorded(props: dict[str, Any], what: str,
                    start: Callable[[Path, int, Any], subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Start `what` (the router, Prometheus) on its endpoint's port in its run folder, after
    stopping whatever that folder recorded, and record the new process's identity."""
    folder = Path(props["run_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    _stop_recorded(folder)
    port = port_of(props["endpoint"])
    if port_taken(port):
        raise RuntimeError(_taken_message(what, port))
    ident = identity(start(folder, port, props["config"]).pid)
    if ident is None:
        raise RuntimeError(f"{what} exited right after it started (log: {folder})")
    _record(folder, ident)
    return {**props, "pid": ident.pid, "identity": ident.to_json(),
            "log": str(folder / f"{what}.log")}


class LlamaServerProvider(ServerProvider):
    """create: launch and warm; update: restart with the new flags; delete: stop the recorded
    server; read (refresh) and diff notice a server that died, so the next `up` starts it again."""

    ready = staticmethod(_healthy)

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        _note_provider()
        outs = _start(props)
        return dyn.CreateResult(id_=f"{props['stack']}-{props['variant']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        keys = ("server_sh", "warmup_sh", "endpoint", "api_key", "artifact")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        if not running(_server_of(olds)):
            changed.append("pid")
        return dyn.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        _note_provider()
        stop(_server_of(olds))
        return dyn.UpdateResult(outs=_start(news))



class ArtifactCheckProvider(dyn.ResourceProvider):
    """The pinned artifact, re-hashed against its manifest before a server may use it."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        _note_provider()
        return dyn.CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        return dyn.CreateResult(id_=props["uri"], outs=self._verified(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        return dyn.DiffResult(changes=olds.get("uri") != news.get("uri"), replaces=["uri"])

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Artifacts outlive deployments: a rollback months later still finds its baseline."""

    @staticmethod
    def _verified(props: dict[str, Any]) -> dict[str, Any]:
        from qinfra.artifacts.verify import verify

        report = verify(props["uri"])
        if not report.ok:
            raise RuntimeError(f"artifact {props['uri']} failed verification: "
                               + "; ".join(f"{c.path}: {c.problem}" for c in report.bad))
        return {**props, "files": len(report.checks)}


class ArtifactCheck(dyn.Resource, module="qinfra", name="ArtifactCheck"):
    files: pulumi.Output[int]

    def __init__(self, name: str, uri: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(ArtifactCheckProvider(), name, {"uri": uri, "files": None}, opts)


class LlamaServer(dyn.Resource, module="qinfra", name="LlamaServer"):
    pid: pulumi.Output[int]
    endpoint: pulumi.Output[str]
    log: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(LlamaServerProvider(), name,
                         {**props, "pid": None, "identity": None, "log": None}, opts)


class RouterProvider(ServerProvider):
    """The router: create launches it on its config; an update that only changes the config
    writes the file and waits until the router serves it (no restart, nothing in flight lost),
    then waits for the variants it stopped sending to to drain, so their engines (deleted after
    this update) fail no request; read and diff notice a router that died or a config file
    that says something else (a live write whose apply failed), so the next `up` converges."""

    ready = staticmethod(router_process.health)

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        _note_provider()
        return dyn.CreateResult(id_=f"{props['stack']}-router", outs=self._start(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        changed = [k for k in ("config", "endpoint") if olds.get(k) != news.get(k)]
        if not running(_server_of(olds)):
            changed.append("pid")
        elif _on_disk(news) != news["config"]:
            changed.append("config")
        return dyn.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        _note_provider()
        if olds.get("endpoint") != news["endpoint"] or not running(_server_of(olds)):
            stop(_server_of(olds))
            return dyn.UpdateResult(outs=self._start(news))
        folder = Path(news["run_dir"])
        router_process.apply_config(news["endpoint"], folder / router_process.CONFIG_FILE,
                                    news["config"])
        gone = [v for v, urls in (olds.get("config") or {}).get("replicas", {}).items()
                if urls and not news["config"]["replicas"].get(v)]
        router_process.drain(news["endpoint"], gone, news["config"]["read_timeout_s"])
        return dyn.UpdateResult(outs={**news, "pid": olds.get("pid"),
                                      "identity": olds.get("identity"), "log": olds.get("log")})

    @staticmethod
    def _start(props: dict[str, Any]) -> dict[str, Any]:
        return launch_recorded(props, "router", router_process.start)


def _on_disk(props: dict[str, Any]) -> Any:
    """The router config file's content as a mapping, None when it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(props["run_dir"]) / router_process.CONFIG_FILE).read_text())
    return None


class Router(dyn.Resource, module="qinfra", name="Router"):
    pid: pulumi.Output[int]
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(RouterProvider(), name,
                         {**props, "pid": None, "identity": None, "log": None}, opts)


def _note_program() -> None:
    """Record the program and its language host with the Pulumi CLI above them as owner: a
    killed update leaves both behind, waiting on an engine that is gone."""
    host = os.getppid()
    owner = parent(host)
    folder = engine_records(run_dir())
    record_engine_process(folder, "program", os.getpid(), owner)
    record_engine_process(folder, "language host", host, owner)


def _on_this_machine() -> bool:
    """The program runs under a real engine that starts servers here, not under Pulumi's mocks
    (unit tests), where it must neither record processes nor probe ports."""
    from pulumi.runtime.mocks import MockMonitor
    from pulumi.runtime.settings import get_monitor

    return not isinstance(get_monitor(), MockMonitor)


def deploy(deploy: DeployInput) -> Deployed:
    """An engine per variant that takes traffic, then the router in front of them: it depends
    on the engines, so a new engine is up before the router sends to it, and an engine a
    rollback removes is deleted only after the router stopped sending to it and it drained."""
    spec = deploy.spec
    traffic = spec.rollout.traffic_percent()
    if _on_this_machine():
        _note_program()
        ports = {str(v): spec.serving.local_port(v) for v in Variant if traffic[v] > 0}
        if spec.local_prometheus():
            ports["prometheus"] = spec.ports()[-1]
        check_ports(spec.name, {"router": spec.serving.port, **ports})
    api_key = pulumi.Config("qinfra").get_secret("api_key")
    variants: dict[str, Any] = {}
    servers: list[pulumi.Resource] = []
    for plan in deploy.plan.variants:
        variant = Variant(plan.name)
        uri = spec.variants.of(variant).artifact
        check = ArtifactCheck(f"{spec.name}-{variant}-artifact", uri)
        endpoint = None
        if traffic[variant] > 0:
            server = LlamaServer(
                f"{spec.name}-{variant}",
                {
                    "stack": spec.name,
                    "variant": variant.value,
                    "artifact": uri,
                    "endpoint": router_process.engine_url(spec, variant),
                    "server_sh": deploy.file(variant, "server.sh"),
                    "warmup_sh": deploy.file(variant, "warmup.sh"),
                    "run_dir": str(run_dir() / spec.name / variant),
                    "api_key": api_key,
                },
                pulumi.ResourceOptions(depends_on=[check]),
            )
            servers.append(server)
            endpoint = server.endpoint
        variants[variant.value] = variant_output(
            deploy, plan, weight_percent=traffic[variant], endpoint=endpoint)
    router = Router(f"{spec.name}-router", {
        "stack": spec.name,
        "endpoint": router_process.router_url(spec),
        "config": router_process.config_props(spec),
        "run_dir": str(run_dir() / spec.name / router_process.ROUTER_DIR),
    }, pulumi.ResourceOptions(depends_on=servers))
    if spec.local_prometheus():  # scrapes the router for `rollout --auto`'s analysis
        from qinfra.deploy.targets import prometheus_process
        from qinfra.deploy.targets.local_prometheus import Prometheus

        Prometheus(f"{spec.name}-prometheus", prometheus_process.props(spec, run_dir()),
                   pulumi.ResourceOptions(depends_on=[router]))
    return Deployed(variants=variants, endpoint=router.endpoint)
