"""The router's part of a stack's plan: what the front door runs on each target, what it costs,
and the weights it serves; one builder per target, which planning/targets.py's table names.
Pure, like the fleet sizing beside it, so a preview's plan delta and `qinfra plan` read the
router from the stack file, never from Pulumi resources.

The figures the targets build from live here too (replicas, machine type, pod requests, port):
the serving contexts and the aws program import them, so the plan cannot drift from what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from qinfra.core.hardware import Catalog
from qinfra.core.spec import StackSpec, Target, Variant

ROUTER_PORT = 8080  # where a router listens on its machine or in its pod (aws, kubernetes)
# At least two, so a node drain, an instance refresh or one crash never leaves no front door.
ROUTER_REPLICAS = 2
LOCAL_ROUTER_REPLICAS = 1  # target local: one router process beside the engines
# The router machines (aws): the smallest current compute-optimised type (2 vCPUs, 4 GiB); the
# router is one asyncio process (qinfra/serving/router/__main__.py). Price: core/data/instances.toml.
ROUTER_INSTANCE_TYPE = "c7i.large"
# Requests of one router pod (kubernetes): one asyncio process passes the router's throughput aim
# on one core (benchmarks/bench_router.py); memory is the interpreter, aiohttp and the metrics.
ROUTER_CPU = "1"
ROUTER_MEMORY = "512Mi"
# The router's figures as the plan shows them: weights first (what a rollout or rollback
# changes), then what runs them: machines and their cost (aws), the pinned code, pod requests
# (kubernetes), the port it listens on.
ROUTER_FIGURES = (*(f"{v}_percent" for v in Variant), "shadow_percent", "replicas",
                  "instance_type", "usd_per_hour", "artifact", "image", "cpu_request",
                  "memory_request", "port")


@dataclass(frozen=True)
class RouterPlan:
    """The front door of one stack. Figures that do not apply to its target are None: machines
    and their price on aws, image and pod requests on kubernetes, the host port everywhere."""

    target: Target
    weight_percent: Mapping[Variant, int]  # the rollout's split, every variant listed
    shadow_percent: float  # as served: paused while the quantized variant takes nothing
    replicas: int
    port: int = ROUTER_PORT
    instance_type: str | None = None
    machine_usd_per_hour: float | None = None
    artifact: str | None = None  # aws: the pinned wheels the machines install
    image: str | None = None  # kubernetes: the pinned image (by digest) the pods run
    cpu_request: str | None = None
    memory_request: str | None = None

    @property
    def usd_per_hour(self) -> float | None:
        """What the router machines add per hour; None where no machine of the table runs it."""
        if self.machine_usd_per_hour is None:
            return None
        return round(self.replicas * self.machine_usd_per_hour, 4)

    def figures(self) -> dict[str, Any]:
        """ROUTER_FIGURES as plain JSON values (None where the target has no such thing): the
        `qinfra plan --json` entry and the `plan` stack output a later preview compares with.
        The pinned code is a public URI, never a secret."""
        return {
            **{f"{v}_percent": self.weight_percent[v] for v in Variant},
            "shadow_percent": self.shadow_percent,
            "replicas": self.replicas,
            "instance_type": self.instance_type,
            "usd_per_hour": self.usd_per_hour,
            "artifact": self.artifact,
            "image": self.image,
            "cpu_request": self.cpu_request,
            "memory_request": self.memory_request,
            "port": self.port,
        }


def served_shadow_percent(spec: StackSpec) -> float:
    """The mirrored share the router serves: none while the quantized variant takes no traffic."""
    quantized = spec.rollout.traffic_percent()[Variant.QUANTIZED]
    return float(spec.router.shadow_percent) if quantized > 0 else 0.0


def _split(spec: StackSpec) -> tuple[Mapping[Variant, int], float]:
    return MappingProxyType(dict(spec.rollout.traffic_percent())), served_shadow_percent(spec)


def aws_router(spec: StackSpec, catalog: Catalog) -> RouterPlan:
    """Router machines of the instance table's ROUTER_INSTANCE_TYPE, installing pinned wheels.
    KeyError when the table lacks that type (the aws plan tests read it from the shipped table)."""
    weights, shadow = _split(spec)
    machine = catalog.cpu_instances[ROUTER_INSTANCE_TYPE]
    return RouterPlan(spec.target, weights, shadow, replicas=ROUTER_REPLICAS,
                      instance_type=machine.name, machine_usd_per_hour=machine.usd_per_hour,
                      artifact=spec.router.artifact)


def kubernetes_router(spec: StackSpec, catalog: Catalog) -> RouterPlan:
    """Router pods of the pinned image with fixed requests."""
    weights, shadow = _split(spec)
    return RouterPlan(spec.target, weights, shadow, replicas=ROUTER_REPLICAS,
                      image=spec.router.image, cpu_request=ROUTER_CPU, memory_request=ROUTER_MEMORY)


def local_router(spec: StackSpec, catalog: Catalog) -> RouterPlan:
    """One router process on the stack's own port."""
    weights, shadow = _split(spec)
    return RouterPlan(spec.target, weights, shadow, replicas=LOCAL_ROUTER_REPLICAS,
                      port=spec.serving.port)
