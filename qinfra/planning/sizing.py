"""Sizing a stack's fleets: per variant, the cheapest GPU, instance type, tensor parallelism and
replica count that hold the variant's share of the stack's concurrency. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from qinfra.core.formats import Engine, Format
from qinfra.core.hardware import Catalog, Gpu, InstanceType
from qinfra.core.modelinfo import ModelInfo
from qinfra.core.spec import StackSpec, Stage, Target, Variant, traffic_percent
from qinfra.planning.engine_plan import GIB, EngineOptions, EnginePlan, GpuSizing
from qinfra.planning.engines import planner_for
from qinfra.planning.planner import plan_engine
from qinfra.planning.recipe_checks import model_as_made, recipe_device_error, recipe_errors
from qinfra.planning.router import RouterPlan
from qinfra.planning.targets import plan_router, target_plan

TP_SIZES = (1, 2, 4, 8)
# Several engine instances share one GPU only when each keeps at least half of its slice of the
# GPU for KV cache; beyond 4 the duplicated weights and schedulers cost more than they give.
MAX_REPLICAS_PER_GPU = 4
SMALL_MODEL_SHARE = 0.5


@dataclass(frozen=True)
class FleetOption:
    """One way to serve a variant: an instance type, its engine layout and the count needed."""

    gpu: str
    instance_type: str | None
    tensor_parallel_size: int
    replicas_per_gpu: int
    engine_plan: EnginePlan
    sequences_per_engine: int
    engines_total: int  # engine instances running: machines x engines per machine
    machines: int
    gpus_total: int
    usd_per_hour: float
    machine_usd_per_hour: float

    @property
    def rank(self) -> tuple[float, int, str, str]:
        """Cheapest first; a zero-replica variant ranks by what one machine would cost."""
        cost = self.usd_per_hour if self.engines_total else self.machine_usd_per_hour
        return (cost, self.gpus_total, self.instance_type or "", self.gpu)

    @property
    def fits(self) -> bool:
        return self.engine_plan.fits


@dataclass(frozen=True)
class VariantPlan:
    """One variant's fleet: sized for `sized_for_percent` of the stack's concurrency (the
    baseline always for 100, so a rollback never waits), the cheapest fitting option chosen."""

    name: Variant
    sized_for_percent: int
    required_concurrency: int
    chosen: FleetOption | None
    options: tuple[FleetOption, ...]
    refused: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class StackPlan:
    stack: str
    model: str
    engine: Engine
    stage: Stage
    quantized_percent: int
    variants: tuple[VariantPlan, ...]
    price_note: str
    router: RouterPlan  # the front door, in front of the variants on every target

    @property
    def fits(self) -> bool:
        return all(v.chosen is not None for v in self.variants)

    @property
    def usd_per_hour(self) -> float:
        """What the stack costs per hour: the chosen fleets (a variant that does not fit adds
        nothing) and the router machines where the target runs them (aws)."""
        fleets = sum(v.chosen.usd_per_hour for v in self.variants if v.chosen)
        return round(fleets + (self.router.usd_per_hour or 0.0), 4)

    def variant(self, name: Variant | str) -> VariantPlan:
        return next(v for v in self.variants if v.name == name)


def sized_for_percent(stage: Stage, quantized_percent: int,
                      target: Target | None = None) -> dict[Variant, int]:
    """The share each variant's fleet is sized for. The baseline is always sized for all traffic
    so that a rollback never waits for capacity; the quantized share is the rollout's. On target
    local each variant is one llama-server whose slots are fixed when it starts, so one that takes
    any traffic is sized for all of it: the weights then move without restarting it."""
    quantized = traffic_percent(stage, quantized_percent)[Variant.QUANTIZED]
    if target is not None and target_plan(target).whole_share_when_serving and quantized > 0:
        quantized = 100
    return {Variant.BASELINE: 100, Variant.QUANTIZED: quantized}


def plan_stack(spec: StackSpec, model: ModelInfo, catalog: Catalog) -> StackPlan:
    shares = sized_for_percent(spec.rollout.stage, spec.rollout.quantized_percent, spec.target)
    variants = tuple(_plan_variant(spec, model, catalog, v, shares[v]) for v in Variant)
    return StackPlan(
        stack=spec.name,
        model=spec.model.id,
        engine=spec.serving.engine,
        stage=spec.rollout.stage,
        quantized_percent=spec.rollout.quantized_percent,
        variants=variants,
        price_note=f"on-demand {catalog.price_region}, prices as listed {catalog.price_date}",
        router=plan_router(spec, catalog),
    )


def _plan_variant(
    spec: StackSpec, model: ModelInfo, catalog: Catalog, name: Variant, share: int
) -> VariantPlan:
    variant = spec.variants.of(name)
    fmt = variant.format
    required = math.ceil(spec.serving.concurrency * share / 100)
    options: list[FleetOption] = []
    refused: list[str] = list(recipe_errors(variant, model))
    if refused:  # the recipe would make nothing servable: no fleet to size
        return VariantPlan(name=name, sized_for_percent=share, required_concurrency=required,
                           chosen=None, options=(), refused=tuple(refused),
                           why=f"its recipe is refused: {refused[0]}")
    model = model_as_made(variant, model)
    if spec.fleet.cpu is not None:
        option = _cpu_option(spec, model, fmt, required)
        (options if option.fits else refused).append(
            option if option.fits else f"cpu: {'; '.join(option.engine_plan.errors)}"
        )
    for gpu_name in spec.fleet.gpus:
        gpu = catalog.gpu(gpu_name)
        if (why := recipe_device_error(variant, gpu)) is not None:
            refused.append(f"{gpu_name}: {why}")
            continue
        for itype in catalog.instances_for(gpu_name):
            option = _gpu_option(spec, model, fmt, gpu, itype, required)
            if option.fits:
                options.append(option)
            else:
                refused.append(f"{gpu_name} on {itype.name}: "
                               f"{'; '.join(option.engine_plan.errors)}")
    options.sort(key=lambda o: o.rank)
    chosen = options[0] if options else None
    return VariantPlan(
        name=name,
        sized_for_percent=share,
        required_concurrency=required,
        chosen=chosen,
        options=tuple(options),
        refused=tuple(dict.fromkeys(refused)),
        why=_why(chosen, required, share, name),
    )


def _why(chosen: FleetOption | None, required: int, share: int, name: Variant) -> str:
    if chosen is None:
        return "no allowed GPU or instance type fits; see refused"
    if required == 0:
        return (f"{share}% of traffic: kept at zero replicas with the flags of "
                f"{chosen.instance_type or chosen.gpu} so rolling forward is fast")
    sized = "all traffic (the baseline takes 100% on rollback)" if name is Variant.BASELINE else (
        f"{share}% of traffic")
    return (f"sized for {sized}: {required} sequences at max_model_len, "
            f"{chosen.sequences_per_engine} per engine; cheapest of the fitting options")


def _options(spec: StackSpec, tp: int, threads: int | None = None, util: float | None = None,
             parallel: int | None = None) -> EngineOptions:
    s = spec.serving
    return EngineOptions(
        engine=s.engine,
        tensor_parallel_size=tp,
        max_model_len=s.max_model_len,
        gpu_memory_utilization=util or s.gpu_memory_utilization,
        kv_cache_dtype=s.kv_cache_dtype,
        max_num_batched_tokens=s.max_num_batched_tokens,
        parallel=parallel,
        threads=threads,
    )


def _gpu_option(
    spec: StackSpec, model: ModelInfo, fmt: Format, gpu: Gpu, itype: InstanceType, required: int
) -> FleetOption:
    return _GPU_OPTION[planner_for(spec.serving.engine).gpu_sizing](spec, model, fmt, gpu, itype,
                                                                    required)


def _tensor_parallel_gpu_option(
    spec: StackSpec, model: ModelInfo, fmt: Format, gpu: Gpu, itype: InstanceType, required: int
) -> FleetOption:
    """The smallest tensor parallelism that fits; a small model k engines per GPU where the
    target lets engines share one."""
    limit = min(itype.gpus, spec.fleet.max_tensor_parallel)
    plan = None
    for tp in (t for t in TP_SIZES if t <= limit):
        plan = plan_engine(model, fmt, gpu, _options(spec, tp))
        if plan.fits:
            break
    assert plan is not None
    replicas = _replicas_per_gpu(spec, model, fmt, gpu, plan) if plan.fits else 1
    if replicas > 1:
        util = spec.serving.gpu_memory_utilization / replicas
        plan = plan_engine(model, fmt, gpu, _options(spec, 1, util=round(util, 4)))
    seqs = min(int(plan.max_concurrency), plan.flags.max_sequences)
    tp = plan.tensor_parallel_size
    per_machine = (itype.gpus // tp) * replicas
    return _priced(gpu.name, itype, tp, replicas, plan, seqs, required, per_machine)


def _replicas_per_gpu(
    spec: StackSpec, model: ModelInfo, fmt: Format, gpu: Gpu, plan: EnginePlan
) -> int:
    """Small models run several engines per GPU, each with utilization / k, while every engine's
    weights and overheads stay within half of its slice."""
    if plan.tensor_parallel_size != 1 or not target_plan(spec.target).engines_share_gpu:
        return 1  # Kubernetes schedules whole GPUs per pod; locally there is one engine each
    fixed = plan.weight_bytes + plan.overhead_bytes
    slice_bytes = gpu.memory_gib * spec.serving.gpu_memory_utilization * GIB
    best = 1
    for k in range(2, MAX_REPLICAS_PER_GPU + 1):
        if fixed > SMALL_MODEL_SHARE * slice_bytes / k:
            break
        candidate = plan_engine(model, fmt, gpu, _options(
            spec, 1, util=round(spec.serving.gpu_memory_utilization / k, 4)))
        if candidate.fits:
            best = k
    return best


def _slots_gpu_option(
    spec: StackSpec, model: ModelInfo, fmt: Format, gpu: Gpu, itype: InstanceType, required: int
) -> FleetOption:
    """One server per GPU (tensor parallelism 1), its slots for the share, threads from the
    machine's vCPUs per GPU."""
    threads = max(1, itype.vcpus // itype.gpus)
    probe = plan_engine(model, fmt, gpu, _options(spec, 1, threads=threads))
    slots = max(1, min(required or 1, int(probe.max_concurrency)))
    plan = plan_engine(model, fmt, gpu, _options(spec, 1, threads=threads, parallel=slots))
    return _priced(gpu.name, itype, 1, 1, plan, slots, required, itype.gpus)


_GpuOption = Callable[[StackSpec, ModelInfo, Format, Gpu, InstanceType, int], FleetOption]
# How each engine is laid out on a GPU machine: its EnginePlanner.gpu_sizing picks the row.
_GPU_OPTION: dict[GpuSizing, _GpuOption] = {
    GpuSizing.TENSOR_PARALLEL: _tensor_parallel_gpu_option,
    GpuSizing.SLOTS: _slots_gpu_option,
}


def _cpu_option(spec: StackSpec, model: ModelInfo, fmt: Format, required: int) -> FleetOption:
    cpu = spec.fleet.cpu
    assert cpu is not None
    plan = plan_engine(model, fmt, None, _options(spec, 1, threads=cpu.threads,
                       parallel=max(1, required)), host_memory_gib=cpu.memory_gib)
    engines = 1 if required else 0
    return FleetOption(
        gpu="cpu", instance_type=None, tensor_parallel_size=1, replicas_per_gpu=1, engine_plan=plan,
        sequences_per_engine=int(plan.max_concurrency), engines_total=engines, machines=engines,
        gpus_total=0, usd_per_hour=0.0, machine_usd_per_hour=0.0,
    )


def _priced(gpu: str, itype: InstanceType, tp: int, replicas: int, plan: EnginePlan, seqs: int,
            required: int, per_machine: int) -> FleetOption:
    needed = math.ceil(required / seqs) if required and seqs else 0
    machines = math.ceil(needed / per_machine) if per_machine else 0
    engines = machines * per_machine  # every engine slot of a machine runs, so count them all
    return FleetOption(
        gpu=gpu,
        instance_type=itype.name,
        tensor_parallel_size=tp,
        replicas_per_gpu=replicas,
        engine_plan=plan,
        sequences_per_engine=seqs,
        engines_total=engines,
        machines=machines,
        gpus_total=machines * itype.gpus,
        usd_per_hour=round(machines * itype.usd_per_hour, 4),
        machine_usd_per_hour=itype.usd_per_hour,
    )
