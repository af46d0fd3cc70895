"""Stack config: example stacks load; every bad key, value or combination is named."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from qinfra.core.errors import SpecError
from qinfra.core.formats import Engine, Format
from qinfra.core.spec import (
    PULUMI_HELD,
    Encrypted,
    Stage,
    Target,
    load_stack,
    parse_config,
    parse_program_config,
)


def config(stacks: Path, name: str = "prod") -> dict[str, Any]:
    return yaml.safe_load((stacks / f"Pulumi.{name}.yaml").read_text())["config"]


@pytest.mark.parametrize(
    ("stack", "target", "engine", "baseline", "quantized"),
    [
        ("local", Target.LOCAL, Engine.LLAMA_CPP, Format.GGUF_F16, Format.GGUF_Q4_K_M),
        ("prod", Target.AWS, Engine.VLLM, Format.BF16, Format.AWQ),
        ("k8s", Target.KUBERNETES, Engine.VLLM, Format.BF16, Format.FP8),
    ],
)
def test_example_stacks(stacks, stack, target, engine, baseline, quantized):
    spec = load_stack(stack)
    assert (spec.target, spec.serving.engine) == (target, engine)
    assert (spec.variants.baseline.format, spec.variants.quantized.format) == (baseline, quantized)
    assert spec.path == stacks / f"Pulumi.{stack}.yaml"


def test_local_stack_stores_on_file(stacks):
    spec = load_stack("local")
    assert spec.artifacts.store.startswith("file:///")
    assert spec.variants.quantized.source is None  # quantized from the baseline


def test_other_namespaces_are_kept(stacks):
    assert load_stack("prod").provider_config == {"aws:region": "us-east-1"}


# each case: a change to the prod config, the key path and words the message must name
BAD = [
    (lambda c: c.__setitem__("qinfra:modle", {}), "qinfra:modle", "Did you mean 'model'"),
    (lambda c: c.__setitem__("qinfra:target", "gcp"), "qinfra:target", "'local', 'aws' or 'kubernetes'"),
    (lambda c: c["qinfra:variants"]["quantized"].__setitem__("format", "awqq"),
     "qinfra:variants.quantized.format", "Did you mean 'awq'"),
    (lambda c: c["qinfra:variants"]["baseline"].__setitem__("format", "awq"),
     "qinfra:variants.baseline.format", "a baseline format"),
    (lambda c: c["qinfra:variants"]["quantized"].__setitem__("format", "gguf-q4_k_m"),
     "qinfra:variants.quantized.format", "a format vllm loads"),
    (lambda c: c["qinfra:serving"].__setitem__("max_model_len", -3),
     "qinfra:serving.max_model_len", "got -3"),
    (lambda c: c["qinfra:serving"].__setitem__("max_model_len", "long"),
     "qinfra:serving.max_model_len", "got 'long'"),
    (lambda c: c["qinfra:serving"].__setitem__("gpu_memory_utilization", 1.5),
     "qinfra:serving.gpu_memory_utilization", "got 1.5"),
    (lambda c: c["qinfra:serving"].__setitem__("colour", "red"),
     "qinfra:serving.colour", "unknown key"),
    (lambda c: c["qinfra:fleet"].__setitem__("gpus", ["l4", "h100"]),
     "qinfra:fleet.gpus[1]", "Did you mean 'h100-80gb'"),
    (lambda c: c["qinfra:rollout"].__setitem__("quantized_percent", 0),
     "qinfra:rollout.quantized_percent", "1..99 in stage ab_test"),
    (lambda c: c["qinfra:rollout"].update(stage="rollback", quantized_percent=10),
     "qinfra:rollout.quantized_percent", "0 in stage rollback"),
    (lambda c: c["qinfra:rollout"].__setitem__("quantized_percent", 101),
     "qinfra:rollout.quantized_percent", "got 101"),
    (lambda c: c["qinfra:artifacts"].__setitem__("store", "gs://bucket"),
     "qinfra:artifacts.store", "s3://bucket"),
    (lambda c: c["qinfra:variants"]["baseline"].__setitem__("artifact", "s3://b/latest/"),
     "qinfra:variants.baseline.artifact", "sha256-"),
    (lambda c: c.__setitem__("qinfra:api_key", "sk-plain"), "qinfra:api_key", "must be a secret"),
    # vLLM's CPU build serves bf16, fp16 and int8: not prod's AWQ
    (lambda c: c.__setitem__("qinfra:fleet", {"cpu": {"memory_gib": 8, "threads": 2}}),
     "qinfra:variants.quantized.format", "a format vllm's CPU build serves"),
    (lambda c: c.pop("qinfra:serving"), "qinfra:serving", "required key is missing"),
    # suggestions come from the field's enum type, wherever the field sits
    (lambda c: c["qinfra:serving"].__setitem__("engine", "vlm"),
     "qinfra:serving.engine", "Did you mean 'vllm'"),
    (lambda c: c["qinfra:serving"].__setitem__("kv_cache_dtype", "fp9"),
     "qinfra:serving.kv_cache_dtype", "Did you mean 'fp8'"),
    (lambda c: c["qinfra:rollout"].__setitem__("stage", "gradul"),
     "qinfra:rollout.stage", "Did you mean 'gradual'"),
]


@pytest.mark.parametrize(("change", "key", "words"), BAD)
def test_bad_input_names_key_value_and_allowed(stacks, change, key, words):
    cfg = copy.deepcopy(config(stacks))
    change(cfg)
    with pytest.raises(SpecError) as err:
        parse_config(cfg, "prod")
    message = err.value.format_message()
    assert f"{key}:" in message and words in message, message
    assert err.value.exit_code == 2


def test_all_problems_are_reported_at_once(stacks):
    cfg = copy.deepcopy(config(stacks))
    cfg["qinfra:extra"] = 1
    cfg["qinfra:serving"]["max_model_len"] = 0
    cfg["qinfra:rollout"]["stage"] = "sideways"
    with pytest.raises(SpecError) as err:
        parse_config(cfg, "prod")
    message = err.value.format_message()
    assert "qinfra:extra" in message and "max_model_len" in message and "sideways" in message


def test_secure_values_stay_encrypted(stacks):
    cfg = copy.deepcopy(config(stacks))
    cfg["qinfra:api_key"] = {"secure": "v1:c2VjcmV0Y2lwaGVydGV4dA=="}
    spec = parse_config(cfg, "prod")
    assert spec.api_key == Encrypted(secure="v1:c2VjcmV0Y2lwaGVydGV4dA==")
    assert "c2VjcmV0" not in repr(spec) and "c2VjcmV0" not in str(spec.api_key)


def test_stage_and_percent(stacks):
    cfg = copy.deepcopy(config(stacks))
    cfg["qinfra:rollout"] = {"stage": "full", "quantized_percent": 100}
    assert parse_config(cfg, "prod").rollout.stage is Stage.FULL


def test_missing_stack_lists_known(stacks):
    with pytest.raises(SpecError,
                       match=r"Did you mean 'prod'.*Stacks here: k8s, k8s-local, local, local-vllm, prod"):
        load_stack("prd")


def test_broken_yaml(stacks):
    (stacks / "Pulumi.broken.yaml").write_text("config: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_stack("broken")


def test_same_validation_inside_the_pulumi_program(stacks):
    """pulumi.Config's view of the stack (as the program sees it) validates the same way."""
    import json

    import pulumi

    cfg = config(stacks, "k8s")
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in cfg.items()}
    pulumi.runtime.set_all_config(flat)
    try:
        from qinfra.deploy.program import stack_spec

        spec = stack_spec("k8s")
        assert spec.variants.quantized.format is Format.FP8 and spec.target is Target.KUBERNETES
        flat["qinfra:serving"] = json.dumps({**cfg["qinfra:serving"], "engine": "tgi"})
        pulumi.runtime.set_all_config(flat)
        with pytest.raises(SpecError, match=r"qinfra:serving\.engine: got 'tgi'"):
            stack_spec("k8s")
    finally:
        pulumi.runtime.set_all_config({})


def test_program_config_keeps_secrets_out_of_the_spec(stacks):
    """The program's flat config: qinfra's secrets are only known to be set, other namespaces'
    secrets are left out, and their plain text reaches no field of the spec."""
    import json

    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config(stacks, "k8s").items()}
    flat |= {"qinfra:api_key": "sk-plain-key", "kubernetes:token": "tok-plain",
             "aws:region": "eu-west-1"}
    spec = parse_program_config(flat, {"qinfra:api_key", "kubernetes:token"}, "k8s")
    assert spec.api_key == Encrypted(**PULUMI_HELD)
    assert spec.provider_config == {"aws:region": "eu-west-1", "kubernetes:namespace": "qinfra",
                                    "kubernetes:enableConfigMapMutable": True}
    assert "sk-plain-key" not in repr(spec) and "tok-plain" not in repr(spec)


def test_secure_values_from_the_pulumi_runtime(stacks):
    """What the program reads from Pulumi's runtime config: secret keys are detected there."""
    import json

    import pulumi

    from qinfra.deploy.program import stack_spec

    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config(stacks, "k8s").items()}
    pulumi.runtime.set_all_config({**flat, "qinfra:hf_token": "hf_plain", "kubernetes:token": "t0k"},
                                  ["qinfra:hf_token", "kubernetes:token"])
    try:
        spec = stack_spec("k8s")
    finally:
        pulumi.runtime.set_all_config({})
    assert spec.hf_token == Encrypted(**PULUMI_HELD)
    assert "kubernetes:token" not in spec.provider_config and "hf_plain" not in repr(spec)


@pytest.mark.parametrize(
    "artifact",
    [
        "s3://acme-models/llama-3.1-8b/sha256-abc/",  # an id that is not 64 hex digits
        "sha256-abc/",  # no store at all
        f"gs://acme-models/sha256-{'a' * 64}/",  # not a store qinfra can read
    ],
)
def test_artifact_uri_is_refused_at_load(stacks, artifact):
    """The schema holds pins to the rule every later step uses (qinfra.core.artifact_uri), so a
    bad pin fails here, naming the key, the value and the shape, not later at render time."""
    cfg = copy.deepcopy(config(stacks))
    cfg["qinfra:variants"]["baseline"]["artifact"] = artifact
    with pytest.raises(SpecError) as err:
        parse_config(cfg, "prod")
    message = err.value.format_message()
    assert f"qinfra:variants.baseline.artifact: got {artifact!r}" in message, message
    assert "<store>/sha256-<64 hex digits>/" in message and "To fix" in message, message


# Every numeric key, on the stack whose target uses it: (stack, key path, a value). Each is
# refused as a boolean, as text, and (floats) as infinity or nan; whole numbers also as 2.5.
NUMERIC = [
    ("prod", ("qinfra:serving", "max_model_len"), "whole"),
    ("prod", ("qinfra:serving", "concurrency"), "whole"),
    ("prod", ("qinfra:serving", "gpu_memory_utilization"), "number"),
    ("prod", ("qinfra:serving", "max_num_batched_tokens"), "whole"),
    ("prod", ("qinfra:serving", "port"), "whole"),
    ("prod", ("qinfra:fleet", "max_tensor_parallel"), "whole"),
    ("local", ("qinfra:fleet", "cpu", "memory_gib"), "number"),
    ("local", ("qinfra:fleet", "cpu", "threads"), "whole"),
    ("local", ("qinfra:rollout", "quantized_percent"), "whole"),
]


def _set(cfg: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = cfg
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


NOT_NUMBERS = [True, False, "8", float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize(
    ("stack", "path", "value"),
    [(stack, path, value) for stack, path, kind in NUMERIC
     for value in NOT_NUMBERS + ([2.5] if kind == "whole" else [])],  # a fraction is a float
)
def test_numbers_are_strict(stacks, stack, path, value):
    """A YAML `true` is not 1 (`quantized_percent: true` was 1%), `.inf` is not a size (it
    reached the engine as +Inf), text is not a number; whole-number keys take no fractions."""
    cfg = copy.deepcopy(config(stacks, stack))
    _set(cfg, path, value)
    with pytest.raises(SpecError) as err:
        parse_config(cfg, stack)
    key = f"{path[0]}." + ".".join(path[1:])
    message = err.value.format_message()
    assert f"{key}: got {value!r}; allowed: " in message, message
    allowed = message.split(f"{key}: got {value!r}; allowed: ", 1)[1].splitlines()[0]
    assert allowed.startswith(("a whole number", "a number", "a finite number")), allowed


def test_a_whole_number_is_a_fine_float(stacks):
    cfg = copy.deepcopy(config(stacks, "local"))
    cfg["qinfra:fleet"]["cpu"]["memory_gib"] = 3
    assert parse_config(cfg, "local").fleet.cpu.memory_gib == 3.0


def test_a_strict_refusal_shows_the_range(stacks):
    cfg = copy.deepcopy(config(stacks, "local"))
    cfg["qinfra:rollout"]["quantized_percent"] = True
    with pytest.raises(SpecError) as err:
        parse_config(cfg, "local")
    assert ("qinfra:rollout.quantized_percent: got True; allowed: a whole number (not "
            "true/false, not text), at least 0 and at most 100") in err.value.format_message()


@pytest.mark.parametrize(
    ("stack", "port", "ok"),
    [
        ("local", 65533, True),   # router 65533, baseline 65534, quantized 65535
        ("local", 65534, False),  # the quantized engine would get 65536
        ("prod", 65535, True),    # aws: every engine listens on `port` of its own machine
        ("k8s", 65535, True),
    ],
)
def test_every_port_a_target_uses_is_in_range(stacks, stack, port, ok):
    cfg = copy.deepcopy(config(stacks, stack))
    cfg["qinfra:serving"]["port"] = port
    if ok:
        spec = parse_config(cfg, stack)
        assert spec.ports()[-1] <= 65535 and spec.ports()[0] == port
        return
    with pytest.raises(SpecError) as err:
        parse_config(cfg, stack)
    assert ("qinfra:serving.port: got 65534; allowed: 1..65533 for target local, which listens "
            "on 3 ports from it (the last would be 65536)") in err.value.format_message()


def test_relative_model_paths_start_at_the_project_root(stacks, tmp_path, monkeypatch):
    """The same `./mymodel` for the CLI (any cwd) and the program (given the root by Pulumi)."""
    (tmp_path / "Pulumi.yaml").write_text("name: qinfra\n")
    (tmp_path / "mymodel").mkdir()
    monkeypatch.chdir(stacks)
    spec = load_stack("local")
    assert spec.root == tmp_path
    assert spec.local_source("./mymodel") == str(tmp_path / "mymodel")
    assert spec.local_source("qinfra-demo") == "qinfra-demo"
    assert spec.local_source("owner/name") == "owner/name"  # no such folder: a hub id
    assert spec.local_source("/abs/model") == "/abs/model"
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config(stacks, "local").items()}
    program = parse_program_config(flat, set(), "local", root=tmp_path)
    assert program.local_source("./mymodel") == spec.local_source("./mymodel")
