#!/usr/bin/env python3
"""Make the W8A8 INT8 SmolLM2-135M-Instruct checkpoint (compressed-tensors) that vLLM's CPU build
serves as stack local-vllm's quantized variant, from the bf16 checkpoint, byte for byte the same
on every run.

    .tools/llmcompressor/venv/bin/python scripts/make-smollm2-w8a8.py [--out DIR] [--write-expected]

Runs in the llm-compressor venv (scripts/install-llmcompressor.sh; its pinned versions decide the
bytes). The recipe is llm-compressor's data-free one: QuantizationModifier(targets="Linear",
scheme="W8A8", ignore=["lm_head"]) applied by `oneshot` without a dataset (weights: static
per-channel INT8 scales from the weights themselves; activations: dynamic per-token INT8), then
save_pretrained(save_compressed=True). Writes into a temporary folder beside the output, checks
every file's sha256 against scripts/smollm2-w8a8.sha256.json and only then renames the folder
into place: the output is whole or absent. A file whose hash differs fails the run, naming the
file; the rejected folder is kept beside the output. A rerun whose output already matches the
pinned hashes changes nothing.
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
    versions,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct-bf16"
OUT = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct-W8A8"
EXPECTED = Path(__file__).resolve().with_name("smollm2-w8a8.sha256.json")
SOURCE_EXPECTED = Path(__file__).resolve().with_name("smollm2-16bit.sha256.json")
SCHEME = "W8A8"
def tool_versions() -> dict[str, str]:
    return versions(("torch", "transformers", "tokenizers", "safetensors", "llmcompressor",
             "compressed-tensors", "accelerate"))


def make(source: Path, folder: Path) -> None:
    """Write the compressed checkpoint into the empty folder `folder`."""
    import torch
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)  # the data-free recipe draws nothing; this only makes that moot
    torch.use_deterministic_algorithms(True)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    recipe = QuantizationModifier(targets="Linear", scheme=SCHEME, ignore=["lm_head"])
    oneshot(model=model, recipe=recipe)
    model.save_pretrained(folder, save_compressed=True)
    tokenizer.save_pretrained(folder)
    drop_load_options(folder / "tokenizer_config.json")
    umask = os.umask(0)  # mkdtemp makes 0700 and safetensors 0600: the ordinary modes instead
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE,
                        help="the bf16 checkpoint (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="the output folder (default: %(default)s)")
    parser.add_argument("--write-expected", action="store_true",
                        help=f"record this run's hashes in {EXPECTED.name} instead of checking them")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"  # read before transformers is imported: no hub, no bars
    os.environ["TQDM_DISABLE"] = "1"
    source, out = args.source.resolve(), args.out.resolve()

    expected = json.loads(EXPECTED.read_text(encoding="utf-8")) if EXPECTED.exists() else None
    if not args.write_expected:
        if expected is None:
            raise MakeError(f"{EXPECTED} is missing; run with --write-expected to record the hashes")
        if out.is_dir() and not differences(file_hashes(out), expected["files"]):
            print(f"[make-smollm2-w8a8] {out} is up to date")
            return 0

    # The source must be the pinned bf16 checkpoint (scripts/install-vllm.sh makes it).
    pinned_source = json.loads(SOURCE_EXPECTED.read_text(encoding="utf-8"))["files"]
    if not source.is_dir():
        raise MakeError(f"the bf16 checkpoint {source} is missing: run scripts/install-vllm.sh")
    if wrong := differences(file_hashes(source), pinned_source):
        raise MakeError(f"{source} is not the pinned bf16 checkpoint:\n  " + "\n  ".join(wrong))

    def record(got: dict[str, str]) -> dict[str, object]:
        return {"source": {"folder": source.name, "files": pinned_source},
                "recipe": {"modifier": "QuantizationModifier", "targets": "Linear",
                           "scheme": SCHEME, "ignore": ["lm_head"], "dataset": None},
                "tools": tool_versions(), "files": got}

    count = build(out, lambda folder: make(source, folder), EXPECTED, expected,
                  record if args.write_expected else None, tool_versions, "make-smollm2-w8a8")
    print(f"[make-smollm2-w8a8] wrote {out} ({count} files)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MakeError as e:
        print(f"[make-smollm2-w8a8] error: {e}", file=sys.stderr)
        sys.exit(1)
