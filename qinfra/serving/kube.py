"""The Kubernetes context of one variant: names, labels, resources and probes of its objects."""

from __future__ import annotations

import hashlib
import math
import re

from qinfra.serving.contexts import (
    AWS_CLI_IMAGE,
    BIN,
    PROBE_PERIOD_S,
    VERIFY_IMAGE,
    WARMUP_REQUEST_S,
    ArtifactContext,
    EmbeddedFile,
    KubeContext,
    LaunchContext,
    generation_s,
)
from qinfra.serving.engines import engine_launch
from qinfra.serving.launch import VariantRender, engine_env, image

_K8S_NAME = re.compile(r"[^a-z0-9-]+")


def k8s_name(name: str) -> str:
    """A DNS-1123 label from a stack name (Pulumi allows '_' and '.', Kubernetes does not)."""
    return _K8S_NAME.sub("-", name.lower()).strip("-") or "stack"


def scripts_digest(scripts: tuple[EmbeddedFile, ...]) -> str:
    """sha256 of the ConfigMap's scripts, as a pod-template annotation: a flag change edits the
    ConfigMap in place, and only a changed pod template makes the Deployment roll its pods."""
    digest = hashlib.sha256()
    for file in scripts:
        for part in (file.name, file.content):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def kube_context(v: VariantRender, launch: LaunchContext, artifact: ArtifactContext,
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
        replicas=option.engines_total,
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
        scripts_sha256=scripts_digest(scripts),
        shared_memory=engine_launch(v.engine).shared_memory,
        startup_period_s=PROBE_PERIOD_S,
        startup_failure_threshold=math.ceil(launch.startup_budget_s / PROBE_PERIOD_S),
        startup_timeout_s=WARMUP_REQUEST_S + 15,
        termination_grace_s=generation_s(v.spec),
    )
