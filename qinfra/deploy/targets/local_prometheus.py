"""The local target's Prometheus as a Pulumi dynamic resource: its state is the process's
identity (pid and start time), so only that very process is ever signalled; a config change or a
server that died restarts it on the same data folder (the metrics so far are kept)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi.dynamic as dyn

from qinfra.deploy.processes import running, stop
from qinfra.deploy.targets import prometheus_process
from qinfra.deploy.targets.local_servers import ServerProvider, launch_recorded, note_provider, server_of


def _start(props: dict[str, Any]) -> dict[str, Any]:
    return launch_recorded(props, "prometheus", prometheus_process.start)


class PrometheusProvider(ServerProvider):
    """create: launch and wait until ready; update: restart with the new config; delete: stop
    the recorded server (its data folder stays for the audit); read and diff notice a server
    that died, so the next `up` starts it again."""

    ready = staticmethod(prometheus_process.ready)

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        note_provider()
        return dyn.CreateResult(id_=f"{props['stack']}-prometheus", outs=_start(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        changed = [k for k in ("config", "endpoint") if olds.get(k) != news.get(k)]
        if not running(server_of(olds)):
            changed.append("pid")
        return dyn.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        note_provider()
        stop(server_of(olds))
        return dyn.UpdateResult(outs=_start(news))



class Prometheus(dyn.Resource, module="qinfra", name="Prometheus"):
    pid: pulumi.Output[int]
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(PrometheusProvider(), name,
                         {**props, "pid": None, "identity": None, "log": None}, opts)
