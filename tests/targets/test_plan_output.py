"""Every target records the plan it deployed as the stack output `plan`, which preview reads back
as its "before" side (instead of re-planning with today's planner and prices)."""

from __future__ import annotations

import json

import pytest

from qinfra.core.spec import PULUMI_HELD, parse_config
from qinfra.deploy.preview import DeployedState, plan_record, read_deployed
from tests.render_helpers import STACKS, load_yaml, plan_for
from tests.targets.mocks import API_KEY, run_program, stack_config, walk

# Loading every pulumi_aws module under mocks warns about the provider's own deprecated types.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")


@pytest.mark.parametrize(
    ("stack", "stage", "percent"),
    [
        ("prod", "ab_test", 10),  # aws
        ("k8s", "gradual", 25),  # kubernetes
        ("local", "rollback", 0),  # local: the quantized variant kept at zero
    ],
)
def test_every_target_records_its_plan(stack: str, stage: str, percent: int) -> None:
    config = stack_config(stack, stage, percent)
    if stack == "local":  # its own tiny model: an 8B model does not fit the local stack's 2 GiB
        config["qinfra:model"] = load_yaml(STACKS.joinpath("Pulumi.local.yaml").read_text())[
            "config"]["qinfra:model"]
    run = run_program(stack, {**config, "qinfra:api_key": API_KEY}, ("qinfra:api_key",))
    spec = parse_config({**config, "qinfra:api_key": PULUMI_HELD}, stack)
    assert run.exports["plan"] == plan_record(plan_for(spec))
    assert not any(API_KEY in str(leaf) for leaf in walk(run.exports["plan"]))
    # what preview reads back from the stack's outputs
    deployed = read_deployed(json.loads(json.dumps(run.exports)))
    assert deployed.state is DeployedState.RECORDED
    assert deployed.variants["baseline"]["sized_for_percent"] == 100
    assert deployed.variants["quantized"]["sized_for_percent"] == percent
    assert deployed.usd_per_hour == plan_for(spec).usd_per_hour
