"""GPU-memory math for one engine instance: every term that vLLM or llama.cpp spends, per rank.

Pure: facts in, a frozen EnginePlan out. Terms that are estimates (not exact accounting) say so;
the sources of each formula are in ../shared/reference/serving-memory.md and the pinned vLLM
release (VLLM_VERSION) as cited beside each constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qinfra.core.formats import Engine, Format, FormatInfo, check_compatibility, format_info
from qinfra.core.hardware import Gpu
from qinfra.core.modelinfo import ModelInfo

GIB = 2**30
MIB = 2**20

VLLM_VERSION = "0.33.0"
"""The vLLM release the defaults below (and the rendered flags) are taken from."""

# vllm/config/cache.py (0.33.0): CacheConfig.gpu_memory_utilization default.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
# vllm/v1/core/kv_cache_utils.py: tokens per KV page.
VLLM_BLOCK_SIZE = 16
# vllm/model_executor/layers/vocab_parallel_embedding.py: DEFAULT_VOCAB_PADDING_SIZE.
VLLM_VOCAB_PADDING = 64
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

# llama.cpp (src/llama-kv-cache.cpp, src/llama-context.cpp).
LLAMA_CPP_CTX_PAD = 256  # the KV cache size is padded to a multiple of 256 cells
LLAMA_CPP_UBATCH = 512  # default --ubatch-size
LLAMA_CPP_KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 1.0625, "q4_0": 0.5625}
# CUDA context and cuBLAS handles a llama-server process holds on a GPU (estimate).
LLAMA_CPP_GPU_RESERVE_GIB = 0.5


@dataclass(frozen=True)
class Term:
    """One line of the memory bill, per rank."""

    name: str
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
    kv_cache_dtype: str = "auto"  # auto | fp8
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
    flags: dict[str, object]
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.errors

    def term(self, name: str) -> Term:
        return next(t for t in self.terms if t.name == name)

    @property
    def weights_bytes(self) -> int:
        return self.term("weights").bytes

    @property
    def overhead_bytes(self) -> int:
        return sum(t.bytes for t in self.terms if t.name in _OVERHEAD_TERMS)


_OVERHEAD_TERMS = ("peak_activation", "non_torch", "cuda_graph", "compute_buffer", "gpu_reserve")


# --- weights -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts:
    """Parameters held by one rank, by how they are stored."""

    embedding: int
    lm_head: int
    linear: int  # quantizable matmul weights (attention, MLP, experts)
    dense16: int  # kept 16-bit whatever the format: norms, biases, MoE router


def param_counts(model: ModelInfo, tp: int = 1) -> ParamCounts:
    """Parameters per rank under vLLM's tensor-parallel layout (tp=1: the whole model).

    Vocab embedding and lm_head are split across ranks (padded to 64 rows); KV heads are
    replicated when tp exceeds them; MLA's compressed-KV projections are replicated.
    """
    h = model.hidden_size
    vocab = _round_up(model.vocab_size, VLLM_VOCAB_PADDING) if tp > 1 else model.vocab_size
    embedding = vocab * h // tp
    lm_head = 0 if model.tie_word_embeddings else embedding
    heads = model.num_attention_heads // tp
    kv = max(1, model.num_kv_heads // tp)
    d = model.head_dim

    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = h * heads * qk if m.q_lora_rank is None else h * m.q_lora_rank + m.q_lora_rank * heads * qk
        attn = q + h * (m.kv_lora_rank + m.qk_rope_head_dim)
        attn += m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim) + heads * m.v_head_dim * h
        attn_norms = m.kv_lora_rank + (m.q_lora_rank or 0)
        bias = 0
    else:
        attn = h * heads * d + 2 * h * kv * d + heads * d * h
        attn_norms = 0
        bias = (heads + 2 * kv) * d if model.attention_bias else 0

    linear = 0
    router = 0
    for layer in range(model.num_layers):
        linear += attn
        moe = model.moe
        if moe is not None and layer >= moe.dense_layers:
            linear += moe.experts * 3 * h * moe.intermediate_size // tp
            linear += 3 * h * moe.shared_intermediate_size // tp
            router += h * moe.experts
        else:
            linear += 3 * h * model.intermediate_size // tp
    norms = model.num_layers * (2 * h + attn_norms) + h
    dense16 = norms + model.num_layers * bias + router
    return ParamCounts(embedding=embedding, lm_head=lm_head, linear=linear, dense16=dense16)


def linear_bits(fmt: FormatInfo, model: ModelInfo) -> float:
    """Bits per linear weight; a group-quantized checkpoint's own bits and group size win."""
    q = model.quantization
    if fmt.group_quantized and q is not None and q.bits:
        group = q.group_size if q.group_size and q.group_size > 0 else None
        return q.bits + ((16 + q.bits) / group if group else 0.0)
    return fmt.linear_bits


def weight_bytes(model: ModelInfo, fmt: FormatInfo, tp: int = 1) -> dict[str, int]:
    """Bytes per rank by layer kind for `fmt` (GGUF sizes are whole-file, tp=1)."""
    counts = param_counts(model, tp)
    return {
        "embedding": math.ceil(counts.embedding * fmt.embedding_bits / 8),
        "lm_head": math.ceil(counts.lm_head * fmt.lm_head_bits / 8),
        "linear": math.ceil(counts.linear * linear_bits(fmt, model) / 8),
        "dense16": counts.dense16 * 2,
    }


def rotary_cache_bytes(model: ModelInfo) -> int:
    """vLLM's RotaryEmbedding cos/sin cache: max_position x rotary_dim in the model dtype, one
    per rank (this is the ~0.03 GiB that vLLM's 'Model loading took' shows over params x 2)."""
    rotary_dim = model.mla.qk_rope_head_dim if model.mla else model.head_dim
    return model.max_position_embeddings * rotary_dim * model.dtype_bytes


# --- KV cache ----------------------------------------------------------------------------------


def kv_bytes_per_token_vllm(model: ModelInfo, tp: int, kv_cache_dtype: str) -> int:
    """Per rank, all layers: kv_heads_per_rank x (K + V head dims) x dtype bytes x layers.
    MLA stores one latent (kv_lora_rank + rope dims) per layer, not split by tp."""
    dtype = 1 if kv_cache_dtype == "fp8" else model.dtype_bytes
    if model.mla is not None:
        return model.num_layers * (model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) * dtype
    kv = max(1, model.num_kv_heads // tp)
    return model.num_layers * kv * 2 * model.head_dim * dtype


def kv_bytes_per_token_llama_cpp(model: ModelInfo, cache_type: str) -> float:
    """n_layer x (n_embd_k_gqa + n_embd_v_gqa) x element size (src/llama-kv-cache.cpp)."""
    size = LLAMA_CPP_KV_TYPE_BYTES[cache_type]
    return model.num_layers * 2 * model.head_dim * model.num_kv_heads * size


# --- vLLM --------------------------------------------------------------------------------------


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


def plan_vllm(model: ModelInfo, fmt: Format, gpu: Gpu, opts: EngineOptions) -> EnginePlan:
    """vLLM V1's start-up accounting (vllm/v1/worker/gpu_worker.py determine_available_memory):
    KV budget = total x utilization - weights - peak activation - non-torch - CUDA graphs."""
    info = format_info(fmt)
    tp = opts.tensor_parallel_size
    errors: list[str] = []
    warnings: list[str] = []

    verdict = check_compatibility(fmt, Engine.VLLM, gpu.compute_capability, gpu.name)
    warnings += verdict.warnings
    if not verdict.ok:
        errors.append(_refusal(verdict.reason, verdict.alternatives))
    errors += _tp_errors(model, tp)

    max_len = opts.max_model_len or model.max_position_embeddings
    if max_len > model.max_position_embeddings:
        errors.append(
            f"max_model_len {max_len} exceeds the model's max_position_embeddings "
            f"{model.max_position_embeddings}; lower --max-model-len"
        )
    util = opts.gpu_memory_utilization or VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    default_mnbt, default_seqs = vllm_batch_defaults(gpu)
    mnbt = opts.max_num_batched_tokens or default_mnbt
    seqs = opts.max_num_seqs or default_seqs

    parts = weight_bytes(model, info, tp)
    rotary = rotary_cache_bytes(model)
    weights = sum(parts.values()) + rotary
    forward = activation_peak_bytes(model, mnbt, tp)
    sampler = min(seqs, mnbt) * model.vocab_size * SAMPLER_BYTES_PER_LOGIT
    sampler += mnbt * model.hidden_size * ACTIVATION_BYTES  # the dummy run's hidden states
    non_torch = opts.non_torch_gib
    if non_torch is None:
        non_torch = NON_TORCH_GIB + (NON_TORCH_TP_EXTRA_GIB if tp > 1 else 0.0)
    graphs = opts.cuda_graph_gib
    if graphs is None:
        graphs = max(CUDA_GRAPH_MIN_GIB, model.num_layers * CUDA_GRAPH_GIB_PER_LAYER)

    requested = int(gpu.memory_gib * util * GIB)
    terms = (
        Term("requested", requested, note=f"{gpu.memory_gib:g} GiB x gpu_memory_utilization {util:g}"),
        Term("weights", weights, note=_weights_note(parts, rotary, info, model)),
        Term(
            "peak_activation",
            max(forward, sampler),
            estimate=True,
            note=f"max(forward pass over {mnbt} batched tokens {forward / GIB:.3f} GiB, "
            f"sampler warm-up for {min(seqs, mnbt)} sequences {sampler / GIB:.3f} GiB)",
        ),
        Term("non_torch", int(non_torch * GIB), estimate=opts.non_torch_gib is None,
             note="CUDA context growth, cuBLAS/NCCL workspaces"),
        Term("cuda_graph", int(graphs * GIB), estimate=opts.cuda_graph_gib is None,
             note="CUDA-graph pool vLLM subtracts since 0.21"),
    )
    budget = requested - sum(t.bytes for t in terms[1:])
    per_token = kv_bytes_per_token_vllm(model, tp, opts.kv_cache_dtype)
    page = VLLM_BLOCK_SIZE * per_token
    blocks = max(0, budget) // page
    kv_bytes = blocks * page
    tokens = blocks * VLLM_BLOCK_SIZE
    per_request = _blocks_per_request(model, max_len, mnbt)
    concurrency = blocks / per_request
    terms += (Term("kv_cache", kv_bytes, note=f"{blocks} blocks of {VLLM_BLOCK_SIZE} tokens"),)

    if budget <= 0:
        errors.append(
            f"does not fit: weights and overheads need {(requested - budget) / GIB:.2f} GiB of the "
            f"{requested / GIB:.2f} GiB requested on {gpu.name}; raise tensor parallelism, pick a "
            "larger GPU or a smaller format"
        )
    elif concurrency < 1 and not any("max_model_len" in e for e in errors):
        estimated = _longest_request(model, blocks, mnbt)
        errors.append(
            f"max_model_len {max_len} does not fit one request's KV cache ({tokens} tokens); the "
            f"estimated maximum model length is {estimated}: lower --max-model-len, raise "
            "--gpu-memory-utilization or use more GPUs"
        )
    if opts.kv_cache_dtype == "fp8" and gpu.compute_capability < 8.9:
        warnings.append("fp8 KV cache below compute capability 8.9 is stored in fp8 but "
                        "computed in 16-bit (no speed-up)")

    flags: dict[str, object] = {
        "tensor_parallel_size": tp,
        "gpu_memory_utilization": util,
        "max_model_len": max_len,
        "max_num_seqs": seqs,
        "max_num_batched_tokens": mnbt,
        "kv_cache_dtype": opts.kv_cache_dtype,
        "quantization": info.quantization_flag(gpu.compute_capability),
        "dtype": info.vllm_dtype,
    }
    return EnginePlan(
        engine=Engine.VLLM,
        format=fmt,
        device=gpu.name,
        device_memory_gib=gpu.memory_gib,
        compute_capability=gpu.compute_capability,
        tensor_parallel_size=tp,
        max_model_len=max_len,
        terms=terms,
        kv_bytes_per_token=per_token,
        kv_cache_bytes=kv_bytes,
        kv_cache_tokens=tokens,
        max_concurrency=concurrency,
        flags=flags,
        errors=tuple(errors),
        warnings=tuple(warnings),
    )


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


def _weights_note(parts: dict[str, int], rotary: int, info: FormatInfo, model: ModelInfo) -> str:
    bits = linear_bits(info, model)
    text = ", ".join(f"{k} {v / GIB:.3f}" for k, v in parts.items() if v)
    if rotary:
        text += f", rotary cache {rotary / GIB:.3f}"
    note = f"GiB: {text}; linear at {bits:g} bits/weight"
    if info.mix_estimate:
        note += " (GGUF mix average measured on Llama-3.1-8B: estimate)"
    return note


def _refusal(reason: str, alternatives: tuple[str, ...]) -> str:
    if not alternatives:
        return reason
    return f"{reason}. Nearest alternatives: {'; '.join(alternatives)}"


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# --- llama.cpp ---------------------------------------------------------------------------------


def llama_cpp_cache_type(kv_cache_dtype: str) -> str:
    """llama.cpp has no fp8 cache; q8_0 is its 8-bit equivalent."""
    return "q8_0" if kv_cache_dtype == "fp8" else "f16"


def plan_llama_cpp(
    model: ModelInfo, fmt: Format, gpu: Gpu | None, opts: EngineOptions, host_memory_gib: float = 0
) -> EnginePlan:
    """llama.cpp's accounting: the GGUF weights, KV for ctx-size cells over all slots, and a
    compute buffer; on one GPU (all layers offloaded) or in host RAM (gpu None)."""
    info = format_info(fmt)
    errors: list[str] = []
    warnings: list[str] = []
    cc = gpu.compute_capability if gpu else None
    verdict = check_compatibility(fmt, Engine.LLAMA_CPP, cc, gpu.name if gpu else "cpu")
    if not verdict.ok:
        errors.append(_refusal(verdict.reason, verdict.alternatives))
    if opts.tensor_parallel_size != 1:
        errors.append("llama.cpp plans use one GPU per server: tensor_parallel_size must be 1")

    max_len = opts.max_model_len or model.max_position_embeddings
    if max_len > model.max_position_embeddings:
        errors.append(
            f"max_model_len {max_len} exceeds the model's context length "
            f"{model.max_position_embeddings}; lower --max-model-len"
        )
    slot_ctx = _round_up(max_len, LLAMA_CPP_CTX_PAD)
    cache_type = llama_cpp_cache_type(opts.kv_cache_dtype)
    per_token = kv_bytes_per_token_llama_cpp(model, cache_type)
    if cache_type != "f16" and not opts.flash_attn:
        errors.append("a quantized V cache needs flash attention")

    parts = weight_bytes(model, info, 1)
    weights_total = sum(parts.values())
    on_gpu = gpu is not None
    # The token embedding stays in host memory (CPU_Mapped) even with every layer offloaded.
    weights = weights_total - parts["embedding"] if on_gpu else weights_total
    memory_gib = gpu.memory_gib if gpu else host_memory_gib
    capacity = int(memory_gib * GIB)

    def compute(n_ctx: int) -> int:
        logits = model.vocab_size * LLAMA_CPP_UBATCH * 4
        ffn = LLAMA_CPP_UBATCH * (3 * model.intermediate_size + 4 * model.hidden_size) * 4
        kq = 0 if opts.flash_attn else n_ctx * LLAMA_CPP_UBATCH * model.num_attention_heads * 4
        return logits + ffn + kq

    reserve = int(LLAMA_CPP_GPU_RESERVE_GIB * GIB) if on_gpu else 0
    free = capacity - weights - reserve - compute(slot_ctx)
    max_slots = max(0, int(free // (per_token * slot_ctx))) if per_token else 0
    parallel = opts.parallel or max(1, min(max_slots, 256))
    n_ctx = parallel * slot_ctx
    kv_bytes = math.ceil(n_ctx * per_token)
    compute_bytes = compute(n_ctx)

    where = gpu.name if gpu else "host RAM"
    terms = (
        Term("capacity", capacity, note=f"{memory_gib:g} GiB of {where}"),
        Term("weights", weights, estimate=info.mix_estimate,
             note=_weights_note(parts, 0, info, model)
             + (f"; token embedding {parts['embedding'] / GIB:.3f} GiB in host RAM" if on_gpu else "")),
        *([Term("gpu_reserve", reserve, estimate=True, note="CUDA context and cuBLAS handles")]
          if on_gpu else []),
        Term("compute_buffer", compute_bytes, estimate=True,
             note=f"logits {model.vocab_size} x ubatch {LLAMA_CPP_UBATCH} x 4 B + FFN scratch"
             + ("" if opts.flash_attn else " + KQ scratch (no flash attention)")),
        Term("kv_cache", kv_bytes, note=f"{n_ctx} cells ({parallel} slots x {slot_ctx}), {cache_type}"),
    )
    used = weights + reserve + compute_bytes + kv_bytes
    if used > capacity:
        errors.append(
            f"does not fit: {used / GIB:.2f} GiB needed on {where} ({memory_gib:g} GiB) for "
            f"{parallel} slot(s) of {slot_ctx} tokens; at most {max_slots} slot(s) fit"
        )
    threads = opts.threads or 1
    flags: dict[str, object] = {
        "ctx_size": n_ctx,
        "parallel": parallel,
        "n_gpu_layers": model.num_layers + 1 if on_gpu else 0,
        "threads": threads,
        "cache_type_k": cache_type,
        "cache_type_v": cache_type,
        "flash_attn": "on" if opts.flash_attn else "off",
    }
    return EnginePlan(
        engine=Engine.LLAMA_CPP,
        format=fmt,
        device=gpu.name if gpu else "cpu",
        device_memory_gib=memory_gib,
        compute_capability=cc,
        tensor_parallel_size=1,
        max_model_len=max_len,
        terms=terms,
        kv_bytes_per_token=math.ceil(per_token),
        kv_cache_bytes=kv_bytes,
        kv_cache_tokens=n_ctx,
        max_concurrency=float(parallel),
        flags=flags,
        errors=tuple(errors),
        warnings=tuple(warnings),
    )


def plan_engine(
    model: ModelInfo, fmt: Format, gpu: Gpu | None, opts: EngineOptions, host_memory_gib: float = 0
) -> EnginePlan:
    """One engine instance, dispatched on the engine."""
    if opts.engine is Engine.LLAMA_CPP:
        return plan_llama_cpp(model, fmt, gpu, opts, host_memory_gib)
    if gpu is None:
        raise ValueError("vLLM plans need a GPU")
    return plan_vllm(model, fmt, gpu, opts)


__all__ = [
    "EngineOptions",
    "EnginePlan",
    "Term",
    "plan_engine",
    "plan_llama_cpp",
    "plan_vllm",
]
