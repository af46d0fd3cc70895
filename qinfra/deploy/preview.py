"""What a change does, for people and pull requests: per resource what changes, then the plan
delta (GPUs, memory, cost per hour before -> after). Pure: engine results and plans in, a report out.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qinfra.deploy.engine import Change
from qinfra.planning.planner import GIB
from qinfra.planning.sizing import StackPlan

# GitHub refuses comments over 65,536 characters; keep a margin for the wrapper text.
MARKDOWN_LIMIT = 60_000
_SKIP_OPS = {"same", "read", "refresh"}
# Creates and deletes are listed by name; updates and replacements show what differs.
_DETAIL_OPS = {"update", "replace", "create-replacement", "delete-replaced"}


@dataclass(frozen=True)
class PropertyChange:
    key: str
    old: str
    new: str


@dataclass(frozen=True)
class ResourceChange:
    op: str
    type: str
    name: str
    properties: tuple[PropertyChange, ...]


@dataclass(frozen=True)
class VariantDelta:
    variant: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None


@dataclass(frozen=True)
class PreviewReport:
    stack: str
    resources: tuple[ResourceChange, ...]
    summary: Mapping[str, int]
    variants: tuple[VariantDelta, ...]
    usd_per_hour_before: float | None
    usd_per_hour_after: float

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "summary": dict(self.summary),
            "resources": [
                {"op": r.op, "type": r.type, "name": r.name,
                 "changes": [{"key": p.key, "old": p.old, "new": p.new} for p in r.properties]}
                for r in self.resources
            ],
            "plan": {
                "usd_per_hour": {"before": self.usd_per_hour_before, "after": self.usd_per_hour_after},
                "variants": {v.variant: {"before": v.before, "after": v.after} for v in self.variants},
            },
        }


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _property_changes(change: Change) -> tuple[PropertyChange, ...]:
    keys = change.diffs or tuple(sorted(set(change.old) | set(change.new)))
    out = []
    for key in keys:
        top = key.split(".", 1)[0].split("[", 1)[0]
        if top.startswith("__"):  # the engine's own bookkeeping (provider, serialised code)
            continue
        old, new = _text(change.old.get(top, "")), _text(change.new.get(top, ""))
        if old == new:
            continue
        if "\n" in old or "\n" in new:  # a rendered script: only the lines that differ
            diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0))
            lines = [line for line in diff[2:] if line[:1] in ("+", "-")]  # past the file header
            old = "\n".join(line[1:] for line in lines if line.startswith("-"))
            new = "\n".join(line[1:] for line in lines if line.startswith("+"))
        out.append(PropertyChange(top, old, new))
    return tuple(out)


def resource_changes(changes: Sequence[Change]) -> tuple[ResourceChange, ...]:
    seen: dict[str, ResourceChange] = {}
    for change in changes:
        if change.op in _SKIP_OPS or change.type.startswith("pulumi:providers:"):
            continue
        details = _property_changes(change) if change.op in _DETAIL_OPS else ()
        seen[change.urn] = ResourceChange(change.op, change.type, change.name, details)
    return tuple(seen.values())


def _variant_figures(plan: StackPlan | None, name: str) -> dict[str, Any] | None:
    if plan is None:
        return None
    variant = plan.variant(name)
    chosen = variant.chosen
    if chosen is None:
        return {"fits": False}
    engine = chosen.engine
    return {
        "format": engine.format.value,
        "share_percent": variant.share_percent,
        "gpu": chosen.gpu,
        "instance_type": chosen.instance_type,
        "tensor_parallel_size": chosen.tensor_parallel_size,
        "engines": chosen.engines,
        "machines": chosen.machines,
        "gpus": chosen.gpus_total,
        "weights_gib": round(engine.weights_bytes * chosen.tensor_parallel_size / GIB, 3),
        "kv_cache_gib": round(engine.kv_cache_bytes * chosen.tensor_parallel_size / GIB, 3),
        "usd_per_hour": chosen.usd_per_hour,
    }


def _cost(plan: StackPlan | None) -> float | None:
    if plan is None:
        return None
    return round(sum(v.chosen.usd_per_hour for v in plan.variants if v.chosen), 4)


def build_report(stack: str, changes: Sequence[Change], summary: Mapping[str, int],
                 before: StackPlan | None, after: StackPlan) -> PreviewReport:
    variants = tuple(
        VariantDelta(v.name, _variant_figures(before, v.name), _variant_figures(after, v.name))
        for v in after.variants
    )
    counts = {k: n for k, n in summary.items() if k not in _SKIP_OPS and n}
    return PreviewReport(stack, resource_changes(changes), counts, variants, _cost(before),
                         _cost(after) or 0.0)


FIGURES = ("format", "share_percent", "gpu", "instance_type", "tensor_parallel_size", "engines",
            "machines", "gpus", "weights_gib", "kv_cache_gib", "usd_per_hour")


def arrow(before: Any, after: Any) -> str:
    if before == after:
        return f"{after}"
    return f"{'-' if before is None else before} → {after}"


def to_markdown(report: PreviewReport, limit: int = MARKDOWN_LIMIT) -> str:
    """A PR comment; past `limit` characters the property details are summarised away."""
    head = [f"### qinfra preview: `{report.stack}`", ""]
    counts = ", ".join(f"{n} to {op}" for op, n in sorted(report.summary.items())) or "no changes"
    head += [f"**Resources:** {counts}", ""]
    plan = ["#### Plan", "", "| variant | " + " | ".join(FIGURES) + " |",
            "|---|" + "---|" * len(FIGURES)]
    for v in report.variants:
        before, after = v.before or {}, v.after or {}
        cells = [arrow(before.get(k), after.get(k)) for k in FIGURES]
        plan.append(f"| {v.variant} | " + " | ".join(cells) + " |")
    plan += ["", f"**Cost:** ${arrow(report.usd_per_hour_before, report.usd_per_hour_after)} per hour",
             ""]
    detail = ["#### Resource changes", ""]
    for r in report.resources:
        detail.append(f"- **{r.op}** `{r.type}` `{r.name}`")
        for p in r.properties:
            detail.append(f"  - `{p.key}`")
            detail.append("    ```diff")
            detail += [f"    - {line}" for line in p.old.splitlines() or [""]]
            detail += [f"    + {line}" for line in p.new.splitlines() or [""]]
            detail.append("    ```")
    text = "\n".join(head + plan + detail) + "\n"
    if len(text) <= limit:
        return text
    short = [f"- **{r.op}** `{r.type}` `{r.name}`: " + ", ".join(f"`{p.key}`" for p in r.properties)
             for r in report.resources]
    text = "\n".join(head + plan + ["#### Resource changes (summarised)", ""] + short) + "\n"
    if len(text) > limit:
        keep = limit - 200
        text = text[:keep] + f"\n\n… {len(report.resources)} resources changed; see `qinfra preview --json`\n"
    return text
