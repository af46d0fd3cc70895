#!/usr/bin/env python3
"""Turn a compressed-tensors checkpoint back into a dense 16-bit Hugging Face checkpoint.

    dequantize.py --model SRC --out OUT --dtype {bfloat16,float16}

Why: tools that only read dense checkpoints (llama.cpp's convert_hf_to_gguf.py) can then start
from the quantized weights, so a GGUF made this way carries the quantizer's rounding, not the
original's. Runs under the llm-compressor venv's python (.tools/llmcompressor/venv); must not
import qinfra. OUT must be absent or an empty folder; the caller owns the temporary folder and
the rename.

The library does the unpacking: transformers loads SRC with CompressedTensorsConfig(
dequantize=True) (compressed-tensors' ModelCompressor decompresses every layer) in float32, so
each weight (q - zero) * scale is exact before its one rounding to --dtype. The dense weights are
then loaded, strictly, into a fresh model built from SRC's config less quantization_config, and
saved; tokenizer and chat-template files are copied byte for byte. Only weights come back:
dynamic activation quantization (W8A8, FP8_DYNAMIC) has no dense equivalent and is dropped.
AutoGPTQ / AutoAWQ checkpoints (quant_method gptq, awq) are refused: their unpacking needs
packages this venv does not have.

On success the last stdout line is JSON: {"tool": "dequantize", "versions": {...}, "seconds": S}.
On an expected failure: exit 1 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from tool_run import ToolError, check_out, ordinary_modes, run

VERSIONED = ("torch", "transformers", "compressed-tensors", "safetensors", "tokenizers")
# What a loaded compressed-tensors layer carries besides its weight; nothing else may be dropped.
QUANT_PARAMS = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
                "weight_global_scale", "input_scale", "input_zero_point", "input_global_scale",
                "output_scale", "output_zero_point", "k_scale", "v_scale")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt",
                   "chat_template.jinja", "chat_template.json")
TAG = "dequantize"


def check_source(model: Path) -> None:
    """Accept only what the library can decompress here: a compressed-tensors checkpoint."""
    config_path = model / "config.json"
    if not config_path.is_file():
        raise ToolError(f"--model {model} is not a checkpoint folder (no config.json)")
    quant: dict[str, Any] | None = json.loads(config_path.read_text(encoding="utf-8")).get(
        "quantization_config")
    if not quant:
        raise ToolError(f"--model {model} has no quantization_config: it is already dense")
    method = quant.get("quant_method")
    if method in ("gptq", "awq"):
        raise ToolError(f"--model {model} is an Auto{method.upper()} checkpoint (quant_method "
                        f"{method}): not supported in this environment yet; dequantize reads "
                        f"compressed-tensors checkpoints (quant_method compressed-tensors)")
    if method != "compressed-tensors":
        raise ToolError(f"--model {model} has quant_method {method!r}: dequantize reads only "
                        f"compressed-tensors checkpoints (quant_method compressed-tensors)")


def dequantize(model_dir: Path, out: Path, dtype_name: str) -> None:
    """Decompress, rebuild dense, save into `out`."""
    import torch
    import transformers
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        CompressedTensorsConfig,
        GenerationConfig,
    )

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    dtype = getattr(torch, dtype_name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(dequantize=True))
    state = loaded.state_dict()

    config = AutoConfig.from_pretrained(str(model_dir))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        dense = AutoModelForCausalLM.from_config(config, dtype=dtype)
    wanted = dense.state_dict()
    extra = sorted(k for k in state if k not in wanted and not k.endswith(QUANT_PARAMS))
    if extra:
        raise ToolError(f"the decompressed model has tensors the dense model lacks: "
                        f"{', '.join(extra[:5])}")
    missing = sorted(k for k in wanted if k not in state)
    if missing:
        raise ToolError(f"the decompressed model lacks tensors: {', '.join(missing[:5])}")
    for key, tensor in wanted.items():
        if state[key].shape != tensor.shape:
            raise ToolError(f"{key}: decompressed shape {tuple(state[key].shape)}, "
                            f"dense model wants {tuple(tensor.shape)}")
    dense.load_state_dict({k: state[k].to(dtype).contiguous() for k in wanted}, strict=True,
                          assign=True)
    dense.tie_weights()
    del loaded, state
    if (model_dir / "generation_config.json").is_file():
        dense.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    dense.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    ordinary_modes(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="a compressed-tensors checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="absent or empty output folder")
    parser.add_argument("--dtype", required=True, choices=("bfloat16", "float16"))
    args = parser.parse_args(argv)

    def work() -> None:
        check_source(args.model)
        check_out(args.out)
        dequantize(args.model, args.out, args.dtype)

    return run(TAG, "dequantize", VERSIONED, work)


if __name__ == "__main__":
    sys.exit(main())
