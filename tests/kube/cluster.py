"""A started local control plane (scripts/kube-local.sh) and a small client for its API.

The API is spoken to with urllib and the cluster's bearer token: the `kubernetes` Python client
is not a dependency of qinfra, and the few calls the tests make need nothing more.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kube-local.sh"
BIN = ROOT / ".tools" / "kube" / "bin"
# What scripts/kube-local.sh runs, and kubectl, which it uses to register nodes and CRDs.
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            "kubectl")
BUILD_COMMAND = "scripts/install-kube.sh"
# `start` on two busy cores takes 10-30 s; the script waits QINFRA_KUBE_TIMEOUT (120 s) per step.
START_TIMEOUT_S = 600

T = TypeVar("T")


class ApiError(Exception):
    """A non-2xx answer of the API server, with its status and body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def missing_binaries(bin_dir: Path = BIN) -> list[str]:
    """The control-plane binaries not built yet (see scripts/install-kube.sh)."""
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def require_binaries() -> None:
    """Fail (never skip) when a control-plane binary is missing, naming it and its build."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"local Kubernetes control plane: missing {', '.join(missing)} in {BIN}. "
                    f"To fix: run {BUILD_COMMAND} (builds them from the Go module proxy, "
                    "~15 min the first time)", pytrace=False)


def run_script(command: str, kube_dir: Path,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`scripts/kube-local.sh <command>` with its state in `kube_dir`; output captured."""
    full_env = {**os.environ, "QINFRA_KUBE_DIR": str(kube_dir), **(env or {})}
    return subprocess.run([str(SCRIPT), command], env=full_env, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, check=False)


def recorded_pids(kube_dir: Path) -> dict[str, int]:
    """Component name -> pid, as kube-local.sh recorded them."""
    return {p.stem: int(p.read_text().strip()) for p in sorted((kube_dir / "pids").glob("*.pid"))}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float = 120.0) -> T:
    """Poll `probe` until it returns a truthy value; AssertionError naming `what` after
    `timeout_s` (a generous bound for a loaded machine, not a speed claim)."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not reached within {timeout_s:.0f} s (last: {last!r})")


@dataclass(frozen=True)
class KubeCluster:
    """A running local cluster: where its state is and how to reach its API server."""

    kube_dir: Path
    server: str
    token: str
    ca_file: Path

    @property
    def kubeconfig(self) -> Path:
        return self.kube_dir / "kubeconfig"

    @classmethod
    def from_dir(cls, kube_dir: Path) -> KubeCluster:
        """Read what `start` wrote: ports.env for the API server port, the token and CA."""
        ports = dict(line.split("=", 1) for line in
                     (kube_dir / "ports.env").read_text().split())
        return cls(kube_dir=kube_dir, server=f"https://127.0.0.1:{ports['APISERVER_PORT']}",
                   token=(kube_dir / "pki" / "token").read_text().strip(),
                   ca_file=kube_dir / "pki" / "ca.crt")

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        """One API call; the decoded JSON answer (or text). ApiError on a non-2xx status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type,
            "Accept": "application/json"})
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, context=context, timeout=30) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace")) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, dict(body))
