"""The planning half of the target registry: per Target, the router it plans and the rules the
fleet sizing, the router wheels (artifacts) and the first `up` (deploy) read, so none of them
branches on the target. The serving half is serving/render.py's TARGETS; the deploy half is
deploy/targets/registry.py's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qinfra.core.hardware import Catalog
from qinfra.core.spec import StackSpec, Target
from qinfra.planning.router import RouterPlan, aws_router, kubernetes_router, local_router


@dataclass(frozen=True)
class TargetPlanning:
    """One target's planning facts."""

    target: Target
    router: Callable[[StackSpec, Catalog], RouterPlan]
    # Each variant is one server whose slots are fixed when it starts: one that takes any
    # traffic is sized for all of it, so the weights move without restarting it (local).
    whole_share_when_serving: bool
    # Several engine instances may share one GPU (aws); Kubernetes schedules whole GPUs per
    # pod and locally there is one engine each.
    engines_share_gpu: bool
    # The router machines install qinfra from wheels pinned in the S3 store (aws).
    router_wheels: bool
    # `up` may create the artifact bucket in a Pulumi pass of its own (aws).
    creates_store_bucket: bool


TARGET_PLANS: dict[Target, TargetPlanning] = {
    Target.LOCAL: TargetPlanning(Target.LOCAL, local_router, whole_share_when_serving=True,
                                 engines_share_gpu=False, router_wheels=False,
                                 creates_store_bucket=False),
    Target.AWS: TargetPlanning(Target.AWS, aws_router, whole_share_when_serving=False,
                               engines_share_gpu=True, router_wheels=True, creates_store_bucket=True),
    Target.KUBERNETES: TargetPlanning(Target.KUBERNETES, kubernetes_router,
                                      whole_share_when_serving=False, engines_share_gpu=False,
                                      router_wheels=False, creates_store_bucket=False),
}


def target_plan(target: Target) -> TargetPlanning:
    return TARGET_PLANS[target]


def plan_router(spec: StackSpec, catalog: Catalog) -> RouterPlan:
    """The router of `spec`'s target (KeyError from aws_router when the instance table lacks
    the router's machine type)."""
    return TARGET_PLANS[spec.target].router(spec, catalog)


__all__ = ["TARGET_PLANS", "TargetPlanning", "plan_router", "target_plan"]
