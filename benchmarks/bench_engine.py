"""`qinfra preview` against plain `pulumi preview` on the same deployed local stack, and the time
from `qinfra rollback --yes` starting to the router sending 0% to the quantized variant (its
/health polled every 10 ms), beside the whole rollback's time (until the quantized engine is
stopped). The stack is the shipped local one on the demo model.

Run: .venv/bin/python benchmarks/bench_engine.py [--runs N]
Works in a throwaway project (its own state, store and ports); stops every server it started.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' stack helpers

from tests.local_stack import listening, write_project  # noqa: E402


def router_percent(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return float(json.loads(response.read())["quantized_percent"])
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qinfra-bench-"))
    port = write_project(root)
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
        assert router_percent(port) == 50
        start = time.perf_counter()
        rollback = subprocess.Popen([*qinfra, "rollback", "--stack", "local", "--yes"], cwd=root,
                                    env=env, stdout=subprocess.DEVNULL)
        while router_percent(port) != 0 and rollback.poll() is None:
            time.sleep(0.01)
        routed = time.perf_counter() - start
        assert rollback.wait() == 0
        whole = time.perf_counter() - start
        assert router_percent(port) == 0 and listening(port + 1) and not listening(port + 2)
        print(f"rollback --yes to the router at 0% quantized: {routed:.2f} s (aim < 2 s)")
        print(f"rollback --yes to the quantized engine stopped: {whole:.2f} s")
    finally:
        subprocess.run([*qinfra, "destroy", "--stack", "local", "--yes"], cwd=root, env=env,
                       check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
