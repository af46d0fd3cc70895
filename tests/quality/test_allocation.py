"""Plan against actual: the planner's llama.cpp figures held to a real llama-server's own
accounting (log buffers, /props, /slots), and the warning when actual KV falls short."""

from __future__ import annotations

import pytest

from qinfra.core import modelinfo
from qinfra.core.formats import Engine, Format
from qinfra.planning.engine_plan import EngineOptions, EnginePlan
from qinfra.planning.llamacpp import plan_llama_cpp
from qinfra.quality.allocation import Figures, compare, llama_server_allocation, planned

pytestmark = pytest.mark.real


def _demo_plan() -> EnginePlan:
    """What the planner says for the demo_server fixture: two slots of 1,024, F16, host RAM."""
    model = modelinfo.load(modelinfo.DEMO_MODEL_ID, "main")
    opts = EngineOptions(engine=Engine.LLAMA_CPP, max_model_len=1024, parallel=2, threads=1)
    return plan_llama_cpp(model, Format.GGUF_F16, None, opts, host_memory_gib=2)


def test_planned_matches_what_the_real_server_allocated(demo_server) -> None:
    plan = _demo_plan()
    assert plan.flags.ctx_size == demo_server.ctx_size and plan.flags.parallel == demo_server.parallel
    got = llama_server_allocation("baseline", plan, demo_server.base, demo_server.log)
    assert got.actual is not None and got.source == "log, /props, /slots", got.note
    errors = got.relative_error()
    # KV cells and bytes are exact accounting on both sides
    assert got.actual.kv_cache_tokens == plan.kv_cache_tokens == 2048
    assert errors["kv_cache_gib"] == pytest.approx(0, abs=0.001)
    # weights: the GGUF's tensors as llama.cpp maps them (the planner counts parameters)
    assert abs(errors["weights_gib"]) < 0.05, got.to_json()
    assert got.warnings == ()
    doc = got.to_json()
    assert set(doc) == {"planned", "actual", "relative_error", "source", "note", "warnings"}
    assert set(doc["planned"]) >= {"weights_gib", "kv_cache_gib", "kv_cache_tokens"}


def test_an_unreachable_server_without_a_log_has_no_actual(tmp_path) -> None:
    got = llama_server_allocation("quantized", _demo_plan(), "http://127.0.0.1:9", tmp_path / "x.log")
    assert got.actual is None
    assert "no engine log" in got.note and "/props did not answer" in got.note


def test_kv_more_than_10_percent_below_plan_is_flagged_with_the_terms_that_differ() -> None:
    plan = Figures(weights_gib=10.0, kv_cache_gib=8.0, kv_cache_tokens=65536, compute_gib=0.5)
    # vLLM found less room: heavier weights and a bigger activation peak took KV memory
    actual = Figures(weights_gib=12.0, kv_cache_gib=6.0, kv_cache_tokens=49152)
    got = compare("baseline", plan, actual, source="log")
    assert got.relative_error()["kv_cache_tokens"] == pytest.approx(-0.25)
    (warning,) = got.warnings
    assert "49,152 tokens against 65,536 tokens planned (-25%)" in warning
    assert "6 GiB against 8 GiB planned (-25%)" in warning
    assert "weights 12 GiB vs 10 planned (+20%)" in warning
    # within 10%: no warning
    assert compare("baseline", plan, Figures(10.0, 7.5, 61440)).warnings == ()


def test_planned_figures_come_from_the_plans_terms() -> None:
    plan = _demo_plan()
    figures = planned(plan)
    assert figures.kv_cache_tokens == plan.kv_cache_tokens
    assert figures.weights_gib == plan.weight_bytes / 2**30
    assert figures.compute_gib is not None and figures.compute_gib > 0
