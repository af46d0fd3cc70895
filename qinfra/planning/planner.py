"""GPU-memory math for one engine instance: every term that vLLM or llama.cpp spends, per rank.

Pure: facts in, a frozen EnginePlan out. This module is the planner's front door: it picks the
engine's accounting (planning/vllm.py, planning/llamacpp.py) and names the public parts, so
callers import from one place.
"""

from __future__ import annotations

from qinfra.core.formats import VLLM_VERSION, Engine, Format
from qinfra.core.hardware import Gpu
from qinfra.core.modelinfo import ModelInfo
from qinfra.planning.engine_plan import GIB, MIB, EngineOptions, EnginePlan, Term, TermName
from qinfra.planning.flags import EngineFlags, LlamaCacheType, LlamaCppFlags, VllmFlags
from qinfra.planning.llamacpp import kv_bytes_per_token_llama_cpp, plan_llama_cpp
from qinfra.planning.vllm import kv_bytes_per_token_vllm, plan_vllm
from qinfra.planning.weights import param_counts


def plan_engine(
    model: ModelInfo, fmt: Format, gpu: Gpu | None, opts: EngineOptions, host_memory_gib: float = 0
) -> EnginePlan:
    """One engine instance, dispatched on the engine. ValueError for vLLM without a GPU: the
    callers (sizing, the CLI) only ask for GPU plans there."""
    if opts.engine is Engine.LLAMA_CPP:
        return plan_llama_cpp(model, fmt, gpu, opts, host_memory_gib)
    if gpu is None:
        raise ValueError("vLLM plans need a GPU")
    return plan_vllm(model, fmt, gpu, opts)


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
