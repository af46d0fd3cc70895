#!/usr/bin/env python3
"""Write a tiny random-weight Llama checkpoint in two formats vLLM loads, for stacks whose
engines never really run (stacks/Pulumi.k8s-local.yaml on kwok's nodes): no hub download, and
the bytes are the same on every machine, so the stack file can pin their content ids.

    .venv/bin/python scripts/tiny-vllm-model.py [OUT_DIR]     # default: .qinfra/models

OUT_DIR/qinfra-tiny-llama-bf16   config.json + model.safetensors, bf16 (the baseline)
OUT_DIR/qinfra-tiny-llama-fp8    the same weights as an FP8 checkpoint: linear weights in
                                 float8_e4m3fn with a per-tensor `weight_scale`, embeddings,
                                 norms and lm_head in bf16, `quantization_config.quant_method:
                                 fp8` (the layout vLLM's fp8 method reads from a checkpoint)

The values come from NumPy's PCG64 `random()` with a fixed seed (uniform doubles straight from
the bit stream, which NumPy keeps stable), so a second run writes identical bytes and leaves the
files untouched. Safetensors is written by hand (8-byte header length, JSON header, data), as
its specification describes: the `safetensors` package is not a dependency.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

SEED = 20261129
# A Llama small enough to hash and push in milliseconds, shaped like the real ones (GQA).
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# AutoFP8 / llm-compressor's "fp8" checkpoints: dynamic activation scales, lm_head kept.
FP8_QUANTIZATION = {"quant_method": "fp8", "activation_scheme": "dynamic",
                    "ignored_layers": ["lm_head"]}
FP8_MAX = 448.0  # largest finite float8_e4m3fn (OCP 8-bit floating point spec, E4M3)
INIT_STD = 0.02  # HF `initializer_range` default


def shapes() -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, as transformers' LlamaForCausalLM names them."""
    c = CONFIG
    hidden, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out |= {f"{p}.input_layernorm.weight": (hidden,),
                f"{p}.self_attn.q_proj.weight": (q, hidden),
                f"{p}.self_attn.k_proj.weight": (kv, hidden),
                f"{p}.self_attn.v_proj.weight": (kv, hidden),
                f"{p}.self_attn.o_proj.weight": (hidden, q),
                f"{p}.post_attention_layernorm.weight": (hidden,),
                f"{p}.mlp.gate_proj.weight": (inter, hidden),
                f"{p}.mlp.up_proj.weight": (inter, hidden),
                f"{p}.mlp.down_proj.weight": (hidden, inter)}
    return out | {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}


def weights() -> dict[str, np.ndarray]:
    """Norms at one; the rest uniform with the initializer's standard deviation."""
    rng = np.random.default_rng(SEED)
    half_width = INIT_STD * math.sqrt(3)
    return {name: np.ones(shape, np.float32) if len(shape) == 1 else
            ((rng.random(shape) * 2 - 1) * half_width).astype(np.float32)
            for name, shape in shapes().items()}


def to_bf16(x: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes, rounded to nearest even (the upper 16 bits of the float)."""
    bits = x.astype("<f4").view("<u4").astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype("<u2").tobytes()


def _e4m3_positive() -> np.ndarray:
    """Values of the codes 0x00..0x7E (0x7F is NaN), which rise with the code."""
    codes = np.arange(0x7F)
    exp, man = codes >> 3, codes & 7
    return np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp - 7))


def to_fp8(x: np.ndarray) -> tuple[bytes, float]:
    """Per-tensor float8_e4m3fn: codes of round(x / scale) to the nearest value, and the scale
    (x ~= value * scale) that vLLM reads as `weight_scale`."""
    scale = float(np.abs(x).max()) / FP8_MAX
    values = _e4m3_positive()
    mag = np.abs(x) / scale
    hi = np.clip(np.searchsorted(values, mag), 1, len(values) - 1)
    code = np.where(mag - values[hi - 1] <= values[hi] - mag, hi - 1, hi)
    code = code | np.where(x < 0, 0x80, 0)
    return code.astype(np.uint8).tobytes(), scale


def safetensors(tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """name -> (dtype, shape, data) as one .safetensors file (header padded to 8 bytes)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset, blobs = 0, []
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def checkpoints() -> dict[str, dict[str, bytes]]:
    """Folder name -> file name -> bytes, for both formats."""
    w = weights()
    bf16 = {n: ("BF16", a.shape, to_bf16(a)) for n, a in w.items()}
    fp8 = dict(bf16)
    for name, array in w.items():
        if name.endswith("_proj.weight"):  # the linear layers; lm_head is ignored as above
            data, scale = to_fp8(array)
            fp8[name] = ("F8_E4M3", array.shape, data)
            fp8[name.removesuffix("weight") + "weight_scale"] = (
                "F32", (), np.float32(scale).astype("<f4").tobytes())

    def config(extra: dict[str, object]) -> bytes:
        return (json.dumps({**CONFIG, **extra}, indent=2, sort_keys=True) + "\n").encode()

    return {
        "qinfra-tiny-llama-bf16": {"config.json": config({}),
                                   "model.safetensors": safetensors(bf16)},
        "qinfra-tiny-llama-fp8": {"config.json": config({"quantization_config": FP8_QUANTIZATION}),
                                  "model.safetensors": safetensors(fp8)},
    }


def write(out: Path) -> list[Path]:
    """Write both folders under `out`; files already holding these bytes are left alone (their
    hashes stay cached). Returns the folders."""
    folders = []
    for folder, files in checkpoints().items():
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            path = target / name
            if not (path.is_file() and path.read_bytes() == data):
                tmp = path.with_name(f".{name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
        folders.append(target)
    return folders


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    out = Path(argv[1]) if len(argv) > 1 else root / ".qinfra" / "models"
    for folder in write(out):
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
