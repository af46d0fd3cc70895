"""Two views of one format comparison (planning/compare.py): a JSON-ready dict for scripts and a
rich table with the recommendation for people; `qinfra init` and `qinfra plan --compare` share them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qinfra.planning.engine_plan import GIB

if TYPE_CHECKING:
    from qinfra.planning.compare import Candidate, Comparison, Kernel, Pick, Recommendation


def _kernels(c: Candidate) -> dict[Kernel, list[str]]:
    by: dict[Kernel, list[str]] = {}
    for device, _, k in c.kernels:
        by.setdefault(k, []).append(device)
    return by


def candidate_dict(c: Candidate) -> dict[str, Any]:
    o = c.option
    ep = o.engine_plan if o else None
    return {
        "variant": c.variant.value,
        "format": c.format.value,
        "engine": c.engine.value,
        "fits": c.fits,
        "kernel": c.kernel.value,
        "kernels": [{"device": d, "compute_capability": cc, "kernel": k.value} for d, cc, k in c.kernels],
        "gpu": o.gpu if o else None,
        "instance_type": o.instance_type if o else None,
        "tensor_parallel_size": o.tensor_parallel_size if o else None,
        "replicas_per_gpu": o.replicas_per_gpu if o else None,
        "engines": o.engines_total if o else None,
        "machines": o.machines if o else None,
        "weights_gib_per_gpu": round(ep.weight_bytes / GIB, 3) if ep else None,
        "kv_cache_gib_per_gpu": round(ep.kv_cache_bytes / GIB, 3) if ep else None,
        "sequences_per_engine": o.sequences_per_engine if o else None,
        "usd_per_hour": o.usd_per_hour if o else None,
        "expected_drift": ({"family": c.drift.family, "mean_kld_max": c.drift.mean_kld_max,
                            "same_top_min": c.drift.same_top_min} if c.drift else None),
        "artifact": {"kind": c.artifact.kind.value, "how": c.artifact.how, "source": c.artifact.source},
        "preference_rank": c.preference.rank,
        "reason": c.preference.reason,
        "sources": c.preference.sources,
        "refused": list(c.plan.refused[:3]),
    }


def _pick_dict(p: Pick) -> dict[str, Any]:
    return {"format": p.candidate.format.value, "reasons": list(p.reasons),
            "source": p.candidate.artifact.source}


def recommendation_dict(r: Recommendation | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"engine": r.engine.value, "baseline": _pick_dict(r.baseline),
            "quantized": _pick_dict(r.quantized), "gpus": list(r.gpus),
            "passed_over": list(r.passed_over)}


def comparison_dict(c: Comparison) -> dict[str, Any]:
    return {
        "model": c.model,
        "target": c.target.value,
        "max_model_len": c.max_model_len,
        "concurrency": c.concurrency,
        "engines": [e.value for e in c.engines],
        "candidates": [candidate_dict(x) for x in c.candidates],
        "recommendation": recommendation_dict(c.recommendation),
        "why_none": c.why_none or None,
    }


# --- rich --------------------------------------------------------------------------------------


def comparison_table(c: Comparison, current: tuple[str, str] | None = None) -> Any:
    """One row per format and engine; `current` marks a stack's (baseline, quantized) formats."""
    from rich.table import Table

    rec = c.recommendation
    picked = (rec.baseline.candidate, rec.quantized.candidate) if rec else ()
    table = Table(title=f"{c.model} on {c.target.value}: {c.concurrency} sequences of "
                  f"{c.max_model_len} tokens, each format sized for all traffic",
                  title_justify="left")
    right = {"TP", "engines", "GiB/GPU", "$/hour"}
    for col in ("", "variant", "format", "engine", "kernel (by compute capability)", "GPU",
                "instance", "TP", "engines", "GiB/GPU", "$/hour", "expected drift", "artifact"):
        table.add_column(col, justify="right" if col in right else "left",
                         overflow="fold")
    for x in c.candidates:
        o = x.option
        mark = "*" if any(x is p for p in picked) else ""
        if current and x.format.value in current and rec and x.engine is rec.engine:
            mark += "="
        kernels = "; ".join(f"{k.value}: {' '.join(d)}" for k, d in _kernels(x).items())
        drift = (f"{x.drift.family} KLD<={x.drift.mean_kld_max:g}"
                 if x.drift and x.drift.mean_kld_max is not None else "-")
        if o is None:
            table.add_row(mark, x.variant.value, x.format.value, x.engine.value, kernels,
                          "[red]no fit[/]", "", "", "", "", "", drift, x.artifact.how)
            continue
        table.add_row(mark, x.variant.value, x.format.value, x.engine.value, kernels, o.gpu,
                      o.instance_type or "this host", str(o.tensor_parallel_size),
                      str(o.engines_total), f"{o.engine_plan.weight_bytes / GIB:.1f}",
                      f"{o.usd_per_hour:.2f}", drift, x.artifact.how)
    return table


def print_comparison(console: Any, c: Comparison, current: tuple[str, str] | None = None) -> None:
    from rich.markup import escape

    console.print(comparison_table(c, current))
    legend = "* recommended" + ("; = the stack's formats" if current else "")
    console.print(f"[dim]{legend}. GiB/GPU: weights per GPU rank (in RAM on a CPU host).[/]")
    rec = c.recommendation
    if rec is None:
        console.print(f"[red]no recommendation:[/] {escape(c.why_none)}")
        return
    gpus = f", GPUs {', '.join(rec.gpus)}" if rec.gpus else ""
    console.print(f"\n[bold]recommended[/] on {rec.engine.value}{gpus}")
    for label, pick in (("baseline", rec.baseline), ("quantized", rec.quantized)):
        console.print(f"  [bold]{label} {pick.candidate.format.value}[/]")
        for line in pick.reasons:
            console.print(f"    {escape(line)}")
    for line in rec.passed_over:
        console.print(f"  [dim]passed over[/] {escape(line)}")
