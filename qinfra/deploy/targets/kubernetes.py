"""The kubernetes target: the rendered manifests as typed resources; clients reach the router
through an HTTPRoute, and the router splits traffic between the variants' Services."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from ruamel.yaml import YAML

from qinfra.core.spec import StackSpec
from qinfra.deploy.targets import Deployed, DeployInput, boot_s, variant_output
from qinfra.serving.contexts import generation_s
from qinfra.serving.kube import k8s_name
from qinfra.serving.render import ROUTER

GATEWAY_API = "gateway.networking.k8s.io/v1"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"  # EKS User Guide, IAM roles for service accounts
MANAGED = {"app.kubernetes.io/managed-by": "qinfra"}
# The provider's switch (and its environment variable) that updates a ConfigMap in place
# (pulumi-kubernetes provider config `enableConfigMapMutable`; default false: replace).
CONFIGMAP_MUTABLE_KEY = "kubernetes:enableConfigMapMutable"
CONFIGMAP_MUTABLE_ENV = "PULUMI_K8S_ENABLE_CONFIGMAP_MUTABLE"

# Rendered kind -> the typed resource and the field that holds its body, in creation order: the
# Deployment mounts the ConfigMap; the Service and the disruption budget select its pods.
KINDS: dict[str, tuple[type[pulumi.CustomResource], str]] = {
    "ConfigMap": (k8s.core.v1.ConfigMap, "data"),
    "Deployment": (k8s.apps.v1.Deployment, "spec"),
    "Service": (k8s.core.v1.Service, "spec"),
    "PodDisruptionBudget": (k8s.policy.v1.PodDisruptionBudget, "spec"),
}


@dataclass(frozen=True)
class Workload:
    """One variant's objects as rendered, by kind."""

    name: str
    manifests: Mapping[str, dict[str, Any]]

    @property
    def namespace(self) -> str:
        return str(self.manifests["Deployment"]["metadata"]["namespace"])

    @property
    def service(self) -> tuple[str, int]:
        svc = self.manifests["Service"]
        return svc["metadata"]["name"], int(svc["spec"]["ports"][0]["port"])

    @property
    def pod(self) -> dict[str, Any]:
        return self.manifests["Deployment"]["spec"]["template"]["spec"]


def workload(deploy: DeployInput, variant: str) -> Workload:
    """Every rendered file of the variant, parsed; the kind table says what each becomes."""
    manifests: dict[str, dict[str, Any]] = {}
    for path, text in deploy.rendered.items():
        if path.parts[0] == variant and path.suffix == ".yaml":
            for doc in YAML(typ="safe").load_all(text):
                if doc:
                    assert doc["kind"] in KINDS and doc["kind"] not in manifests, (path, doc["kind"])
                    manifests[doc["kind"]] = doc
    missing = set(KINDS) - set(manifests)
    assert not missing, f"render gave no {sorted(missing)} for {variant}"
    return Workload(variant, manifests)


def scaled(doc: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The Deployment with the plan's replicas, stated here so a rollback's diff is this field."""
    return {**doc, "spec": {**doc["spec"], "replicas": replicas}}


def secret_refs(pod: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(Secret, key) pairs the pod's containers read."""
    return {(env["valueFrom"]["secretKeyRef"]["name"], env["valueFrom"]["secretKeyRef"]["key"])
            for c in pod.get("containers", ()) for env in c.get("env", ())
            if "secretKeyRef" in env.get("valueFrom", {})}


def identity(namespace: str, service_account: str, role_arn: str | None,
             secrets: set[tuple[str, str]], parent: Sequence[pulumi.Resource]) -> list[pulumi.Resource]:
    """The ServiceAccount the pods run as (IRSA for the artifact store), and the Secret the pods
    read their API key from, built from the Pulumi secret, never from plain text."""
    opts = pulumi.ResourceOptions(depends_on=list(parent))
    out: list[pulumi.Resource] = [k8s.core.v1.ServiceAccount(
        service_account, opts=opts,
        metadata={"name": service_account, "namespace": namespace, "labels": MANAGED,
                  "annotations": {IRSA_ANNOTATION: role_arn} if role_arn else {}})]
    if not secrets:
        return out
    value = pulumi.Config("qinfra").get_secret("api_key")
    assert value is not None, "the render reads an API key the stack does not set"
    for name, key in sorted(secrets):
        out.append(k8s.core.v1.Secret(name, type="Opaque", string_data={key: value}, opts=opts,
                                      metadata={"name": name, "namespace": namespace,
                                                "labels": MANAGED}))
    return out


def route(spec: StackSpec, namespace: str, backend: tuple[str, int],
          services: Sequence[pulumi.Resource]) -> k8s.apiextensions.CustomResource:
    """Gateway API HTTPRoute: one rule to the router's Service (the router keeps users in their
    variant and splits by weight), and a request timeout long enough for one generation."""
    settings = spec.kubernetes
    parent: dict[str, Any] = {"name": settings.gateway}
    if settings.gateway_namespace:
        parent["namespace"] = settings.gateway_namespace
    name = f"qinfra-{k8s_name(spec.name)}"
    return k8s.apiextensions.CustomResource(
        name, api_version=GATEWAY_API, kind="HTTPRoute",
        metadata={"name": name, "namespace": namespace, "labels": MANAGED},
        spec={
            "parentRefs": [parent],
            **({"hostnames": [settings.hostname]} if settings.hostname else {}),
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": backend[0], "port": backend[1]}],
                "timeouts": {"request": f"{generation_s(spec)}s"},
            }],
        },
        opts=pulumi.ResourceOptions(depends_on=list(services)),
    )


def engine_policy(load: Workload, router: Workload,
                  ready: Sequence[pulumi.Resource]) -> k8s.networking.v1.NetworkPolicy:
    """Only the stack's router pods reach a variant's engine pods, on the engine's port: both
    selectors are read from the rendered Deployments, so the policy cannot drift from them.
    (The kubelet's probes come from the node and are not subject to NetworkPolicy.)"""
    deployment = load.manifests["Deployment"]
    name = f"{deployment['metadata']['name']}-from-router"
    return k8s.networking.v1.NetworkPolicy(
        name,
        metadata={"name": name, "namespace": load.namespace, "labels": MANAGED},
        spec={
            "podSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels":
                                          router.manifests["Deployment"]["spec"]["selector"]["matchLabels"]}}],
                "ports": [{"protocol": "TCP", "port": "http"}],  # the engine's named containerPort
            }],
        },
        opts=pulumi.ResourceOptions(depends_on=list(ready)),
    )


def objects(load: Workload, docs: Mapping[str, dict[str, Any]], ready: Sequence[pulumi.Resource],
            wait: str | None) -> dict[str, pulumi.Resource]:
    """One workload's objects in the kind table's order, each after the ones before it."""
    made: dict[str, pulumi.Resource] = {}
    for kind, (resource, body) in KINDS.items():
        doc = docs[kind]
        opts = pulumi.ResourceOptions(
            depends_on=[*ready, *made.values()],
            custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait)
            if kind == "Deployment" and wait else None)
        made[kind] = resource(doc["metadata"]["name"], metadata=doc["metadata"],  # type: ignore[call-arg]
                              **{body: doc[body]}, opts=opts)
    return made


def ready_timeout(spec: StackSpec, default_s: int | None) -> str | None:
    """How long the provider awaits a Deployment's rollout (its replicas available) before the
    update fails naming it: the stack's qinfra:kubernetes.ready_timeout_s, else `default_s`
    (an engine: its boot budget + 300 s, beyond the provider's 10-minute default; None: that
    default)."""
    seconds = spec.kubernetes.ready_timeout_s or default_s
    return f"{seconds}s" if seconds else None


def require_mutable_configmaps(spec: StackSpec) -> None:
    """DeployError unless the provider updates ConfigMaps in place. Its default replaces one
    whose data changes (a new object under the same name), so every rollout and rollback would
    replace the router's weights instead of editing them, and the diff would say `replace`."""
    import os

    from qinfra.core.errors import DeployError

    setting = spec.provider_config.get(CONFIGMAP_MUTABLE_KEY, os.environ.get(CONFIGMAP_MUTABLE_ENV))
    if str(setting).lower() != "true":
        raise DeployError(
            f"stack {spec.name} targets kubernetes without {CONFIGMAP_MUTABLE_KEY}: true, so "
            "the provider would replace the router's ConfigMap on every weight change. To fix: "
            f"add `{CONFIGMAP_MUTABLE_KEY}: \"true\"` under config: in stacks/Pulumi.{spec.name}.yaml")


def deploy(deploy: DeployInput) -> Deployed:
    spec = deploy.spec
    require_mutable_configmaps(spec)
    traffic = spec.rollout.traffic_percent()
    loads = [workload(deploy, v.name) for v in deploy.plan.variants]
    namespace = loads[0].namespace
    first: list[pulumi.Resource] = []
    if namespace != "default":  # the stack owns any other namespace it names
        first.append(k8s.core.v1.Namespace(namespace, metadata={"name": namespace, "labels": MANAGED}))
    accounts = {w.pod["serviceAccountName"] for w in loads}
    assert len(accounts) == 1, accounts
    secrets = set().union(*(secret_refs(w.pod) for w in loads))
    ready = identity(namespace, accounts.pop(), spec.kubernetes.service_account_role_arn, secrets,
                     first)
    services: list[pulumi.Resource] = []
    variants: dict[str, Any] = {}
    for load, plan in zip(loads, deploy.plan.variants, strict=True):
        chosen = plan.chosen
        assert chosen is not None  # the program refuses plans that do not fit
        docs = {**load.manifests, "Deployment": scaled(load.manifests["Deployment"], chosen.engines_total)}
        made = objects(load, docs, ready, ready_timeout(spec, boot_s(spec, chosen) + 300))
        services.append(made["Service"])
        svc, port = load.service
        variants[plan.name] = variant_output(
            deploy, plan, weight_percent=traffic[plan.name],
            endpoint=f"http://{svc}.{namespace}.svc.cluster.local:{port}")
    # The router last: its config names the variants' Services, which exist by then.
    router = workload(deploy, ROUTER)
    for load in loads:
        engine_policy(load, router, ready)
    made = objects(router, router.manifests, [*ready, *services], ready_timeout(spec, None))
    route(spec, namespace, router.service, [made["Service"]])
    hostname = spec.kubernetes.hostname
    return Deployed(variants=variants, endpoint=f"http://{hostname}" if hostname else None)
