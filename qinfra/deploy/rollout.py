"""Rollout and rollback as edits of the stack file: pure stage logic, then one atomic rewrite."""

from __future__ import annotations

from dataclasses import dataclass

from qinfra.core.errors import SpecError
from qinfra.core.spec import StackSpec, Stage
from qinfra.core.stack_keys import ROLLOUT_PERCENT, ROLLOUT_STAGE


@dataclass(frozen=True)
class RolloutEdit:
    """The two lines of the stack file a rollout step changes."""

    stage: Stage
    quantized_percent: int

    def updates(self) -> dict[str, object]:
        return {
            ROLLOUT_STAGE: self.stage.value,
            ROLLOUT_PERCENT: self.quantized_percent,
        }


def rollback() -> RolloutEdit:
    """Quantized traffic 0%, the baseline sized for all of it, the quantized fleet kept at zero."""
    return RolloutEdit(Stage.ROLLBACK, 0)


def rollout(spec: StackSpec, percent: int, stage: Stage | None = None) -> RolloutEdit:
    """The step that sends `percent` of traffic to the quantized variant.

    0 is baseline_only and 100 is full; in between the stage is the one asked for, else the
    current one when it is ab_test or gradual, else ab_test.
    """
    if not 0 <= percent <= 100:
        raise SpecError(f"--percent must be 0..100, got {percent}")
    if percent == 0:
        chosen = Stage.BASELINE_ONLY
    elif percent == 100:
        chosen = Stage.FULL
    else:
        current = spec.rollout.stage
        chosen = stage or (current if current in (Stage.AB_TEST, Stage.GRADUAL) else Stage.AB_TEST)
    if stage is not None and stage is not chosen:
        raise SpecError(f"stage {stage.value} does not go with {percent}% quantized traffic "
                        f"(0 is baseline_only, 100 is full)")
    return RolloutEdit(chosen, percent)
