"""The router as the cloud targets run it: its config from the stack, its command line, and the
typed contexts of its Kubernetes objects and its machines.

One config builder for both targets, so the weights a router serves are the stack's rollout
whatever the target; the replica URLs are what differs (a Service per variant on Kubernetes, an
internal load balancer listener per variant on AWS). Each variant is listed even at 0 %, so a
rollback changes the weight and nothing else; shadowing pauses while the quantized variant takes
nothing, as it does on the local target.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

from qinfra.core.errors import RenderError
from qinfra.core.spec import StackSpec, Variant
from qinfra.core.spec_sections import IMAGE_BY_DIGEST
from qinfra.planning.router import (  # the plan's figures are the ones the targets run
    ROUTER_CPU,
    ROUTER_MEMORY,
    ROUTER_PORT,
    ROUTER_REPLICAS,
    served_shadow_percent,
)
from qinfra.serving.contexts import (
    BIN,
    PROBE_PERIOD_S,
    ArtifactContext,
    RouterKubeContext,
    RouterMachineContext,
)
from qinfra.serving.kube import k8s_name
from qinfra.serving.router.__main__ import GRACEFUL_S
from qinfra.serving.router.config import RouterConfig, config_mapping, parse_config

ROUTER_MODULE = "qinfra.serving.router"
CONFIG_DIR = "/etc/qinfra/router"
CONFIG_FILE = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
# aws: the router's pinned wheels are fetched and verified here, then installed offline into VENV.
ROUTER_HOME = "/opt/qinfra/router"
VENV = f"{ROUTER_HOME}/venv"
# aws: how often a machine re-reads the router's SSM parameter; a rollback is live within this
# plus the router's own 0.2 s poll of its file.
SYNC_PERIOD_S = 15
ROUTER_MEMORY_LIMIT = "1Gi"  # a router pod's limit; its requests are in planning/router.py
# distroless/python images' nonroot user; any uid works, the router writes no file.
ROUTER_UID = 65532


def router_config(spec: StackSpec, replicas: Mapping[Variant, str]) -> RouterConfig:
    """The router's config: weights from the rollout, one base URL per variant, the
    qinfra:router settings; validated as the router validates its file."""
    traffic = spec.rollout.traffic_percent()
    settings = spec.router
    raw = config_mapping(RouterConfig(
        replicas=MappingProxyType({v: (replicas[v],) for v in Variant}),
        quantized_percent=float(traffic[Variant.QUANTIZED]),
        salt=settings.salt,
        key_header=settings.key_header,
        cookie=settings.cookie,
        shadow_percent=served_shadow_percent(spec),
        max_in_flight=settings.max_in_flight,
        connect_timeout_s=float(settings.connect_timeout_s),
        read_timeout_s=float(settings.read_timeout_s),
    ))
    return parse_config(raw, source=f"stack {spec.name}: router config")


def config_text(config: RouterConfig) -> str:
    """The config file's bytes: sorted JSON, so the same stack gives the same text."""
    return json.dumps(config_mapping(config), indent=2, sort_keys=True) + "\n"


def router_argv(python: str) -> tuple[str, ...]:
    """The router's command line; tests parse it with the router's own argument parser."""
    return (python, "-m", ROUTER_MODULE, "--config", CONFIG_PATH, "--host", "0.0.0.0",
            "--port", str(ROUTER_PORT), "--log-level", "info")


def router_image(spec: StackSpec) -> str:
    """The router's container image, pinned by digest: a tag could move under a running stack."""
    image = spec.router.image
    if image is None or not IMAGE_BY_DIGEST.fullmatch(image):
        raise RenderError(
            f"cannot render stack '{spec.name}', router: qinfra:router.image is "
            f"{image!r}; target kubernetes runs the router from an image pinned by digest. "
            "To fix: build the image (README, 'The router's image'), push it and set "
            "qinfra:router.image to REPOSITORY@sha256:<64 hex digits>")
    return image


def service_url(spec: StackSpec, variant: Variant, namespace: str) -> str:
    """A variant's Service in cluster DNS, as the variant's render names it."""
    return (f"http://qinfra-{k8s_name(spec.name)}-{variant}.{namespace}.svc.cluster.local:"
            f"{spec.serving.port}")


def kube_router_context(spec: StackSpec) -> RouterKubeContext:
    """The router's Deployment, Service, PodDisruptionBudget and ConfigMap."""
    namespace = str(spec.provider_config.get("kubernetes:namespace") or "default")
    stack = k8s_name(spec.name)
    selector = (
        ("app.kubernetes.io/name", "qinfra-router"),
        ("app.kubernetes.io/instance", stack),
        ("app.kubernetes.io/component", "router"),
    )
    config = router_config(spec, {v: service_url(spec, v, namespace) for v in Variant})
    return RouterKubeContext(
        stack=spec.name,
        name=f"qinfra-{stack}-router",
        namespace=namespace,
        labels=(*selector, ("app.kubernetes.io/managed-by", "qinfra")),
        selector=selector,
        replicas=ROUTER_REPLICAS,
        image=router_image(spec),
        command=router_argv("python"),
        port=ROUTER_PORT,
        service_port=80,
        config_dir=CONFIG_DIR,
        config_file=CONFIG_FILE,
        config_json=config_text(config),
        cpu_request=ROUTER_CPU,
        memory_request=ROUTER_MEMORY,
        memory_limit=ROUTER_MEMORY_LIMIT,
        uid=ROUTER_UID,
        probe_period_s=PROBE_PERIOD_S,
        termination_grace_s=GRACEFUL_S + 5,
    )


def router_artifact(spec: StackSpec) -> ArtifactContext:
    """The router's pinned wheels (qinfra and what the router imports), fetched and verified
    like a model artifact; RenderError when the stack does not pin them in S3."""
    from qinfra.core.artifact_uri import parse_artifact_uri

    uri = spec.router.artifact
    fix = (f"To fix: run `qinfra artifacts push --stack {spec.name}` (it builds and pins the "
           "router's wheels with the models)")
    if uri is None or not uri.startswith("s3://"):
        raise RenderError(f"cannot render stack '{spec.name}', router: qinfra:router.artifact is "
                          f"{uri!r}; target aws installs the router from wheels pinned in S3. {fix}")
    try:
        pinned = parse_artifact_uri(uri)
    except ValueError:
        raise RenderError(f"cannot render stack '{spec.name}', router: qinfra:router.artifact "
                          f"'{uri}' does not end in sha256-<64 hex digits>. {fix}") from None
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    region = spec.provider_config.get("aws:region")
    return ArtifactContext(
        stack=spec.name, variant="router", uri=uri if uri.endswith("/") else uri + "/",
        artifact_id=last, manifest_sha256=pinned.manifest_sha256,
        directory=f"{ROUTER_HOME}/{last}", region=str(region) if region else None,
        estimate_bytes=0, verify_script=f"{BIN}/verify-router.sh")


def parameter_name(stack: str) -> str:
    """The SSM parameter holding a stack's router config (aws)."""
    return f"/qinfra/{stack}/router-config"


def machine_router_context(spec: StackSpec, artifact: ArtifactContext) -> RouterMachineContext:
    """A router machine's units and scripts; its files are added once rendered."""
    return RouterMachineContext(
        stack=spec.name,
        artifact=artifact,
        parameter=parameter_name(spec.name),
        region=artifact.region,
        config_dir=CONFIG_DIR,
        config_path=CONFIG_PATH,
        venv=VENV,
        argv=router_argv(f"{VENV}/bin/python"),
        install_script=f"{BIN}/install-router.sh",
        sync_script=f"{BIN}/sync-router-config.sh",
        sync_period_s=SYNC_PERIOD_S,
        graceful_s=GRACEFUL_S,
    )
