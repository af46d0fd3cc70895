"""The engines' start-up accounting parsed from their logs: vLLM on public log text (each case
cites the issue it was copied from, lines as posted), llama-server on its real log."""

from __future__ import annotations

import pytest

from qinfra.quality.engine_logs import VllmAccounting, parse_llama_cpp, parse_vllm

# Each: (source, log lines as posted there, what the parser must read from them).
VLLM_LOGS = {
    # https://github.com/LMCache/LMCache/issues/1739 (2025-10-03): Qwen3-14B on one GPU, V1
    # engine core prefix, counts with thousands separators.
    "lmcache1739": (
        "(EngineCore_DP0 pid=1133552) INFO 10-03 16:22:17 [gpu_worker.py:298] Available KV cache "
        "memory: 6.51 GiB\n"
        "(EngineCore_DP0 pid=1133552) INFO 10-03 16:22:17 [kv_cache_utils.py:864] GPU KV cache "
        "size: 42,656 tokens\n"
        "(EngineCore_DP0 pid=1133552) INFO 10-03 16:22:17 [kv_cache_utils.py:868] Maximum "
        "concurrency for 32,768 tokens per request: 1.30x\n",
        VllmAccounting(None, 6.51, 42656, 32768, 1.30),
    ),
    # https://github.com/vllm-project/vllm/issues/25350 (2025-09-21): fp8 KV cache,
    # --max-model-len 100000; lines as quoted in the description.
    "vllm25350": (
        "Available KV cache memory: 10.55 GiB\n"
        "GPU KV cache size: 230,528 tokens\n"
        "[kv_cache_utils.py:868] Maximum concurrency for 100,000 tokens per request: 2.31x\n",
        VllmAccounting(None, 10.55, 230528, 100000, 2.31),
    ),
    # https://github.com/vllm-project/vllm/pull/13596 (2025-02-19): the first release of the
    # token-count line, before the bracketed file prefix.
    "vllm13596": (
        "INFO 02-19 23:56:55 kv_cache_utils.py:524] GPU KV cache size: 2,042,016 tokens\n"
        "INFO 02-19 23:56:55 kv_cache_utils.py:527] Maximum concurrency for 2,048 tokens per "
        "request: 997.08x\n",
        VllmAccounting(None, None, 2042016, 2048, 997.08),
    ),
    # https://github.com/Ziems/arbor/issues/103 (2025-10-03): a V1 engine's weights line inside
    # another tool's log prefix.
    "arbor103": (
        "07:29:01 [INFO] [inf-job] [INFERENCE LOG] (EngineCore_DP0 pid=497) INFO 10-03 07:29:01 "
        "[default_loader.py:268] Loading weights took 2.39 seconds\n"
        "07:29:02 [INFO] [inf-job] [INFERENCE LOG] (EngineCore_DP0 pid=497) INFO 10-03 07:29:02 "
        "[gpu_model_runner.py:2392] Model loading took 27.5185 GiB and 305.873276 seconds\n",
        VllmAccounting(27.5185, None, None, None, None),
    ),
    # https://github.com/vllm-project/vllm/issues/15340 (2025-03-22): V0 0.8, tensor-parallel
    # workers each print their weights ("GB" is bytes / 2**30); the largest rank counts.
    "vllm15340": (
        "(VllmWorkerProcess pid=282) INFO 03-22 18:52:52 [model_runner.py:1146] Model loading "
        "took 19.5904 GB and 724.575245 seconds\n"
        "(VllmWorkerProcess pid=272) INFO 03-22 18:52:52 [model_runner.py:1146] Model loading "
        "took 18.3843 GB and 724.618766 seconds\n",
        VllmAccounting(19.5904, None, None, None, None),
    ),
    # https://github.com/vllm-project/vllm/issues/10517 (2024-12-02, Llama-3.1-8B on an RTX
    # 3090, V0): the older weights line and the concurrency line without separators.
    "vllm10517": (
        "Loading model weights took 14.9888 GB\n"
        "Memory profiling results: total_gpu_memory=23.58GiB initial_memory_usage=15.34GiB "
        "peak_torch_memory=17.06GiB memory_usage_post_profile=15.35GiB non_torch_memory=0.35GiB "
        "kv_cache_size=3.81GiB gpu_memory_utilization=0.90\n"
        "GPU blocks: 1952, # CPU blocks: 2048\n"
        "Maximum concurrency for 20000 tokens per request: 1.56x\n",
        VllmAccounting(14.9888, None, None, 20000, 1.56),
    ),
}


@pytest.mark.parametrize("name", sorted(VLLM_LOGS))
def test_vllm_startup_lines_from_public_logs(name: str) -> None:
    text, expected = VLLM_LOGS[name]
    assert parse_vllm(text) == expected


def test_vllm_log_is_read_from_its_last_start() -> None:
    first = "INFO vLLM API server version 0.9.0\n" + VLLM_LOGS["vllm25350"][0]
    second = "INFO vLLM API server version 0.9.0\n" + VLLM_LOGS["lmcache1739"][0]
    assert parse_vllm(first + second) == VLLM_LOGS["lmcache1739"][1]


def test_llama_server_log_buffers_and_slots(demo_server) -> None:
    """The real server's own lines: one CPU model, KV and compute buffer, two slots of 1,024."""
    text = demo_server.log.read_text()
    got = parse_llama_cpp(text)
    assert got.complete
    assert (got.slots, got.n_ctx_slot, got.n_ctx) == (2, 1024, 2048)
    # demo model: 2 layers x (K + V) x 2 KV heads x 64 dims x 2 bytes (f16) = 1,024 B per cell
    assert got.kv_cache_gib == pytest.approx(2048 * 1024 / 2**30, abs=0.005 / 1024)
    assert 0 < got.weights_gib < demo_server.model.stat().st_size / 2**30 * 1.01
    # a log appended by a restart is read from the last start only
    assert parse_llama_cpp(text + text) == got


def test_llama_server_log_without_buffer_lines_is_incomplete() -> None:
    default_verbosity = ("srv    load_model: loading model '/m.gguf'\n"
                         "srv    load_model: initializing, n_slots = 4, n_ctx_slot = 1024, "
                         "kv_unified = 'false'\n")
    got = parse_llama_cpp(default_verbosity)
    assert not got.complete
    assert (got.slots, got.n_ctx_slot) == (4, 1024)
