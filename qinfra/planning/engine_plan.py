"""What the planner answers for one engine instance: named memory terms, the engine's flags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from qinfra.core.formats import Engine, Format, KvCacheDtype
from qinfra.core.hardware import Gpu
from qinfra.core.modelinfo import ModelInfo
from qinfra.planning.flags import EngineFlags

GIB = 2**30
MIB = 2**20


class TermName(StrEnum):
    """The lines of a memory bill; a table, the JSON and the tests read a term by its name."""

    REQUESTED = "requested"  # vLLM: total x gpu_memory_utilization
    CAPACITY = "capacity"  # llama.cpp: the GPU's or the host's memory
    WEIGHTS = "weights"
    PEAK_ACTIVATION = "peak_activation"
    NON_TORCH = "non_torch"
    CUDA_GRAPH = "cuda_graph"
    GPU_RESERVE = "gpu_reserve"
    COMPUTE_BUFFER = "compute_buffer"
    KV_CACHE = "kv_cache"


# Spent besides the weights and the KV cache: what several engines on one GPU each pay again.
OVERHEAD_TERMS = frozenset({TermName.PEAK_ACTIVATION, TermName.NON_TORCH, TermName.CUDA_GRAPH,
                            TermName.COMPUTE_BUFFER, TermName.GPU_RESERVE})


@dataclass(frozen=True)
class Term:
    """One line of the memory bill, per rank: its size, how it is counted, and whether the
    figure is an estimate rather than the engine's exact accounting."""

    name: TermName
    bytes: int
    estimate: bool = False
    note: str = ""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass(frozen=True)
class EngineOptions:
    """Knobs of one engine instance; None means the engine's own default for this GPU."""

    engine: Engine = Engine.VLLM
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: KvCacheDtype = KvCacheDtype.AUTO
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    cuda_graph_gib: float | None = None
    non_torch_gib: float | None = None
    parallel: int | None = None  # llama.cpp slots; None: as many as fit
    threads: int | None = None  # llama.cpp --threads
    flash_attn: bool = True  # llama.cpp: rendered explicitly as --flash-attn on


@dataclass(frozen=True)
class EnginePlan:
    """What one engine instance allocates on each of its GPU ranks (or in host RAM)."""

    engine: Engine
    format: Format
    device: str  # GPU name, or "cpu"
    device_memory_gib: float
    compute_capability: float | None
    tensor_parallel_size: int
    max_model_len: int
    terms: tuple[Term, ...]
    kv_bytes_per_token: int
    kv_cache_bytes: int
    kv_cache_tokens: int
    max_concurrency: float
    flags: EngineFlags
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.errors

    def term(self, name: TermName) -> Term:
        return next(t for t in self.terms if t.name == name)

    @property
    def weight_bytes(self) -> int:
        """Weights per rank (what the engine holds on each GPU, or in RAM)."""
        return self.term(TermName.WEIGHTS).bytes

    @property
    def overhead_bytes(self) -> int:
        return sum(t.bytes for t in self.terms if t.name in OVERHEAD_TERMS)


class GpuSizing(StrEnum):
    """How the fleet sizing lays an engine out on a GPU machine (planning/sizing.py)."""

    TENSOR_PARALLEL = "tensor_parallel"  # the smallest TP that fits, small models k per GPU
    SLOTS = "slots"  # one server per GPU, slots for the share, threads from the vCPUs


# (model, format, GPU or None for host RAM, options, host memory GiB) -> the engine's plan
PlanFn = Callable[[ModelInfo, Format, Gpu | None, EngineOptions, float], EnginePlan]


@dataclass(frozen=True)
class EnginePlanner:
    """The planning half of one engine's registry row (planning/engines.py): its memory
    accounting, the flags type its plans carry and how the sizing lays it out."""

    engine: Engine
    plan: PlanFn
    flags_type: type[EngineFlags]
    gpu_sizing: GpuSizing


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def refusal(reason: str, alternatives: tuple[str, ...]) -> str:
    """A compatibility refusal with its nearest alternatives."""
    if not alternatives:
        return reason
    return f"{reason}. Nearest alternatives: {'; '.join(alternatives)}"


def context_errors(max_len: int, model_max: int, what: str) -> list[str]:
    """max_model_len against the model's own limit (`what` names that limit as the engine does)."""
    if max_len <= model_max:
        return []
    return [f"max_model_len {max_len} exceeds the model's {what} {model_max}; lower --max-model-len"]


__all__ = [
    "GIB",
    "MIB",
    "OVERHEAD_TERMS",
    "EngineOptions",
    "EnginePlan",
    "EnginePlanner",
    "GpuSizing",
    "PlanFn",
    "Term",
    "TermName",
]
