"""`qinfra preview` against plain `pulumi preview` on the same deployed local stack.

Run: .venv/bin/python benchmarks/bench_preview.py [--runs N] [--profile]
Works in a throwaway project (its own state, store and ports) that both commands share, as the
README's "Plain pulumi sees the same stacks" sets it up; they run interleaved so machine noise
hits all alike, and the ratios of the medians are printed. A third row runs plain pulumi with
what qinfra's engine call adds (the project's policy pack, --diff), to split qinfra's own cost
from the engine's. --profile also lists each Pulumi CLI
call one `qinfra preview` makes, with its wall time. Stops every server it started.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QINFRA = [sys.executable, "-m", "qinfra"]

# Logs every process the Automation API starts (argv and wall time) to stderr, then runs the CLI.
_PROFILE = """
import subprocess, sys, time
_popen = subprocess.Popen.__init__
def _traced(self, args, *a, **k):
    _popen(self, args, *a, **k)
    start, wait, seen = time.perf_counter(), self.wait, []
    def waited(*wa, **wk):
        rc = wait(*wa, **wk)
        if not seen:  # Popen's __exit__ waits again: report the first
            seen.append(rc)
            name = ' '.join(str(x) for x in args[:4]) if isinstance(args, list) else str(args)
            print(f'PROFILE {time.perf_counter() - start:6.2f} s  {name}', file=sys.stderr)
        return rc
    self.wait = waited
subprocess.Popen.__init__ = _traced
from qinfra.cli.main import cli
cli(sys.argv[1:])
"""


def free_ports(count: int = 3) -> int:
    """The first of `count` consecutive free ports (the router, then the baseline and quantized
    servers), below Linux's ephemeral range (32768-60999) so no outgoing connection takes one
    while the servers start."""
    while True:
        port = random.randrange(20000, 30000)
        try:
            for p in range(port, port + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def make_project(root: Path) -> tuple[dict[str, str], int]:
    """A project in `root` running this checkout's program on the local stack; (env, port)."""
    (root / "Pulumi.yaml").write_text(
        "name: qinfra\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {ROOT / '.venv'}\nmain: {ROOT / 'qinfra' / 'deploy' / 'program.py'}\n"
        "stackConfigDir: stacks\n")
    (root / "stacks").mkdir()
    # The stack's relative paths (the model) start at the project root, and the project's own
    # .tools/pulumi/bin is the CLI qinfra runs: both are this checkout's.
    (root / ".tools").symlink_to(ROOT / ".tools")
    port = free_ports()
    text = (ROOT / "stacks" / "Pulumi.local.yaml").read_text()
    text = text.replace("port: 8080", f"port: {port}").replace(
        "file:///tmp/qinfra-artifacts/local", f"file://{root}/store")
    (root / "stacks" / "Pulumi.local.yaml").write_text(text)
    env = {**os.environ, "QINFRA_STACKS_DIR": str(root / "stacks"),
           "QINFRA_CACHE_DIR": str(root / "cache"), "PULUMI_SKIP_UPDATE_CHECK": "true",
           "PULUMI_BACKEND_URL": f"file://{root}/.qinfra/state", "PULUMI_CONFIG_PASSPHRASE": "",
           "QINFRA_RUN_DIR": str(root / ".qinfra" / "run"),
           "PATH": f"{ROOT / '.tools' / 'pulumi' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    return env, port


def timed(argv: list[str], root: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qinfra-bench-"))
    env, _ = make_project(root)
    try:
        # --skip-gate: no gate report is pinned for a throwaway store (recorded in its stack file)
        timed([*QINFRA, "up", "--stack", "local", "--yes", "--json", "--skip-gate"], root, env)
        plain = ["pulumi", "preview", "--stack", "local", "--non-interactive"]
        commands = {
            "pulumi preview": plain,
            # what qinfra's engine call adds: the project's policy pack and per-property diffs
            "pulumi preview --policy-pack --diff": [*plain, "--diff", "--policy-pack",
                                                    str(ROOT / "policies")],
            "qinfra preview": [*QINFRA, "preview", "--stack", "local"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(timed(argv, root, env))
        base = statistics.median(times["pulumi preview"])
        print(f"{'command':36} {'median s':>9} {'x pulumi preview':>17}")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"{name:36} {median:9.2f} {median / base:17.2f}")
        if args.profile:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _PROFILE, "preview", "--stack", "local"],
                                  cwd=root, env=env, check=True, capture_output=True, text=True)
            print("".join(line.removeprefix("PROFILE ") + "\n" for line in done.stderr.splitlines()
                          if line.startswith("PROFILE ")), end="")
            print(f"{time.perf_counter() - start:6.2f} s  qinfra preview in all")
    finally:
        subprocess.run([*QINFRA, "destroy", "--stack", "local", "--yes"], cwd=root, env=env,
                       check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
