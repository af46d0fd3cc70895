"""The local target's front door as a process: its config built from the stack file, the router
started, told new weights, drained and stopped. No Pulumi here: the CLI tells a running router a
rollback's weights at once through `tell_router`, before the engine runs, and the dynamic
resource in `local.py` records and reconciles the same config afterwards.

The config file is the router's record of the weights (it polls the file every 200 ms), so a
write is the whole hand-over: no restart, no admin port, nothing lost in flight.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qinfra.core.spec import StackSpec, Target, Variant
from qinfra.deploy.processes import launch_until_ready
from qinfra.serving.router.config import RouterConfig, config_mapping, parse_config, write_config

ROUTER_DIR = "router"  # under .qinfra/run/<stack>/, beside the variants' folders
CONFIG_FILE = "config.json"
HOST = "127.0.0.1"
# Start-up of `python -m qinfra.serving.router` (imports, bind) is about a second on two cores.
READY_TIMEOUT_S = 30.0
# Twice the router's 200 ms poll: a config not live by then is retried until this bound.
LIVE_TIMEOUT_S = 10.0
_POLL_S = 0.05


def router_url(spec: StackSpec) -> str:
    return f"http://{HOST}:{spec.serving.port}"


def engine_url(spec: StackSpec, variant: Variant) -> str:
    return f"http://{HOST}:{spec.serving.local_port(variant)}"


def router_config(spec: StackSpec) -> RouterConfig:
    """The router's config from the stack file alone: weights from the rollout's traffic rule, an
    engine per variant that takes traffic (a variant at 0% has none), the qinfra:router settings.
    Shadowing needs a quantized engine, so it pauses while the quantized variant has 0%."""
    traffic = spec.rollout.traffic_percent()
    replicas = {v: (engine_url(spec, v),) for v in Variant if traffic[v] > 0}
    settings = spec.router
    return RouterConfig(
        replicas=MappingProxyType(replicas),
        quantized_percent=float(traffic[Variant.QUANTIZED]),
        salt=settings.salt,
        key_header=settings.key_header,
        cookie=settings.cookie,
        shadow_percent=settings.shadow_percent if Variant.QUANTIZED in replicas else 0.0,
        max_in_flight=settings.max_in_flight,
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
    )


def config_props(spec: StackSpec) -> dict[str, Any]:
    """`router_config` as the plain mapping a resource's state holds (and the file carries)."""
    return config_mapping(router_config(spec))


def config_path(run_dir: Path, stack: str) -> Path:
    return run_dir / stack / ROUTER_DIR / CONFIG_FILE


def health(url: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The router's (or an engine's) /health document, None when it does not answer 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return json.loads(response.read() or b"{}") if response.status == 200 else None
    except (OSError, ValueError):
        return None


def tell_router(spec: StackSpec, run_dir: Path) -> bool:
    """Write the stack file's weights into a running local router's config at once; True when
    written. Nothing is written (the apply does it, after starting what is missing) unless the
    router runs and every engine the new config names answers: a roll forward onto an engine not
    started yet waits for the engine run, a rollback never does."""
    path = config_path(run_dir, spec.name)
    if spec.target is not Target.LOCAL or not path.is_file() or health(router_url(spec)) is None:
        return False
    config = router_config(spec)
    if any(health(url) is None for urls in config.replicas.values() for url in urls):
        return False
    write_config(path, config)
    return True


def live(url: str, want: dict[str, Any]) -> bool:
    """The router at `url` serves the config `want` (its weights and replicas)."""
    doc = health(url)
    return doc is not None and doc.get("quantized_percent") == want["quantized_percent"] and {
        k: v for k, v in (doc.get("replicas") or {}).items() if v} == want["replicas"]


def apply_config(url: str, path: Path, want: dict[str, Any]) -> None:
    """Write `want` to the router's file (atomically) and wait until the router serves it.
    Raises RuntimeError when it does not within LIVE_TIMEOUT_S (the file stays: next `up`)."""
    write_config(path, parse_config(_whole(want), source=str(path)))
    deadline = time.monotonic() + LIVE_TIMEOUT_S
    while not live(url, want):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router at {url} did not take its new config {path} within "
                               f"{LIVE_TIMEOUT_S:.0f} s (see its log beside the file)")
        time.sleep(_POLL_S)


def in_flight(url: str, variant: str) -> float | None:
    """Requests the router is sending to `variant` now, from its /metrics; None if unreadable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "qinfra_router_in_flight_requests"
                    and sample.labels.get("variant") == variant):
                return sample.value
    return 0.0


def drain(url: str, variants: list[str], timeout_s: float) -> None:
    """Wait until the router has no request in flight to `variants` (which it no longer sends
    new ones), so stopping their engines fails nobody; at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while variants and time.monotonic() < deadline:
        if all(not in_flight(url, v) for v in variants):
            return
        time.sleep(_POLL_S)


def start(folder: Path, port: int, want: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Write the config and launch the router detached in its own session (cwd: its folder,
    output to router.log); returns once /health answers. Raises RuntimeError, the router
    stopped, when it exits or does not answer within READY_TIMEOUT_S."""
    folder.mkdir(parents=True, exist_ok=True)
    path, log = folder / CONFIG_FILE, folder / "router.log"
    write_config(path, parse_config(_whole(want), source=str(path)))
    argv = [sys.executable, "-m", "qinfra.serving.router", "--config", str(path), "--host", HOST,
            "--port", str(port), "--log-level", "info"]
    url = f"http://{HOST}:{port}"
    return launch_until_ready(argv, folder, log, lambda: health(url) is not None,
                              what="the router", url=url, timeout_s=READY_TIMEOUT_S,
                              poll_s=_POLL_S)



# Settings the router wants as whole numbers; Pulumi's state hands every number back as a float.
_WHOLE = ("shadow_queue", "shadow_workers", "max_in_flight", "retry_after_s")


def _whole(config: dict[str, Any]) -> dict[str, Any]:
    return {k: int(v) if k in _WHOLE and isinstance(v, float) and v.is_integer() else v
            for k, v in config.items()}
