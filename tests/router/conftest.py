"""Fixtures that start real processes on loopback ports: llama-servers on the demo model, stub
upstreams and routers; every one is stopped by its pid when the test (or module) ends."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qinfra.core.demomodel import write_demo_model
from qinfra.core.errors import ArtifactError
from qinfra.core.fileio import open_atomic
from qinfra.serving.llamacpp import SERVER, find_binary
from tests.ports import free_port
from tests.router.processes import start_llama_server, start_router, start_stub, stop


@dataclass
class RouterProcess:
    base: str
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def write(self, settings: dict[str, Any]) -> None:
        """Rewrite the config file atomically, as a rollout does."""
        with open_atomic(self.config) as out:
            out.write(json.dumps(settings).encode())


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two real llama-servers on the demo model, one per variant; each answers with `model` set to
    `<variant>-engine`, so a test sees which one served a request."""
    try:
        binary = find_binary(SERVER)
    except ArtifactError as exc:
        pytest.fail(f"llama-server: {exc.message}", pytrace=False)
    folder = tmp_path_factory.mktemp("engines")
    model = folder / "demo-F16.gguf"
    write_demo_model(model)
    procs, urls = [], {}
    try:
        for variant in ("baseline", "quantized"):
            port = free_port()
            procs.append(start_llama_server(binary, model, port, f"{variant}-engine",
                                            folder / f"{variant}.log"))
            urls[variant] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture
def stub_process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., tuple[str, subprocess.Popen[bytes]]]:
    """Start a stub upstream named `name` (on `port`, else a free one; answering `text`, else
    "ok"); returns its base URL and process, for a test that kills it."""

    def start(name: str, delay_s: float = 0.0, port: int | None = None, text: str | None = None
              ) -> tuple[str, subprocess.Popen[bytes]]:
        port = port or free_port()
        proc = start_stub(port, name, tmp_path / f"stub-{name}-{port}.log", delay_s, text)
        request.addfinalizer(lambda: stop(proc))
        return f"http://127.0.0.1:{port}", proc

    return start


@pytest.fixture
def stubs(stub_process: Callable[..., tuple[str, subprocess.Popen[bytes]]]) -> Callable[..., str]:
    """Start a stub upstream named `name`; returns its base URL."""

    def start(name: str, delay_s: float = 0.0) -> str:
        return stub_process(name, delay_s)[0]

    return start


@pytest.fixture
def router(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., RouterProcess]:
    """Start a router process on `settings` (the config file's mapping)."""

    def start(settings: dict[str, Any], *extra: str) -> RouterProcess:
        config = tmp_path / f"router-{len(list(tmp_path.glob('router-*.json')))}.json"
        config.write_text(json.dumps(settings))
        port = free_port()
        log = tmp_path / f"{config.stem}.log"
        proc = start_router(config, port, log, *extra)
        request.addfinalizer(lambda: stop(proc))
        return RouterProcess(f"http://127.0.0.1:{port}", config, proc, log)

    return start
