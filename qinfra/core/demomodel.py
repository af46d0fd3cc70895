"""A tiny random-weight llama model written as GGUF, so real llama.cpp runs without a download."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qinfra.core.fileio import replacing

if TYPE_CHECKING:  # imported where the model is written: `qinfra plan` reads only its facts
    import gguf
    import numpy as np

# K-quants (Q4_K, Q6_K, ...) pack rows in super-blocks of 256 values; llama-quantize falls back to
# a legacy type for a tensor whose row length is not a multiple of this
# (ggml/src/ggml-common.h: QK_K 256).
K_QUANT_BLOCK = 256

# Tokens that every vocabulary here starts with; their ids are fixed so metadata can name them.
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = 0, 1, 2, 3, 4
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
_FIRST_BYTE_ID = len(_SPECIAL_TOKENS)
# SentencePiece marks a word boundary with U+2581 instead of a space.
_SPM_SPACE = "\u2581"

# ChatML, so /v1/chat/completions has a template to render and llama.cpp's built-in detection
# (it looks for `<|im_start|>`) agrees with the Jinja path.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Values llama-family checkpoints use (HF transformers LlamaConfig defaults are rope_theta 10000,
# rms_norm_eps 1e-6; Llama 2 ships 1e-5).
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5
# Standard deviation of the random weights: the HF `initializer_range` default.
INIT_STD = 0.02


def _text_pieces() -> list[str]:
    """Ordinary pieces after the byte tokens: characters, word starts, then common bigrams."""
    chars = [_SPM_SPACE] + [chr(c) for c in range(0x21, 0x7F)]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    word_starts = [_SPM_SPACE + c for c in letters + [c.upper() for c in letters]]
    frequent = "etaoinshrdlucmfwypvbgkjqxz"
    bigrams = [a + b for a in frequent for b in frequent]
    return chars + word_starts + bigrams


@dataclass(frozen=True)
class DemoModelFacts:
    """Architecture of the demo model, the same facts the planner reads from a config.json.

    The defaults differ pairwise (256, 512, 384, ...) so a test catches two swapped fields.
    """

    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_vocab: int = 384
    n_ctx_train: int = 4096
    head_dim: int = field(init=False)

    def __post_init__(self) -> None:
        """Derive head_dim and refuse shapes llama.cpp or the K-quants cannot take."""
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise ValueError(
                f"n_embd {self.n_embd} must divide by n_head {self.n_head}, "
                f"and n_head by n_head_kv {self.n_head_kv}"
            )
        for name in ("n_embd", "n_ff"):
            if getattr(self, name) % K_QUANT_BLOCK:
                raise ValueError(
                    f"{name} {getattr(self, name)} must be a multiple of {K_QUANT_BLOCK} "
                    "so every weight row quantizes to a K-quant"
                )
        if self.n_layer <= 0:
            raise ValueError(f"n_layer {self.n_layer} must be positive")
        n_min = _FIRST_BYTE_ID + 256
        if not n_min <= self.n_vocab <= n_min + len(_text_pieces()):
            raise ValueError(f"n_vocab {self.n_vocab} must be in {n_min}..{n_min + len(_text_pieces())}")
        object.__setattr__(self, "head_dim", self.n_embd // self.n_head)


DEMO_FACTS = DemoModelFacts()


def write_demo_model(path: Path, *, seed: int = 0, facts: DemoModelFacts = DEMO_FACTS) -> DemoModelFacts:
    """Write the demo model to `path` as an F16 GGUF and return its facts.

    The same seed and facts give the same bytes, so the artifact's sha256 is stable. The file is
    written beside `path` and renamed into place, so an interrupted run leaves no partial model.
    """
    import gguf

    path = Path(path)
    with replacing(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        _add_metadata(writer, facts)
        _add_tokenizer(writer, facts)
        for name, tensor in _tensors(facts, seed):
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return facts


def demo_config_json(facts: DemoModelFacts = DEMO_FACTS) -> dict[str, Any]:
    """The Hugging Face config.json that describes the demo model, for planners that read one."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": facts.n_embd,
        "num_hidden_layers": facts.n_layer,
        "num_attention_heads": facts.n_head,
        "num_key_value_heads": facts.n_head_kv,
        "head_dim": facts.head_dim,
        "intermediate_size": facts.n_ff,
        "vocab_size": facts.n_vocab,
        "max_position_embeddings": facts.n_ctx_train,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": ROPE_THETA,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def _add_metadata(writer: gguf.GGUFWriter, facts: DemoModelFacts) -> None:
    """The llama.* hyperparameters llama.cpp needs to build the graph."""
    import gguf

    writer.add_name("qinfra-demo")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(facts.n_ctx_train)
    writer.add_embedding_length(facts.n_embd)
    writer.add_block_count(facts.n_layer)
    writer.add_feed_forward_length(facts.n_ff)
    writer.add_head_count(facts.n_head)
    writer.add_head_count_kv(facts.n_head_kv)
    writer.add_rope_dimension_count(facts.head_dim)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
    writer.add_vocab_size(facts.n_vocab)


def _add_tokenizer(writer: gguf.GGUFWriter, facts: DemoModelFacts) -> None:
    """A SentencePiece ("llama") vocabulary with byte fallback, so any text tokenizes."""
    tokens, scores, types = _vocab(facts.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.add_chat_template(CHAT_TEMPLATE)


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, SentencePiece scores (higher merges first) and token types, n_vocab long."""
    import gguf

    special_types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens = list(_SPECIAL_TOKENS) + [f"<0x{b:02X}>" for b in range(256)]
    types = [int(t) for t in special_types] + [int(gguf.TokenType.BYTE)] * 256
    scores = [0.0] * len(tokens)
    pieces = _text_pieces()[: n_vocab - len(tokens)]
    tokens += pieces
    types += [int(gguf.TokenType.NORMAL)] * len(pieces)
    scores += [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def _tensors(facts: DemoModelFacts, seed: int) -> list[tuple[str, np.ndarray]]:
    """Named tensors in llama.cpp's naming, numpy shape (rows, row length), drawn from one seed.

    Matrices are F16 like a 16-bit baseline; 1-D norm weights stay F32 as llama.cpp's converter
    writes them.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_vocab = facts.n_embd, facts.n_ff, facts.n_vocab
    n_embd_kv = facts.head_dim * facts.n_head_kv

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * INIT_STD).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    tensors = [("token_embd.weight", matrix(n_vocab, n_embd))]
    for i in range(facts.n_layer):
        tensors += [
            (f"blk.{i}.attn_norm.weight", norm()),
            (f"blk.{i}.attn_q.weight", matrix(n_embd, n_embd)),
            (f"blk.{i}.attn_k.weight", matrix(n_embd_kv, n_embd)),
            (f"blk.{i}.attn_v.weight", matrix(n_embd_kv, n_embd)),
            (f"blk.{i}.attn_output.weight", matrix(n_embd, n_embd)),
            (f"blk.{i}.ffn_norm.weight", norm()),
            (f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd)),
            (f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd)),
            (f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff)),
        ]
    tensors += [("output_norm.weight", norm()), ("output.weight", matrix(n_vocab, n_embd))]
    return tensors
