"""Every format a stack could serve, planned side by side, and the baseline and quantized variant
to recommend: the planner decides what fits and costs what, the kernel tables (formats.toml)
what runs at full speed, and the preference table (format_preferences.toml) breaks the tie.

Pure: a spec, the model facts, the catalog and the gate's expected drift in; a frozen Comparison
out. `qinfra init` and `qinfra plan --compare` print the same value as a table or JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from qinfra.core.engines import Engine, traits
from qinfra.core.format_choice import Preference, hub_artifact, preferences
from qinfra.core.formats import Format, FormatKind, format_info, formats_loaded_by
from qinfra.core.hardware import Catalog
from qinfra.core.modelinfo import DEMO_MODEL_ID, ModelInfo
from qinfra.core.recipes import GROUPED_SCHEMES
from qinfra.core.spec import StackSpec, Stage, Target, Variant
from qinfra.planning.engine_plan import GIB
from qinfra.planning.recipe_checks import fitting_group
from qinfra.planning.sizing import FleetOption, VariantPlan, plan_stack

CPU = "cpu"  # the device name of a qinfra:fleet.cpu row


class Kernel(StrEnum):
    """How an engine runs a format on one device."""

    FULL = "full"  # the format's fast kernel (Marlin, FP8 tensor cores; llama.cpp anywhere)
    FALLBACK = "fallback"  # loads, through a slower path (FP8 weight-only; AWQ/GPTQ without Marlin)
    NONE = "none"  # does not load


_KERNEL_ORDER = {Kernel.FULL: 0, Kernel.FALLBACK: 1, Kernel.NONE: 2}


def kernel(fmt: Format, engine: Engine, compute_capability: float | None) -> Kernel:
    """The kernel `engine` runs `fmt` with on a GPU of this capability (None: the host CPU),
    from formats.toml's vllm_min_cc, vllm_fast_min_cc and weight_only_min_cc columns."""
    info = format_info(fmt)
    row = traits(engine)
    if engine not in info.engines or (compute_capability is None and row.needs_gpu):
        return Kernel.NONE
    if compute_capability is None or not row.checks_compute_capability:
        return Kernel.FULL
    assert info.vllm_min_cc is not None  # every format vLLM loads has a minimum
    if compute_capability < info.vllm_min_cc:
        wo = info.weight_only_min_cc
        return Kernel.FALLBACK if wo is not None and compute_capability >= wo else Kernel.NONE
    fast = info.vllm_fast_min_cc
    if info.vllm_fast_quantization and fast is not None and compute_capability < fast:
        return Kernel.FALLBACK
    return Kernel.FULL


@dataclass(frozen=True)
class ExpectedDrift:
    """The gate's bar for a format family (quality/data/gate_thresholds.toml), handed in by the
    caller: the planner does not import the quality layer."""

    family: str
    mean_kld_max: float | None
    same_top_min: float | None


class ArtifactKind(StrEnum):
    CHECKPOINT = "checkpoint"  # the model's own 16-bit checkpoint
    HUB = "hub"  # a known quantized checkpoint on the hub
    RECIPE = "recipe"  # `qinfra artifacts push` makes it
    PENDING = "pending"  # a recipe qinfra does not run yet (the conversion pipeline)


@dataclass(frozen=True)
class ArtifactRoute:
    """Where a variant's weights would come from."""

    kind: ArtifactKind
    how: str
    source: str | None = None  # written as the variant's `source` (a hub repo)
    recipe: tuple[tuple[str, str | int], ...] = ()  # written as the variant's `recipe`

    @property
    def obtainable(self) -> bool:
        return self.kind is not ArtifactKind.PENDING


@dataclass(frozen=True)
class Candidate:
    """One format on one engine, its fleet sized for all of the stack's concurrency."""

    variant: Variant
    engine: Engine
    preference: Preference
    kernels: tuple[tuple[str, float | None, Kernel], ...]  # (device, capability, kernel) per device
    kernel: Kernel  # on the chosen device, else the best any listed device offers
    plan: VariantPlan
    drift: ExpectedDrift | None
    artifact: ArtifactRoute

    @property
    def format(self) -> Format:
        return self.preference.format

    @property
    def option(self) -> FleetOption | None:
        return self.plan.chosen

    @property
    def fits(self) -> bool:
        return self.plan.chosen is not None

    @property
    def rank(self) -> tuple[int, int, int]:
        """Full-speed kernels first, then artifacts qinfra can get today, then the table's order."""
        return (_KERNEL_ORDER[self.kernel], 0 if self.artifact.obtainable else 1, self.preference.rank)


@dataclass(frozen=True)
class Pick:
    candidate: Candidate
    reasons: tuple[str, ...]  # one or two lines


@dataclass(frozen=True)
class Recommendation:
    engine: Engine
    baseline: Pick
    quantized: Pick
    gpus: tuple[str, ...]  # qinfra:fleet.gpus for the stack: where both picks run as planned
    passed_over: tuple[str, ...]  # better-ranked formats not chosen, and why


@dataclass(frozen=True)
class Comparison:
    model: str
    target: Target
    max_model_len: int
    concurrency: int
    engines: tuple[Engine, ...]
    candidates: tuple[Candidate, ...]
    recommendation: Recommendation | None
    why_none: str = ""


def compare(spec: StackSpec, model: ModelInfo, catalog: Catalog,
            drift: Mapping[Format, ExpectedDrift], engines: Sequence[Engine] = ()) -> Comparison:
    """Plan every format each engine loads on `spec`'s fleet (its GPUs and CPU row) and
    recommend a pair. `engines` narrows the target's order (format_preferences.toml)."""
    order = [e for e in preferences().engines[spec.target.value]
             if not engines or e in engines]
    order += [e for e in engines if e not in order]
    if spec.target is Target.LOCAL:
        order = [e for e in order if traits(e).local]
    candidates = tuple(c for e in order for c in _candidates(spec, model, catalog, drift, e))
    rec, why = _recommend(spec, order, candidates)
    return Comparison(spec.model.id, spec.target, spec.serving.max_model_len,
                      spec.serving.concurrency, tuple(order), candidates, rec, why)


def _candidates(spec: StackSpec, model: ModelInfo, catalog: Catalog,
                drift: Mapping[Format, ExpectedDrift], engine: Engine) -> list[Candidate]:
    prefs = preferences()
    loads = [f for f in formats_loaded_by(engine) if f in prefs.rows]
    loads.sort(key=lambda f: (format_info(f).kind is FormatKind.QUANTIZED, prefs.of(f).rank))
    out = []
    for fmt in loads:
        kernels = _kernels(spec, catalog, fmt, engine)
        if all(k is Kernel.NONE for _, _, k in kernels):
            continue
        variant = Variant(format_info(fmt).kind.value)
        plan = _plan_on(spec, model, catalog, engine, fmt, variant, kernels, (Kernel.FULL,))
        if plan is None or plan.chosen is None:
            plan = _plan_on(spec, model, catalog, engine, fmt, variant, kernels,
                            (Kernel.FULL, Kernel.FALLBACK)) or plan
        if plan is None:
            continue
        on = {d: k for d, _, k in kernels}
        chosen = plan.chosen
        best = min((k for _, _, k in kernels), key=_KERNEL_ORDER.__getitem__)
        out.append(Candidate(
            variant=variant, engine=engine, preference=prefs.of(fmt), kernels=kernels,
            kernel=on[chosen.gpu] if chosen else best, plan=plan,
            drift=drift.get(fmt), artifact=artifact_route(spec, fmt, model),
        ))
    return out


def _kernels(spec: StackSpec, catalog: Catalog, fmt: Format,
             engine: Engine) -> tuple[tuple[str, float | None, Kernel], ...]:
    rows: list[tuple[str, float | None, Kernel]] = []
    if spec.fleet.cpu is not None and traits(engine).cpu_fleet:
        rows.append((CPU, None, kernel(fmt, engine, None)))
    for name in spec.fleet.gpus:
        cc = catalog.gpu(name).compute_capability
        rows.append((name, cc, kernel(fmt, engine, cc)))
    return tuple(rows)


def _plan_on(spec: StackSpec, model: ModelInfo, catalog: Catalog, engine: Engine, fmt: Format,
             variant: Variant, kernels: tuple[tuple[str, float | None, Kernel], ...],
             allowed: tuple[Kernel, ...]) -> VariantPlan | None:
    """The variant's plan on the devices whose kernel is in `allowed`, sized for all traffic;
    None when no device qualifies."""
    gpus = [d for d, _, k in kernels if k in allowed and d != CPU]
    cpu = spec.fleet.cpu if any(d == CPU and k in allowed for d, _, k in kernels) else None
    if not gpus and cpu is None:
        return None
    both = spec.variants.of(variant).model_copy(update={"format": fmt, "source": None,
                                                       "artifact": None, "gate": None})
    trial = spec.model_copy(update={
        "serving": spec.serving.model_copy(update={"engine": engine}),
        "variants": spec.variants.model_copy(update={"baseline": both, "quantized": both}),
        "fleet": spec.fleet.model_copy(update={"gpus": gpus, "cpu": cpu}),
        "rollout": spec.rollout.model_copy(update={"stage": Stage.FULL, "quantized_percent": 100}),
    })
    return plan_stack(trial, model, catalog).variant(variant)


def artifact_route(spec: StackSpec, fmt: Format, model: ModelInfo | None = None) -> ArtifactRoute:
    """Where `fmt`'s weights would come from for `spec`'s model: its own checkpoint, a known hub
    checkpoint, a recipe qinfra runs, or one it does not run yet."""
    route = _route(spec, fmt)
    pref = preferences().of(fmt)
    if route.kind is not ArtifactKind.RECIPE or not pref.make or route.how != f"recipe: {pref.recipe}":
        return route
    recipe: dict[str, str | int] = dict(pref.make)
    if model is not None and recipe.get("scheme") in GROUPED_SCHEMES:
        group = fitting_group(model)
        if group is None:  # no group divides: a recipe plan would refuse; offer none
            return ArtifactRoute(ArtifactKind.PENDING, route.how)
        recipe["group_size"] = group
    return ArtifactRoute(route.kind, route.how, route.source, tuple(recipe.items()))


def _route(spec: StackSpec, fmt: Format) -> ArtifactRoute:
    pref = preferences().of(fmt)
    model = spec.model.id
    gguf_model = model == DEMO_MODEL_ID or Path(model).suffix == ".gguf"
    info = format_info(fmt)
    if info.kind is FormatKind.BASELINE:
        if info.is_gguf and gguf_model:
            return ArtifactRoute(ArtifactKind.RECIPE, "the model's GGUF file (re-typed to F16 by "
                                 "llama-quantize --allow-requantize when it is not F16)")
        if not info.is_gguf and not gguf_model:
            return ArtifactRoute(ArtifactKind.CHECKPOINT, "the model's own 16-bit checkpoint")
        kind = ArtifactKind.RECIPE if pref.qinfra_runs else ArtifactKind.PENDING
        return ArtifactRoute(kind, f"recipe: {pref.recipe}")
    if (hub := hub_artifact(model, fmt)) is not None:
        return ArtifactRoute(ArtifactKind.HUB, f"hub: {hub.repo}", hub.repo)
    kind = ArtifactKind.RECIPE if pref.qinfra_runs else ArtifactKind.PENDING
    return ArtifactRoute(kind, f"recipe: {pref.recipe}")


def _recommend(spec: StackSpec, order: Sequence[Engine],
               candidates: Sequence[Candidate]) -> tuple[Recommendation | None, str]:
    misses: list[str] = []
    for engine in order:
        mine = [c for c in candidates if c.engine is engine]
        picks = {v: min((c for c in mine if c.variant is v and c.fits and c.kernel is not Kernel.NONE),
                        key=lambda c: c.rank, default=None) for v in Variant}
        base, quant = picks[Variant.BASELINE], picks[Variant.QUANTIZED]
        if base is None or quant is None:
            missing = " and ".join(v.value for v, c in picks.items() if c is None)
            misses.append(f"{engine}: no {missing} format fits ({_first_refusal(mine)})")
            continue
        passed = tuple(_passed_over(c, quant) for c in mine
                       if c.variant is Variant.QUANTIZED and c.preference.rank < quant.preference.rank)
        return Recommendation(
            engine=engine,
            baseline=Pick(base, _baseline_reasons(spec, base)),
            quantized=Pick(quant, _quantized_reasons(spec, quant, base)),
            gpus=_shared_gpus(spec, base, quant),
            passed_over=passed,
        ), ""
    if not order:
        return None, f"no engine serves target {spec.target.value} on this fleet"
    return None, "; ".join(misses)


def _first_refusal(cands: Sequence[Candidate]) -> str:
    for c in cands:
        if c.plan.refused:
            return c.plan.refused[0]
    return "no device listed runs it"


def _shared_gpus(spec: StackSpec, base: Candidate, quant: Candidate) -> tuple[str, ...]:
    """The listed GPUs where each pick runs with the kernel it was planned with (so `qinfra
    plan` on the written stack chooses what the table showed); all listed ones if none do."""
    def ok(c: Candidate, device: str) -> bool:
        k = next(k for d, _, k in c.kernels if d == device)
        return _KERNEL_ORDER[k] <= _KERNEL_ORDER[c.kernel]

    shared = tuple(g for g in spec.fleet.gpus if ok(base, g) and ok(quant, g))
    return shared or tuple(spec.fleet.gpus)


def _where(c: Candidate) -> str:
    o = c.option
    assert o is not None
    if o.instance_type is None:
        return f"this host's RAM ({o.sequences_per_engine} sequences per engine)"
    return (f"{o.machines} x {o.instance_type} ({o.gpu}, TP {o.tensor_parallel_size}), "
            f"${o.usd_per_hour:,.2f}/hour")


def weights_gib(c: Candidate) -> float | None:
    return c.option.engine_plan.weight_bytes / GIB if c.option else None


def _baseline_reasons(spec: StackSpec, c: Candidate) -> tuple[str, ...]:
    return (f"{c.preference.reason}.",
            f"All {spec.serving.concurrency} sequences of {spec.serving.max_model_len} tokens on "
            f"{_where(c)}; weights {c.artifact.how}.")


def _quantized_reasons(spec: StackSpec, c: Candidate, base: Candidate) -> tuple[str, ...]:
    drift = ""
    if c.drift is not None and c.drift.mean_kld_max is not None:
        drift = f"; the gate expects family {c.drift.family} drift (mean KLD <= {c.drift.mean_kld_max:g})"
    where = "per GPU" if c.option and c.option.instance_type else "in RAM"
    return (f"{c.preference.reason}.",
            f"{weights_gib(c):.1f} GiB of weights {where} against the baseline's "
            f"{weights_gib(base):.1f}; all traffic on {_where(c)}{drift}; weights {c.artifact.how}.")


def _passed_over(c: Candidate, chosen: Candidate) -> str:
    """Why a format the table ranks above the chosen one lost."""
    if not c.fits:
        why = c.plan.refused[0] if c.plan.refused else "no listed device runs it"
        return f"{c.format}: does not fit ({why})"
    if c.kernel is not Kernel.FULL:
        info = format_info(c.format)
        slow = ", ".join(d for d, _, k in c.kernels if k is Kernel.FALLBACK)
        need = info.vllm_min_cc if c.kernel is Kernel.FALLBACK and info.weight_only_min_cc else (
            info.vllm_fast_min_cc)
        return (f"{c.format}: no full-speed kernel on {slow} (needs compute capability >= {need}); "
                "it would run through a slower fallback")
    if not c.artifact.obtainable:
        return (f"{c.format}: no hub checkpoint known and qinfra does not make it yet "
                f"({c.preference.recipe}); set qinfra:variants.quantized.source to one")
    return f"{c.format}: ranked lower than {chosen.format} here"


__all__ = [
    "CPU",
    "ArtifactKind",
    "ArtifactRoute",
    "Candidate",
    "Comparison",
    "ExpectedDrift",
    "Kernel",
    "Pick",
    "Recommendation",
    "artifact_route",
    "compare",
    "kernel",
    "weights_gib",
]
