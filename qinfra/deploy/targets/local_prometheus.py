"""The local target's Prometheus as a Pulumi dynamic resource: its state is the process's
identity (pid and start time), so only that very process is ever signalled; a config change or a
server that died restarts it on the same data folder (the metrics so far are kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dyn

from qinfra.deploy.processes import identity, running, stop
from qinfra.deploy.targets import prometheus_process
from qinfra.deploy.targets.local import (
    _note_provider,
    _record,
    _server_of,
    _stop_recorded,
    _taken_message,
    port_of,
    port_taken,
)


def _start(props: dict[str, Any]) -> dict[str, Any]:
    folder = Path(props["run_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    _stop_recorded(folder)
    listen = port_of(props["endpoint"])
    if port_taken(listen):
        raise RuntimeError(_taken_message("prometheus", listen))
    proc = prometheus_process.start(folder, listen, props["config"])
    ident = identity(proc.pid)
    if ident is None:
        raise RuntimeError(f"prometheus exited right after it started (log: {folder})")
    _record(folder, ident)
    return {**props, "pid": ident.pid, "identity": ident.to_json(),
            "log": str(folder / "prometheus.log")}


class PrometheusProvider(dyn.ResourceProvider):
    """create: launch and wait until ready; update: restart with the new config; delete: stop
    the recorded server (its data folder stays for the audit); read and diff notice a server
    that died, so the next `up` starts it again."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        _note_provider()
        return dyn.CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        _note_provider()
        return dyn.CreateResult(id_=f"{props['stack']}-prometheus", outs=_start(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        changed = [k for k in ("config", "endpoint") if olds.get(k) != news.get(k)]
        if not running(_server_of(olds)):
            changed.append("pid")
        return dyn.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        _note_provider()
        stop(_server_of(olds))
        return dyn.UpdateResult(outs=_start(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        _note_provider()
        stop(_server_of(props))
        _stop_recorded(Path(props["run_dir"]))

    def read(self, id_: str, props: dict[str, Any]) -> dyn.ReadResult:
        if not (running(_server_of(props)) and prometheus_process.ready(props["endpoint"])):
            return dyn.ReadResult(id_=id_, outs={**props, "pid": 0, "identity": None})
        return dyn.ReadResult(id_=id_, outs=props)


class Prometheus(dyn.Resource, module="qinfra", name="Prometheus"):
    pid: pulumi.Output[int]
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(PrometheusProvider(), name,
                         {**props, "pid": None, "identity": None, "log": None}, opts)
