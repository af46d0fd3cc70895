"""Weight bytes per rank: parameters by how they are stored, times the format's bits."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qinfra.core.formats import FormatInfo
from qinfra.core.modelinfo import ModelInfo
from qinfra.planning.engine_plan import GIB, round_up

# vllm/model_executor/layers/vocab_parallel_embedding.py: DEFAULT_VOCAB_PADDING_SIZE.
VLLM_VOCAB_PADDING = 64


@dataclass(frozen=True)
class ParamCounts:
    """Parameters held by one rank, by how they are stored."""

    embedding: int
    lm_head: int
    linear: int  # quantizable matmul weights (attention, MLP, experts)
    dense16: int  # kept 16-bit whatever the format: norms, biases, MoE router


@dataclass(frozen=True)
class _Attention:
    linear: int  # q, k, v, o (and MLA's projections) of one layer
    norms: int  # MLA's latent norms of one layer
    bias: int  # q, k, v biases of one layer


def _attention(model: ModelInfo, tp: int) -> _Attention:
    """One layer's attention parameters per rank; MLA's compressed-KV projections replicate."""
    h = model.hidden_size
    heads = model.num_attention_heads // tp
    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = h * heads * qk if m.q_lora_rank is None else h * m.q_lora_rank + m.q_lora_rank * heads * qk
        attn = q + h * (m.kv_lora_rank + m.qk_rope_head_dim)
        attn += m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim) + heads * m.v_head_dim * h
        return _Attention(attn, m.kv_lora_rank + (m.q_lora_rank or 0), 0)
    kv = max(1, model.num_kv_heads // tp)
    d = model.head_dim
    bias = (heads + 2 * kv) * d if model.attention_bias else 0
    return _Attention(h * heads * d + 2 * h * kv * d + heads * d * h, 0, bias)


def param_counts(model: ModelInfo, tp: int = 1) -> ParamCounts:
    """Parameters per rank under vLLM's tensor-parallel layout (tp=1: the whole model).

    Vocab embedding and lm_head are split across ranks (padded to 64 rows); KV heads are
    replicated when tp exceeds them; MLA's compressed-KV projections are replicated.
    """
    h = model.hidden_size
    vocab = round_up(model.vocab_size, VLLM_VOCAB_PADDING) if tp > 1 else model.vocab_size
    embedding = vocab * h // tp
    lm_head = 0 if model.tie_word_embeddings else embedding
    attn = _attention(model, tp)

    linear = 0
    router = 0
    for layer in range(model.num_layers):
        linear += attn.linear
        moe = model.moe
        if moe is not None and layer >= moe.dense_layers:
            linear += moe.experts * 3 * h * moe.intermediate_size // tp
            linear += 3 * h * moe.shared_intermediate_size // tp
            router += h * moe.experts
        else:
            linear += 3 * h * model.intermediate_size // tp
    norms = model.num_layers * (2 * h + attn.norms) + h
    dense16 = norms + model.num_layers * attn.bias + router
    return ParamCounts(embedding=embedding, lm_head=lm_head, linear=linear, dense16=dense16)


def linear_bits(fmt: FormatInfo, model: ModelInfo) -> float:
    """Bits per linear weight; a group-quantized checkpoint's own bits and group size win: one
    16-bit scale per group, and a `bits`-wide zero point where the checkpoint stores them."""
    q = model.quantization
    if fmt.group_quantized and q is not None and q.bits:
        group = q.group_size if q.group_size and q.group_size > 0 else None
        per_group = 16 + (q.bits if q.zero_points else 0)
        return q.bits + (per_group / group if group else 0.0)
    return fmt.linear_bits


@dataclass(frozen=True)
class WeightBytes:
    """Bytes per rank by layer kind for one format (GGUF sizes are whole-file, tp=1)."""

    embedding: int
    lm_head: int
    linear: int
    dense16: int

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.linear + self.dense16

    def items(self) -> tuple[tuple[str, int], ...]:
        return (("embedding", self.embedding), ("lm_head", self.lm_head),
                ("linear", self.linear), ("dense16", self.dense16))


def weight_bytes(model: ModelInfo, fmt: FormatInfo, tp: int = 1) -> WeightBytes:
    """Bytes per rank by layer kind for `fmt`."""
    counts = param_counts(model, tp)
    return WeightBytes(
        embedding=math.ceil(counts.embedding * fmt.embedding_bits / 8),
        lm_head=math.ceil(counts.lm_head * fmt.lm_head_bits / 8),
        linear=math.ceil(counts.linear * linear_bits(fmt, model) / 8),
        dense16=counts.dense16 * 2,
    )


def rotary_cache_bytes(model: ModelInfo) -> int:
    """vLLM's RotaryEmbedding cos/sin cache: max_position x rotary_dim in the model dtype, one
    per rank (this is the ~0.03 GiB that vLLM's 'Model loading took' shows over params x 2)."""
    rotary_dim = model.mla.qk_rope_head_dim if model.mla else model.head_dim
    return model.max_position_embeddings * rotary_dim * model.dtype_bytes


def weights_note(parts: WeightBytes, rotary: int, info: FormatInfo, model: ModelInfo) -> str:
    """How the weights term was counted, by layer kind."""
    bits = linear_bits(info, model)
    text = ", ".join(f"{k} {v / GIB:.3f}" for k, v in parts.items() if v)
    if rotary:
        text += f", rotary cache {rotary / GIB:.3f}"
    note = f"GiB: {text}; linear at {bits:g} bits/weight"
    if info.mix_estimate:
        note += " (GGUF mix average measured on Llama-3.1-8B: estimate)"
    return note


__all__ = [
    "ParamCounts",
    "WeightBytes",
    "linear_bits",
    "param_counts",
    "rotary_cache_bytes",
    "weight_bytes",
]
