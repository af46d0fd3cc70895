"""Real llama-servers for the bench and allocation tests: the demo model (fast), and SmolLM2 as
F16 and Q4_K_M (a real speed difference); each started here and stopped by its pid."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qinfra.core.demomodel import write_demo_model
from qinfra.core.errors import ArtifactError
from qinfra.serving.llamacpp import QUANTIZE, SERVER, find_binary
from tests.ports import free_port
from tests.router.processes import ROOT, stop, wait_ready

SMOLLM2 = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Server:
    base: str
    model: Path
    log: Path
    ctx_size: int
    parallel: int
    pid: int = 0  # the llama-server's pid (this test run started it)


def _binary(name: str) -> Path:
    try:
        return find_binary(name)
    except ArtifactError as exc:
        pytest.fail(f"{name}: {exc.message}", pytrace=False)


def start_server(model: Path, log: Path, ctx_size: int, parallel: int,
                 *extra: str) -> tuple[subprocess.Popen[bytes], Server]:
    """llama-server on `model` with one thread, at log verbosity 4 (its buffer sizes)."""
    port = free_port()
    argv = [str(_binary(SERVER)), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-a", "bench-model", "-c", str(ctx_size), "-np", str(parallel), "--no-kv-unified",
            "-t", "1", "--flash-attn", "on", "-lv", "4", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{base}/health", log)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return proc, Server(base, model, log, ctx_size, parallel, proc.pid)


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo model as F16: two slots of 1,024 tokens."""
    folder = tmp_path_factory.mktemp("demo-server")
    model = folder / "qinfra-demo-F16.gguf"
    write_demo_model(model)
    proc, server = start_server(model, folder / "server.log", 2048, 2)
    yield server
    stop(proc)


@pytest.fixture(scope="session")
def smollm2_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """SmolLM2-135M-Instruct as F16 (made from the shipped Q4_1 file with --allow-requantize)
    and as Q4_K_M (made from that F16), one llama-server each."""
    if not SMOLLM2.is_file():
        pytest.fail(f"SmolLM2 not found at {SMOLLM2}: run scripts/setup.sh", pytrace=False)
    folder = tmp_path_factory.mktemp("smollm2")
    quantize = str(_binary(QUANTIZE))
    f16, q4 = folder / "smollm2-F16.gguf", folder / "smollm2-Q4_K_M.gguf"
    for argv in ([quantize, "--allow-requantize", str(SMOLLM2), str(f16), "F16"],
                 [quantize, str(f16), str(q4), "Q4_K_M"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    procs, servers = [], {}
    try:
        for name, model in (("F16", f16), ("Q4_K_M", q4)):
            proc, servers[name] = start_server(model, folder / f"{name}.log", 1024, 1)
            procs.append(proc)
        yield servers
    finally:
        for proc in procs:
            stop(proc)
