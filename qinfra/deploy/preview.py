"""What a change does, for people and pull requests: per resource what changes, then the plan
delta (GPUs, memory, cost per hour; the router's weights, size and cost) from what the last `up`
recorded in the stack's `plan` output to this stack file's plan. Pure: engine results and plans
in, a report out; secrets read `[secret]`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qinfra.core.errors import DeployError
from qinfra.deploy.engine import SECRET, Change
from qinfra.planning.planner import GIB
from qinfra.planning.router import ROUTER_FIGURES
from qinfra.planning.sizing import StackPlan, VariantPlan

# GitHub refuses comments over 65,536 characters; keep a margin for the wrapper text.
MARKDOWN_LIMIT = 60_000
PLAN_OUTPUT = "plan"  # the stack output that records the deployed plan
PLAN_SCHEMA = 1
REASON_LIMIT = 400
# How the engine marks a secret value in resource inputs it reports (Pulumi's property-value
# signature for secrets, sdk/go/common/resource/sig).
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
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
class RouterDelta:
    """The front door before and after (ROUTER_FIGURES); None: nothing recorded on that side."""

    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None

    def rows(self) -> list[tuple[str, str]]:
        """(figure, before → after) for every figure that applies to the target on either side."""
        before, after = self.before or {}, self.after or {}
        return [(k, arrow(before.get(k), after.get(k))) for k in ROUTER_FIGURES
                if before.get(k) is not None or after.get(k) is not None]


class DeployedState(StrEnum):
    NOTHING = "nothing"  # the stack has no outputs: never deployed, or destroyed
    RECORDED = "recorded"  # the last update's `plan` output
    UNREADABLE = "unreadable"  # something is deployed, but its plan cannot be read


@dataclass(frozen=True)
class DeployedPlan:
    """The before side of a preview: what the last `up` recorded, not a re-plan with today's
    planner and prices."""

    state: DeployedState
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    usd_per_hour: float | None = None
    router: Mapping[str, Any] | None = None  # None: the record predates the router's figures
    problem: str = ""  # why it is unreadable

    def describe(self) -> str:
        """One phrase for people: the deployed cost, or why there is none to compare with."""
        if self.state is DeployedState.RECORDED:
            return f"deployed: ${self.usd_per_hour or 0.0:,.2f}/hour"
        if self.state is DeployedState.UNREADABLE:
            return f"deployed plan: unreadable ({self.problem})"
        return "nothing deployed"


@dataclass(frozen=True)
class PreviewReport:
    stack: str
    resources: tuple[ResourceChange, ...]
    summary: Mapping[str, int]
    variants: tuple[VariantDelta, ...]
    deployed: DeployedPlan
    usd_per_hour_after: float
    router: RouterDelta

    @property
    def usd_per_hour_before(self) -> float | None:
        return self.deployed.usd_per_hour

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
                "deployed": {"state": self.deployed.state.value,
                             "problem": self.deployed.problem or None},
                "usd_per_hour": {"before": self.usd_per_hour_before, "after": self.usd_per_hour_after},
                "variants": {v.variant: {"before": v.before, "after": v.after} for v in self.variants},
                "router": {"before": self.router.before, "after": self.router.after},
            },
        }


def _masked(value: Any) -> Any:
    """A value with every Pulumi secret (the engine's signed secret object) as `[secret]`."""
    if isinstance(value, Mapping):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return SECRET
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def _text(value: Any) -> str:
    value = _masked(value)
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
        if old == new and not (old == SECRET and key in change.diffs):  # a changed secret shows
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


def _variant_figures(variant: VariantPlan) -> dict[str, Any]:
    """The figures of one variant the plan delta shows (FIGURES), as plain JSON values."""
    chosen = variant.chosen
    if chosen is None:
        return {"fits": False}
    engine_plan = chosen.engine_plan
    return {
        "format": engine_plan.format.value,
        "sized_for_percent": variant.sized_for_percent,
        "gpu": chosen.gpu,
        "instance_type": chosen.instance_type,
        "tensor_parallel_size": chosen.tensor_parallel_size,
        "engines": chosen.engines_total,
        "machines": chosen.machines,
        "gpus": chosen.gpus_total,
        "weights_gib": round(engine_plan.weight_bytes * chosen.tensor_parallel_size / GIB, 3),
        "kv_cache_gib": round(engine_plan.kv_cache_bytes * chosen.tensor_parallel_size / GIB, 3),
        "usd_per_hour": chosen.usd_per_hour,
    }


def plan_record(plan: StackPlan) -> dict[str, Any]:
    """The stack output `plan` that every target exports at `up`: what a later preview compares
    against. Plan figures only; no config value, so no secret, ever enters it. (The `router`
    entry came later within schema 1: a record without it reads as no router recorded.)"""
    return {
        "schema": PLAN_SCHEMA,
        "usd_per_hour": plan.usd_per_hour,
        "price_note": plan.price_note,
        "variants": {str(v.name): _variant_figures(v) for v in plan.variants},
        "router": plan.router.figures(),
    }


def _unreadable(problem: str) -> DeployedPlan:
    return DeployedPlan(DeployedState.UNREADABLE, problem=problem)


def read_deployed(outputs: Mapping[str, Any]) -> DeployedPlan:
    """The deployed plan from the stack's outputs (secret outputs already read `[secret]`)."""
    if not outputs:
        return DeployedPlan(DeployedState.NOTHING)
    record = outputs.get(PLAN_OUTPUT)
    if record is None:
        return _unreadable(f"the stack's outputs have no `{PLAN_OUTPUT}`: the last update "
                           "predates qinfra recording it; the next `qinfra up` does")
    if record == SECRET:
        return _unreadable(f"the `{PLAN_OUTPUT}` output is a secret")
    if not (isinstance(record, Mapping) and record.get("schema") == PLAN_SCHEMA
            and isinstance(record.get("variants"), Mapping)
            and isinstance(record.get("usd_per_hour"), int | float)):
        return _unreadable(f"the `{PLAN_OUTPUT}` output is not a qinfra plan record of "
                           f"schema {PLAN_SCHEMA}")
    variants = {str(name): _masked(figures) for name, figures in record["variants"].items()
                if isinstance(figures, Mapping)}
    router = record.get("router")
    return DeployedPlan(DeployedState.RECORDED, variants, float(record["usd_per_hour"]),
                        router=_masked(router) if isinstance(router, Mapping) else None)


def deployed_plan(read_outputs: Callable[[], Mapping[str, Any]]) -> DeployedPlan:
    """Read the deployed side; a failed read is reported as such, never as nothing deployed."""
    try:
        outputs = read_outputs()
    except DeployError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return _unreadable(reason[:REASON_LIMIT])
    return read_deployed(outputs)


def build_report(stack: str, changes: Sequence[Change], summary: Mapping[str, int],
                 deployed: DeployedPlan, after: StackPlan) -> PreviewReport:
    variants = tuple(
        VariantDelta(v.name, deployed.variants.get(v.name), _variant_figures(v))
        for v in after.variants
    )
    counts = {k: n for k, n in summary.items() if k not in _SKIP_OPS and n}
    return PreviewReport(stack, resource_changes(changes), counts, variants, deployed,
                         after.usd_per_hour, RouterDelta(deployed.router, after.router.figures()))


FIGURES = ("format", "sized_for_percent", "gpu", "instance_type", "tensor_parallel_size", "engines",
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
    rows = report.router.rows()
    plan += ["", "| | " + " | ".join(k for k, _ in rows) + " |",
             "|---|" + "---|" * len(rows), "| router | " + " | ".join(a for _, a in rows) + " |"]
    plan += ["", f"**Cost:** ${arrow(report.usd_per_hour_before, report.usd_per_hour_after)} per hour",
             ""]
    if report.deployed.state is not DeployedState.RECORDED:
        plan += [f"**Before:** {report.deployed.describe()}", ""]
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
