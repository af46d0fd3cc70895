"""The kubernetes target under Pulumi mocks: workloads from the render, the router in front of
them (its ConfigMap holds the weights), rollback."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from qinfra.core.spec import PULUMI_HELD, parse_config
from qinfra.deploy.targets.kubernetes import secret_refs
from tests.render_helpers import PINS, ROUTER_IMAGE, launch_command, plan_for
from tests.targets.mocks import API_KEY, Run, changed, changes, run_program, stack_config, walk

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
SECRET = "kubernetes:core/v1:Secret"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"
ACCOUNT = "kubernetes:core/v1:ServiceAccount"
NAMESPACE = "kubernetes:core/v1:Namespace"
ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
STORE = "s3://acme-models/llama-3.1-8b"

STAGES = [
    ("baseline_only", 0),  # quantized Deployment kept at zero replicas
    ("ab_test", 10),
    ("gradual", 25),       # the shipped example
    ("full", 100),         # all traffic quantized; the baseline stays sized for a rollback
    ("rollback", 0),       # back to the baseline, quantized at zero
]

PDB = "kubernetes:policy/v1:PodDisruptionBudget"
INVENTORY = {  # per variant and for the router: ConfigMap, Deployment, Service, disruption budget
    NAMESPACE: 1,
    ACCOUNT: 1,
    SECRET: 1,
    CONFIGMAP: 3,
    DEPLOYMENT: 3,
    SERVICE: 3,
    PDB: 3,
    ROUTE: 1,
    NETPOL: 2,  # per variant: only the router's pods reach its engine pods
}


def _config(stage: str, percent: int, **overrides: Any) -> dict[str, Any]:
    return {**stack_config("k8s", stage, percent), "qinfra:api_key": API_KEY, **overrides}


@cache
def k8s(stage: str, percent: int) -> Run:
    return run_program("k8s", _config(stage, percent), ("qinfra:api_key",))


def plan(stage: str, percent: int) -> dict[str, Any]:
    spec = parse_config({**stack_config("k8s", stage, percent), "qinfra:api_key": PULUMI_HELD}, "k8s")
    return {v.name: v.chosen for v in plan_for(spec).variants}


def router_config(run: Run) -> dict[str, Any]:
    return json.loads(run.one(CONFIGMAP, "router").inputs["data"]["config.json"])


def route_weights(run: Run) -> dict[str, int]:
    """Weight per variant: what the router splits by (the route only reaches the router)."""
    percent = router_config(run)["quantized_percent"]
    return {"baseline": int(100 - percent), "quantized": int(percent)}


def engine(run: Run, variant: str) -> dict[str, Any]:
    pod = run.one(DEPLOYMENT, variant).inputs["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "engine")


@pytest.mark.parametrize(("stage", "percent"), STAGES)
def test_resources_per_stage(stage: str, percent: int) -> None:
    run = k8s(stage, percent)
    assert {t: len(run.of(t)) for t in INVENTORY} == INVENTORY
    assert {r.typ for r in run.resources} == set(INVENTORY)
    chosen = plan(stage, percent)
    for variant, option in chosen.items():
        deployment = run.one(DEPLOYMENT, f"k8s-{variant}").inputs
        assert deployment["metadata"]["name"] == f"qinfra-k8s-{variant}"
        assert deployment["metadata"]["namespace"] == "qinfra"
        assert deployment["spec"]["replicas"] == option.engines_total
        assert engine(run, variant)["resources"]["limits"]["nvidia.com/gpu"] == option.tensor_parallel_size
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": option.instance_type}
        assert pod["serviceAccountName"] == "qinfra-k8s"
        assert f"{STORE}/{PINS[variant]}/" in pod["initContainers"][0]["args"]
    assert "--quantization fp8" in run.one(CONFIGMAP, "quantized").inputs["data"]["serve.sh"]
    config = router_config(run)
    assert config["replicas"] == {v: [f"http://qinfra-k8s-{v}.qinfra.svc.cluster.local:8000"]
                                  for v in ("baseline", "quantized")}
    # The baseline is always sized for all traffic; the quantized Deployment is kept at zero.
    assert chosen["baseline"].engines_total >= 1
    assert (chosen["quantized"].engines_total == 0) == (percent == 0)
    assert route_weights(run) == {"baseline": 100 - percent, "quantized": percent}
    variants = run.exports["variants"]
    assert {v: variants[v]["weight_percent"] for v in variants} == route_weights(run)
    assert variants["quantized"]["endpoint"] == "http://qinfra-k8s-quantized.qinfra.svc.cluster.local:8000"
    assert run.exports["stage"] == stage and "endpoint" not in run.exports  # no hostname set


@pytest.mark.parametrize(("variant", "quantization", "dtype"), [
    ("baseline", None, "bfloat16"),   # bf16 weights
    ("quantized", "fp8", "auto"),     # FP8 checkpoint, vLLM's fp8 kernels
])
def test_pods_run_the_pinned_artifact_with_its_flags(variant: str, quantization: str | None,
                                                     dtype: str) -> None:
    run = k8s("gradual", 25)
    pod = run.one(DEPLOYMENT, variant).inputs["spec"]["template"]["spec"]
    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch-artifact")
    assert f"{STORE}/{PINS[variant]}/" in fetch["args"]
    assert engine(run, variant)["command"] == ["/bin/sh", "/opt/qinfra/bin/serve.sh"]
    scripts = run.one(CONFIGMAP, variant).inputs["data"]
    argv = launch_command(scripts["serve.sh"], "vllm")
    assert argv[2] == f"/opt/qinfra/models/{PINS[variant]}"
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags.get("--quantization") == quantization and flags["--dtype"] == dtype
    assert run.exports["variants"][variant]["artifact_uri"] == f"{STORE}/{PINS[variant]}/"


def test_api_key_secret_is_the_one_the_pods_read_and_stays_secret() -> None:
    run = k8s("gradual", 25)
    secret = run.one(SECRET).inputs
    assert secret["metadata"] == {"name": "qinfra-k8s-api-key", "namespace": "qinfra",
                                  "labels": {"app.kubernetes.io/managed-by": "qinfra"}}
    data = secret["stringData"]
    assert data["value"] == {"api-key": API_KEY} and len(data) == 2  # secret-wrapped
    for variant in PINS:
        pod = run.one(DEPLOYMENT, variant).inputs["spec"]["template"]["spec"]
        assert secret_refs(pod) == {("qinfra-k8s-api-key", "api-key")}
    others = [r for r in run.resources if r.typ != SECRET]
    assert not any(API_KEY in str(leaf) for r in others for leaf in walk(r.inputs))


def test_without_an_api_key_there_is_no_secret() -> None:
    run = run_program("k8s", stack_config("k8s", "gradual", 25))
    assert not run.of(SECRET)
    for variant in PINS:
        assert secret_refs(run.one(DEPLOYMENT, variant).inputs["spec"]["template"]["spec"]) == set()


def test_gateway_hostname_and_irsa_come_from_the_stack() -> None:
    settings = {"gateway": "public", "gateway_namespace": "gateways", "hostname": "llm.example.com",
                "service_account_role_arn": "arn:aws:iam::123456789012:role/qinfra-read-models"}
    run = run_program("k8s", _config("gradual", 25, **{"qinfra:kubernetes": settings}),
                      ("qinfra:api_key",))
    route = run.one(ROUTE).inputs
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "820s"}  # 8192 tokens at 10 tok/s
    account = run.one(ACCOUNT).inputs["metadata"]
    assert account["annotations"] == {"eks.amazonaws.com/role-arn": settings["service_account_role_arn"]}
    assert run.exports["endpoint"] == "http://llm.example.com"


def test_the_default_namespace_is_not_the_stacks_to_create() -> None:
    run = run_program("k8s", _config("gradual", 25, **{"kubernetes:namespace": "default"}),
                      ("qinfra:api_key",))
    assert not run.of(NAMESPACE)
    assert {r.inputs["metadata"]["namespace"] for r in run.of(DEPLOYMENT)} == {"default"}


def test_rollback_is_only_traffic_and_capacity() -> None:
    """ab_test -> rollback: the router ConfigMap's weight and the quantized replicas, nothing
    else; the pod templates (image, flags, artifacts) and the router pods stay as they were."""
    before, after = k8s("ab_test", 10), k8s("rollback", 0)
    assert changed(before, after) == {
        (CONFIGMAP, "qinfra-k8s-router-config"): [".data.config.json"],
        (DEPLOYMENT, "qinfra-k8s-quantized"): [".spec.replicas"],
    }
    old, new = router_config(before), router_config(after)
    assert {k for k in old if old[k] != new[k]} == {"quantized_percent"}
    assert route_weights(after) == {"baseline": 100, "quantized": 0}
    assert after.one(DEPLOYMENT, "quantized").inputs["spec"]["replicas"] == 0
    exported = changes(before.exports, after.exports)
    assert [c for c in exported if not c.startswith(".plan.")] == [
        ".stage", ".variants.baseline.weight_percent", ".variants.quantized.replicas",
        ".variants.quantized.weight_percent"]
    # the recorded plan (what a later preview compares with): the router's weights, the
    # quantized fleet sized for none
    assert [c for c in exported if c.startswith(".plan.")] == [
        ".plan.router.baseline_percent", ".plan.router.quantized_percent",
        ".plan.usd_per_hour", *(f".plan.variants.quantized.{k}" for k in (
            "engines", "gpus", "machines", "sized_for_percent", "usd_per_hour"))]


def test_the_route_reaches_only_the_router() -> None:
    run = k8s("gradual", 25)
    (rule,) = run.one(ROUTE).inputs["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": "qinfra-k8s-router", "port": 80}]
    service = run.one(SERVICE, "router").inputs["spec"]
    assert service["ports"][0]["port"] == 80 and service["ports"][0]["targetPort"] == "http"


def test_only_the_router_pods_reach_the_engine_pods() -> None:
    run = k8s("gradual", 25)
    router = run.one(DEPLOYMENT, "router").inputs["spec"]["selector"]["matchLabels"]
    for variant in ("baseline", "quantized"):
        deployment = run.one(DEPLOYMENT, f"k8s-{variant}").inputs
        policy = run.one(NETPOL, variant).inputs
        assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        spec = policy["spec"]
        # it selects exactly this variant's engine pods, and only ingress is restricted
        assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": router}}]  # no namespace: this one
        (port,) = rule["ports"]
        assert port["port"] == "http" and any(
            p["name"] == "http" for p in engine(run, variant)["ports"])
    # the router's own pods take traffic from the gateway: no policy selects them
    assert all(p.inputs["spec"]["podSelector"]["matchLabels"] != router for p in run.of(NETPOL))


def test_router_deployment_is_replicated_probed_and_reloads_its_config() -> None:
    run = k8s("gradual", 25)
    deployment = run.one(DEPLOYMENT, "router").inputs
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (router,) = pod["containers"]
    assert router["image"] == ROUTER_IMAGE  # by digest
    assert router["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert set(router["resources"]["requests"]) == {"cpu", "memory"}
    # the whole ConfigMap mounted as a folder (no subPath), so the kubelet updates it in place
    (mount,) = router["volumeMounts"]
    assert "subPath" not in mount and mount["mountPath"] == "/etc/qinfra/router"
    assert router["command"][router["command"].index("--config") + 1] == "/etc/qinfra/router/config.json"
    assert pod["volumes"][0]["configMap"]["name"] == "qinfra-k8s-router-config"
    budget = run.one(PDB, "router").inputs["spec"]
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(("stage", "percent"), STAGES)
def test_router_config_is_the_rollout(stage: str, percent: int) -> None:
    assert router_config(k8s(stage, percent))["quantized_percent"] == percent


def test_a_weight_change_replaces_no_pod() -> None:
    """Every Deployment's pod template stays as it was when the weights change."""
    before, after = k8s("ab_test", 10), k8s("gradual", 25)
    for key, paths in changed(before, after).items():
        assert key[0] != DEPLOYMENT or paths == [".spec.replicas"], (key, paths)
    assert (CONFIGMAP, "qinfra-k8s-router-config") in changed(before, after)
