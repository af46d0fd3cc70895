"""How long each recipe takes on SmolLM2-135M's bf16 checkpoint, against its cached re-run (a
second push), and whether two runs in fresh caches give the same bytes (the same artifact id).

    .venv/bin/python benchmarks/bench_recipes.py [--runs 2]

Runs the real tools (llama.cpp's converter and llama-quantize, llm-compressor, the dequantizer)
through qinfra.artifacts.recipes.make, exactly as `qinfra artifacts push` does. Prints one row
per recipe: seconds per fresh run, the cached re-run and its ratio to a fresh run, and the
artifact ids' agreement across runs.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter

from qinfra.artifacts.fetch import Fetched, fetch
from qinfra.artifacts.hashing import Hasher
from qinfra.artifacts.progress import NO_PROGRESS
from qinfra.artifacts.recipes import make
from qinfra.artifacts.toolchain import Toolchain
from qinfra.core.formats import Format
from qinfra.core.recipes import RecipeSpec

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct-bf16"
NAME = "SmolLM2-135M-Instruct"
CASES: list[tuple[str, dict[str, object], Format]] = [
    ("gguf F16", {"name": "gguf"}, Format.GGUF_F16),
    ("gguf Q8_0 (convert + quantize)", {"name": "gguf"}, Format.GGUF_Q8_0),
    ("llm-compressor W8A8 rtn", {"name": "llm-compressor", "scheme": "W8A8"}, Format.INT8),
    ("llm-compressor W4A16 g64 rtn",
     {"name": "llm-compressor", "scheme": "W4A16", "group_size": 64}, Format.W4A16),
    ("llm-compressor W4A16 g64 gptq",
     {"name": "llm-compressor", "scheme": "W4A16", "group_size": 64, "algorithm": "gptq",
      "samples": 32, "max_seq_len": 128}, Format.W4A16),
]
DEQUANTIZE = ("dequantize W4A16 -> Q8_0", {"name": "dequantize"}, Format.GGUF_Q8_0)


def _timed(run: Callable[[], Fetched]) -> tuple[float, Fetched]:
    started = time.perf_counter()
    out = run()
    return time.perf_counter() - started, out


def _make(spec: RecipeSpec, source: Fetched, fmt: Format, cache: Path, tools: Toolchain) -> Fetched:
    return make(spec, source, fmt, name=NAME, cache=cache, hasher=Hasher(), tools=tools,
                progress=NO_PROGRESS)[0]


def _id(made: Fetched) -> str:
    return Hasher().manifest(made.files, NO_PROGRESS).artifact_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fresh-cache runs per recipe")
    args = parser.parse_args()
    tools = Toolchain.for_project(ROOT)
    source = fetch(str(CHECKPOINT))
    recipe = TypeAdapter(RecipeSpec)
    print(f"{'recipe':34} {'fresh s (median)':>17} {'cached s':>9} {'cached/fresh':>13}  same bytes")
    w4_source: Fetched | None = None
    for label, doc, fmt in [*CASES, DEQUANTIZE]:
        spec = recipe.validate_python(doc)
        src = source if label != DEQUANTIZE[0] else w4_source
        assert src is not None
        fresh: list[float] = []
        ids: set[str] = set()
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as cache:
                run = functools.partial(_make, spec, src, fmt, Path(cache), tools)
                seconds, made = _timed(run)
                fresh.append(seconds)
                ids.add(_id(made))
                cached, _ = _timed(run)
                if label == CASES[3][0] and w4_source is None:
                    keep = Path(tempfile.mkdtemp(prefix="bench-w4a16-"))
                    for f in made.files:
                        (keep / f.path).parent.mkdir(parents=True, exist_ok=True)
                        (keep / f.path).write_bytes(Path(f.source).read_bytes())
                    w4_source = fetch(str(keep))
        median = statistics.median(fresh)
        print(f"{label:34} {median:17.1f} {cached:9.2f} {cached / median:13.3f}  "
              f"{'yes' if len(ids) == 1 else f'no ({len(ids)} ids)'}")


if __name__ == "__main__":
    main()
