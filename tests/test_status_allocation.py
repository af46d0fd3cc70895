"""`qinfra status` holds the plan against what the real local llama-servers allocated (issue 14):
the demo-model local stack deployed by the real Pulumi engine, then `status --json` and the
table; and the table's warning when an actual KV capacity falls more than 10% short."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from qinfra.cli.allocation import print_allocation
from qinfra.core.spec import Variant, load_stack
from qinfra.planning.stack import plan_for
from qinfra.quality.allocation import Figures, compare, planned
from tests.test_local_router import _project, qinfra

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    for project in _project(tmp_path_factory.mktemp("allocation-project"), demo=True):
        result = qinfra("up", "--stack", "local", "--yes", "--json")
        assert result.exit_code == 0, result.output
        yield project


def test_status_json_has_planned_and_actual_for_both_variants(deployed) -> None:
    result = qinfra("status", "--stack", "local", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)["allocation"]
    assert set(doc) == {"baseline", "quantized"}
    plan = plan_for(load_stack("local"))
    for variant in Variant:
        entry = doc[variant.value]
        # the planned side is the stack's plan, figure for figure
        assert entry["planned"] == planned(plan.variant(variant).chosen.engine_plan).to_json()
        # the actual side is the real server's own accounting: its log (verbosity 4) and /props
        assert entry["source"] == "log, /props, /slots", entry["note"]
        actual = entry["actual"]
        assert actual["kv_cache_tokens"] == entry["planned"]["kv_cache_tokens"]
        assert actual["weights_gib"] > 0 and actual["kv_cache_gib"] > 0
        assert entry["relative_error"]["kv_cache_gib"] == pytest.approx(0, abs=0.01)
        assert entry["warnings"] == []


def test_status_table_shows_planned_and_actual_side_by_side(deployed) -> None:
    result = qinfra("status", "--stack", "local")
    assert result.exit_code == 0, result.output
    assert "memory per engine, planned / actual" in result.output
    row = next(line for line in result.output.splitlines() if "KV cache tokens" in line)
    tokens = plan_for(load_stack("local")).variant(Variant.BASELINE).chosen.engine_plan.kv_cache_tokens
    assert f"{tokens:,} / {tokens:,} (+0.0%)" in row
    assert "warning" not in result.output


def test_a_kv_shortfall_is_a_warning_under_the_table() -> None:
    plan = Figures(weights_gib=10.0, kv_cache_gib=8.0, kv_cache_tokens=65536, compute_gib=0.5)
    short = compare("quantized", plan, Figures(12.0, 6.0, 49152), source="log")
    doc = {"baseline": compare("baseline", plan, plan, source="log").to_json(),
           "quantized": short.to_json()}
    out = io.StringIO()
    print_allocation(Console(file=out, width=200), "s", doc)
    text = out.getvalue()
    assert "65,536 / 49,152 (-25.0%)" in text
    (warning,) = [line for line in text.splitlines() if line.startswith("warning:")]
    assert "quantized: actual KV capacity 49,152 tokens" in warning
    assert "weights 12 GiB vs 10 planned (+20%)" in warning
