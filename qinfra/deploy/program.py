"""The Pulumi program: stack config -> spec -> plan -> rendered launch files -> target resources.

`pulumi preview` (via Pulumi.yaml) and qinfra's engine run this same program. It reads every
input from stack config and the model's config.json, and never uploads or downloads artifacts.
"""

from __future__ import annotations

import pulumi

from qinfra.core import modelinfo
from qinfra.core.errors import NoFitError
from qinfra.core.hardware import catalog
from qinfra.serving.render import render_stack
from qinfra.planning.sizing import plan_stack
from qinfra.core.spec import from_pulumi_config
from qinfra.deploy.targets import TARGETS, DeployInput


def main() -> None:
    spec = from_pulumi_config(pulumi.get_stack())
    model = modelinfo.load(spec.model.id, spec.model.revision)
    plan = plan_stack(spec, model, catalog())
    if not plan.fits:
        missing = [f"{v.name}: {'; '.join(v.refused[:3])}" for v in plan.variants if v.chosen is None]
        raise NoFitError(f"stack {spec.name} does not fit its fleet: " + " | ".join(missing)
                         + f". Run `qinfra plan --stack {spec.name}` for every term.")
    deployed = TARGETS[spec.target]()(DeployInput(spec, plan, render_stack(spec, plan)))
    pulumi.export("variants", deployed.variants)
    pulumi.export("stage", spec.rollout.stage.value)
    if deployed.endpoint is not None:
        pulumi.export("endpoint", deployed.endpoint)


if __name__ == "__main__":
    main()
