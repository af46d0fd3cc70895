"""The planning half of the engine registry: one EnginePlanner per Engine, from each engine's
own module (planning/vllm.py, planning/llamacpp.py), so the planner and the sizing dispatch
through this table instead of branching on the engine."""

from __future__ import annotations

from qinfra.core.formats import Engine
from qinfra.planning import llamacpp, vllm
from qinfra.planning.engine_plan import EnginePlanner

PLANNERS: dict[Engine, EnginePlanner] = {p.engine: p for p in (vllm.PLANNER, llamacpp.PLANNER)}


def planner_for(engine: Engine) -> EnginePlanner:
    return PLANNERS[engine]


__all__ = ["PLANNERS", "planner_for"]
