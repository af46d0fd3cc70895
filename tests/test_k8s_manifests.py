"""kubernetes target: manifests pass the Kubernetes OpenAPI schema (strict: no unknown fields),
and say what the plan says (GPUs, instance type, replicas, start-up budget, pinned images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qinfra.core.formats import VLLM_VERSION
from qinfra.serving.render import LLAMA_CPP_BUILD, PROBE_PERIOD_S, render_stack
from tests.render_helpers import example, load_yaml, plan_for, vllm_stack, with_api_key

try:  # the Kubernetes JSON schemas, offline; a missing part fails, as every real part does
    import kubernetes_validate
except ImportError:
    pytest.fail(
        "kubernetes-validate not found: run scripts/setup.sh (or `pip install -e '.[test]'`)",
        pytrace=False,
    )

# The oldest Kubernetes release the manifests must load on (EKS standard support, 2026).
KUBERNETES_VERSION = "1.31"


def _renders() -> dict[str, dict[Path, str]]:
    spec, plan = example("k8s")
    llama_gpu = vllm_stack("kubernetes", "gguf-f16", "gguf-q8_0", ["l4"], engine="llama.cpp")
    return {
        "k8s": render_stack(spec, plan),
        "k8s-api-key": render_stack(with_api_key(spec), plan),
        "llama.cpp-gpu": render_stack(llama_gpu, plan_for(llama_gpu)),
    }


RENDERS = _renders()
DOCUMENTS = [(f"{label}/{rel}", text) for label, files in RENDERS.items() for rel, text in files.items()]


@pytest.mark.parametrize(("name", "text"), DOCUMENTS, ids=[n for n, _ in DOCUMENTS])
def test_manifest_passes_the_kubernetes_schema(name, text):
    doc = load_yaml(text)
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_is_live():
    doc = load_yaml(RENDERS["k8s"][Path("baseline", "deployment.yaml")])
    doc["spec"]["template"]["spec"]["containers"][0]["startupprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _objects(files: dict[Path, str], variant: str) -> dict[str, dict]:
    return {
        load_yaml(text)["kind"]: load_yaml(text) for rel, text in files.items() if rel.parts[0] == variant
    }


@pytest.mark.parametrize("variant", ["baseline", "quantized"])
def test_deployment_says_what_the_plan_says(variant):
    spec, plan = example("k8s")
    chosen = plan.variant(variant).chosen
    objs = _objects(RENDERS["k8s"], variant)
    deployment = objs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert deployment["spec"]["replicas"] == chosen.engines_total
    assert engine["image"] == f"vllm/vllm-openai:v{VLLM_VERSION}"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == chosen.tensor_parallel_size
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": chosen.instance_type}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # Fetch, then verify, before the engine; the engine reads the artifact read-only.
    init = pod["initContainers"]
    assert [c["name"] for c in init] == ["fetch-artifact", "verify-artifact"]
    assert init[0]["args"][-2] == getattr(spec.variants, variant).artifact
    assert init[1]["command"] == ["/bin/sh", "/opt/qinfra/bin/verify-artifact.sh"]
    assert all(":" in c["image"] and not c["image"].endswith(":latest") for c in [*init, engine])
    # Ready only after the warm-up completion; health on /health.
    assert engine["startupProbe"]["exec"]["command"] == ["/bin/sh", "/opt/qinfra/bin/warmup.sh", "--once"]
    assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert engine["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # Service and PodDisruptionBudget select exactly the Deployment's pods.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert objs["Service"]["spec"]["selector"] == selector
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert objs["ConfigMap"]["metadata"]["name"] == pod["volumes"][1]["configMap"]["name"]
    assert set(objs["ConfigMap"]["data"]) == {"serve.sh", "verify-artifact.sh", "warmup.sh"}
    assert {o["metadata"]["namespace"] for o in objs.values()} == {"qinfra"}


def test_startup_budget_grows_with_the_artifact():
    """bf16 (16 GB) gets more start-up probes than fp8 (9 GB); both cover the weights' read time."""
    _, plan = example("k8s")
    threshold = {}
    for variant in ("baseline", "quantized"):
        probe = _objects(RENDERS["k8s"], variant)["Deployment"]["spec"]["template"]["spec"]["containers"][0][
            "startupProbe"
        ]
        threshold[variant] = probe["failureThreshold"]
        weights = plan.variant(variant).chosen.engine_plan.weight_bytes
        assert probe["failureThreshold"] * probe["periodSeconds"] >= weights / (125 * 2**20)
    assert threshold["baseline"] > threshold["quantized"]


def test_llama_cpp_pod_runs_the_pinned_server_image():
    objs = _objects(RENDERS["llama.cpp-gpu"], "baseline")
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert engine["image"] == f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{LLAMA_CPP_BUILD}"
    assert {"name": "LLAMA_SERVER", "value": "/app/llama-server"} in engine["env"]
    assert engine["command"] == ["/bin/sh", "/opt/qinfra/bin/server.sh"]
    assert "dshm" not in [v["name"] for v in pod["volumes"]]  # vLLM only
    assert engine["startupProbe"]["periodSeconds"] == PROBE_PERIOD_S


def _scripts_digest(spec) -> dict[str, str]:
    files = render_stack(spec, plan_for(spec))
    return {v: _objects(files, v)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
            ["qinfra/scripts-sha256"] for v in ("baseline", "quantized")}


def test_a_flag_change_rolls_the_pods_and_a_weight_change_does_not():
    """The scripts ConfigMap is edited in place; the Deployment rolls its pods only when its pod
    template changes, so the template carries the scripts' digest (fault: a changed
    max_model_len that reached the ConfigMap but no running engine)."""
    spec, _ = example("k8s")
    before = _scripts_digest(spec)
    longer = spec.model_copy(update={"serving": spec.serving.model_copy(update={"max_model_len": 4096})})
    after = _scripts_digest(longer)
    assert all(before[v] != after[v] for v in before)
    rollback = spec.model_copy(update={"rollout": spec.rollout.model_copy(
        update={"stage": "rollback", "quantized_percent": 0})})
    assert _scripts_digest(rollback) == before
