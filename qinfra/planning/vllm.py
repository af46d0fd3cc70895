"""vLLM V1's start-up memory accounting for one engine instance, per GPU rank.

Sources: ../shared/reference/serving-memory.md and the pinned vLLM release (VLLM_VERSION), cited
beside each constant. Terms that are estimates (not exact accounting) say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qinfra.core.engines import serves_on_cpu, traits
from qinfra.core.formats import (
    VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    Engine,
    Format,
    FormatInfo,
    KvCacheDtype,
    check_compatibility,
    format_info,
)
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
)
from qinfra.planning.flags import VllmFlags
from qinfra.planning.weights import rotary_cache_bytes, weight_bytes, weights_note

# vllm/v1/core/kv_cache_utils.py: tokens per KV page.
VLLM_BLOCK_SIZE = 16
# Bytes per element of activations during the profile run (model dtype, 16-bit).
ACTIVATION_BYTES = 2
# Forward-pass peak: the MLP's gate_up output (2 I) and activation output (I) live together with
# three hidden-size tensors (input, residual, normed). Checked against vLLM issue 10517's two runs
# (max_model_len 20000 and 29000): the slope of non-KV memory is 110,213..110,679 bytes per
# profiled token for Llama-3.1-8B; this model gives 110,592, and 2.06 / 2.99 GiB against the
# logged peak_torch_memory - weights of 2.07 / 2.99 GiB.
ACTIVATION_HIDDEN_TENSORS = 3
# Sampler warm-up (vllm/v1/worker/gpu_model_runner.py _dummy_sampler_run): logits for
# max_num_seqs requests in fp32 plus the softmax/top-k working copies. Estimate: 12 B per logit.
SAMPLER_BYTES_PER_LOGIT = 12
# Memory outside torch's allocator (CUDA context growth, cuBLAS/NCCL workspaces). 0.07-0.35 GiB
# in public single-GPU logs; issue 10517's log reports non_torch_memory 0.35 GiB, and 0.36 GiB is
# what it leaves after weights and our activation term. Tensor parallelism adds NCCL buffers
# (estimate).
NON_TORCH_GIB = 0.36
NON_TORCH_TP_EXTRA_GIB = 0.5
# CUDA-graph pool, subtracted since vLLM 0.21 (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1).
# vLLM measures it at start-up; 0.2-5 GiB seen. Estimate: 16 MiB per layer, at least 0.2 GiB.
CUDA_GRAPH_GIB_PER_LAYER = 1 / 64
CUDA_GRAPH_MIN_GIB = 0.2
# vLLM's CPU build (shared/reference/vllm-cpu-and-recipes.md). The KV cache is exactly
# VLLM_CPU_KVCACHE_SPACE whole GiB (vllm/platforms/cpu.py: int(env) * GiB_bytes, no profiling),
# cut into blocks of 16 tokens x all layers (v1/core/kv_cache_utils.py
# get_kv_cache_config_from_groups: space // bytes_per_block). The live engine (vllm-cpu 0.32.0,
# SmolLM2-135M, page 30 x 12,288 B) logs 46,592 / 93,184 / 186,368 tokens for 1 / 2 / 4 GiB:
# one block fewer per ~2 GiB than the bare page gives (its own functions called offline give
# 93,200 and 186,400), which every block costing 59-90 bytes more fits. Where those bytes go is
# not found yet; qinfra counts 64 per block, fitted to those three measurements.
VLLM_CPU_BLOCK_EXTRA_BYTES = 64
# What its processes (API server, engine core: Python, torch, oneDNN) hold besides weights and
# KV, an estimate from measured RSS on SmolLM2-135M eager: 4.9 GB at 1 GiB KV and 5.6 GB at
# 2 GiB, less weights and KV: 3.0-3.3 GiB.
VLLM_CPU_RUNTIME_GIB = 3.3
# vllm/engine/arg_utils.py get_batch_defaults on the CPU platform, API server context (0.32.0).
VLLM_CPU_MAX_NUM_BATCHED_TOKENS = 2048
VLLM_CPU_MAX_NUM_SEQS = 128


# --- pieces ------------------------------------------------------------------------------------


def kv_bytes_per_token_vllm(model: ModelInfo, tp: int, kv_cache_dtype: KvCacheDtype) -> int:
    """Per rank, all layers: kv_heads_per_rank x (K + V head dims) x dtype bytes x layers.
    MLA stores one latent (kv_lora_rank + rope dims) per layer, not split by tp."""
    dtype = 1 if kv_cache_dtype == KvCacheDtype.FP8 else model.dtype_bytes
    if model.mla is not None:
        return model.num_layers * (model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) * dtype
    kv = max(1, model.num_kv_heads // tp)
    return model.num_layers * kv * 2 * model.head_dim * dtype


def vllm_batch_defaults(gpu: Gpu) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that `vllm serve` picks for this GPU
    (vllm/engine/arg_utils.py get_batch_defaults, OPENAI_API_SERVER context, 0.33.0)."""
    if gpu.memory_gib >= 160:
        return 16384, 1024
    if gpu.memory_gib >= 70 and "a100" not in gpu.name.lower():
        return 8192, 1024
    return 2048, 256


def activation_peak_bytes(model: ModelInfo, tokens: int, tp: int) -> int:
    """Forward-pass peak for a profile batch of `tokens` (estimate; see the constants)."""
    h, d = model.hidden_size, model.head_dim
    heads = model.num_attention_heads // tp
    kv = max(1, model.num_kv_heads // tp)
    attn_width = (heads + 2 * kv) * d + heads * d
    moe = model.moe
    if moe is not None:
        inter = moe.intermediate_size // tp
        mlp_width = moe.top_k * (3 * inter + h)
        mlp_width = max(mlp_width, 3 * model.intermediate_size // tp)
    else:
        mlp_width = 3 * model.intermediate_size // tp
    width = max(mlp_width, attn_width) + ACTIVATION_HIDDEN_TENSORS * h
    return tokens * width * ACTIVATION_BYTES


def _blocks_per_request(model: ModelInfo, max_len: int, mnbt: int) -> float:
    """KV pages one max_model_len request needs, averaged over layers: a sliding-window layer
    holds at most ceil((window - 1 + max_num_batched_tokens) / 16) + 1 pages."""
    full = math.ceil(max_len / VLLM_BLOCK_SIZE)
    pages = [
        full if w is None else min(full, math.ceil((w - 1 + mnbt) / VLLM_BLOCK_SIZE) + 1)
        for w in model.windows
    ]
    return sum(pages) / len(pages)


def _longest_request(model: ModelInfo, blocks: int, mnbt: int) -> int:
    """The longest max_model_len whose single request fits `blocks` pages."""
    lo, hi = 0, blocks * VLLM_BLOCK_SIZE
    if all(w is not None for w in model.windows):
        hi = model.max_position_embeddings
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _blocks_per_request(model, mid, mnbt) <= blocks:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _tp_errors(model: ModelInfo, tp: int) -> list[str]:
    if tp < 1:
        return [f"tensor_parallel_size must be >= 1, got {tp}"]
    heads, kv = model.num_attention_heads, model.num_kv_heads
    out = []
    if heads % tp:
        divisors = [n for n in (1, 2, 4, 8, 16) if heads % n == 0]
        out.append(
            f"tensor_parallel_size {tp} does not divide the {heads} attention heads; use one of "
            f"{', '.join(map(str, divisors))}"
        )
    elif model.mla is None and (tp % kv if tp >= kv else kv % tp):
        out.append(f"tensor_parallel_size {tp} and the {kv} KV heads do not divide each other")
    return out


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """The options with vLLM's defaults for this GPU filled in."""

    tp: int
    max_len: int
    util: float
    mnbt: int
    seqs: int
    kv_cache_dtype: KvCacheDtype


def _settings(model: ModelInfo, gpu: Gpu, opts: EngineOptions) -> _Settings:
    default_mnbt, default_seqs = vllm_batch_defaults(gpu)
    return _Settings(
        tp=opts.tensor_parallel_size,
        max_len=opts.max_model_len or model.max_position_embeddings,
        util=opts.gpu_memory_utilization or VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
        mnbt=opts.max_num_batched_tokens or default_mnbt,
        seqs=opts.max_num_seqs or default_seqs,
        kv_cache_dtype=KvCacheDtype(opts.kv_cache_dtype),
    )


def _fixed_terms(model: ModelInfo, info: FormatInfo, gpu: Gpu, opts: EngineOptions,
                 s: _Settings) -> tuple[Term, ...]:
    """Everything before the KV cache: the request, then what it must hold besides KV."""
    parts = weight_bytes(model, info, s.tp)
    rotary = rotary_cache_bytes(model)
    forward = activation_peak_bytes(model, s.mnbt, s.tp)
    sampler = min(s.seqs, s.mnbt) * model.vocab_size * SAMPLER_BYTES_PER_LOGIT
    sampler += s.mnbt * model.hidden_size * ACTIVATION_BYTES  # the dummy run's hidden states
    non_torch = opts.non_torch_gib
    if non_torch is None:
        non_torch = NON_TORCH_GIB + (NON_TORCH_TP_EXTRA_GIB if s.tp > 1 else 0.0)
    graphs = opts.cuda_graph_gib
    if graphs is None:
        graphs = max(CUDA_GRAPH_MIN_GIB, model.num_layers * CUDA_GRAPH_GIB_PER_LAYER)
    requested = int(gpu.memory_gib * s.util * GIB)
    return (
        Term(TermName.REQUESTED, requested,
             note=f"{gpu.memory_gib:g} GiB x gpu_memory_utilization {s.util:g}"),
        Term(TermName.WEIGHTS, parts.total + rotary, note=weights_note(parts, rotary, info, model)),
        Term(TermName.PEAK_ACTIVATION, max(forward, sampler), estimate=True,
             note=f"max(forward pass over {s.mnbt} batched tokens {forward / GIB:.3f} GiB, "
             f"sampler warm-up for {min(s.seqs, s.mnbt)} sequences {sampler / GIB:.3f} GiB)"),
        Term(TermName.NON_TORCH, int(non_torch * GIB), estimate=opts.non_torch_gib is None,
             note="CUDA context growth, cuBLAS/NCCL workspaces"),
        Term(TermName.CUDA_GRAPH, int(graphs * GIB), estimate=opts.cuda_graph_gib is None,
             note="CUDA-graph pool vLLM subtracts since 0.21"),
    )


def _capacity_errors(model: ModelInfo, gpu: Gpu, s: _Settings, requested: int, budget: int,
                     blocks: int, concurrency: float, earlier: list[str]) -> list[str]:
    """Why the KV cache left by the fixed terms cannot hold one max_model_len request."""
    if budget <= 0:
        return [
            f"does not fit: weights and overheads need {(requested - budget) / GIB:.2f} GiB of the "
            f"{requested / GIB:.2f} GiB requested on {gpu.name}; raise tensor parallelism, pick a "
            "larger GPU or a smaller format"
        ]
    if concurrency < 1 and not any("max_model_len" in e for e in earlier):
        estimated = _longest_request(model, blocks, s.mnbt)
        return [
            f"max_model_len {s.max_len} does not fit one request's KV cache "
            f"({blocks * VLLM_BLOCK_SIZE} tokens); the estimated maximum model length is "
            f"{estimated}: lower --max-model-len, raise --gpu-memory-utilization or use more GPUs"
        ]
    return []


def plan_vllm(model: ModelInfo, fmt: Format, gpu: Gpu, opts: EngineOptions) -> EnginePlan:
    """vLLM V1's start-up accounting (vllm/v1/worker/gpu_worker.py determine_available_memory):
    KV budget = total x utilization - weights - peak activation - non-torch - CUDA graphs."""
    info = format_info(fmt)
    s = _settings(model, gpu, opts)
    errors: list[str] = []
    warnings: list[str] = []
    verdict = check_compatibility(fmt, Engine.VLLM, gpu.compute_capability, gpu.name)
    warnings += verdict.warnings
    if not verdict.ok:
        errors.append(refusal(verdict.reason, verdict.alternatives))
    errors += _tp_errors(model, s.tp)
    errors += context_errors(s.max_len, model.max_position_embeddings, "max_position_embeddings")

    terms = _fixed_terms(model, info, gpu, opts, s)
    requested = terms[0].bytes
    budget = requested - sum(t.bytes for t in terms[1:])
    per_token = kv_bytes_per_token_vllm(model, s.tp, s.kv_cache_dtype)
    page = VLLM_BLOCK_SIZE * per_token
    blocks = max(0, budget) // page
    concurrency = blocks / _blocks_per_request(model, s.max_len, s.mnbt)
    terms += (Term(TermName.KV_CACHE, blocks * page,
                   note=f"{blocks} blocks of {VLLM_BLOCK_SIZE} tokens"),)
    errors += _capacity_errors(model, gpu, s, requested, budget, blocks, concurrency, errors)
    if s.kv_cache_dtype == KvCacheDtype.FP8 and gpu.compute_capability < 8.9:
        warnings.append("fp8 KV cache below compute capability 8.9 is stored in fp8 but "
                        "computed in 16-bit (no speed-up)")
    flags = VllmFlags(
        tensor_parallel_size=s.tp,
        gpu_memory_utilization=s.util,
        max_model_len=s.max_len,
        max_num_seqs=s.seqs,
        max_num_batched_tokens=s.mnbt,
        kv_cache_dtype=s.kv_cache_dtype,
        quantization=info.quantization_flag(gpu.compute_capability),
        dtype=info.vllm_dtype,
    )
    return EnginePlan(
        engine=Engine.VLLM, format=fmt, device=gpu.name, device_memory_gib=gpu.memory_gib,
        compute_capability=gpu.compute_capability, tensor_parallel_size=s.tp,
        max_model_len=s.max_len, terms=terms, kv_bytes_per_token=per_token,
        kv_cache_bytes=blocks * page, kv_cache_tokens=blocks * VLLM_BLOCK_SIZE,
        max_concurrency=concurrency, flags=flags, errors=tuple(errors), warnings=tuple(warnings),
    )


def plan_vllm_cpu(model: ModelInfo, fmt: Format, opts: EngineOptions,
                  host_memory_gib: float) -> EnginePlan:
    """vLLM's CPU build in `host_memory_gib` of host RAM: the KV space is what the weights and
    the runtime leave, in whole GiB (VLLM_CPU_KVCACHE_SPACE), and its tokens are the engine's
    own count: whole blocks of 16 tokens (see VLLM_CPU_BLOCK_EXTRA_BYTES)."""
    info = format_info(fmt)
    max_len = opts.max_model_len or model.max_position_embeddings
    errors: list[str] = []
    if not serves_on_cpu(Engine.VLLM, fmt):
        errors.append(f"vLLM's CPU build does not serve {fmt.value}; it serves "
                      f"{', '.join(sorted(traits(Engine.VLLM).cpu_formats or ()))}")
    if opts.tensor_parallel_size != 1:
        errors.append("vLLM CPU plans run one engine per host: tensor_parallel_size must be 1")
    errors += context_errors(max_len, model.max_position_embeddings, "max_position_embeddings")
    capacity = int(host_memory_gib * GIB)
    parts = weight_bytes(model, info, 1)
    weights = parts.total + rotary_cache_bytes(model)
    runtime = int(VLLM_CPU_RUNTIME_GIB * GIB)
    space_gib = max(0, (capacity - weights - runtime) // GIB)
    per_token = kv_bytes_per_token_vllm(model, 1, KvCacheDtype(opts.kv_cache_dtype))
    blocks = space_gib * GIB // (VLLM_BLOCK_SIZE * per_token + VLLM_CPU_BLOCK_EXTRA_BYTES)
    tokens = blocks * VLLM_BLOCK_SIZE
    mnbt = opts.max_num_batched_tokens or VLLM_CPU_MAX_NUM_BATCHED_TOKENS
    concurrency = blocks / _blocks_per_request(model, max_len, mnbt)
    if space_gib < 1:
        need = (weights + runtime) / GIB + 1
        errors.append(f"does not fit: weights {weights / GIB:.2f} GiB and vLLM's runtime "
                      f"{VLLM_CPU_RUNTIME_GIB:g} GiB leave no whole GiB of KV space in "
                      f"{host_memory_gib:g} GiB of host RAM; set qinfra:fleet.cpu.memory_gib to "
                      f"at least {math.ceil(need)}")
    elif concurrency < 1 and not any("max_model_len" in e for e in errors):
        errors.append(f"max_model_len {max_len} does not fit one request's KV cache ({tokens} "
                      f"tokens); lower max_model_len or raise qinfra:fleet.cpu.memory_gib")
    terms = (
        Term(TermName.CAPACITY, capacity, note=f"{host_memory_gib:g} GiB of host RAM"),
        Term(TermName.WEIGHTS, weights, note=weights_note(parts, rotary_cache_bytes(model), info,
                                                          model)),
        Term(TermName.NON_TORCH, runtime, estimate=True,
             note="vLLM's processes besides weights and KV (API server, engine core, torch)"),
        Term(TermName.KV_CACHE, space_gib * GIB,
             note=f"VLLM_CPU_KVCACHE_SPACE={space_gib} GiB: {blocks} blocks of "
                  f"{VLLM_BLOCK_SIZE} tokens"),
    )
    flags = VllmFlags(
        tensor_parallel_size=1,
        gpu_memory_utilization=None,
        max_model_len=max_len,
        max_num_seqs=opts.max_num_seqs or VLLM_CPU_MAX_NUM_SEQS,
        max_num_batched_tokens=mnbt,
        kv_cache_dtype=KvCacheDtype(opts.kv_cache_dtype),
        quantization=info.vllm_quantization,
        dtype=info.vllm_dtype,
        cpu_kv_cache_space_gib=space_gib,
        cpu_threads=opts.threads or 1,
        enforce_eager=True,  # compiled mode: 110-130 s per start, and its cache never reloads
    )
    return EnginePlan(
        engine=Engine.VLLM, format=fmt, device="cpu", device_memory_gib=host_memory_gib,
        compute_capability=None, tensor_parallel_size=1, max_model_len=max_len, terms=terms,
        kv_bytes_per_token=per_token, kv_cache_bytes=space_gib * GIB, kv_cache_tokens=tokens,
        max_concurrency=concurrency, flags=flags, errors=tuple(errors), warnings=(),
    )


def plan_vllm_engine(model: ModelInfo, fmt: Format, gpu: Gpu | None, opts: EngineOptions,
                     host_memory_gib: float = 0) -> EnginePlan:
    """plan_vllm behind the registry's signature; without a GPU, vLLM's CPU build in host RAM."""
    if gpu is None:
        return plan_vllm_cpu(model, fmt, opts, host_memory_gib)
    return plan_vllm(model, fmt, gpu, opts)


PLANNER = EnginePlanner(Engine.VLLM, plan_vllm_engine, VllmFlags, GpuSizing.TENSOR_PARALLEL)


__all__ = [
    "PLANNER",
    "VLLM_BLOCK_SIZE",
    "activation_peak_bytes",
    "kv_bytes_per_token_vllm",
    "plan_vllm",
    "plan_vllm_cpu",
    "vllm_batch_defaults",
]
