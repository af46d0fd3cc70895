"""The router's output-signal counters (repetition loops, refusals) per variant, streamed and not:
the real router process in front of stub upstreams that answer a set text on cue, and in front of
real llama-servers, whose counts must equal what the detectors say of the answers clients got."""

from __future__ import annotations

import pytest

from qinfra.serving.router.signals import has_loop, is_refusal
from tests.router.client import call, sample, stream

pytestmark = pytest.mark.real

KEY = "X-Qinfra-User"
LOOP = "la femme, la femme, la femme, la femme, la femme"
REFUSE = "I'm sorry, but I can't help with that request."


def _route(stub_process, router, baseline_text: str, quantized_text: str, percent: float):
    base, _ = stub_process("baseline", text=baseline_text)
    quant, _ = stub_process("quantized", text=quantized_text)
    return router({"replicas": {"baseline": [base], "quantized": [quant]},
                   "quantized_percent": percent, "salt": "test"})


@pytest.mark.parametrize("streamed", [False, True], ids=["whole-body", "streamed"])
def test_a_looping_variant_is_counted_and_the_other_is_not(stub_process, router, streamed):
    r = _route(stub_process, router, "The capital of France is Paris.", LOOP, 50)
    sent = {"baseline": 0, "quantized": 0}
    for i in range(10):
        body = {"prompt": "Capital of France?", "max_tokens": 16}
        if streamed:
            status, headers, _ = stream(r.base, "/v1/completions", {**body, "stream": True},
                                        {KEY: f"u-{i}"})
        else:
            status, headers, _ = call(r.base, "/v1/completions", body, {KEY: f"u-{i}"})
        assert status == 200
        sent[headers["x-qinfra-variant"]] += 1
    assert min(sent.values()) > 0, sent
    assert sample(r.base, "qinfra_router_repetition_loops_total", variant="quantized") == sent["quantized"]
    assert sample(r.base, "qinfra_router_repetition_loops_total", variant="baseline") == 0
    assert sample(r.base, "qinfra_router_refusals_total", variant="quantized") == 0
    # the length signal: completion tokens per variant (the stub counts words)
    assert sample(r.base, "qinfra_router_completion_tokens_total", variant="quantized") == (
        sent["quantized"] * len(LOOP.split()))


def test_refusals_are_counted_per_variant(stub_process, router):
    r = _route(stub_process, router, "Paris.", REFUSE, 100)
    for i in range(3):
        assert call(r.base, "/v1/chat/completions", {"messages": [], "max_tokens": 8},
                    {KEY: f"r-{i}"})[0] == 200
        assert stream(r.base, "/v1/completions", {"prompt": "x", "stream": True},
                      {KEY: f"s-{i}"})[0] == 200
    assert sample(r.base, "qinfra_router_refusals_total", variant="quantized") == 6
    assert sample(r.base, "qinfra_router_refusals_total", variant="baseline") == 0
    assert sample(r.base, "qinfra_router_repetition_loops_total", variant="quantized") == 0


def test_counts_on_real_engines_match_the_detectors_on_what_clients_got(engines, router):
    """The demo model's answers are whatever they are; the counters must say of them exactly
    what the detectors say of the text each client received."""
    r = router({"replicas": {v: [u] for v, u in engines.items()}, "quantized_percent": 50,
                "salt": "test"})
    expected = {v: {"loops": 0, "refusals": 0} for v in engines}
    for i in range(8):
        body = {"prompt": f"Tell me about number {i}", "max_tokens": 40, "temperature": 0}
        if i % 2:
            status, headers, events = stream(r.base, "/v1/completions", {**body, "stream": True},
                                             {KEY: f"e-{i}"})
            text = "".join(e["choices"][0].get("text") or "" for e in events if e.get("choices"))
        else:
            status, headers, reply = call(r.base, "/v1/completions", body, {KEY: f"e-{i}"})
            text = reply["choices"][0]["text"]
        assert status == 200
        counts = expected[headers["x-qinfra-variant"]]
        counts["loops"] += bool(text) and has_loop(text)
        counts["refusals"] += bool(text) and is_refusal(text)
    for variant, counts in expected.items():
        assert sample(r.base, "qinfra_router_repetition_loops_total", variant=variant) == counts["loops"]
        assert sample(r.base, "qinfra_router_refusals_total", variant=variant) == counts["refusals"]
