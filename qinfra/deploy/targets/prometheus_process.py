"""The local target's Prometheus as a process: its scrape config built from the stack file (the
router's /metrics at the analysis' scrape interval), started on loopback with its own data folder
under .qinfra/run/<stack>/prometheus/, and waited for until /-/ready answers. No Pulumi here; the
dynamic resource in local_prometheus.py records and reconciles it like the router."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from qinfra.core.analysis_spec import QINFRA_STACK_LABEL
from qinfra.core.spec import StackSpec
from qinfra.deploy.processes import launch_until_ready

PROMETHEUS_DIR = "prometheus"  # under .qinfra/run/<stack>/, beside the router's folder
CONFIG_FILE = "prometheus.yml"
HOST = "127.0.0.1"
# Prometheus 2.x opens its TSDB and replays the WAL before /-/ready says 200: a few seconds here.
READY_TIMEOUT_S = 60.0
RETENTION = "7d"  # the audit keeps each window's values itself; the TSDB only needs the rollout
_POLL_S = 0.1


def binary() -> Path:
    """The `prometheus` server (Debian's package, installed by scripts/setup.sh)."""
    found = shutil.which("prometheus")
    if found is None:
        raise RuntimeError("the prometheus binary is not on PATH: the local stack's analysis "
                           "needs it. To fix: apt-get install prometheus (scripts/setup.sh does)")
    return Path(found)


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def config_text(spec: StackSpec) -> str:
    """prometheus.yml: one job scraping the router (a config change restarts the server)."""
    assert spec.analysis is not None
    interval = _duration(spec.analysis.scrape_interval_s)
    return (f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"scrape_configs:\n  - job_name: qinfra-router\n    scrape_interval: {interval}\n"
            f"    scrape_timeout: {interval}\n    static_configs:\n"
            f"      - targets: ['{HOST}:{spec.serving.port}']\n"
            f"        labels: {{{QINFRA_STACK_LABEL}: '{spec.name}'}}\n")


def port(spec: StackSpec) -> int:
    url = spec.prometheus_url()
    assert url is not None
    return int(url.rsplit(":", 1)[1])


def ready(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def start(folder: Path, listen_port: int, config: str) -> subprocess.Popen[bytes]:
    """Write the config and launch Prometheus detached in its own session (cwd: its folder,
    output to prometheus.log); returns once /-/ready answers. Raises RuntimeError, the server
    stopped, when it exits or is not ready within READY_TIMEOUT_S."""
    folder.mkdir(parents=True, exist_ok=True)
    path, log = folder / CONFIG_FILE, folder / "prometheus.log"
    path.write_text(config)
    argv = [str(binary()), f"--config.file={path}", f"--storage.tsdb.path={folder / 'data'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={HOST}:{listen_port}", "--log.level=warn"]
    url = f"http://{HOST}:{listen_port}"
    return launch_until_ready(argv, folder, log, lambda: ready(url), what="prometheus", url=url,
                              timeout_s=READY_TIMEOUT_S, poll_s=_POLL_S)


def props(spec: StackSpec, run_dir: Path) -> dict[str, Any]:
    """The resource's inputs: where it listens, what it scrapes, where its data lives."""
    return {"stack": spec.name, "endpoint": spec.prometheus_url(), "config": config_text(spec),
            "run_dir": str(run_dir / spec.name / PROMETHEUS_DIR)}
