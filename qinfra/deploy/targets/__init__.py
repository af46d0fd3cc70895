"""Deployment targets behind one small protocol, registered by the Target enum."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qinfra.core.spec import StackSpec, Target, Variant
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


def _local() -> TargetProgram:
    from qinfra.deploy.targets.local import deploy

    return deploy


def _aws() -> TargetProgram:
    from qinfra.deploy.targets.aws import deploy

    return deploy


def _kubernetes() -> TargetProgram:
    from qinfra.deploy.targets.kubernetes import deploy

    return deploy


# Imported on use: each target pulls in its own provider SDK (pulumi_aws alone takes seconds).
TARGETS: dict[Target, Callable[[], TargetProgram]] = {
    Target.LOCAL: _local,
    Target.AWS: _aws,
    Target.KUBERNETES: _kubernetes,
}


def _preflight_aws(spec: StackSpec) -> None:
    """Say what is missing before the engine starts, not as a provider stack trace."""
    import os

    import botocore.session

    from qinfra.core.errors import DeployError

    problems = []
    if botocore.session.get_session().get_credentials() is None:
        problems.append("no AWS credentials: set AWS_PROFILE (with `aws sso login` or a profile in "
                        "~/.aws/credentials) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if not (spec.provider_config.get("aws:region") or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")):
        problems.append(f"no AWS region: add `aws:region` to stacks/Pulumi.{spec.name}.yaml")
    if problems:
        raise DeployError(f"stack {spec.name} targets aws, but " + "; ".join(problems))


def _preflight_kubernetes(spec: StackSpec) -> None:
    import os

    from qinfra.core.errors import DeployError

    named = spec.provider_config.get("kubernetes:kubeconfig")
    if isinstance(named, str) and "\n" not in named and not named.lstrip().startswith(("{", "apiVersion")):
        # A path, not the file's text: the provider reads it from its own working directory.
        if not os.path.isabs(os.path.expanduser(named)):
            raise DeployError(f"stack {spec.name}: `kubernetes:kubeconfig: {named}` is a relative "
                              "path, which the Kubernetes provider resolves against its own working "
                              "directory, not the project. To fix: give an absolute path, or unset "
                              "it and export KUBECONFIG")
        if not os.path.isfile(os.path.expanduser(named)):
            raise DeployError(f"stack {spec.name}: `kubernetes:kubeconfig` names {named}, which is "
                              "not a file")
        return
    config = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
    if not (in_cluster or named or any(os.path.isfile(p) for p in config.split(os.pathsep))):
        raise DeployError(f"stack {spec.name} targets kubernetes, but there is no kubeconfig: set "
                          "KUBECONFIG or `kubernetes:kubeconfig` in the stack file")


_PREFLIGHT: dict[Target, Callable[[StackSpec], None]] = {
    Target.AWS: _preflight_aws,
    Target.KUBERNETES: _preflight_kubernetes,
}


def preflight(spec: StackSpec) -> None:
    """Checks a target needs before the engine runs (credentials, cluster access)."""
    check = _PREFLIGHT.get(spec.target)
    if check is not None:
        check(spec)
