"""GPU-memory math for one engine instance: every term that vLLM or llama.cpp spends, per rank.

Pure: facts in, a frozen EnginePlan out. This module is the planner's front door: it picks the
engine's accounting through the engine registry (planning/engines.py) and names the public parts, so
callers import from one place.
"""

from __future__ import annotations

from qinfra.core.formats import VLLM_VERSION, Format
from qinfra.core.hardware import Gpu
from qinfra.core.modelinfo import ModelInfo
from qinfra.planning.engine_plan import GIB, MIB, EngineOptions, EnginePlan, Term, TermName
from qinfra.planning.engines import planner_for
from qinfra.planning.flags import EngineFlags, LlamaCacheType, LlamaCppFlags, VllmFlags
from qinfra.planning.llamacpp import kv_bytes_per_token_llama_cpp, plan_llama_cpp
from qinfra.planning.vllm import kv_bytes_per_token_vllm, plan_vllm
from qinfra.planning.weights import param_counts


def plan_engine(
    model: ModelInfo, fmt: Format, gpu: Gpu | None, opts: EngineOptions, host_memory_gib: float = 0
) -> EnginePlan:
    """One engine instance, through the engine's registry row (planning/engines.py). ValueError
    for an engine that needs a GPU when gpu is None: the callers only ask for GPU plans there."""
    return planner_for(opts.engine).plan(model, fmt, gpu, opts, host_memory_gib)


__all__ = [
    "GIB",
    "MIB",
    "VLLM_VERSION",
    "EngineFlags",
    "EngineOptions",
    "EnginePlan",
    "LlamaCacheType",
    "LlamaCppFlags",
    "Term",
    "TermName",
    "VllmFlags",
    "kv_bytes_per_token_llama_cpp",
    "kv_bytes_per_token_vllm",
    "param_counts",
    "plan_engine",
    "plan_llama_cpp",
    "plan_vllm",
]
