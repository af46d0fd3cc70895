#!/usr/bin/env python3
"""Quantize a 16-bit Hugging Face checkpoint into a compressed-tensors checkpoint with llm-compressor.

    compress.py --model SRC --out OUT --scheme {W8A8,W4A16,W4A16_ASYM,W8A16,FP8_DYNAMIC}
                [--group-size N] [--ignore [NAME ...]] [--algorithm {rtn,gptq}]
                [--calibration FILE] [--samples N] [--max-seq-len L]

Runs under the llm-compressor venv's python (.tools/llmcompressor/venv), not qinfra's: it must
not import qinfra. OUT must be absent or an empty folder; the caller owns the temporary folder and
the rename, so a failed run leaves nothing that looks finished.

- rtn: QuantizationModifier applied by `oneshot` without data (round-to-nearest weights, dynamic
  activations where the scheme has them).
- gptq: GPTQModifier calibrated on --calibration, a UTF-8 text file with one sample per
  non-empty line (lines, not paragraphs: one line is one prompt-sized sample, and a blank line
  never changes what a sample is); the first --samples lines in file order, each tokenized with
  the model's tokenizer and cut at --max-seq-len tokens.
- --group-size replaces the group size of the group schemes (W4A16, W4A16_ASYM, W8A16; their
  preset is 128); it must divide the input width of every quantized Linear layer.
- --ignore: module names or `re:` patterns left unquantized (default: lm_head); `--ignore` with
  no names quantizes everything the scheme targets.

Deterministic: seeded, deterministic torch algorithms, calibration order fixed, and the
tokenizer_config.json keys that record only how this run loaded the tokenizer dropped, so the
same inputs and versions give the same bytes. On success the last stdout line is JSON:
{"tool": "llmcompressor", "versions": {...}, "seconds": S}. On an expected failure: exit 1 and
one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from tool_run import ToolError, check_out, ordinary_modes, run

SCHEMES = ("W8A8", "W4A16", "W4A16_ASYM", "W8A16", "FP8_DYNAMIC")
GROUP_SCHEMES = ("W4A16", "W4A16_ASYM", "W8A16")
VERSIONED = ("torch", "transformers", "llmcompressor", "compressed-tensors", "safetensors",
             "tokenizers")
TAG = "compress"


def drop_load_options(path: Path) -> None:
    """tokenizer_config.json records how this run loaded the tokenizer (`is_local`,
    `local_files_only`), which differs between runs and says nothing about the tokenizer."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def read_samples(path: Path, limit: int) -> list[str]:
    """The first `limit` non-empty lines of a UTF-8 text file, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"cannot read --calibration {path}: {e}") from None
    samples = [line.strip() for line in text.splitlines() if line.strip()]
    if not samples:
        raise ToolError(f"--calibration {path} has no non-empty lines")
    return samples[:limit]


def check_args(args: argparse.Namespace) -> None:
    """Refuse contradictory options before anything is loaded or written."""
    if not (args.model / "config.json").is_file():
        raise ToolError(f"--model {args.model} is not a checkpoint folder (no config.json)")
    if args.group_size is not None:
        if args.scheme not in GROUP_SCHEMES:
            raise ToolError(f"--group-size applies to the group schemes "
                            f"{', '.join(GROUP_SCHEMES)}, not {args.scheme}")
        if args.group_size <= 0:
            raise ToolError(f"--group-size must be positive, got {args.group_size}")
    if args.algorithm == "rtn" and args.calibration is not None:
        raise ToolError("--calibration is only used by --algorithm gptq")
    if args.algorithm == "gptq" and args.calibration is None:
        raise ToolError("--algorithm gptq needs --calibration FILE (one sample per non-empty line)")
    if args.samples <= 0 or args.max_seq_len <= 0:
        raise ToolError("--samples and --max-seq-len must be positive")


def modifier_args(scheme: str, group_size: int | None, ignore: list[str]) -> dict[str, Any]:
    """The modifier's keyword arguments: the preset by name, or, with a group size, the preset's
    scheme rebuilt with that group size (a config_groups entry, which is what config.json's
    quantization_config records)."""
    if group_size is None:
        return {"targets": "Linear", "scheme": scheme, "ignore": ignore}
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    preset = preset_name_to_scheme(scheme, ["Linear"])
    assert preset.weights is not None
    weights = QuantizationArgs.model_validate(
        {**preset.weights.model_dump(), "group_size": group_size})
    group = QuantizationScheme(targets=["Linear"], weights=weights,
                               input_activations=preset.input_activations,
                               output_activations=preset.output_activations)
    return {"config_groups": {"group_0": group}, "ignore": ignore}


def indivisible_message(error: ValueError) -> str | None:
    """llm-compressor lists every layer whose width the group size does not divide, one per
    line; condense that to one line naming the first layer, the count and a size that fits."""
    layers = re.findall(r"- (\S+) \(columns=(\d+), group_size=(\d+)\)", str(error))
    if not layers:
        return None
    name, columns, group = layers[0]
    widths = {int(c) for _, c, _ in layers}
    fits = next((g for g in (256, 128, 64, 32, 16, 8) if all(w % g == 0 for w in widths)), None)
    hint = f"--group-size {fits}" if fits else "a group size that divides them"
    return (f"group size {group} does not divide the input width of {len(layers)} Linear "
            f"layer(s), e.g. {name} ({columns} columns); use {hint} or --ignore those layers")


def compress(args: argparse.Namespace) -> None:
    """Load, quantize and save into args.out."""
    import torch
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    kwargs = modifier_args(args.scheme, args.group_size, args.ignore)
    samples = read_samples(args.calibration, args.samples) if args.calibration else []

    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    data: dict[str, Any] = {}
    if args.algorithm == "gptq":
        from datasets import Dataset

        # A second tokenizer: truncating through the saved one would record the truncation
        # in the output's tokenizer.json.
        calibration_tokenizer = AutoTokenizer.from_pretrained(str(args.model))
        encoded = calibration_tokenizer(samples, truncation=True, max_length=args.max_seq_len)
        data = {"dataset": Dataset.from_dict({"input_ids": encoded["input_ids"],
                                              "attention_mask": encoded["attention_mask"]}),
                "num_calibration_samples": len(samples), "max_seq_length": args.max_seq_len,
                "shuffle_calibration_samples": False, "batch_size": 1}
        recipe: Any = GPTQModifier(**kwargs)
    else:
        recipe = QuantizationModifier(**kwargs)
    try:
        oneshot(model=model, recipe=recipe, **data)
    except ValueError as e:
        if (message := indivisible_message(e)) is not None:
            raise ToolError(message) from None
        raise
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)
    drop_load_options(args.out / "tokenizer_config.json")
    ordinary_modes(args.out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the 16-bit checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="absent or empty output folder")
    parser.add_argument("--scheme", required=True, choices=SCHEMES)
    parser.add_argument("--group-size", type=int, help="group size for W4A16, W4A16_ASYM, W8A16")
    parser.add_argument("--ignore", nargs="*", default=["lm_head"],
                        help="modules left unquantized (default: lm_head)")
    parser.add_argument("--algorithm", choices=("rtn", "gptq"), default="rtn")
    parser.add_argument("--calibration", type=Path,
                        help="gptq: UTF-8 text, one calibration sample per non-empty line")
    parser.add_argument("--samples", type=int, default=64, help="gptq: most samples used (64)")
    parser.add_argument("--max-seq-len", type=int, default=512,
                        help="gptq: tokens kept per sample (512)")
    args = parser.parse_args(argv)

    def work() -> None:
        check_args(args)
        check_out(args.out)
        compress(args)

    return run(TAG, "llmcompressor", VERSIONED, work)


if __name__ == "__main__":
    sys.exit(main())
