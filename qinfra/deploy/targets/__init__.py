"""What every deployment target builds from and exports; the targets themselves are registered
by the Target enum in deploy/targets/registry.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qinfra.core.spec import StackSpec, Variant
from qinfra.planning.sizing import FleetOption, StackPlan, VariantPlan


@dataclass(frozen=True)
class DeployInput:
    """Everything a target builds from: the validated spec, its plan and the rendered files."""

    spec: StackSpec
    plan: StackPlan
    rendered: Mapping[Path, str]

    def file(self, variant: str, name: str) -> str:
        return self.rendered[Path(variant, name)]


@dataclass(frozen=True)
class Deployed:
    """What a target exports: the `variants` output of DESIGN.md and its single front door."""

    variants: Mapping[str, Any]  # values may be pulumi Outputs
    endpoint: Any = None


class TargetProgram(Protocol):
    def __call__(self, deploy: DeployInput) -> Deployed: ...


def variant_output(deploy: DeployInput, variant: VariantPlan, *, weight_percent: int,
                   endpoint: Any = None) -> dict[str, Any]:
    """One entry of the `variants` output; fields that do not apply to a target are None."""
    chosen = variant.chosen
    assert chosen is not None  # the program refuses plans that do not fit
    spec = deploy.spec.variants.of(Variant(variant.name))
    return {
        "format": spec.format.value,
        "artifact_uri": spec.artifact,
        "weight_percent": weight_percent,
        "replicas": chosen.engines_total,
        "gpu": None if chosen.gpu == "cpu" else chosen.gpu,
        "instance_type": chosen.instance_type,
        "tensor_parallel_size": chosen.tensor_parallel_size,
        "endpoint": endpoint,
    }


def boot_s(spec: StackSpec, option: FleetOption) -> int:
    """Launch to a warm replica: the engine image pull, the artifact's fetch and verification,
    the engine's start-up budget. What `up` waits for before it calls a replica failed."""
    from qinfra.serving.contexts import IMAGE_PULL_S
    from qinfra.serving.launch import artifact_bytes, fetch_timeout_s, startup_budget_s

    size = artifact_bytes(option)
    return IMAGE_PULL_S + fetch_timeout_s(size) + startup_budget_s(spec.serving.engine, size)
