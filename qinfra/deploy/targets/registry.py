"""The deploy half of the target registry: per Target, its Pulumi program (imported on use: each
target pulls in its own provider SDK, pulumi_aws alone takes seconds) and its preflight. The
planning half is planning/targets.py, the serving half serving/render.py's TARGETS; a new target
is one row in each and its program module here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qinfra.core.spec import StackSpec, Target
from qinfra.deploy.targets import TargetProgram


@dataclass(frozen=True)
class TargetEntry:
    """One target's deploy facts."""

    program: Callable[[], TargetProgram]  # imports the target's module, returns its deploy()
    # Says what is missing (credentials, cluster access) before the engine runs; None: nothing.
    preflight: Callable[[StackSpec], None] | None


def _local() -> TargetProgram:
    from qinfra.deploy.targets.local import deploy

    return deploy


def _aws() -> TargetProgram:
    from qinfra.deploy.targets.aws import deploy

    return deploy


def _kubernetes() -> TargetProgram:
    from qinfra.deploy.targets.kubernetes import deploy

    return deploy


def preflight_aws(spec: StackSpec) -> None:
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


def preflight_kubernetes(spec: StackSpec) -> None:
    """A kubeconfig the provider will find: an absolute path that exists, or one by default."""
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


TARGETS: dict[Target, TargetEntry] = {
    Target.LOCAL: TargetEntry(_local, preflight=None),
    Target.AWS: TargetEntry(_aws, preflight=preflight_aws),
    Target.KUBERNETES: TargetEntry(_kubernetes, preflight=preflight_kubernetes),
}


def program_for(target: Target) -> TargetProgram:
    """The target's Pulumi program (its module imported now)."""
    return TARGETS[target].program()


def preflight(spec: StackSpec) -> None:
    """Checks a target needs before the engine runs (credentials, cluster access)."""
    check = TARGETS[spec.target].preflight
    if check is not None:
        check(spec)


__all__ = ["TARGETS", "TargetEntry", "preflight", "preflight_aws", "preflight_kubernetes", "program_for"]
