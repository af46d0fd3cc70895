"""llama.cpp's memory accounting for one llama-server: GGUF weights, KV cells over all slots,
and a compute buffer; on one GPU (all layers offloaded) or in host RAM.

Sources: src/llama-kv-cache.cpp and src/llama-context.cpp of the llama.cpp build qinfra pins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qinfra.core.formats import Engine, Format, KvCacheDtype, check_compatibility, format_info
from qinfra.core.hardware import Gpu
from qinfra.core.modelinfo import ModelInfo
from qinfra.planning.engine_plan import (
    GIB,
    EngineOptions,
    EnginePlan,
    EnginePlanner,
    GpuSizing,
    Term,
    TermName,
    context_errors,
    refusal,
    round_up,
)
from qinfra.planning.flags import LlamaCacheType, LlamaCppFlags
from qinfra.planning.weights import WeightBytes, weight_bytes, weights_note

LLAMA_CPP_CTX_PAD = 256  # the KV cache size is padded to a multiple of 256 cells
LLAMA_CPP_UBATCH = 512  # default --ubatch-size
LLAMA_CPP_KV_TYPE_BYTES = {LlamaCacheType.F16: 2.0, LlamaCacheType.Q8_0: 1.0625,
                           LlamaCacheType.Q4_0: 0.5625}
# CUDA context and cuBLAS handles a llama-server process holds on a GPU (estimate).
LLAMA_CPP_GPU_RESERVE_GIB = 0.5
# Most slots qinfra plans when the caller leaves it to the planner.
LLAMA_CPP_MAX_SLOTS = 256


def llama_cpp_cache_type(kv_cache_dtype: KvCacheDtype) -> LlamaCacheType:
    """llama.cpp has no fp8 cache; q8_0 is its 8-bit equivalent."""
    return LlamaCacheType.Q8_0 if kv_cache_dtype == KvCacheDtype.FP8 else LlamaCacheType.F16


def kv_bytes_per_token_llama_cpp(model: ModelInfo, cache_type: LlamaCacheType) -> float:
    """n_layer x (n_embd_k_gqa + n_embd_v_gqa) x element size (src/llama-kv-cache.cpp)."""
    size = LLAMA_CPP_KV_TYPE_BYTES[LlamaCacheType(cache_type)]
    return model.num_layers * 2 * model.head_dim * model.num_kv_heads * size


def compute_buffer_bytes(model: ModelInfo, n_ctx: int, flash_attn: bool) -> int:
    """Logits for one ubatch in fp32, FFN scratch, and KQ scratch without flash attention."""
    logits = model.vocab_size * LLAMA_CPP_UBATCH * 4
    ffn = LLAMA_CPP_UBATCH * (3 * model.intermediate_size + 4 * model.hidden_size) * 4
    kq = 0 if flash_attn else n_ctx * LLAMA_CPP_UBATCH * model.num_attention_heads * 4
    return logits + ffn + kq


@dataclass(frozen=True)
class _Memory:
    """Where the server runs and what is held there before any KV cell."""

    where: str  # a GPU name, or "host RAM"
    memory_gib: float
    on_gpu: bool
    parts: WeightBytes
    weights: int  # resident where the server runs
    reserve: int

    @property
    def capacity(self) -> int:
        return int(self.memory_gib * GIB)


def _memory(model: ModelInfo, fmt: Format, gpu: Gpu | None, host_memory_gib: float) -> _Memory:
    parts = weight_bytes(model, format_info(fmt), 1)
    on_gpu = gpu is not None
    # The token embedding stays in host memory (CPU_Mapped) even with every layer offloaded.
    weights = parts.total - parts.embedding if on_gpu else parts.total
    return _Memory(
        where=gpu.name if gpu else "host RAM",
        memory_gib=gpu.memory_gib if gpu else host_memory_gib,
        on_gpu=on_gpu,
        parts=parts,
        weights=weights,
        reserve=int(LLAMA_CPP_GPU_RESERVE_GIB * GIB) if on_gpu else 0,
    )


@dataclass(frozen=True)
class _Cells:
    """The KV cache: ctx-size cells, slot_ctx for each of the parallel slots."""

    slot_ctx: int
    parallel: int
    cache_type: LlamaCacheType
    bytes: int

    @property
    def n_ctx(self) -> int:
        return self.parallel * self.slot_ctx


def _terms(model: ModelInfo, fmt: Format, mem: _Memory, compute: int, cells: _Cells,
           flash_attn: bool) -> tuple[Term, ...]:
    info = format_info(fmt)
    note = weights_note(mem.parts, 0, info, model)
    if mem.on_gpu:
        note += f"; token embedding {mem.parts.embedding / GIB:.3f} GiB in host RAM"
    reserve = [Term(TermName.GPU_RESERVE, mem.reserve, estimate=True,
                    note="CUDA context and cuBLAS handles")] if mem.on_gpu else []
    return (
        Term(TermName.CAPACITY, mem.capacity, note=f"{mem.memory_gib:g} GiB of {mem.where}"),
        Term(TermName.WEIGHTS, mem.weights, estimate=info.mix_estimate, note=note),
        *reserve,
        Term(TermName.COMPUTE_BUFFER, compute, estimate=True,
             note=f"logits {model.vocab_size} x ubatch {LLAMA_CPP_UBATCH} x 4 B + FFN scratch"
             + ("" if flash_attn else " + KQ scratch (no flash attention)")),
        Term(TermName.KV_CACHE, cells.bytes, note=f"{cells.n_ctx} cells ({cells.parallel} slots "
             f"x {cells.slot_ctx}), {cells.cache_type}"),
    )


def _setup_errors(model: ModelInfo, fmt: Format, gpu: Gpu | None, opts: EngineOptions,
                  max_len: int, cache_type: LlamaCacheType) -> list[str]:
    """Refusals that do not depend on memory: format, layout, context, cache type."""
    cc = gpu.compute_capability if gpu else None
    verdict = check_compatibility(fmt, Engine.LLAMA_CPP, cc, gpu.name if gpu else "cpu")
    errors = [] if verdict.ok else [refusal(verdict.reason, verdict.alternatives)]
    if opts.tensor_parallel_size != 1:
        errors.append("llama.cpp plans use one GPU per server: tensor_parallel_size must be 1")
    errors += context_errors(max_len, model.max_position_embeddings, "context length")
    if cache_type != LlamaCacheType.F16 and not opts.flash_attn:
        errors.append("a quantized V cache needs flash attention")
    return errors


def plan_llama_cpp(
    model: ModelInfo, fmt: Format, gpu: Gpu | None, opts: EngineOptions, host_memory_gib: float = 0
) -> EnginePlan:
    """llama.cpp's accounting: the GGUF weights, KV for ctx-size cells over all slots, and a
    compute buffer; on one GPU (all layers offloaded) or in host RAM (gpu None)."""
    max_len = opts.max_model_len or model.max_position_embeddings
    cache_type = llama_cpp_cache_type(opts.kv_cache_dtype)
    errors = _setup_errors(model, fmt, gpu, opts, max_len, cache_type)
    slot_ctx = round_up(max_len, LLAMA_CPP_CTX_PAD)
    per_token = kv_bytes_per_token_llama_cpp(model, cache_type)
    mem = _memory(model, fmt, gpu, host_memory_gib)

    free = (mem.capacity - mem.weights - mem.reserve
            - compute_buffer_bytes(model, slot_ctx, opts.flash_attn))
    max_slots = max(0, int(free // (per_token * slot_ctx))) if per_token else 0
    parallel = opts.parallel or max(1, min(max_slots, LLAMA_CPP_MAX_SLOTS))
    cells = _Cells(slot_ctx, parallel, cache_type, math.ceil(parallel * slot_ctx * per_token))
    compute = compute_buffer_bytes(model, cells.n_ctx, opts.flash_attn)
    used = mem.weights + mem.reserve + compute + cells.bytes
    if used > mem.capacity:
        errors.append(
            f"does not fit: {used / GIB:.2f} GiB needed on {mem.where} ({mem.memory_gib:g} GiB) "
            f"for {parallel} slot(s) of {slot_ctx} tokens; at most {max_slots} slot(s) fit"
        )
    flags = LlamaCppFlags(
        ctx_size=cells.n_ctx,
        parallel=parallel,
        n_gpu_layers=model.num_layers + 1 if mem.on_gpu else 0,
        threads=opts.threads or 1,
        cache_type_k=cache_type,
        cache_type_v=cache_type,
        flash_attn="on" if opts.flash_attn else "off",
    )
    return EnginePlan(
        engine=Engine.LLAMA_CPP, format=fmt, device=gpu.name if gpu else "cpu",
        device_memory_gib=mem.memory_gib, compute_capability=gpu.compute_capability if gpu else None,
        tensor_parallel_size=1, max_model_len=max_len,
        terms=_terms(model, fmt, mem, compute, cells, opts.flash_attn),
        kv_bytes_per_token=math.ceil(per_token), kv_cache_bytes=cells.bytes,
        kv_cache_tokens=cells.n_ctx, max_concurrency=float(parallel), flags=flags,
        errors=tuple(errors), warnings=(),
    )


PLANNER = EnginePlanner(Engine.LLAMA_CPP, plan_llama_cpp, LlamaCppFlags, GpuSizing.SLOTS)


__all__ = [
    "PLANNER",
    "kv_bytes_per_token_llama_cpp",
    "llama_cpp_cache_type",
    "plan_llama_cpp",
]
