"""One variant's spec, plan and engine flags checked against each other, and the launch, artifact
and systemd contexts built from it. RenderError names the variant and the key to fix."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from qinfra.core.artifact_uri import parse_artifact_uri
from qinfra.core.errors import RenderError
from qinfra.core.formats import Engine, engine_loads, format_info
from qinfra.core.spec import StackSpec, Variant, VariantSpec
from qinfra.core.stack_keys import variant_key
from qinfra.planning.engine_plan import MIB
from qinfra.planning.engines import planner_for
from qinfra.planning.flags import LlamaCppFlags, VllmFlags
from qinfra.planning.sizing import FleetOption, StackPlan
from qinfra.serving.contexts import (
    API_KEY_FILE,
    BIN,
    FETCH_FIXED_S,
    IMAGE_PULL_S,
    MODELS,
    READ_MIB_PER_S,
    WARMUP_MAX_TOKENS,
    WARMUP_PROMPT,
    WARMUP_REQUEST_S,
    ApiKeyContext,
    ArtifactContext,
    EngineInstance,
    LaunchContext,
    LaunchInputs,
    UnitContext,
)
from qinfra.serving.engines import engine_launch

# --- one variant, checked ------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantRender:
    """A variant whose spec, plan and engine flags were checked against each other: what every
    context of that variant is built from."""

    spec: StackSpec
    name: Variant
    index: int
    engine: Engine
    option: FleetOption
    inputs: LaunchInputs

    @property
    def key(self) -> str:
        return variant_key(self.name)

    @property
    def format(self) -> str:
        return self.option.engine_plan.format.value

    @property
    def variant_spec(self) -> VariantSpec:
        return self.spec.variants.of(self.name)

    @property
    def flags(self) -> VllmFlags | LlamaCppFlags:
        return self.option.engine_plan.flags

    def fail(self, message: str) -> RenderError:
        return _fail(self.spec, self.name, message)


def _fail(spec: StackSpec, variant: Variant, message: str) -> RenderError:
    return RenderError(f"cannot render stack '{spec.name}', variant '{variant}': {message}")


def check_variant(spec: StackSpec, plan: StackPlan, name: Variant | str, index: int,
                  inputs: LaunchInputs) -> VariantRender:
    """The engine must load the format, and the plan must fit and be for this spec.

    model_copy() and hand-built specs skip the spec's own validation, so it is checked again here.
    """
    variant = Variant(name)
    engine = spec.serving.engine
    fmt = spec.variants.of(variant).format
    info = format_info(fmt)
    if not engine_loads(engine, fmt):
        loads = ", ".join(e.value for e in info.engines)
        raise _fail(spec, variant, f"qinfra:variants.{variant}.format is {fmt.value}, which "
                    f"{engine.value} cannot load (loaded by: {loads}). To fix: pick a format "
                    f"{engine.value} loads, or change qinfra:serving.engine")
    variant_plan = next((v for v in plan.variants if v.name == variant), None)
    if variant_plan is None:
        raise _fail(spec, variant, "the plan has no such variant. To fix: re-plan the stack")
    option = variant_plan.chosen
    if option is None:
        refused = "; ".join(variant_plan.refused) or variant_plan.why
        raise _fail(spec, variant, f"the plan does not fit ({refused}). To fix: see "
                    f"`qinfra plan --stack {spec.name}`")
    ep = option.engine_plan
    if ep.engine is not engine or ep.format is not fmt:
        raise _fail(spec, variant, f"the plan is for {ep.engine.value}/{ep.format.value}, the "
                    f"stack says {engine.value}/{fmt.value}. To fix: re-plan after editing the stack")
    # The planner pairs each engine with its own flags; a plan of another shape is a bug.
    assert isinstance(ep.flags, planner_for(engine).flags_type), ep.flags
    problem = engine_launch(engine).check_flags(info, ep.flags)
    if problem is not None:
        raise _fail(spec, variant, problem)
    return VariantRender(spec, variant, index, engine, option, inputs)


# --- builders --------------------------------------------------------------------------------------


def artifact_bytes(option: FleetOption) -> int:
    """The weights the engine reads (the plan's per-rank weights x ranks), an estimate."""
    return option.engine_plan.weight_bytes * option.tensor_parallel_size


def startup_budget_s(engine: Engine, size_bytes: int) -> int:
    return engine_launch(engine).fixed_start_s + math.ceil(size_bytes / (READ_MIB_PER_S * MIB))


def fetch_timeout_s(size_bytes: int) -> int:
    return FETCH_FIXED_S + 2 * math.ceil(size_bytes / (READ_MIB_PER_S * MIB))


def artifact_context(v: VariantRender, *, need_s3: bool) -> ArtifactContext:
    """The variant's pinned artifact; RenderError when it is not pinned or not where the target
    fetches from."""
    uri = v.variant_spec.artifact
    if uri is None:
        raise v.fail(f"{v.key}.artifact is not pinned. To fix: run "
                     f"`qinfra artifacts push --stack {v.spec.name}`")
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        pinned = parse_artifact_uri(uri)
    except ValueError:
        raise v.fail(f"{v.key}.artifact '{uri}' does not end in sha256-<64 hex digits>. To fix: "
                     "pin it with `qinfra artifacts push --stack`") from None
    if need_s3 and not uri.startswith("s3://"):
        raise v.fail(f"{v.key}.artifact '{uri}' is not in S3, which target "
                     f"{v.spec.target.value} fetches from. To fix: set qinfra:artifacts.store to "
                     "an s3:// URI and push again")
    region = v.spec.provider_config.get("aws:region")
    return ArtifactContext(
        stack=v.spec.name,
        variant=v.name,
        uri=uri if uri.endswith("/") else uri + "/",
        artifact_id=last,
        manifest_sha256=pinned.manifest_sha256,
        directory=f"{MODELS}/{last}",
        region=str(region) if region else None,
        estimate_bytes=artifact_bytes(v.option),
    )


def local_model_path(v: VariantRender) -> str:
    """The launch input, else the pinned artifact's folder in a file:// store."""
    if v.inputs.model_path is not None:
        return v.inputs.model_path
    uri = v.variant_spec.artifact
    if uri is None or not uri.startswith("file:///"):
        raise v.fail(f"{v.key}.artifact is not a pinned file:// artifact, so there is no local "
                     f"model path. To fix: run `qinfra artifacts push --stack {v.spec.name}` with "
                     "a file:// store")
    return uri.removeprefix("file://").rstrip("/")


def launch_context(v: VariantRender, *, model_path: str, host: str, port: int) -> LaunchContext:
    spec = v.spec
    served = spec.model.served_name or spec.model.id
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    body = {
        "messages": [{"content": WARMUP_PROMPT, "role": "user"}],
        "max_tokens": WARMUP_MAX_TOKENS,
        "model": served,
        "temperature": 0,
    }
    return LaunchContext(
        stack=spec.name,
        variant=v.name,
        format=v.format,
        engine=v.engine.value,
        device=v.option.engine_plan.device,
        served_name=served,
        model_path=model_path,
        host=host,
        port=port,
        probe_host=f"[{probe_host}]" if ":" in probe_host else probe_host,
        api_key_env=engine_launch(v.engine).api_key_env if spec.api_key is not None else None,
        startup_budget_s=startup_budget_s(v.engine, artifact_bytes(v.option)),
        warmup_timeout_s=WARMUP_REQUEST_S,
        warmup_body=json.dumps(body, sort_keys=True, separators=(",", ":")),
        vllm=v.flags if isinstance(v.flags, VllmFlags) else None,
        llama_cpp=v.flags if isinstance(v.flags, LlamaCppFlags) else None,
    )


def launch_template(engine: Engine) -> tuple[str, str]:
    """(template, file name) of the engine's launch script."""
    row = engine_launch(engine)
    return row.template, row.script


def image(v: VariantRender) -> str:
    """The engine's image for the machine the plan chose: with GPUs or without."""
    row = engine_launch(v.engine)
    return row.cpu_image if v.option.instance_type is None else row.gpu_image


def engine_env(v: VariantRender) -> tuple[tuple[str, str], ...]:
    """Fixed environment of the engine container (e.g. where the image keeps llama-server)."""
    return engine_launch(v.engine).container_env


def engine_instances(v: VariantRender, base_port: int) -> tuple[EngineInstance, ...]:
    """The engines one machine runs, as the sizing counted them: (GPUs // TP) groups of TP GPUs,
    each shared by replicas_per_gpu engines; ports from base_port up."""
    option = v.option
    groups: list[str | None] = [None]
    if option.instance_type is not None:
        from qinfra.core.hardware import catalog

        gpus = catalog().instances[option.instance_type].gpus
        tp = option.tensor_parallel_size
        groups = []
        for first in range(0, gpus - gpus % tp, tp):
            groups += [",".join(str(d) for d in range(first, first + tp))] * option.replicas_per_gpu
    return tuple(EngineInstance(v.spec.name, v.name, i, base_port + i, gpus)
                 for i, gpus in enumerate(groups))


def unit_context(v: VariantRender, launch: LaunchContext, script: str, gpu: bool) -> UnitContext:
    return UnitContext(
        stack=v.spec.name,
        variant=v.name,
        engine=v.engine.value,
        container=f"qinfra-{v.name}-%i",
        image=image(v),
        gpu=gpu,
        ipc_host=engine_launch(v.engine).shared_memory,  # workers share tensors through /dev/shm
        instance_env_file="/etc/qinfra/engine-%i.env",
        api_key_file=API_KEY_FILE if launch.api_key_env else None,
        api_key_env=launch.api_key_env,
        set_env=engine_env(v),
        script=f"{BIN}/{script}",
        warmup=f"{BIN}/warmup.sh",
        start_timeout_s=launch.startup_budget_s + IMAGE_PULL_S,
    )


def api_key_context(v: VariantRender, launch: LaunchContext,
                    region: str | None) -> ApiKeyContext | None:
    if launch.api_key_env is None:
        return None
    return ApiKeyContext(v.spec.name, v.name, f"/qinfra/{v.spec.name}/api-key", launch.api_key_env,
                         API_KEY_FILE, region)
