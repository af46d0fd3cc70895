"""The Pulumi Kubernetes provider scripts/install-kube-provider.sh builds: the real Pulumi CLI,
run with the environment qinfra's Deployer gives it, finds it on PATH (whatever PULUMI_HOME is),
and a one-ConfigMap program goes up to and down from the local control plane through it."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from qinfra.deploy.engine import Deployer
from qinfra.deploy.project import BACKEND_ENV, Project
from qinfra.deploy.targets.kubernetes import GATEWAY_API
from tests.kube.cluster import ROOT, ApiError, KubeCluster
from tests.local_stack import free_ports

pytestmark = pytest.mark.real

PLUGIN = "pulumi-resource-kubernetes"
PROVIDER = ROOT / ".tools" / "kube" / "provider" / PLUGIN
INSTALL_COMMAND = "scripts/install-kube-provider.sh"
CLI_TIMEOUT_S = 300
NAMESPACE = "default"


def sdk_plugin_version() -> str:
    """The provider version the pulumi_kubernetes SDK asks the engine for."""
    import importlib.resources

    spec = importlib.resources.files("pulumi_kubernetes") / "pulumi-plugin.json"
    return str(json.loads(spec.read_text())["version"])


def require_provider() -> Path:
    """Fail (never skip) when the provider is not built, naming it and its build."""
    if not os.access(PROVIDER, os.X_OK):
        pytest.fail(f"Pulumi Kubernetes provider: {PROVIDER} is missing. To fix: run "
                    f"{INSTALL_COMMAND} (builds it from the Go module proxy, 15-30 min the first "
                    "time)", pytrace=False)
    return PROVIDER


@pytest.fixture
def qinfra_env(tmp_path: Path) -> dict[str, str]:
    """What qinfra's Deployer runs the CLI with, with a fresh file backend and an empty
    PULUMI_HOME (no plugin cache: only PATH can supply the provider)."""
    require_provider()
    deployer = Deployer("kube-provider", project=Project.find(ROOT), env={
        BACKEND_ENV: f"file://{tmp_path / 'state'}",
        "PULUMI_HOME": str(tmp_path / "pulumi-home"),
    })
    (tmp_path / "state").mkdir()
    return deployer.env()


def pulumi_cli() -> Path:
    return Project.find(ROOT).tools_bin / "pulumi"


# The probe program, run by the real language host in its own process as qinfra's program is.
PROGRAM = """\
import pulumi
import pulumi_kubernetes as k8s

config = pulumi.Config()
provider = k8s.Provider("local", kubeconfig=config.require("kubeconfig"))
k8s.core.v1.ConfigMap(
    "probe", metadata={"name": config.require("name"), "namespace": config.require("namespace")},
    data={"qinfra": "kube-provider"}, opts=pulumi.ResourceOptions(provider=provider))
"""


def probe_stack(env: dict[str, str], work_dir: Path, kubeconfig: str, name: str,
                cli_root: Path | None = None) -> Any:
    """The one-ConfigMap project in `work_dir`, its stack run by the real CLI (qinfra's, or
    the one in `cli_root`/bin) with `env`. The Automation API puts that CLI's own folder first
    on PATH, as it does for qinfra's Deployer."""
    from pulumi import automation as auto

    (work_dir / "Pulumi.yaml").write_text(
        "name: kube-provider-probe\nruntime:\n  name: python\n  options:\n"
        f"    toolchain: pip\n    virtualenv: {ROOT / '.venv'}\n")
    (work_dir / "__main__.py").write_text(PROGRAM)
    root = cli_root or pulumi_cli().parent.parent
    workspace = auto.LocalWorkspace(
        work_dir=str(work_dir), env_vars=env,
        pulumi_command=auto.PulumiCommand(root=str(root), skip_version_check=True))
    stack = auto.Stack.create_or_select("probe", workspace)
    stack.set_all_config({"kubeconfig": auto.ConfigValue(kubeconfig),
                          "name": auto.ConfigValue(name),
                          "namespace": auto.ConfigValue(NAMESPACE)})
    return stack


def unreachable_kubeconfig() -> tuple[str, int]:
    """A kubeconfig whose API server is a closed loopback port, and that port."""
    port = free_ports(1)
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "nobody", "user": {"token": "none"}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
    }), port


def loaded_from_path(output: str) -> bool:
    """The engine's own note that it ran the provider found on PATH in .tools/pulumi/bin."""
    return (f"using {PLUGIN} from $PATH at" in output
            and str(Path(".tools") / "pulumi" / "bin" / PLUGIN) in output)


def test_the_built_provider_is_on_qinfras_path_with_the_sdks_version(
        qinfra_env: dict[str, str]) -> None:
    path = qinfra_env["PATH"].split(os.pathsep)
    found = next((Path(d) / PLUGIN for d in path if os.access(Path(d) / PLUGIN, os.X_OK)), None)
    assert found is not None and found.samefile(PROVIDER), (found, PROVIDER)
    # The CLI asks the binary itself for its schema.
    done = subprocess.run([str(pulumi_cli()), "package", "get-schema", str(found)],
                          env={**os.environ, **qinfra_env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    schema = json.loads(done.stdout)
    # The version stamped at build time is the one the SDK requests.
    assert (schema["name"], schema["version"]) == ("kubernetes", sdk_plugin_version())
    assert "kubernetes:core/v1:ConfigMap" in schema["resources"]


def test_preview_and_up_run_the_provider_from_qinfras_path(
        qinfra_env: dict[str, str], tmp_path: Path) -> None:
    from pulumi import automation as auto

    # No cluster: preview plans the ConfigMap through the provider, and `up` fails with the
    # provider's own words about the closed port, which only a running provider can say.
    kubeconfig, port = unreachable_kubeconfig()
    stack = probe_stack(qinfra_env, tmp_path, kubeconfig, "never-created")
    lines: list[str] = []
    try:
        planned = stack.preview(on_output=lines.append, color="never")
        with pytest.raises(auto.CommandError) as failed:
            stack.up(color="never")
    finally:
        stack.destroy(color="never")
        stack.workspace.remove_stack("probe")
    assert planned.change_summary == {"create": 3}, planned.change_summary
    assert loaded_from_path("\n".join(lines)), "\n".join(lines)[-3000:]
    text = str(failed.value)
    assert "configured Kubernetes cluster is unreachable" in text, text[-3000:]
    assert f"127.0.0.1:{port}" in text and "connection refused" in text, text[-3000:]


def test_without_it_on_path_preview_names_the_missing_plugin(
        qinfra_env: dict[str, str], tmp_path: Path) -> None:
    from pulumi import automation as auto

    # The fault: the provider neither on PATH nor in the (empty) plugin cache: the same CLI,
    # linked from a folder without it, and automatic downloads off as qinfra sets them. The
    # failure must name the plugin, not fetch or hang.
    (tmp_path / "cli" / "bin").mkdir(parents=True)
    (tmp_path / "cli" / "bin" / "pulumi").symlink_to(pulumi_cli())
    env = {**qinfra_env, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    stack = probe_stack(env, tmp_path, unreachable_kubeconfig()[0], "never",
                        cli_root=tmp_path / "cli")
    try:
        with pytest.raises(auto.CommandError) as failed:
            stack.preview(color="never")
    finally:
        stack.workspace.remove_stack("probe")
    text = str(failed.value)
    assert (f"no resource plugin '{PLUGIN}' found in the workspace at version "
            f"v{sdk_plugin_version()} or on your $PATH") in text, text[-3000:]


def test_up_creates_a_configmap_and_destroy_removes_it(
        kube_cluster: KubeCluster, qinfra_env: dict[str, str], tmp_path: Path) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}"
    stack = probe_stack(qinfra_env, tmp_path, kube_cluster.kubeconfig.read_text(), name)
    lines: list[str] = []
    try:
        result = stack.up(on_output=lines.append, color="never")
        assert result.summary.result == "succeeded"
        assert result.summary.resource_changes == {"create": 3}, result.summary.resource_changes
        assert loaded_from_path("\n".join(lines)), "\n".join(lines)[-3000:]
        made = kube_cluster.get(path)
        assert made["data"] == {"qinfra": "kube-provider"}
        # Applied by the provider (its field manager), not by anything else.
        assert any(f["manager"].startswith("pulumi") for f in made["metadata"]["managedFields"])
    finally:
        gone = stack.destroy(color="never")
        stack.workspace.remove_stack("probe")
    assert gone.summary.result == "succeeded"
    with pytest.raises(ApiError) as missing:
        kube_cluster.get(path)
    assert missing.value.status == 404


def test_the_gateway_api_crds_serve_the_httproute_qinfra_creates(kube_cluster: KubeCluster) -> None:
    crds = ROOT / ".tools" / "kube" / "crds"
    if not (crds / "VERSION").is_file():
        pytest.fail(f"Gateway API CRDs: {crds} is empty. To fix: run {INSTALL_COMMAND}",
                    pytrace=False)
    version = (crds / "VERSION").read_text().strip().rsplit("@", 1)[1]
    served = kube_cluster.get(f"/apis/{GATEWAY_API}")
    assert "httproutes" in {r["name"] for r in served["resources"]}
    crd = kube_cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                           "httproutes.gateway.networking.k8s.io")
    annotations = crd["metadata"]["annotations"]
    assert annotations["gateway.networking.k8s.io/bundle-version"] == version
    assert annotations["gateway.networking.k8s.io/channel"] == "standard"
