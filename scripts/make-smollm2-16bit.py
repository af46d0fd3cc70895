#!/usr/bin/env python3
"""Make the 16-bit SmolLM2-135M-Instruct safetensors checkpoint that vLLM's CPU build serves in the
tests, from the Q4_1 GGUF that scripts/setup.sh unpacks, byte for byte the same on every run.

    .tools/vllm/venv/bin/python scripts/make-smollm2-16bit.py [--out DIR] [--write-expected]

Runs in the vLLM venv (scripts/install-vllm.sh installs transformers, gguf, accelerate and
safetensors there, at pinned versions: they decide the bytes). Writes config.json,
generation_config.json, the tokenizer files and model.safetensors (bf16) into a temporary folder
beside the output, checks every file's sha256 against scripts/smollm2-16bit.sha256.json, and only
then renames the folder into place: the output is whole or absent. A file whose hash differs fails
the run, naming the file; the rejected folder is kept beside the output for a look. A rerun whose
output already matches the pinned hashes changes nothing.

The weights are the GGUF's Q4_1 values dequantized (the GGUF is the only copy of the model that
the project ships), so this is a 16-bit checkpoint of the quantized model, not the hub's original.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from checkpoint_pins import (
    MakeError,
    build,
    differences,
    drop_load_options,
    file_hashes,
    sha256_of,
    versions,
)

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct-bf16"
EXPECTED = Path(__file__).resolve().with_name("smollm2-16bit.sha256.json")
def tool_versions() -> dict[str, str]:
    return versions(("torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate"))


def make(gguf: Path, folder: Path) -> None:
    """Write the checkpoint into the empty folder `folder`."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)  # every parameter is overwritten below; this only makes that moot
    src, name = str(gguf.parent), gguf.name

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    # transformers dequantizes the GGUF's tensors (Q4_1 -> float) while loading.
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in quantized.state_dict().items()}
    generation = quantized.generation_config
    del quantized

    # save_pretrained refuses a model loaded from a GGUF ("quantized with QuantizationMethod.GGUF
    # and is not serializable"): rebuild a plain model from the config without its
    # quantization_config and load the dequantized weights into it (strict: every weight).
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(state, strict=True)
    model.eval()

    # What transformers writes is byte-identical from run to run (checked across processes and
    # PYTHONHASHSEED values: JSON keys sorted, tokenizer.json in id order, safetensors metadata
    # only {"format": "pt"}), so the files are kept as written, with one exception below.
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GenerationConfig.from_dict(generation.to_dict()).save_pretrained(folder)
    drop_load_options(folder / "tokenizer_config.json")
    # mkdtemp makes the folder 0700 and safetensors writes 0600: give the checkpoint the
    # ordinary modes (umask applied) so whoever serves it can read it.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=GGUF, help="the source GGUF (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="the checkpoint folder (default: %(default)s)")
    parser.add_argument(
        "--write-expected",
        action="store_true",
        help=f"record this run's hashes in {EXPECTED.name} instead of checking them (after a pin moves)",
    )
    args = parser.parse_args(argv)
    # Read before transformers/huggingface_hub are imported: never reach a hub, no progress bars.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    gguf, out = args.gguf.resolve(), args.out.resolve()

    expected = json.loads(EXPECTED.read_text(encoding="utf-8")) if EXPECTED.exists() else None
    if not args.write_expected:
        if expected is None:
            raise MakeError(f"{EXPECTED} is missing; run with --write-expected to record the hashes")
        if out.is_dir() and not differences(file_hashes(out), expected["files"]):
            print(f"[make-smollm2-16bit] {out} is up to date")
            return 0

    if not gguf.is_file():
        raise MakeError(f"the source GGUF {gguf} is missing: scripts/setup.sh places it there")
    if expected is not None and not args.write_expected:
        got = sha256_of(gguf)
        if got != expected["source"]["sha256"]:
            raise MakeError(f"{gguf.name}: sha256 {got}, expected {expected['source']['sha256']}")

    def record(got: dict[str, str]) -> dict[str, object]:
        return {"source": {"file": gguf.name, "sha256": sha256_of(gguf)},
                "tools": tool_versions(), "files": got}

    count = build(out, lambda folder: make(gguf, folder), EXPECTED, expected,
                  record if args.write_expected else None, tool_versions, "make-smollm2-16bit")
    print(f"[make-smollm2-16bit] wrote {out} ({count} files)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MakeError as e:
        print(f"[make-smollm2-16bit] error: {e}", file=sys.stderr)
        sys.exit(1)
