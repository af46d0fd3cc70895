"""What a stack runs and how it got there (status, history), read for any front end: outputs,
each endpoint's health, on target local each engine's memory planned against what it
allocated, and every update of the engine's history linked to the automatic rollout's audit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qinfra.core.spec import StackSpec, Target, Variant

if TYPE_CHECKING:
    from qinfra.deploy.operations import Stack

_PROBE_S = 2.0


@dataclass(frozen=True)
class Status:
    """A stack's outputs and what answers: `health` per variant endpoint, `front` for the
    single front door (None: the target has none), `allocation` on target local."""

    stack: str
    outputs: dict[str, Any]
    health: dict[str, str]
    front: str | None
    allocation: dict[str, Any] | None
    engines: dict[str, Any] | None = None  # target local: each engine's supervisor, restarts

    local: bool = False  # the endpoints are on this machine: a probe that fails means down

    @property
    def down(self) -> list[str]:
        """What should answer and does not: the front door, and each variant that takes
        traffic (a variant kept at 0% may be stopped, as a rollback leaves it). Only on target
        local, where this machine's probe is the truth; elsewhere the endpoints may not be
        reachable from where `status` runs (a cluster-internal Service), so their health is
        reported, not judged."""
        if not self.local:
            return []
        variants = self.outputs.get("variants") or {}
        dead = [] if self.front in (None, "ok") else ["endpoint"]
        return dead + [name for name, state in self.health.items()
                       if state != "ok" and (variants.get(name) or {}).get("weight_percent")]

    def to_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "outputs": self.outputs, "health": self.health,
                "endpoint_health": self.front, "allocation": self.allocation, "down": self.down,
                "engines": self.engines}


def probe(url: str, timeout_s: float = _PROBE_S) -> str:
    """"ok" when GET <url>/health answers 200 and its body does not say otherwise (the router
    answers 200 "degraded", naming its problems, while it serves on a last good config or a
    variant with traffic has no replica up); else what it answered, or why nothing did."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status != 200:
                return f"http {response.status}"
            try:
                doc = json.loads(response.read() or b"{}")
            except ValueError:
                return "ok"
            state = doc.get("status", "ok") if isinstance(doc, dict) else "ok"
            if state == "ok":
                return "ok"
            return f"{state}: " + "; ".join(map(str, doc.get("problems") or [])) if doc.get(
                "problems") else str(state)
    except urllib.error.HTTPError as exc:
        return f"http {exc.code}"
    except OSError as exc:
        return f"unreachable ({getattr(exc, 'reason', exc)})"


def status(stack: Stack) -> Status:
    """The deployed outputs, every endpoint probed in parallel (2 s each), and memory."""
    outputs = stack.deployer.outputs()
    endpoints = {name: v["endpoint"] for name, v in (outputs.get("variants") or {}).items()
                 if isinstance(v, dict) and str(v.get("endpoint") or "").startswith("http")}
    front_url = outputs.get("endpoint") if str(outputs.get("endpoint") or "").startswith("http") \
        else None
    urls = [*endpoints.values(), *([str(front_url)] if front_url else [])]
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        states = list(pool.map(probe, urls))
    health_of = dict(zip(endpoints, states, strict=False))
    front = states[-1] if front_url else None
    engines = None
    if stack.spec.target is Target.LOCAL and outputs.get("variants"):
        from qinfra.deploy.targets.engine_supervisor import stack_engines_health

        engines = {name: h.to_json() for name, h in
                   stack_engines_health(stack.spec, stack.project.run_dir).items()}
    return Status(stack.name, outputs, health_of, front,
                  allocation(stack.spec, outputs, stack.project.run_dir), engines,
                  local=stack.spec.target is Target.LOCAL)


def allocation(spec: StackSpec, outputs: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """Per variant with a running engine: planned (the stack file's plan) against actual (its
    llama-server's log, /props and /slots). None where nothing is deployed or the target is not
    local (the cloud engines' logs are on their machines)."""
    if spec.target is not Target.LOCAL or not outputs.get("variants"):
        return None
    from qinfra.planning.stack import plan_for
    from qinfra.quality.allocation import local_allocations

    plan = plan_for(spec)
    variants = outputs["variants"]
    running = [v for v in Variant if (variants.get(v.value) or {}).get("endpoint")]
    plans = {v.value: plan.variant(v).chosen.engine_plan if plan.variant(v).chosen else None
             for v in running}
    folder = run_dir / spec.name
    endpoints = {v.value: variants[v.value]["endpoint"] for v in running}
    logs = {v.value: folder / v.value / "server.log" for v in running}
    from qinfra.deploy.targets.local_servers import engine_key

    return local_allocations(plans, endpoints, logs, engine_key(folder / v.value for v in running))


def kv_warnings(doc: dict[str, Any] | None) -> list[str]:
    """Every variant's warnings (an actual KV capacity more than 10% below plan), in order."""
    return [w for entry in (doc or {}).values() for w in entry.get("warnings", ())]


def history(stack: Stack) -> list[dict[str, Any]]:
    """Every update, newest first, each linked to the automatic rollout step that made it."""
    from qinfra.deploy.history import entries
    from qinfra.quality.analysis_audit import applied_updates, audit_dir, link

    every = entries(stack.name, stack.deployer.history())
    return link(every, applied_updates(audit_dir(stack.spec.root or Path.cwd(), stack.name)))
