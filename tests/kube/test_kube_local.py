"""scripts/kube-local.sh: a real control plane on loopback whose kwok GPU nodes take GPU pods.

kwok fakes the nodes and the pods' status (no container runs); the API server, admission, the
scheduler's GPU accounting and the Deployment controller are Kubernetes' own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import (
    BIN,
    BINARIES,
    ROOT,
    ApiError,
    KubeCluster,
    pid_alive,
    recorded_pids,
    require_binaries,
    run_script,
    wait_until,
)

CATALOG = tomllib.loads((ROOT / "qinfra" / "core" / "data" / "instances.toml").read_text())
GPU_TYPES: dict[str, dict[str, Any]] = CATALOG["types"]
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
INSTANCE_TYPE = "node.kubernetes.io/instance-type"

pytestmark = pytest.mark.real


def gpu_deployment(name: str, replicas: int, instance_type: str) -> dict[str, Any]:
    """A Deployment shaped like qinfra's engine pods: instance-type selector, the GPU
    toleration and one whole GPU per pod."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "nodeSelector": {INSTANCE_TYPE: instance_type},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                 "effect": "NoSchedule"}],
                "containers": [{"name": "engine", "image": "vllm/vllm-openai:v0.11.0",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}


def test_api_server_answers_with_its_version(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.get("/readyz") == "ok"
    assert kube_cluster.get("/version")["gitVersion"] == "v1.34.2"
    # the token is the one identity; no token, no answer
    assert kube_cluster.kubeconfig.stat().st_mode & 0o077 == 0


def test_gpu_nodes_are_ready_with_their_catalog_gpus(kube_cluster: KubeCluster) -> None:
    nodes = kube_cluster.get("/api/v1/nodes?labelSelector=type%3Dkwok")["items"]
    gpu_nodes = [n for n in nodes if n["metadata"]["labels"][INSTANCE_TYPE] in GPU_TYPES]
    # the default QINFRA_KUBE_NODES: two L4 (g6.xlarge) and two L40S (g6e.xlarge) nodes
    assert sorted(n["metadata"]["labels"][INSTANCE_TYPE] for n in gpu_nodes) == [
        "g6.xlarge", "g6.xlarge", "g6e.xlarge", "g6e.xlarge"]
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
    for node in gpu_nodes:
        row = GPU_TYPES[node["metadata"]["labels"][INSTANCE_TYPE]]
        assert node["status"]["capacity"]["nvidia.com/gpu"] == str(row["gpus"])
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(row["gpus"])
        assert node["metadata"]["labels"]["qinfra/gpu"] == row["gpu"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in [
            {k: t[k] for k in ("key", "value", "effect")} for t in node["spec"]["taints"]]


def test_two_gpu_replicas_become_available_one_per_gpu(kube_cluster: KubeCluster) -> None:
    ns = "gpu-deploy"
    kube_cluster.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    try:
        _two_gpu_replicas(kube_cluster, ns)
    finally:  # the cluster is the session's: give its GPUs back to the tests after this one
        _delete_namespace(kube_cluster, ns)


def _delete_namespace(kube_cluster: KubeCluster, ns: str) -> None:
    kube_cluster.request("DELETE", f"/api/v1/namespaces/{ns}")
    wait_until(f"namespace {ns} gone", lambda: not _exists(kube_cluster, f"/api/v1/namespaces/{ns}"))


def _two_gpu_replicas(kube_cluster: KubeCluster, ns: str) -> None:
    # admission needs the namespace's default service account (the controller makes it)
    wait_until("default service account", lambda: _exists(
        kube_cluster, f"/api/v1/namespaces/{ns}/serviceaccounts/default"))
    base = f"/apis/apps/v1/namespaces/{ns}/deployments"
    kube_cluster.create(base, gpu_deployment("engine", 2, "g6.xlarge"))
    available = wait_until("2 available replicas", lambda: (
        kube_cluster.get(f"{base}/engine")["status"].get("availableReplicas") == 2))
    assert available
    pods = kube_cluster.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Dengine")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running", "Running"]
    # a g6.xlarge node has one GPU: the scheduler put the two pods on two nodes
    assert len({p["spec"]["nodeName"] for p in pods}) == 2

    # A third GPU pod has no GPU left on the two L4 nodes: it stays Pending, unschedulable.
    kube_cluster.request("PATCH", f"{base}/engine", {"spec": {"replicas": 3}},
                         content_type="application/merge-patch+json")

    def unschedulable() -> str | None:
        for pod in kube_cluster.get(
                f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Dengine")["items"]:
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return str(cond.get("message"))
        return None

    assert "Insufficient nvidia.com/gpu" in wait_until("an unschedulable third pod", unschedulable)


WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.qinfra.dev
spec:
  group: example.qinfra.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def test_start_twice_is_a_no_op_and_stop_ends_every_process(tmp_path: Path) -> None:
    require_binaries()
    kube_dir = tmp_path / "kube"
    # Its CRDs from QINFRA_KUBE_CRDS (the Gateway API's in .tools/kube/crds by default).
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "widgets.yaml").write_text(WIDGET_CRD)
    first = run_script("start", kube_dir, env={"QINFRA_KUBE_CRDS": str(crds),
                                               "QINFRA_KUBE_NODES": "g5.xlarge=1"})
    assert first.returncode == 0, first.stderr[-4000:]
    pids = recorded_pids(kube_dir)
    assert sorted(pids) == sorted(COMPONENTS)
    try:
        cluster = KubeCluster.from_dir(kube_dir)
        crd = cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                          "widgets.example.qinfra.dev")
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
        nodes = cluster.get("/api/v1/nodes")["items"]
        assert [(n["metadata"]["name"], n["status"]["capacity"]["nvidia.com/gpu"]) for n in nodes] == [
            ("kwok-a10g-g5-xlarge-0", "1")]
        again = run_script("start", kube_dir)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "already running" in again.stderr
        assert recorded_pids(kube_dir) == pids
        assert run_script("status", kube_dir).returncode == 0
    finally:
        stopped = run_script("stop", kube_dir)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert {name: pid for name, pid in pids.items() if pid_alive(pid)} == {}
    assert recorded_pids(kube_dir) == {}
    assert run_script("status", kube_dir).returncode == 1


def test_stop_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    # Fault: a stale pid file whose pid now belongs to another program.
    kube_dir = tmp_path / "kube"
    (kube_dir / "pids").mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (kube_dir / "pids" / "kube-apiserver.pid").write_text(f"{other.pid}\n")
        stopped = run_script("stop", kube_dir)
        assert stopped.returncode == 0, stopped.stderr
        assert other.poll() is None, "stop signalled a process that is not kube-apiserver"
        assert not (kube_dir / "pids" / "kube-apiserver.pid").exists()
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("missing", ["kwok", "etcd"])
def test_start_fails_naming_a_missing_binary_and_its_build(tmp_path: Path, missing: str) -> None:
    # Fault: a control-plane binary not built; the others are the real ones (linked).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in BINARIES:
        if name != missing and (BIN / name).exists():
            os.symlink(BIN / name, bin_dir / name)
    result = run_script("start", tmp_path / "kube", env={"QINFRA_KUBE_BIN": str(bin_dir)})
    assert result.returncode == 1
    assert f"missing {bin_dir}/{missing}" in result.stderr
    assert "scripts/install-kube.sh" in result.stderr
    assert not (tmp_path / "kube" / "pids").exists() or recorded_pids(tmp_path / "kube") == {}


def _exists(cluster: KubeCluster, path: str) -> bool:
    try:
        cluster.get(path)
    except ApiError as err:
        if err.status == 404:  # not yet
            return False
        raise
    return True


def test_a_start_that_fails_part_way_leaves_nothing_running(tmp_path: Path) -> None:
    # Fault: a node type the catalog does not have; it is found after the processes started.
    require_binaries()
    kube_dir = tmp_path / "kube"
    result = run_script("start", kube_dir, env={"QINFRA_KUBE_NODES": "z9.huge=1"})
    assert result.returncode == 1
    assert "'z9.huge=1' is not <instance-type>=<count>" in result.stderr
    assert "start failed: stopping what it started" in result.stderr
    assert recorded_pids(kube_dir) == {}
    assert not [line for line in subprocess.run(
        ["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout.splitlines()
        if str(kube_dir) in line]
