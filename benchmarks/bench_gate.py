"""The offline quality gate's time per variant, with and without the cached baseline logits.

Run: .venv/bin/python benchmarks/bench_gate.py [--types Q8_0,Q6_K,Q4_K_M,Q2_K]
On SmolLM2-135M-Instruct (.tools/models, placed by scripts/setup.sh): an F16 baseline made from
its Q4_1 file, each type quantized from that F16, then per type `run_gate` twice: first with an
empty cache (the baseline's llama-perplexity pass runs too), then with the baseline's logits
cached (only the quantized pass). Prints a table: type, verdict, mean KLD, same top, seconds
cold, seconds cached, and the cached/cold ratio.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qinfra.quality.gate import run_gate  # noqa: E402
from qinfra.serving.llamacpp import QUANTIZE, find_binary  # noqa: E402

SMOLLM2 = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def quantize(src: Path, dst: Path, gguf_type: str) -> Path:
    argv = [str(find_binary(QUANTIZE)), "--allow-requantize", str(src), str(dst), gguf_type]
    subprocess.run(argv, check=True, capture_output=True)
    return dst


def timed_gate(base: Path, quant: Path, cache: Path) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    result = run_gate(str(base), str(quant), store=None, cache=cache)
    return time.perf_counter() - start, result.to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="Q8_0,Q6_K,Q4_K_M,Q2_K")
    args = parser.parse_args()
    if not SMOLLM2.is_file():
        sys.exit(f"SmolLM2 missing at {SMOLLM2}: run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="qinfra-bench-gate-") as tmp:
        folder = Path(tmp)
        f16 = quantize(SMOLLM2, folder / "F16.gguf", "F16")
        print(f"{'type':8} {'verdict':7} {'mean KLD':>9} {'same top':>8} {'cold s':>7} "
              f"{'cached s':>8} {'ratio':>6}")
        for gguf_type in args.types.split(","):
            quant = quantize(f16, folder / f"{gguf_type}.gguf", gguf_type)
            cache = folder / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            cold, doc = timed_gate(f16, quant, cache)
            warm, again = timed_gate(f16, quant, cache)
            assert again["baseline_logits_cached"] and not doc["baseline_logits_cached"]
            metrics = doc["metrics"]
            assert isinstance(metrics, dict)
            print(f"{gguf_type:8} {doc['verdict']!s:7} {metrics['mean_kld']:9.4f} "
                  f"{metrics['same_top_p']:8.1%} {cold:7.1f} {warm:8.1f} {warm / cold:6.2f}")


if __name__ == "__main__":
    main()
