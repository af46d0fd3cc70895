"""The online gate against real llama-servers serving SmolLM2: the same model on both sides
agrees exactly; a 2-bit file's greedy answers part from the F16's early and fail the bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qinfra.core.formats import Format
from qinfra.quality.gate_online import EndpointError, compare_endpoints, read_prompts, shipped_prompts
from qinfra.quality.gate_thresholds import thresholds_for
from qinfra.serving.llamacpp import SERVER, find_binary
from tests.ports import free_port
from tests.quality.gate_models import smollm2_models  # noqa: F401  (fixture)
from tests.router.processes import start_llama_server, stop

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def servers(smollm2_models: Callable[[str], Path],  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """F16 and Q2_K llama-servers on loopback, stopped by pid at the end."""
    logs = tmp_path_factory.mktemp("gate-online")
    procs, urls = [], {}
    try:
        for gguf_type in ("F16", "Q2_K"):
            port = free_port()
            procs.append(start_llama_server(find_binary(SERVER), smollm2_models(gguf_type), port,
                                            gguf_type, logs / f"{gguf_type}.log"))
            urls[gguf_type] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            stop(proc)


def test_the_same_model_on_both_sides_agrees_exactly(servers: dict[str, str]) -> None:
    prompts = read_prompts(shipped_prompts())[:4]
    metrics = compare_endpoints(servers["F16"], servers["F16"], prompts)
    assert (metrics.exact_match, metrics.prefix_fraction, metrics.differing) == (1.0, 1.0, ())


def test_a_2_bit_file_fails_the_online_bar(servers: dict[str, str]) -> None:
    metrics = compare_endpoints(servers["F16"], servers["Q2_K"], read_prompts(shipped_prompts()))
    assert metrics.prompts == 24
    assert metrics.exact_match < 0.25
    reasons = thresholds_for(Format.GGUF_Q2_K).failures(metrics.judged())
    assert any(r.startswith("prefix_fraction ") and "acceptance" in r for r in reasons), metrics
    assert metrics.differing and metrics.differing[0]["baseline"] != metrics.differing[0]["quantized"]


def test_a_variant_that_is_down_is_named_with_the_fix(servers: dict[str, str]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointError, match=f"{down} did not answer a gate prompt.*qinfra status"):
        compare_endpoints(servers["F16"], down, ["What is the capital of France?"])
