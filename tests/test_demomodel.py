"""The demo model: deterministic bytes, and GGUF metadata that matches its facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import pytest

from qinfra.core.demomodel import (
    CHAT_TEMPLATE,
    DEMO_FACTS,
    DemoModelFacts,
    demo_config_json,
    write_demo_model,
)


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_same_seed_gives_same_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_demo_model(first, seed=7)
    write_demo_model(second, seed=7)
    assert first.read_bytes() == second.read_bytes()


def test_other_seed_gives_other_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_demo_model(first, seed=0)
    write_demo_model(second, seed=1)
    assert first.read_bytes() != second.read_bytes()


def test_writes_only_the_target_file(tmp_path: Path) -> None:
    # the temporary file it writes first is renamed away, not left beside the model
    write_demo_model(tmp_path / "m.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_metadata_matches_facts(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    facts = write_demo_model(path)
    reader = gguf.GGUFReader(path)
    assert facts == DEMO_FACTS
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert _field(reader, "llama.block_count") == facts.n_layer
    assert _field(reader, "llama.embedding_length") == facts.n_embd
    assert _field(reader, "llama.feed_forward_length") == facts.n_ff
    assert _field(reader, "llama.attention.head_count") == facts.n_head
    assert _field(reader, "llama.attention.head_count_kv") == facts.n_head_kv
    assert _field(reader, "llama.rope.dimension_count") == facts.head_dim
    assert _field(reader, "llama.context_length") == facts.n_ctx_train
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert len(_field(reader, "tokenizer.ggml.tokens")) == facts.n_vocab  # type: ignore[arg-type]
    assert _field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE


def test_tensor_shapes_and_types(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    facts = write_demo_model(path)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    n_kv = facts.head_dim * facts.n_head_kv
    # GGUF lists a tensor's shape innermost (row length) first
    assert list(tensors["token_embd.weight"].shape) == [facts.n_embd, facts.n_vocab]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [facts.n_embd, n_kv]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [facts.n_ff, facts.n_embd]
    assert len(tensors) == 2 + 9 * facts.n_layer + 1
    for tensor in tensors.values():
        # matrices are the 16-bit baseline; 1-D norm weights stay F32 as llama.cpp writes them
        expected = "F32" if len(tensor.shape) == 1 else "F16"
        assert tensor.tensor_type.name == expected, tensor.name


def test_size_is_small(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_demo_model(path)
    assert path.stat().st_size < 4 * 1024 * 1024


def test_config_json_matches_facts() -> None:
    config = demo_config_json()
    assert config["model_type"] == "llama"
    assert config["hidden_size"] == DEMO_FACTS.n_embd
    assert config["num_hidden_layers"] == DEMO_FACTS.n_layer
    assert config["num_attention_heads"] == DEMO_FACTS.n_head
    assert config["num_key_value_heads"] == DEMO_FACTS.n_head_kv
    assert config["intermediate_size"] == DEMO_FACTS.n_ff
    assert config["vocab_size"] == DEMO_FACTS.n_vocab
    assert config["max_position_embeddings"] == DEMO_FACTS.n_ctx_train
    assert config["tie_word_embeddings"] is False
    assert config["torch_dtype"] == "float16"


def test_facts_are_pairwise_distinct() -> None:
    # distinct sizes let a planner test catch two swapped fields
    sizes = [DEMO_FACTS.n_embd, DEMO_FACTS.n_ff, DEMO_FACTS.n_vocab, DEMO_FACTS.n_ctx_train]
    assert len(set(sizes)) == len(sizes)


@pytest.mark.parametrize(
    "changes",
    [
        {"n_embd": 192, "n_head": 4},  # rows not a multiple of 256: no K-quant
        {"n_ff": 640},  # ffn_down rows not a multiple of 256
        {"n_head": 4, "n_head_kv": 3},  # query heads do not group evenly over kv heads
        {"n_vocab": 100},  # too small for the 256 byte-fallback tokens
        {"n_layer": 0},  # no blocks
    ],
)
def test_rejects_shapes_llama_cpp_cannot_take(changes: dict[str, int]) -> None:
    fields = {f.name: getattr(DEMO_FACTS, f.name) for f in dataclasses.fields(DEMO_FACTS) if f.init}
    with pytest.raises(ValueError):
        DemoModelFacts(**(fields | changes))
