"""The quality gate in front of every change that gives the quantized variant traffic: no
quantized share without a passing gate report for the pinned artifacts, unless a skip is recorded
in the stack file (so it shows in the pull request's diff and in every later update's config)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qinfra.core.errors import DeployError
from qinfra.quality.gate_check import SKIP_FLAG, SKIP_KEY, check_gate

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec
    from qinfra.deploy.events import Events


def gate_updates(spec: StackSpec, skip: bool, events: Events, refuse: bool = True) -> dict[str, str]:
    """Nothing when the gate lets `spec`'s quantized share through (a passing report for exactly
    its pins, a recorded skip of this artifact, or 0% quantized: a rollback is never held back).
    Else, with `skip`, the stack-file edit that records the skip; without it, DeployError with
    the one line that says what is wrong and the fix (`refuse=False`, for an edit only left for
    review: that line as a warning)."""
    check = check_gate(spec)
    if not check.refuses:
        return {}
    if skip:
        events.warning(f"skipping the quality gate ({SKIP_FLAG}), recorded as {SKIP_KEY} in "
                       f"{spec.path}")
        return check.skip_updates(spec)
    if refuse:
        raise DeployError(str(check.problem))
    events.warning(f"warning: {check.problem}")
    return {}
