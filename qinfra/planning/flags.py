"""The engine flags a plan decides, typed, so the templates and the views read the same values."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from qinfra.core.formats import KvCacheDtype


class LlamaCacheType(StrEnum):
    """llama-server's --cache-type-k/-v values qinfra plans with (src/llama-kv-cache.cpp)."""

    F16 = "f16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"


@dataclass(frozen=True)
class VllmFlags:
    """The plan's `vllm serve` flags, so a template cannot invent or drop one. The CPU device's
    knobs (vLLM's CPU build reads them from its environment) are None/False on GPUs."""

    tensor_parallel_size: int
    gpu_memory_utilization: float | None  # None on the CPU: the KV space is explicit there
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: KvCacheDtype
    quantization: str | None
    dtype: str | None
    # Set in the engine's environment, not on its command line (metadata `env`: how the launch
    # script and `qinfra plan` name them).
    cpu_kv_cache_space_gib: int | None = field(  # whole GiB
        default=None, metadata={"env": "VLLM_CPU_KVCACHE_SPACE"})
    cpu_threads: int | None = field(  # bound as 0-<threads - 1>
        default=None, metadata={"env": "VLLM_CPU_OMP_THREADS_BIND", "form": "0-{last}"})
    enforce_eager: bool = False  # --enforce-eager: no torch.compile (CPU: minutes per start)

    @property
    def max_sequences(self) -> int:
        """Sequences one engine runs at once."""
        return self.max_num_seqs


@dataclass(frozen=True)
class LlamaCppFlags:
    """The plan's llama-server flags."""

    ctx_size: int
    parallel: int
    n_gpu_layers: int
    threads: int
    cache_type_k: LlamaCacheType
    cache_type_v: LlamaCacheType
    flash_attn: Literal["on", "off"]

    @property
    def max_sequences(self) -> int:
        """Sequences one engine runs at once: its slots."""
        return self.parallel


EngineFlags = VllmFlags | LlamaCppFlags

__all__ = ["EngineFlags", "LlamaCacheType", "LlamaCppFlags", "VllmFlags"]
