"""The local target: the pinned artifact checked in its file store, one real engine per variant
that takes traffic (llama-server, or vLLM's CPU build: serving/engines.py's row of the stack's
engine says how to find it), and qinfra's router in front of them on qinfra:serving.port, as
Pulumi dynamic resources whose state is the process's identity.

A server is signalled only when its recorded identity (pid and start time) still matches, so a
pid that another process took over is never killed; the API key reaches the server as a file
only it and its user may read, never through argv or qinfra's environment (llama-server reads
the file itself; vLLM has no key-file option, so its launch script reads the file into the
engine's own VLLM_API_KEY, which /proc shows to that user alone), and every server gets only the
allow-listed environment (processes.server_environment), never the invoking shell's secrets.
Each engine runs under a supervisor that restarts it when it dies (engine_supervisor.py);
a stop by qinfra (rollback, destroy, a new start) signals the supervisor and restarts nothing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dyn

from qinfra.core.errors import DeployError
from qinfra.core.formats import Engine
from qinfra.core.spec import Variant
from qinfra.deploy.processes import (
    engine_records,
    identity,
    parent,
    record_engine_process,
    running,
    server_environment,
    stop,
)
from qinfra.deploy.targets import Deployed, DeployInput, engine_supervisor, router_process, variant_output
from qinfra.deploy.targets.engine_supervisor import IDENTITY_FILE, PID_FILE
from qinfra.deploy.targets.local_servers import (
    KEY_FILE,
    RUN_DIR_ENV,
    ServerProvider,
    forget,
    launch_recorded,
    note_provider,
    port_of,
    port_taken,
    record,
    recorded_server,
    run_dir,
    server_of,
    stop_recorded,
    taken_message,
)

# what tests and tools read from a variant's run folder, named where the target is
__all__ = ["IDENTITY_FILE", "KEY_FILE", "PID_FILE", "RUN_DIR_ENV", "deploy", "recorded_server"]

_POLL_S = 0.1


# --- what one variant's run folder records ---------------------------------------------------


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


def check_ports(stack: str, ports: dict[str, int]) -> None:
    """Refuse, naming every variant's taken port at once, before any server starts. Skipped
    while a server of the stack runs: it may hold a port it is about to give up, and each
    start checks its own port again."""
    folders = [run_dir() / stack / name
               for name in (*Variant, router_process.ROUTER_DIR, "prometheus")]
    if any(running(recorded_server(folder)) for folder in folders):
        return
    taken = [taken_message(name, port) for name, port in ports.items() if port_taken(port)]
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
    """The environment of the supervisor, server.sh and warmup.sh: the allow-listed one (none of
    the user's engine settings or secrets), what the engine's row says finds its binary, and the
    key only as its file's path."""
    from qinfra.serving.engines import engine_launch

    row = engine_launch(_engine(props))
    extra = row.local_env()
    if key_file is not None and row.api_key_file_env is not None:
        extra[row.api_key_file_env] = str(key_file)
    return server_environment(extra)


def _engine(props: dict[str, Any]) -> Engine:
    """The engine a resource's state names (state written before engines were recorded: llama.cpp)."""
    return Engine(props.get("engine") or Engine.LLAMA_CPP.value)


def _label(props: dict[str, Any]) -> str:
    from qinfra.core.engines import traits

    return traits(_engine(props)).label


def _await_warm(proc: subprocess.Popen[bytes], warmup: Path, env: dict[str, str], variant: str,
                log: Path, label: str = "the engine") -> None:
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
        raise RuntimeError(f"{label} for {variant} exited with code {proc.returncode} before "
                           f"it was healthy: {_last_line(log)} (full log: {log})")
    if warm.returncode != 0:
        raise RuntimeError(f"{label} for {variant} did not become healthy and warm "
                           f"({stderr or 'warm-up failed'}): {_last_line(log)} (full log: {log})")


def _start(props: dict[str, Any]) -> dict[str, Any]:
    """Write the rendered scripts (and the key file), launch the server under its supervisor
    detached in its own session, record the supervisor's identity, wait for /health and one
    warm-up completion; on any failure stop it and leave no pid or key file behind."""
    from qinfra.artifacts.fetch import project_hash_cache
    from qinfra.artifacts.verify import verify_before_serving
    from qinfra.core.fileio import write_atomic

    # Every start and restart re-checks the weights (cheaply, through the hash cache): a file
    # changed after the push must never be served.
    verify_before_serving(props["artifact"], project_hash_cache())
    folder = Path(props["run_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    stop_recorded(folder)
    port = port_of(props["endpoint"])
    if port_taken(port):
        raise RuntimeError(taken_message(props["variant"], port))
    server, warmup, log = folder / "server.sh", folder / "warmup.sh", folder / "server.log"
    for path, text in ((server, props["server_sh"]), (warmup, props["warmup_sh"])):
        write_atomic(path, text, mode=0o755)
    key_file = folder / KEY_FILE if props.get("api_key") else None
    if key_file is not None:
        _write_key(key_file, props["api_key"])
    env = _server_env(props, key_file)
    argv = engine_supervisor.argv(folder, props["endpoint"], props["artifact"],
                                  _hash_cache_path(), ["/bin/sh", str(server)])
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                cwd=folder)
    ident = identity(proc.pid)  # the supervisor, read at once
    try:
        if ident is not None:
            record(folder, ident, pid_file=False)
        _await_warm(proc, warmup, env, props["variant"], log, _label(props))
    except BaseException:
        stop(ident)
        proc.poll()  # reap it, whichever way it ended
        forget(folder)
        raise
    assert ident is not None  # a server that had exited failed _await_warm
    return {**props, "pid": ident.pid, "identity": ident.to_json(), "log": str(log)}


def _hash_cache_path() -> Path:
    """The project's hash cache file, named to the supervisor (its environment has no
    QINFRA_CACHE_DIR), so its re-checks before each restart share the provider's cache."""
    from qinfra.artifacts.fetch import project_hash_cache

    path = project_hash_cache().path
    assert path is not None
    return path.resolve()


def _engine_down(props: dict[str, Any]) -> bool:
    """The supervisor runs but its engine is not serving (between a crash and its restart, or
    refused): an `up` then starts it over, which re-checks the weights and says why it fails."""
    folder = Path(props["run_dir"])
    health = engine_supervisor.engine_health(str(props.get("variant")), folder, props["endpoint"])
    return health.supervised and health.state != engine_supervisor.EngineState.SERVING


class LlamaServerProvider(ServerProvider):
    """create: launch and warm; update: restart with the new flags; delete: stop the recorded
    server; read (refresh) and diff notice a server that died, so the next `up` starts it again."""

    ready = staticmethod(_healthy)

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        note_provider()
        outs = _start(props)
        return dyn.CreateResult(id_=f"{props['stack']}-{props['variant']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        keys = ("server_sh", "warmup_sh", "endpoint", "api_key", "artifact")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        if not running(server_of(olds)) or _engine_down(olds):
            changed.append("pid")
        return dyn.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        note_provider()
        stop(server_of(olds))
        return dyn.UpdateResult(outs=_start(news))



class ArtifactCheckProvider(dyn.ResourceProvider):
    """The pinned artifact, re-hashed against its manifest before a server may use it."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        note_provider()
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
        note_provider()
        return dyn.CreateResult(id_=f"{props['stack']}-router", outs=self._start(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        changed = [k for k in ("config", "endpoint") if olds.get(k) != news.get(k)]
        if not running(server_of(olds)):
            changed.append("pid")
        elif _on_disk(news) != news["config"]:
            changed.append("config")
        return dyn.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        note_provider()
        if olds.get("endpoint") != news["endpoint"] or not running(server_of(olds)):
            stop(server_of(olds))
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
    from qinfra.serving.engines import engine_launch

    launch_script = engine_launch(spec.serving.engine).script
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
                    "engine": spec.serving.engine.value,
                    "artifact": uri,
                    "endpoint": router_process.engine_url(spec, variant),
                    # the engine's launch script (its row names the file), run as server.sh
                    "server_sh": deploy.file(variant, launch_script),
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
