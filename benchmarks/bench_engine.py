"""`qinfra preview` against plain `pulumi preview` on the same deployed local stack, and the time
from `qinfra rollback --yes` to the baseline taking all traffic.

Run: .venv/bin/python benchmarks/bench_engine.py [--runs N]
Works in a throwaway project (its own state, store and ports); stops every server it started.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port_pair() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qinfra-bench-"))
    (root / "Pulumi.yaml").write_text(
        "name: qinfra\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {ROOT / '.venv'}\nmain: {ROOT / 'qinfra' / 'deploy' / 'program.py'}\n"
        "stackConfigDir: stacks\n")
    (root / "stacks").mkdir()
    port = free_port_pair()
    text = (ROOT / "stacks" / "Pulumi.local.yaml").read_text()
    text = text.replace("port: 8080", f"port: {port}").replace(
        "file:///tmp/qinfra-artifacts/local", f"file://{root}/store")
    (root / "stacks" / "Pulumi.local.yaml").write_text(text)
    env = {**os.environ, "QINFRA_STACKS_DIR": str(root / "stacks"),
           "QINFRA_CACHE_DIR": str(root / "cache"), "PULUMI_SKIP_UPDATE_CHECK": "true",
           "PULUMI_BACKEND_URL": f"file://{root}/.qinfra/state", "PULUMI_CONFIG_PASSPHRASE": "",
           "QINFRA_RUN_DIR": str(root / ".qinfra" / "run"),
           "PATH": f"{ROOT / '.tools' / 'pulumi' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    qinfra = [sys.executable, "-m", "qinfra"]

    def run(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    try:
        run([*qinfra, "up", "--stack", "local", "--yes", "--json"])
        times: dict[str, list[float]] = {"pulumi preview": [], "qinfra preview": []}
        for _ in range(args.runs):
            times["pulumi preview"].append(run(["pulumi", "preview", "--stack", "local",
                                                "--non-interactive"]))
            times["qinfra preview"].append(run([*qinfra, "preview", "--stack", "local"]))
        base = statistics.median(times["pulumi preview"])
        print(f"{'command':28} {'median s':>9} {'x pulumi preview':>17}")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"{name:28} {median:9.2f} {median / base:17.2f}")
        start = time.perf_counter()
        subprocess.run([*qinfra, "rollback", "--stack", "local", "--yes"], cwd=root, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        assert listening(port) and not listening(port + 1)
        print(f"rollback --yes to baseline-only serving: {time.perf_counter() - start:.2f} s")
    finally:
        subprocess.run([*qinfra, "destroy", "--stack", "local", "--yes"], cwd=root, env=env,
                       check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
