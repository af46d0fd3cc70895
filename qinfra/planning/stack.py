"""A stack's plan from its spec: the one place that loads the model facts, then sizes the fleets."""

from __future__ import annotations

from qinfra.core import modelinfo
from qinfra.core.hardware import catalog
from qinfra.core.spec import StackSpec
from qinfra.planning.sizing import StackPlan, plan_stack


def plan_for(spec: StackSpec) -> StackPlan:
    """Load the model's config.json facts (may reach the hub) and plan every variant's fleet.

    Raises ModelInfoError when the model's facts cannot be read; a plan that does not fit is
    returned (`StackPlan.fits` is False), not raised, so each caller decides what that means.
    """
    info = modelinfo.load(spec.model.id, spec.model.revision, root=spec.root)
    return plan_stack(spec, info, catalog())
