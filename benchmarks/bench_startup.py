"""CLI start-up: `qinfra --help` (as printed by the entry point, and as click renders it),
`qinfra plan --help` and ad-hoc plans against `python -c pass`.

Run: .venv/bin/python benchmarks/bench_startup.py [--runs N]
Prints the median wall time of each command and its ratio to the interpreter's bare start-up,
all measured in this one process, interleaved so machine noise hits every command alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "data" / "models" / "llama-3.1-8b"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    qinfra = [sys.executable, "-m", "qinfra"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "qinfra --help": [*qinfra, "--help"],
        # the same page rendered by click (the entry point's path before it printed it itself)
        "qinfra --help via click": [sys.executable, "-c", "import sys\nfrom qinfra.cli.root "
                                    "import cli\ncli(sys.argv[1:], prog_name='qinfra')", "--help"],
        "qinfra plan --help": [*qinfra, "plan", "--help"],
        "qinfra plan (ad-hoc, --json)": [*qinfra, "plan", "--model", str(MODEL), "--format", "awq",
                                         "--gpu", "l4", "--max-model-len", "8192", "--json"],
        "qinfra plan (qinfra-demo, --json)": [*qinfra, "plan", "--model", "qinfra-demo", "--format",
                                              "gguf-q4_k_m", "--cpu-memory-gib", "8", "--json"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    print(f"{'command':36} {'median ms':>10} {'x python -c pass':>18}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:36} {median * 1000:10.1f} {median / base:18.2f}")


if __name__ == "__main__":
    main()
