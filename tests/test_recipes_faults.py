"""Recipes that fail, injected for real (issue 23): a tool that refuses its input, a tool
environment that is not there, a quantized checkpoint handed to a recipe that needs 16 bits, a
push killed while its tool runs. Each leaves the stack file, the store and the made-artifact
cache as they were, and the next push works."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.local_stack import entered, qinfra
from tests.vllm_server import SMOLLM2_BF16, missing_vllm_part

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Any:
    if missing := missing_vllm_part(SMOLLM2_BF16):
        pytest.fail(missing, pytrace=False)
    (tmp_path / "stacks").mkdir()
    with entered(tmp_path, destroy=False):
        yield tmp_path


def _stack(root: Path, quantized: dict[str, Any], base: str = "local-vllm") -> Path:
    yaml = YAML()
    doc = yaml.load((ROOT / "stacks" / f"Pulumi.{base}.yaml").read_text())
    config = doc["config"]
    config["qinfra:model"]["id"] = str(SMOLLM2_BF16)
    config["qinfra:artifacts"]["store"] = f"file://{root}/store"
    config["qinfra:variants"]["baseline"].pop("artifact")
    config["qinfra:variants"]["quantized"] = quantized
    out = io.StringIO()
    yaml.dump(doc, out)
    path = root / "stacks" / "Pulumi.made.yaml"
    path.write_text(out.getvalue())
    return path


def _untouched(root: Path, stack: Path, before: bytes, made_before: int = 0) -> None:
    """No pin written, nothing half-made left in the cache or the store; `made_before`: the
    recipes that ran whole before the one that failed."""
    assert stack.read_bytes() == before
    made = root / "cache" / "made"
    entries = list(made.iterdir()) if made.is_dir() else []
    assert not [p for p in entries if p.name.startswith(".making-")], entries
    assert len(entries) == made_before, entries
    store = root / "store"
    pushed = [p for p in store.iterdir() if (p / "manifest.json").is_file()] if store.is_dir() else []
    assert len(pushed) == 1, pushed  # the baseline's, pushed before the quantized variant failed


def test_a_tool_that_refuses_its_input_names_why_and_changes_nothing(project):
    """`qinfra plan` refuses group 128 on this model; a push run anyway gets the tool's own
    refusal, one line, and leaves no made folder, no artifact and no pin."""
    stack = _stack(project, {"format": "w4a16", "recipe": {"name": "llm-compressor",
                                                           "scheme": "W4A16"}})
    before = stack.read_bytes()
    result = qinfra("artifacts", "push", "--stack", "made")
    assert result.exit_code == 1, result.output
    assert "llm-compressor W4A16 over SmolLM2-135M-Instruct-bf16 failed" in result.output
    assert "group size 128 does not divide" in result.output and "Traceback" not in result.output
    _untouched(project, stack, before)


def test_a_missing_tool_environment_is_named_with_its_installer(project, monkeypatch):
    monkeypatch.setenv("QINFRA_LLMCOMPRESSOR_PYTHON", str(project / "no-venv" / "bin" / "python"))
    stack = _stack(project, {"format": "int8", "recipe": {"name": "llm-compressor",
                                                          "scheme": "W8A8"}})
    before = stack.read_bytes()
    result = qinfra("artifacts", "push", "--stack", "made")
    assert result.exit_code == 1, result.output
    assert "llm-compressor's environment is missing" in result.output
    assert "bash scripts/install-llmcompressor.sh" in result.output
    _untouched(project, stack, before)


def test_a_quantized_checkpoint_for_a_16_bit_recipe_points_at_dequantize(project):
    folder = project / "SmolLM2-135M-Instruct-W8A8"
    folder.mkdir()
    config = json.loads((SMOLLM2_BF16 / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    stack = _stack(project, {"format": "gguf-q8_0", "source": str(folder),
                             "recipe": {"name": "gguf"}}, base="local")
    before = stack.read_bytes()
    result = qinfra("artifacts", "push", "--stack", "made")
    assert result.exit_code == 1, result.output
    assert "recipe gguf needs a 16-bit checkpoint" in result.output
    assert "use recipe dequantize" in result.output
    _untouched(project, stack, before, made_before=1)  # the baseline's F16, made first


def test_a_push_killed_while_its_tool_runs_leaves_the_next_push_whole(project):
    stack = _stack(project, {"format": "int8", "recipe": {"name": "llm-compressor",
                                                          "scheme": "W8A8"}})
    before = stack.read_bytes()
    push = subprocess.Popen([sys.executable, "-m", "qinfra", "artifacts", "push", "--stack",
                             "made", "--json"], cwd=project, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    made = project / "cache" / "made"
    deadline = time.monotonic() + 120
    while not (made.is_dir() and any(made.glob(".making-*"))):
        assert push.poll() is None and time.monotonic() < deadline, "the recipe never started"
        time.sleep(0.05)
    time.sleep(3)  # llm-compressor is loading torch and the model: well before it is done
    assert push.poll() is None
    os.killpg(push.pid, signal.SIGKILL)  # the push and its tool, mid-run
    push.wait(timeout=30)
    assert stack.read_bytes() == before
    assert [p.name for p in made.iterdir() if not p.name.startswith(".making-")] == []
    result = qinfra("artifacts", "push", "--stack", "made", "--json")
    assert result.exit_code == 0, result.output
    quantized = json.loads(result.output)["variants"]["quantized"]
    assert [p.name for p in made.iterdir() if not p.name.startswith(".")] != []
    assert "config.json" in {f["path"] for f in quantized["files"]}
