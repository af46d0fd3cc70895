"""Hashing: qinfra's Hasher against coreutils `sha256sum` on the same files.

Run: .venv/bin/python benchmarks/bench_hash.py [--size-mib 256] [--files 4] [--runs 3]
Prints the best wall time of each and the throughput ratio (qinfra / sha256sum; above 1 is
faster): one file of --size-mib, then the same bytes split into --files files, where qinfra
hashes in parallel and `sha256sum a b c ...` goes one by one. Files are read once first so both
sides hash from the page cache. A last line shows a second hash of the same files is free, in
one process (the in-memory memo) and in a new one (the persistent hash cache read from disk).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sample_files import write_random  # noqa: E402
from qinfra.artifacts.hashcache import HashCache  # noqa: E402
from qinfra.artifacts.hashing import Hasher, SourceFile  # noqa: E402
from qinfra.artifacts.progress import NO_PROGRESS  # noqa: E402
from qinfra.artifacts.stores import MIB  # noqa: E402


def best(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(label: str, paths: list[Path], runs: int) -> None:
    size = sum(p.stat().st_size for p in paths)
    files = [SourceFile(p.name, p) for p in paths]
    subprocess.run(["cat", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)  # warm
    coreutils = best(
        runs,
        lambda: subprocess.run(
            ["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL
        ),
    )
    ours = best(runs, lambda: Hasher().hash_files(files, NO_PROGRESS))  # fresh memo each run
    mib = size / MIB
    print(
        f"{label:28} sha256sum {coreutils:6.2f} s ({mib / coreutils:7.0f} MiB/s)   "
        f"qinfra {ours:6.2f} s ({mib / ours:7.0f} MiB/s)   ratio {coreutils / ours:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256, help="total bytes, in MiB")
    parser.add_argument("--files", type=int, default=4, help="files for the parallel case")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MIB
    print(f"{os.cpu_count()} CPUs, {args.size_mib} MiB, best of {args.runs}")
    with tempfile.TemporaryDirectory(prefix="bench-hash-") as tmp:
        one = Path(tmp) / "one.bin"
        write_random(one, size)
        compare("1 file", [one], args.runs)
        one.unlink()
        parts = [Path(tmp) / f"part-{i}.bin" for i in range(args.files)]
        for part in parts:
            write_random(part, size // args.files)
        compare(f"{args.files} files (parallel)", parts, args.runs)
        hasher = Hasher()
        files = [SourceFile(p.name, p) for p in parts]
        first = best(1, lambda: hasher.hash_files(files, NO_PROGRESS))
        second = best(1, lambda: hasher.hash_files(files, NO_PROGRESS))
        print(
            f"same files twice, one Hasher: first {first:.2f} s, second {second * 1000:.1f} ms, "
            f"bytes hashed {hasher.hashed_bytes / MIB:.0f} MiB of {2 * size / MIB:.0f} asked"
        )
        cache_file = Path(tmp) / "hash-cache.json"
        # racy_window_ns=0: the parts were written a moment ago (a real cache waits 1 s).
        Hasher(cache=HashCache(cache_file, racy_window_ns=0)).hash_files(files, NO_PROGRESS)
        fresh = Hasher(cache=HashCache(cache_file))
        cached = best(1, lambda: fresh.hash_files(files, NO_PROGRESS))
        print(
            f"same files in a new process (hash cache from disk): {cached * 1000:.1f} ms, "
            f"{cached / first:.2%} of hashing them, bytes hashed {fresh.hashed_bytes / MIB:.0f} MiB"
        )


if __name__ == "__main__":
    main()
