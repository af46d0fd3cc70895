"""The Pulumi program: stack config -> spec -> plan -> rendered launch files -> target resources.

`pulumi preview` (via Pulumi.yaml) and qinfra's engine run this same program. It reads every
input from stack config and the model's config.json, and never uploads or downloads artifacts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pulumi

from qinfra.core.errors import DeployError, NoFitError
from qinfra.core.spec import StackSpec, parse_program_config
from qinfra.deploy.bootstrap import STORE_PASS_ENV
from qinfra.deploy.preview import PLAN_OUTPUT, plan_record
from qinfra.deploy.targets import DeployInput
from qinfra.deploy.targets.registry import program_for
from qinfra.planning.stack import plan_for
from qinfra.quality.gate_check import check_gate
from qinfra.serving.render import render_stack

EVIDENCE = "qinfra:quality:GateEvidence"  # what policies/qinfra_rules.py reads
# Config keys (their last segment) that hold a secret: qinfra's own, and the usual provider ones.
_SECRET_NAME = re.compile(r"(?i)(secret|password|passphrase|token|api_?key|private_?key)")


def main() -> None:
    spec = stack_spec(pulumi.get_stack())
    if os.environ.get(STORE_PASS_ENV):  # a first `up`: the bucket, before the push fills it
        from qinfra.deploy.targets.aws import store_pass

        store_pass(spec)
        return
    gate_evidence(spec)
    plan = plan_for(spec)
    if not plan.fits:
        missing = [f"{v.name}: {'; '.join(v.refused[:3])}" for v in plan.variants if v.chosen is None]
        raise NoFitError(f"stack {spec.name} does not fit its fleet: " + " | ".join(missing)
                         + f". Run `qinfra plan --stack {spec.name}` for every term.")
    deployed = program_for(spec.target)(DeployInput(spec, plan, render_stack(spec, plan)))
    pulumi.export("variants", deployed.variants)
    pulumi.export("stage", spec.rollout.stage.value)
    pulumi.export(PLAN_OUTPUT, plan_record(plan))  # what `qinfra preview` compares against
    if deployed.endpoint is not None:
        pulumi.export("endpoint", deployed.endpoint)


class GateEvidence(pulumi.ComponentResource):
    """The gate's standing and the config's plain-text secrets as a resource, so the policy
    pack (policies/) judges them with every preview and update; it creates nothing."""

    def __init__(self, props: dict[str, object]) -> None:
        super().__init__(EVIDENCE, "gate", props)
        self.register_outputs({})


def gate_evidence(spec: StackSpec) -> None:
    """Register the evidence; refuse quantized traffic the gate does not allow: a preview logs
    the problem as an error (the diff still shows), an update stops before any resource."""
    check = check_gate(spec)
    GateEvidence({"gate": check.to_props(), "artifact_store": spec.artifacts.store,
                  "plaintext_secret_keys": plaintext_secret_keys()})
    if check.refuses and pulumi.runtime.is_dry_run():
        pulumi.log.error(str(check.problem))  # synchronous: with a resource it may be lost
    elif check.refuses:
        raise DeployError(str(check.problem))


def plaintext_secret_keys() -> list[str]:
    """Config keys named like a secret (api_key, secretKey, token, password...) whose value
    Pulumi holds in plain text."""
    from pulumi.runtime.config import CONFIG, get_config_env, is_config_secret

    keys = sorted({*get_config_env(), *CONFIG.get()})
    return [key for key in keys
            if _SECRET_NAME.search(key.rpartition(":")[2]) and not is_config_secret(key)]


def stack_spec(stack: str) -> StackSpec:
    """The validated spec from the config Pulumi hands this program.

    pulumi.Config reads one known key at a time, so the full key set (other namespaces included)
    and which keys are secret come from the SDK's runtime config module; this is the one place
    qinfra touches it.
    """
    from pulumi.runtime.config import CONFIG, get_config, get_config_env, is_config_secret

    keys = sorted({*get_config_env(), *CONFIG.get()})
    flat = {key: str(value) for key in keys if (value := get_config(key)) is not None}
    secret = {key for key in keys if is_config_secret(key)}
    root = pulumi.get_root_directory()  # where Pulumi.yaml is, as `qinfra plan` reads it
    return parse_program_config(flat, secret, stack, root=Path(root) if root else None)


if __name__ == "__main__":
    main()
