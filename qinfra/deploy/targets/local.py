"""The local target: the pinned artifact checked in its file store, one real llama-server per
variant that takes traffic, as Pulumi dynamic resources whose state is the process id."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dyn

from qinfra.core.spec import Variant
from qinfra.deploy.processes import alive, stop
from qinfra.deploy.targets import Deployed, DeployInput, variant_output

RUN_DIR_ENV = "QINFRA_RUN_DIR"


def run_dir() -> Path:
    """Where pid files, logs and scripts live: $QINFRA_RUN_DIR, else .qinfra/run of the project."""
    if env := os.environ.get(RUN_DIR_ENV):
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder / ".qinfra" / "run"
    return here / ".qinfra" / "run"


# --- process handling (runs inside the dynamic provider process) --------------------------------


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start(props: dict[str, Any]) -> dict[str, Any]:
    """Write the rendered scripts, launch the server detached in its own process group, wait
    for /health and one warm-up completion; on failure stop it and report the log's tail."""
    from qinfra.core.fileio import write_atomic
    from qinfra.serving.llamacpp import find_binary

    folder = Path(props["run_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    pid_file = folder / "server.pid"
    if pid_file.is_file():  # a server an interrupted update started but never recorded
        with contextlib.suppress(ValueError):
            stop(int(pid_file.read_text()))
    server, warmup = folder / "server.sh", folder / "warmup.sh"
    for path, text in ((server, props["server_sh"]), (warmup, props["warmup_sh"])):
        write_atomic(path, text, mode=0o755)
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    env["LLAMA_SERVER"] = str(find_binary("llama-server"))
    if props.get("api_key"):
        env["LLAMA_API_KEY"] = props["api_key"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(["/bin/sh", str(server)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                cwd=folder)
    pid_file.write_text(f"{proc.pid}\n")
    warm = subprocess.run(["/bin/sh", str(warmup)], env=env, capture_output=True, text=True,
                          check=False)
    if warm.returncode != 0 or proc.poll() is not None:
        stop(proc.pid)
        raise RuntimeError(
            f"llama-server for {props['variant']} did not become healthy and warm "
            f"({warm.stderr.strip() or 'exited'}); last lines of {log}:\n{_tail(log)}"
        )
    return {**props, "pid": proc.pid, "log": str(log)}


class LlamaServerProvider(dyn.ResourceProvider):
    """create: launch and warm; update: restart with the new flags; delete: stop by pid;
    read (refresh) and diff notice a server that died, so the next `up` starts it again."""

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        outs = _start(props)
        return dyn.CreateResult(id_=f"{props['stack']}-{props['variant']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        keys = ("server_sh", "warmup_sh", "endpoint", "api_key", "artifact")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        if not alive(int(olds.get("pid") or 0)):
            changed.append("pid")
        return dyn.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        stop(int(olds.get("pid") or 0))
        return dyn.UpdateResult(outs=_start(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        stop(int(props.get("pid") or 0))
        Path(props["run_dir"], "server.pid").unlink(missing_ok=True)

    def read(self, id_: str, props: dict[str, Any]) -> dyn.ReadResult:
        pid = int(props.get("pid") or 0)
        if not (alive(pid) and _healthy(props["endpoint"])):
            return dyn.ReadResult(id_=id_, outs={**props, "pid": 0})
        return dyn.ReadResult(id_=id_, outs=props)


class ArtifactCheckProvider(dyn.ResourceProvider):
    """The pinned artifact, re-hashed against its manifest before a server may use it."""

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
        super().__init__(LlamaServerProvider(), name, {**props, "pid": None, "log": None}, opts)


def deploy(deploy: DeployInput) -> Deployed:
    spec = deploy.spec
    traffic = spec.rollout.traffic_percent()
    api_key = pulumi.Config("qinfra").get_secret("api_key")
    variants: dict[str, Any] = {}
    for plan in deploy.plan.variants:
        variant = Variant(plan.name)
        uri = spec.variants.of(variant).artifact
        check = ArtifactCheck(f"{spec.name}-{variant}-artifact", uri)
        endpoint = None
        if traffic[variant] > 0:
            url = f"http://127.0.0.1:{spec.serving.local_port(variant)}"
            server = LlamaServer(
                f"{spec.name}-{variant}",
                {
                    "stack": spec.name,
                    "variant": variant.value,
                    "artifact": uri,
                    "endpoint": url,
                    "server_sh": deploy.file(variant, "server.sh"),
                    "warmup_sh": deploy.file(variant, "warmup.sh"),
                    "run_dir": str(run_dir() / spec.name / variant),
                    "api_key": api_key,
                },
                pulumi.ResourceOptions(depends_on=[check]),
            )
            endpoint = server.endpoint
        variants[variant.value] = variant_output(
            deploy, plan, weight_percent=traffic[variant], endpoint=endpoint)
    return Deployed(variants=variants)
