"""The session's local Kubernetes control plane (scripts/kube-local.sh), started once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube.cluster import KubeCluster, require_binaries, run_script


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """etcd, kube-apiserver, controller-manager, scheduler and kwok on loopback, with kwok GPU
    nodes; state in a temporary QINFRA_KUBE_DIR; stopped at the end of the session."""
    require_binaries()
    kube_dir = tmp_path_factory.mktemp("kube")
    started = run_script("start", kube_dir)
    try:
        assert started.returncode == 0, (
            f"scripts/kube-local.sh start failed ({started.returncode}):\n{started.stderr[-4000:]}")
        yield KubeCluster.from_dir(kube_dir)
    finally:
        stopped = run_script("stop", kube_dir)
        assert stopped.returncode == 0, f"kube-local.sh stop failed:\n{stopped.stderr[-2000:]}"
