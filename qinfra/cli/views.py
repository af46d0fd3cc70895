"""Two views of the same plan: a JSON-ready dict for scripts and rich tables for people."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from qinfra.planning.engine_plan import GIB

if TYPE_CHECKING:  # sizing imports the stack schema (pydantic), which an ad-hoc plan never needs
    from qinfra.planning.engine_plan import EnginePlan
    from qinfra.planning.sizing import FleetOption, StackPlan, VariantPlan


def _gib(value: int) -> float:
    return round(value / GIB, 4)


def engine_plan_dict(plan: EnginePlan) -> dict[str, Any]:
    """The ad-hoc `qinfra plan --json` object; per-rank figures."""
    return {
        "format": plan.format.value,
        "engine": plan.engine.value,
        "gpu": plan.device,
        "gpu_memory_gib": plan.device_memory_gib,
        "compute_capability": plan.compute_capability,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "max_model_len": plan.max_model_len,
        "weights_gib": _gib(plan.weight_bytes),
        "kv_bytes_per_token": plan.kv_bytes_per_token,
        "overhead_gib": _gib(plan.overhead_bytes),
        "kv_cache_gib": _gib(plan.kv_cache_bytes),
        "kv_cache_tokens": plan.kv_cache_tokens,
        "max_concurrency": round(plan.max_concurrency, 4),
        "fits": plan.fits,
        "errors": list(plan.errors),
        "warnings": list(plan.warnings),
        "terms": [
            {"name": t.name, "gib": _gib(t.bytes), "bytes": t.bytes, "estimate": t.estimate,
             "note": t.note}
            for t in plan.terms
        ],
        "flags": asdict(plan.flags),
    }


def fleet_option_dict(option: FleetOption) -> dict[str, Any]:
    return {
        "gpu": option.gpu,
        "instance_type": option.instance_type,
        "tensor_parallel_size": option.tensor_parallel_size,
        "replicas_per_gpu": option.replicas_per_gpu,
        "sequences_per_engine": option.sequences_per_engine,
        "engines": option.engines_total,
        "machines": option.machines,
        "gpus_total": option.gpus_total,
        "usd_per_hour": option.usd_per_hour,
        "plan": engine_plan_dict(option.engine_plan),
    }


def variant_plan_dict(variant: VariantPlan) -> dict[str, Any]:
    return {
        "share_percent": variant.sized_for_percent,
        "required_concurrency": variant.required_concurrency,
        "why": variant.why,
        "chosen": fleet_option_dict(variant.chosen) if variant.chosen else None,
        "alternatives": [fleet_option_dict(o) for o in variant.options[1:4]],
        "refused": list(variant.refused),
    }


def stack_plan_dict(plan: StackPlan) -> dict[str, Any]:
    return {
        "stack": plan.stack,
        "model": plan.model,
        "engine": plan.engine.value,
        "stage": plan.stage.value,
        "quantized_percent": plan.quantized_percent,
        "fits": plan.fits,
        "usd_per_hour": plan.usd_per_hour,
        "price_note": plan.price_note,
        "variants": {v.name: variant_plan_dict(v) for v in plan.variants},
        "router": plan.router.figures(),
    }


# --- rich --------------------------------------------------------------------------------------


def engine_plan_table(plan: EnginePlan, title: str = "") -> Any:
    from rich.table import Table

    table = Table(title=title or f"{plan.format} on {plan.engine}, {plan.device}", title_justify="left")
    table.add_column("term")
    table.add_column("GiB per rank", justify="right")
    table.add_column("", style="dim")
    table.add_column("how it is counted", style="dim", overflow="fold")
    for t in plan.terms:
        table.add_row(t.name, f"{t.gib:.3f}", "estimate" if t.estimate else "", t.note)
    table.add_section()
    table.add_row("KV bytes / token", f"{plan.kv_bytes_per_token:,}", "", "per rank, all layers")
    table.add_row("KV tokens", f"{plan.kv_cache_tokens:,}", "", "")
    table.add_row(
        "max concurrency", f"{plan.max_concurrency:.2f}", "",
        f"sequences of {plan.max_model_len} tokens",
    )
    return table


def print_engine_plan(console: Any, plan: EnginePlan) -> None:
    console.print(engine_plan_table(plan))
    _print_flags(console, plan)
    _print_problems(console, plan.errors, plan.warnings)


def print_stack_plan(console: Any, plan: StackPlan) -> None:
    from rich.table import Table

    console.print(
        f"[bold]{plan.stack}[/]: {plan.model} on {plan.engine}, stage {plan.stage} "
        f"({plan.quantized_percent}% quantized)"
    )
    summary = Table(title="fleets", title_justify="left")
    for col in ("variant", "format", "traffic", "sequences", "GPU", "instance", "TP",
                "per GPU", "engines", "machines", "$/hour"):
        summary.add_column(col, justify="right" if col in {"TP", "per GPU", "engines",
                                                           "machines", "$/hour", "sequences"}
                           else "left")
    for v in plan.variants:
        c = v.chosen
        fmt = c.engine_plan.format.value if c else "-"
        if c is None:
            summary.add_row(v.name, fmt, f"{v.sized_for_percent}%", str(v.required_concurrency),
                            "[red]no fit[/]", "", "", "", "", "", "")
            continue
        summary.add_row(v.name, fmt, f"{v.sized_for_percent}%", str(v.required_concurrency), c.gpu,
                        c.instance_type or "local", str(c.tensor_parallel_size),
                        str(c.replicas_per_gpu), str(c.engines_total), str(c.machines),
                        f"{c.usd_per_hour:.2f}")
    console.print(summary)
    console.print(router_line(plan))
    console.print(f"total: ${plan.usd_per_hour:,.2f}/hour [dim]({plan.price_note})[/]")
    for v in plan.variants:
        console.print(f"\n[bold]{v.name}[/]: {v.why}")
        if v.chosen:
            print_engine_plan(console, v.chosen.engine_plan)
        for reason in v.refused[:6]:
            console.print(f"  [dim]refused[/] {reason}")
        if len(v.refused) > 6:
            console.print(f"  [dim]... and {len(v.refused) - 6} more refused (see --json)[/]")


def router_line(plan: StackPlan) -> str:
    """The front door in one line: what runs it (and on aws what its machines cost) and the
    weights it serves."""
    r = plan.router
    if r.usd_per_hour is not None:
        runs = f"{r.replicas} x {r.instance_type} machines, ${r.usd_per_hour:,.2f}/hour"
    elif r.cpu_request is not None:
        runs = f"{r.replicas} pods, each requesting {r.cpu_request} CPU and {r.memory_request}"
    else:
        runs = f"{r.replicas} process on port {r.port}"
    weights = ", ".join(f"{v} {p}%" for v, p in r.weight_percent.items())
    return f"router: {runs}; weights {weights}"


def flag_words(flags: Any) -> list[str]:
    """The plan's engine settings as the launch script gives them: `--flag value`, a bare
    `--switch` when true, and `NAME=value` for what the engine reads from its environment."""
    from dataclasses import fields

    words = []
    for f in fields(flags):
        value = getattr(flags, f.name)
        if value is None or value is False:
            continue
        if env := f.metadata.get("env"):
            shown = f.metadata.get("form", "{value}").format(value=value, last=value - 1)
            words.append(f"{env}={shown}")
        elif value is True:
            words.append(f"--{f.name.replace('_', '-')}")
        else:
            words.append(f"--{f.name.replace('_', '-')} {value}")
    return words


def _print_flags(console: Any, plan: EnginePlan) -> None:
    console.print(f"[dim]engine flags:[/] {' '.join(flag_words(plan.flags))}")


def _print_problems(console: Any, errors: tuple[str, ...], warnings: tuple[str, ...]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for e in errors:
        console.print(f"[red]error:[/] {e}")
