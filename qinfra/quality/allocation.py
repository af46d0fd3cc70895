"""The plan held against what the engine really allocated: per variant, planned and actual
weights, KV cache (GiB and tokens) and their relative error; an actual KV capacity more than
10% below plan is a warning that names the terms that differ.

Actual figures come from the engine's own accounting: llama-server's start-up log and its
/props and /slots; vLLM's start-up log lines (qinfra.quality.engine_logs).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinfra.core.formats import Engine
from qinfra.planning.engine_plan import GIB, EnginePlan, TermName
from qinfra.quality.engine_logs import LlamaCppAccounting, VllmAccounting, parse_llama_cpp, parse_vllm

# An actual KV capacity this far below plan is flagged (issue 14).
KV_SHORTFALL = 0.10
# A term whose actual differs from plan by more than this share is named in the warning.
TERM_DIFFERS = 0.10
PROBE_TIMEOUT_S = 2.0
FIGURES = ("weights_gib", "kv_cache_gib", "kv_cache_tokens")


@dataclass(frozen=True)
class Figures:
    """One side of the comparison; a figure nobody reported is None."""

    weights_gib: float | None
    kv_cache_gib: float | None
    kv_cache_tokens: int | None
    compute_gib: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"weights_gib": _round(self.weights_gib), "kv_cache_gib": _round(self.kv_cache_gib),
                "kv_cache_tokens": self.kv_cache_tokens, "compute_gib": _round(self.compute_gib)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class Allocation:
    """Planned against actual for one variant's engine."""

    variant: str
    planned: Figures
    actual: Figures | None
    source: str = ""  # where the actual figures were read
    note: str = ""  # why there are none, or what is missing
    warnings: tuple[str, ...] = field(default=())

    def relative_error(self) -> dict[str, float | None]:
        """(actual - planned) / planned per figure; None where either side is missing."""
        out: dict[str, float | None] = {}
        for name in (*FIGURES, "compute_gib"):
            planned = getattr(self.planned, name)
            actual = getattr(self.actual, name) if self.actual else None
            out[name] = (round((actual - planned) / planned, 4)
                         if planned and actual is not None else None)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"planned": self.planned.to_json(),
                "actual": self.actual.to_json() if self.actual else None,
                "relative_error": self.relative_error(), "source": self.source,
                "note": self.note, "warnings": list(self.warnings)}


def planned(plan: EnginePlan) -> Figures:
    """The planner's figures for one engine instance (per rank, as the engines report them)."""
    compute = next((t.bytes for t in plan.terms if t.name == TermName.COMPUTE_BUFFER), None)
    return Figures(plan.weight_bytes / GIB, plan.kv_cache_bytes / GIB, plan.kv_cache_tokens,
                   compute / GIB if compute is not None else None)


def compare(variant: str, plan_figures: Figures, actual: Figures | None, source: str = "",
            note: str = "") -> Allocation:
    """The allocation, with a warning when actual KV capacity is more than 10% below plan."""
    allocation = Allocation(variant, plan_figures, actual, source, note)
    return Allocation(variant, plan_figures, actual, source, note, _warnings(allocation))


def _warnings(a: Allocation) -> tuple[str, ...]:
    if a.actual is None:
        return ()
    shortfalls = []
    for name, form in (("kv_cache_tokens", "{:,.0f} tokens"), ("kv_cache_gib", "{:.3g} GiB")):
        p, x = getattr(a.planned, name), getattr(a.actual, name)
        if p and x is not None and x < p * (1 - KV_SHORTFALL):
            shortfalls.append(f"{form.format(x)} against {form.format(p)} planned "
                              f"({(x - p) / p:+.0%})")
    if not shortfalls:
        return ()
    errors = a.relative_error()
    differ = [f"{name.removesuffix('_gib')} {getattr(a.actual, name):.3g} GiB vs "
              f"{getattr(a.planned, name):.3g} planned ({errors[name]:+.0%})"
              for name in ("weights_gib", "compute_gib")
              if errors[name] is not None and abs(errors[name] or 0) > TERM_DIFFERS]
    per_token = _per_token(a.planned), _per_token(a.actual)
    if None not in per_token and abs(per_token[1] / per_token[0] - 1) > TERM_DIFFERS:  # type: ignore[operator]
        differ.append(f"KV bytes per token {per_token[1]:,.0f} vs {per_token[0]:,.0f} planned")
    terms = "; terms that differ: " + "; ".join(differ) if differ else ""
    return (f"{a.variant}: actual KV capacity {' and '.join(shortfalls)}, more than "
            f"{KV_SHORTFALL:.0%} below plan{terms}",)


def _per_token(f: Figures) -> float | None:
    if not f.kv_cache_gib or not f.kv_cache_tokens:
        return None
    return f.kv_cache_gib * GIB / f.kv_cache_tokens


# --- actual figures ------------------------------------------------------------------------------


def from_llama_cpp(log: LlamaCppAccounting, props: dict[str, Any] | None) -> Figures:
    """llama-server's buffers from its log; its KV cells from /props (total_slots x n_ctx per
    slot), else from the log's own context line."""
    tokens = None
    if props and props.get("total_slots") and (props.get("default_generation_settings") or {}).get("n_ctx"):
        tokens = int(props["total_slots"]) * int(props["default_generation_settings"]["n_ctx"])
    elif log.n_ctx is not None:
        tokens = log.n_ctx
    elif log.slots and log.n_ctx_slot:
        tokens = log.slots * log.n_ctx_slot
    return Figures(log.weights_gib, log.kv_cache_gib, tokens, log.compute_gib)


def from_vllm(log: VllmAccounting) -> Figures:
    return Figures(log.weights_gib, log.kv_cache_gib, log.kv_cache_tokens)


def get_json(url: str, api_key: str | None = None) -> Any:
    """GET url as JSON (2 s); None when the server cannot be reached or answers otherwise."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"}
                                     if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def llama_server_allocation(variant: str, plan: EnginePlan, endpoint: str | None, log: Path | None,
                            api_key: str | None = None) -> Allocation:
    """One local llama-server: its log's buffers and its /props and /slots, against the plan.
    Says what is missing (no log, a log without buffer lines, no answer) instead of failing."""
    plan_figures = planned(plan)
    notes = []
    text = ""
    if log is not None and log.is_file():
        text = log.read_text("utf-8", errors="replace")
    else:
        notes.append(f"no engine log at {log}" if log else "no engine log")
    accounting = parse_llama_cpp(text)
    props = get_json(f"{endpoint.rstrip('/')}/props", api_key) if endpoint else None
    slots = get_json(f"{endpoint.rstrip('/')}/slots", api_key) if endpoint else None
    if endpoint and props is None:
        notes.append(f"{endpoint}/props did not answer")
    if text and not accounting.complete:
        notes.append("the log has no buffer sizes: llama-server prints them at --log-verbosity 4")
    if isinstance(slots, list) and props and len(slots) != props.get("total_slots"):
        notes.append(f"/slots lists {len(slots)} slots, /props says {props.get('total_slots')}")
    actual = from_llama_cpp(accounting, props)
    if actual == Figures(None, None, None, None):
        return compare(variant, plan_figures, None, note="; ".join(notes))
    source = ", ".join(s for s, ok in (("log", accounting.complete), ("/props", props is not None),
                                       ("/slots", isinstance(slots, list))) if ok)
    return compare(variant, plan_figures, actual, source, "; ".join(notes))


def vllm_allocation(variant: str, plan: EnginePlan, endpoint: str | None, log: Path | None,
                    api_key: str | None = None) -> Allocation:
    """One vLLM engine: its start-up log's accounting against the plan (vLLM serves no
    figures of its own over HTTP, so endpoint and key go unused). Says what is missing."""
    plan_figures = planned(plan)
    if log is None or not log.is_file():
        note = f"no engine log at {log}" if log else "no engine log"
        return compare(variant, plan_figures, None, note=note)
    actual = from_vllm(parse_vllm(log.read_text("utf-8", errors="replace")))
    if actual == Figures(None, None, None):
        return compare(variant, plan_figures, None, note="the log has no start-up accounting lines")
    return compare(variant, plan_figures, actual, "log")


# (variant, plan, endpoint, log, api key) -> planned against actual for one engine
ActualReader = Callable[[str, EnginePlan, str | None, Path | None, str | None], Allocation]
# The quality half of the engine registry: how plan-vs-actual reads each engine's own accounting.
ACTUALS: dict[Engine, ActualReader] = {
    Engine.VLLM: vllm_allocation,
    Engine.LLAMA_CPP: llama_server_allocation,
}


def local_allocations(plans: dict[str, EnginePlan | None], endpoints: dict[str, str | None],
                      logs: dict[str, Path], api_key: str | None = None) -> dict[str, Any]:
    """`qinfra status --json`'s `allocation` for target local: per variant with a planned
    engine, planned against its engine's actual figures as its row in ACTUALS reads them
    (JSON-ready)."""
    return {variant: ACTUALS[plan.engine](variant, plan, endpoints.get(variant), logs.get(variant),
                                          api_key).to_json()
            for variant, plan in plans.items() if plan is not None}
