"""Starting and stopping the real processes the router tests and benchmark talk to: the router,
llama-server with the demo model, the stub upstream. Each is stopped by its own pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).with_name("stub_upstream.py")
READY_TIMEOUT_S = 60


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until `url` answers 200; raises RuntimeError with the log's tail if the process dies."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{url} not ready within {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _spawn(argv: list[str], log: Path, ready_url: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    wait_ready(proc, ready_url, log)
    return proc


def start_router(config: Path, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "qinfra.serving.router", "--config", str(config),
            "--port", str(port), "--log-level", "info", *extra]
    return _spawn(argv, log, f"http://127.0.0.1:{port}/health")


def start_stub(port: int, name: str, log: Path, delay_s: float = 0.0,
               text: str | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(STUB), "--port", str(port), "--name", name, "--delay-s", str(delay_s)]
    if text is not None:
        argv += ["--text", text]
    return _spawn(argv, log, f"http://127.0.0.1:{port}/v1/models")


def start_llama_server(
    binary: Path, model: Path, port: int, alias: str, log: Path
) -> subprocess.Popen[bytes]:
    """llama-server on the demo model, one thread, two slots of 4,096 tokens (long enough that a
    cancelled generation is still running when the test looks), with /metrics on."""
    argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-a", alias, "-c", "8192", "-np", "2", "-t", "1", "--metrics", "--no-warmup"]
    return _spawn(argv, log, f"http://127.0.0.1:{port}/health")
