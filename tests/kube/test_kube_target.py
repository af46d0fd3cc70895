"""The kubernetes target applied for real: `qinfra up | rollback | destroy --stack k8s-local`
against the local control plane (scripts/kube-local.sh), through the real Pulumi CLI and the
Pulumi Kubernetes provider, read back from the API server.

The API server, its validation and defaults, admission, the scheduler's GPU accounting and the
Deployment controller are Kubernetes' own, and the provider's await logic (a Deployment counts
once its replicas are available) really runs. The nodes and the pods are kwok's: NO CONTAINER
RUNS; kwok marks a scheduled pod Running and Ready without pulling its image, so the engines'
probes, the artifact fetch and the router's weights file are not exercised here.

The stack is stacks/Pulumi.k8s-local.yaml as shipped, in a throwaway project whose
.qinfra/kube is the session's cluster and whose .qinfra/models is what
scripts/tiny-vllm-model.py writes; the artifacts go to the moto S3 server. The tests run in
order: each starts from the state the one before left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.kube.cluster import ROOT, ApiError, KubeCluster
from tests.local_stack import entered, qinfra

pytestmark = pytest.mark.real

STACK = "k8s-local"
SHIPPED = ROOT / "stacks" / f"Pulumi.{STACK}.yaml"
MODEL_SCRIPT = ROOT / "scripts" / "tiny-vllm-model.py"
PROVIDER = ROOT / ".tools" / "pulumi" / "bin" / "pulumi-resource-kubernetes"
NS = "qinfra-local"
PREFIX = f"qinfra-{STACK}"
BUCKET = "qinfra-kube-local"
MANAGED = "app.kubernetes.io%2Fmanaged-by%3Dqinfra"
# What the stack makes in its namespace, by API path: the collection and its object names.
OBJECTS = {
    f"/apis/apps/v1/namespaces/{NS}/deployments": (
        f"{PREFIX}-baseline", f"{PREFIX}-quantized", f"{PREFIX}-router"),
    f"/api/v1/namespaces/{NS}/services": (
        f"{PREFIX}-baseline", f"{PREFIX}-quantized", f"{PREFIX}-router"),
    f"/api/v1/namespaces/{NS}/configmaps": (
        f"{PREFIX}-baseline-scripts", f"{PREFIX}-quantized-scripts", f"{PREFIX}-router-config"),
    f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets": (
        f"{PREFIX}-baseline", f"{PREFIX}-quantized", f"{PREFIX}-router"),
    f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies": (
        f"{PREFIX}-baseline-from-router", f"{PREFIX}-quantized-from-router"),
    f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes": (PREFIX,),
    f"/api/v1/namespaces/{NS}/serviceaccounts": (PREFIX,),
}
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
ROUTER_CONFIG = f"{CONFIGMAPS}/{PREFIX}-router-config"


@dataclass(frozen=True)
class Project:
    """The throwaway project and the cluster it deploys to."""

    root: Path
    cluster: KubeCluster

    @property
    def stack_file(self) -> Path:
        return self.root / "stacks" / f"Pulumi.{STACK}.yaml"

    def edit(self, **config: Any) -> None:
        """Set (or with None remove) top-level stack config keys, comments kept."""
        yaml = YAML()
        doc = yaml.load(self.stack_file.read_text())
        for key, value in config.items():
            if value is None:
                doc["config"].pop(key, None)
            else:
                doc["config"][key] = value
        with self.stack_file.open("w") as out:
            yaml.dump(doc, out)


def require_provider() -> None:
    """Fail (never skip) naming the Pulumi Kubernetes provider and its build."""
    if not os.access(PROVIDER, os.X_OK):
        pytest.fail(f"the Pulumi Kubernetes provider is missing: no {PROVIDER}. To fix: run "
                    "scripts/install-kube-provider.sh (builds it from the Go module proxy)",
                    pytrace=False)


@pytest.fixture(scope="module")
def project(kube_cluster: KubeCluster, s3_server: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The shipped stack in a throwaway project (README's steps: the cluster's kubeconfig at
    .qinfra/kube, the tiny model written by the script, an S3 endpoint with the bucket), entered
    for the module; destroyed at the end whatever the tests left."""
    import boto3

    require_provider()
    root = tmp_path_factory.mktemp("k8s-project")
    (root / "Pulumi.yaml").write_text(
        "name: qinfra\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {ROOT / '.venv'}\nmain: {ROOT / 'qinfra' / 'deploy' / 'program.py'}\n"
        "stackConfigDir: stacks\n")
    (root / "stacks").mkdir()
    shutil.copy(SHIPPED, root / "stacks")
    (root / ".qinfra").mkdir()
    (root / ".qinfra" / "kube").symlink_to(kube_cluster.kube_dir)
    subprocess.run([sys.executable, str(MODEL_SCRIPT), str(root / ".qinfra" / "models")],
                   check=True, timeout=120, capture_output=True)
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(root / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
           "KUBECONFIG": str(root / ".qinfra" / "kube" / "kubeconfig"),
           "HF_HUB_OFFLINE": "1"}
    with entered(root, env, destroy=False):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        try:
            yield Project(root, kube_cluster)
        finally:
            qinfra("destroy", "--stack", STACK, "--yes")


def snapshot(cluster: KubeCluster) -> dict[str, tuple[str, str]]:
    """Every object of the stack: path -> (uid, what changes with its desired state): the
    generation where the kind has one (controllers' status writes, such as the disruption
    controller counting pods, bump only the resourceVersion), else the resourceVersion."""
    out = {}
    for collection, names in OBJECTS.items():
        for name in names:
            meta = cluster.get(f"{collection}/{name}")["metadata"]
            out[f"{collection}/{name}"] = (meta["uid"],
                                           str(meta.get("generation", meta["resourceVersion"])))
    return out


def router_weights(cluster: KubeCluster) -> dict[str, Any]:
    return json.loads(cluster.get(ROUTER_CONFIG)["data"]["config.json"])


def deployment(cluster: KubeCluster, variant: str) -> dict[str, Any]:
    return cluster.get(f"{DEPLOYMENTS}/{PREFIX}-{variant}")


def available(cluster: KubeCluster, variant: str) -> int:
    return int(deployment(cluster, variant)["status"].get("availableReplicas") or 0)


def summary(result: Any) -> dict[str, int]:
    assert result.exit_code == 0, result.output[-4000:]
    return dict(json.loads(result.stdout)["summary"])


def test_up_creates_every_object_and_waits_for_the_deployments(project: Project) -> None:
    up = qinfra("up", "--stack", STACK, "--yes")
    assert up.exit_code == 0, up.output[-4000:]
    cluster = project.cluster
    snapshot(cluster)  # every object exists (a 404 raises ApiError)
    # `up` returned only once the provider saw each Deployment's replicas available.
    for variant, replicas in (("baseline", 1), ("quantized", 1), ("router", 2)):
        made = deployment(cluster, variant)
        assert made["spec"]["replicas"] == replicas, variant
        assert made["status"]["availableReplicas"] == replicas, variant
    # The engines sit on the nodes the plan chose, one whole GPU each (the scheduler's work).
    pods = cluster.get(f"/api/v1/namespaces/{NS}/pods?labelSelector="
                       "app.kubernetes.io%2Fname%3Dqinfra-engine")["items"]
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(pods) == 2 and len(nodes) == 2 and all("g6-xlarge" in n for n in nodes), nodes
    assert router_weights(cluster)["quantized_percent"] == 10
    route = cluster.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/{PREFIX}")
    assert route["spec"]["parentRefs"][0]["name"] == "qinfra"
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == f"{PREFIX}-router"
    # The pins are what the tiny model makes: `up` pushed them to the store unchanged.
    assert project.stack_file.read_text() == SHIPPED.read_text()


def test_a_second_up_changes_nothing(project: Project) -> None:
    cluster = project.cluster
    versions = {path: cluster.get(path)["metadata"]["resourceVersion"] for path in snapshot(cluster)}
    again = summary(qinfra("up", "--stack", STACK, "--yes", "--json"))
    assert set(again) == {"same"}, again
    # not even a status write: no object was touched
    assert {path: cluster.get(path)["metadata"]["resourceVersion"] for path in versions} == versions


def test_rollback_moves_the_weights_and_scales_the_quantized_deployment_to_zero(
        project: Project) -> None:
    cluster = project.cluster
    before = snapshot(cluster)
    changes = summary(qinfra("rollback", "--stack", STACK, "--yes", "--json"))
    assert router_weights(cluster)["quantized_percent"] == 0
    # updated in place: the router's ConfigMap, the quantized Deployment and the gate's
    # evidence (its quantized share); nothing replaced, made or deleted
    assert set(changes) == {"same", "update"} and changes["update"] == 3, changes
    assert deployment(cluster, "quantized")["spec"]["replicas"] == 0
    assert available(cluster, "baseline") == 1
    after = snapshot(cluster)
    changed = {path for path in before if after[path] != before[path]}
    assert changed == {ROUTER_CONFIG, f"{DEPLOYMENTS}/{PREFIX}-quantized"}
    # updated in place: the same objects (the router pods keep their mounted ConfigMap)
    assert all(after[path][0] == before[path][0] for path in before)


def test_an_unready_deployment_fails_up_naming_it_and_the_stack_recovers(
        project: Project) -> None:
    # Fault: the baseline needs more L4 nodes than the cluster has (600 sequences at 256 per
    # engine: 3 replicas; 2 g6.xlarge nodes, the quantized variant at zero since the rollback);
    # its third pod stays Pending. The planner accepts it; only the provider's await can tell,
    # bounded by the stack's ready_timeout_s.
    cluster = project.cluster
    original = project.stack_file.read_text()
    project.edit(**{"qinfra:serving": {"engine": "vllm", "max_model_len": 1024,
                                       "concurrency": 600},
                    "qinfra:kubernetes": {"gateway": "qinfra", "ready_timeout_s": 20}})
    failed = qinfra("up", "--stack", STACK, "--yes", "--json")
    assert failed.exit_code == 1, failed.output[-4000:]
    assert f"{PREFIX}-baseline" in failed.output, failed.output[-4000:]
    assert "timed out waiting to be Ready" in failed.output, failed.output[-4000:]
    # What was serving still serves; the pod that found no GPU waits.
    assert deployment(cluster, "baseline")["spec"]["replicas"] == 3
    assert available(cluster, "baseline") == 2
    pending = [c.get("message", "") for p in cluster.get(
        f"/api/v1/namespaces/{NS}/pods?fieldSelector=status.phase%3DPending")["items"]
        for c in p["status"].get("conditions", []) if c.get("reason") == "Unschedulable"]
    assert len(pending) == 1 and "Insufficient nvidia.com/gpu" in pending[0], pending
    status = qinfra("status", "--stack", STACK, "--json")
    assert status.exit_code == 0, status.output[-2000:]
    history = qinfra("history", "--stack", STACK, "--json")
    assert history.exit_code == 0, history.output[-2000:]
    assert json.loads(history.stdout)[0]["result"] == "failed", history.stdout[:2000]

    project.stack_file.write_text(original)
    fixed = summary(qinfra("up", "--stack", STACK, "--yes", "--json"))
    assert fixed.get("update", 0) >= 1, fixed
    made = deployment(cluster, "baseline")
    assert made["spec"]["replicas"] == 1 and made["status"]["availableReplicas"] == 1


def test_destroy_removes_everything(project: Project) -> None:
    cluster = project.cluster
    done = qinfra("destroy", "--stack", STACK, "--yes")
    assert done.exit_code == 0, done.output[-4000:]
    for collection, names in OBJECTS.items():
        for name in names:
            with pytest.raises(ApiError) as gone:
                cluster.get(f"{collection}/{name}")
            assert gone.value.status == 404, f"{collection}/{name}"
    try:
        namespace = cluster.get(f"/api/v1/namespaces/{NS}")
    except ApiError as err:
        assert err.status == 404
    else:
        assert namespace["status"]["phase"] == "Terminating"
    assert cluster.get(f"/apis/apps/v1/deployments?labelSelector={MANAGED}")["items"] == []


# --- without the cluster: the await timeout's source, and the tiny model's bytes -------------


@pytest.mark.parametrize(("setting", "default_s", "expected"), [
    (None, 1234, "1234s"),   # an engine: its boot budget + 300 s
    (None, None, None),      # the router: the provider's own 10 minutes
    (20, 1234, "20s"),       # the stack's qinfra:kubernetes.ready_timeout_s wins for both
    (20, None, "20s"),
])
def test_ready_timeout_comes_from_the_stack_or_the_boot_budget(
        setting: int | None, default_s: int | None, expected: str | None) -> None:
    from qinfra.core.spec import load_stack
    from qinfra.deploy.targets.kubernetes import ready_timeout

    spec = load_stack(STACK)
    spec = spec.model_copy(update={"kubernetes": spec.kubernetes.model_copy(
        update={"ready_timeout_s": setting})})
    assert ready_timeout(spec, default_s) == expected


@pytest.mark.parametrize("value", [5, 0, 86_401, "20"])
def test_ready_timeout_out_of_range_is_refused_naming_the_key(value: object) -> None:
    from qinfra.core.errors import SpecError
    from qinfra.core.spec import parse_config

    config = YAML(typ="safe").load(SHIPPED.read_text())["config"]
    config["qinfra:kubernetes"] = {"ready_timeout_s": value}
    with pytest.raises(SpecError, match=r"kubernetes\.ready_timeout_s"):
        parse_config(config, STACK)


def _tensors(path: Path) -> dict[str, tuple[dict[str, Any], bytes]]:
    """A .safetensors file read by its specification: name -> (header entry, bytes)."""
    import struct

    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]
    return {name: (entry, body[entry["data_offsets"][0]:entry["data_offsets"][1]])
            for name, entry in header.items() if name != "__metadata__"}


def test_the_tiny_fp8_checkpoint_holds_the_bf16_weights(tmp_path: Path) -> None:
    import numpy as np

    subprocess.run([sys.executable, str(MODEL_SCRIPT), str(tmp_path)], check=True, timeout=120)
    bf16 = _tensors(tmp_path / "qinfra-tiny-llama-bf16" / "model.safetensors")
    fp8 = _tensors(tmp_path / "qinfra-tiny-llama-fp8" / "model.safetensors")
    config = json.loads((tmp_path / "qinfra-tiny-llama-fp8" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "fp8"
    # float8_e4m3fn decoded by its definition: 1 sign, 4 exponent (bias 7), 3 mantissa bits
    codes = np.arange(256)
    exp, man = (codes >> 3) & 15, codes & 7
    table = np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp - 7))
    table = np.where(codes & 0x80, -table, table)
    name = "model.layers.0.mlp.down_proj.weight"
    entry, raw = bf16[name]
    assert entry["dtype"] == "BF16"
    reference = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view("<f4")
    entry, raw = fp8[name]
    assert entry["dtype"] == "F8_E4M3" and entry["shape"] == [64, 128]
    scale = np.frombuffer(fp8[name.replace("weight", "weight_scale")][1], "<f4")[0]
    decoded = table[np.frombuffer(raw, np.uint8)] * scale
    # 3 mantissa bits: within half a step (1/16 relative) of the weight, plus the bf16 rounding
    assert np.allclose(decoded, reference, rtol=1 / 16 + 2**-8, atol=scale * 2.0**-9)
    assert fp8["lm_head.weight"][0]["dtype"] == "BF16"  # ignored_layers keep 16 bits


def test_a_stack_whose_provider_replaces_configmaps_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault: the provider's default, found against the real API server: a rollback replaced the
    # router's ConfigMap (a new object) instead of editing its weights. The mocks cannot show it.
    from qinfra.core.errors import DeployError
    from qinfra.deploy.targets.kubernetes import CONFIGMAP_MUTABLE_ENV, CONFIGMAP_MUTABLE_KEY
    from tests.targets.mocks import run_program, stack_config

    monkeypatch.delenv(CONFIGMAP_MUTABLE_ENV, raising=False)
    config = stack_config("k8s", "gradual", 25)
    assert config.pop(CONFIGMAP_MUTABLE_KEY) == "true"  # as shipped
    with pytest.raises(DeployError, match=r"kubernetes:enableConfigMapMutable: \"true\""):
        run_program("k8s", config)
    monkeypatch.setenv(CONFIGMAP_MUTABLE_ENV, "true")  # the provider's environment switch
    assert run_program("k8s", config).of("kubernetes:apps/v1:Deployment")
