"""The shipped local stack turned back onto the built-in tiny demo model, for tests that need a
whole local deployment fast (the real SmolLM2 stack is for the few tests that need its answers);
and the throwaway project those tests deploy it from (`write_project`, `entered`).

Only the model and the pins change: ports, router, fleet and rollout stay as shipped. The tiny
random model would fail a quality gate, so these stacks record a skip of it (qinfra:gate.skip,
as `--skip-gate` writes it), except where a test proves the gate's enforcement.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from click.testing import CliRunner, Result
from ruamel.yaml import YAML

from qinfra.cli.main import cli
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "stacks" / "Pulumi.local.yaml"
CHECKPOINT = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct-bf16"  # the local stacks' model
# What `qinfra artifacts push` makes from the demo model (content-addressed: the same everywhere).
DEMO_PINS = {
    "baseline": "sha256-d0491170f1000b2bffe3fefd5796cfec80c35ed4c2dc0d1e8af53ea9b64c9494",
    "quantized": "sha256-a2675dabfad74f372112b874ff9722c7362a48137eee0daa75cc8ee1e64ce7f1",
}


def local_stack(port: int, store: str, demo: bool = True, skip_gate: bool = True) -> str:
    """The local stack's text with the router on `port` (engines on port + 1, + 2), artifacts
    in `store` (file://...), with `demo` the demo model instead of SmolLM2, and with
    `skip_gate` the quantized artifact let through the quality gate (recorded)."""
    yaml = YAML()
    doc = yaml.load(SHIPPED.read_text())
    config = doc["config"]
    config["qinfra:artifacts"]["store"] = store
    config["qinfra:serving"]["port"] = port
    for name, variant in config["qinfra:variants"].items():
        pinned = str(variant.get("artifact", "")).rstrip("/").rsplit("/", 1)[-1]
        if demo:
            pinned = DEMO_PINS[name]
        variant["artifact"] = f"{store}/{pinned}/"
    if demo:  # a GGUF F16 file already: the baseline as it is, no recipe
        config["qinfra:model"]["id"] = "qinfra-demo"
        config["qinfra:model"]["served_name"] = "qinfra-demo"
        config["qinfra:variants"]["baseline"].pop("recipe", None)
    if skip_gate:
        # by content id alone (the URI would repeat the store in the text)
        config["qinfra:gate"] = {"skip": config["qinfra:variants"]["quantized"]["artifact"]
                                 .rstrip("/").rpartition("/")[2]}
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def qinfra(*args: str, stdin: str | None = None) -> Result:
    """`qinfra args` in this process, as a user types it (exceptions propagate)."""
    return CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)


def write_project(root: Path, *, demo: bool = True, skip_gate: bool = True,
                  policies: bool = False) -> int:
    """A throwaway project in `root`: its own Pulumi.yaml running qinfra's program from this
    checkout, and stacks/Pulumi.local.yaml (see `local_stack`) on free ports with its artifacts
    in root/store; with `policies`, qinfra's policy pack beside it (policies/ and the .venv it
    names). Returns the router's port (the engines are on port + 1 and port + 2)."""
    (root / "Pulumi.yaml").write_text(
        "name: qinfra\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {ROOT / '.venv'}\nmain: {ROOT / 'qinfra' / 'deploy' / 'program.py'}\n"
        "stackConfigDir: stacks\n")
    if policies:
        (root / "policies").symlink_to(ROOT / "policies")
        (root / ".venv").symlink_to(ROOT / ".venv")
    (root / "stacks").mkdir()
    if not demo:
        link_checkpoint(root)
    port = free_ports(3)
    (root / "stacks" / "Pulumi.local.yaml").write_text(
        local_stack(port, f"file://{root}/store", demo=demo, skip_gate=skip_gate))
    return port


def link_checkpoint(root: Path) -> Path:
    """The SmolLM2 bf16 checkpoint under root/.tools/models, where the shipped local stacks name
    it (relative to the project root); fails naming setup when this checkout lacks it."""
    if not CHECKPOINT.is_dir():
        raise AssertionError(f"SmolLM2's bf16 checkpoint is missing at {CHECKPOINT}: run "
                             "scripts/setup.sh (scripts/install-vllm.sh makes it)")
    link = root / ".tools" / "models" / CHECKPOINT.name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(CHECKPOINT)
    return link


@contextlib.contextmanager
def entered(root: Path, env: Mapping[str, str] | None = None,
            destroy: bool = True) -> Iterator[None]:
    """Inside the project at `root`: the working directory, its own stacks, cache and Pulumi
    home (plus `env`), all restored on the way out; with `destroy`, its local stack is destroyed
    first (by a fresh `qinfra destroy`, so no server outlives the tests, whatever state they left)."""
    env = {"QINFRA_STACKS_DIR": str(root / "stacks"), "QINFRA_CACHE_DIR": str(root / "cache"),
           "PULUMI_HOME": str(root / ".pulumi-home"), **(env or {})}
    saved = {k: os.environ.get(k) for k in env}
    old = Path.cwd()
    os.environ.update(env)
    os.chdir(root)
    try:
        yield
    finally:
        if destroy:
            subprocess.run([sys.executable, "-m", "qinfra", "destroy", "--stack", "local", "--yes"],
                           cwd=root, check=False, capture_output=True, timeout=300)
        os.chdir(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
