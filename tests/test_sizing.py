"""Fleet sizing per variant: smallest TP that fits, replicas, shares, cheapest choice."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from qinfra.core import modelinfo
from qinfra.core.formats import VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
from qinfra.core.hardware import catalog
from qinfra.core.spec import Stage, Target, parse_config
from qinfra.planning.planner import EngineOptions, plan_engine
from qinfra.planning.sizing import plan_stack, sized_for_percent

ROOT = Path(__file__).resolve().parents[1]


def prod_config(reference_models: Path, **changes) -> dict:
    cfg = yaml.safe_load((ROOT / "stacks/Pulumi.prod.yaml").read_text())["config"]
    cfg = copy.deepcopy(cfg)
    cfg["qinfra:model"]["id"] = str(reference_models / "llama-3.1-8b")
    for key, value in changes.items():
        section, field = key.split("__")
        cfg[f"qinfra:{section}"][field] = value
    return cfg


def plan_of(cfg: dict):
    spec = parse_config(cfg, "prod")
    return plan_stack(spec, modelinfo.load(spec.model.id), catalog())


@pytest.mark.parametrize(
    ("stage", "percent", "baseline", "quantized"),
    [
        (Stage.BASELINE_ONLY, 0, 100, 0),
        (Stage.AB_TEST, 10, 100, 10),
        (Stage.GRADUAL, 50, 100, 50),
        (Stage.FULL, 100, 100, 100),  # the baseline stays able to take everything back
        (Stage.ROLLBACK, 0, 100, 0),
    ],
)
def test_sized_for_percent(stage, percent, baseline, quantized):
    assert sized_for_percent(stage, percent) == {"baseline": baseline, "quantized": quantized}


def test_prod_plan_sizes_both_variants(reference_models):
    plan = plan_of(prod_config(reference_models))
    assert plan.fits
    base, quant = plan.variant("baseline"), plan.variant("quantized")
    assert base.required_concurrency == 64 and quant.required_concurrency == math.ceil(64 * 0.10)
    for v in (base, quant):
        c = v.chosen
        assert c is not None and c.engine_plan.fits
        # enough engines for the variant's sequences, each holding what it claims
        assert c.engines_total * c.sequences_per_engine >= v.required_concurrency
        assert c.sequences_per_engine <= c.engine_plan.max_concurrency
        # the cheapest fitting option was chosen
        assert c.usd_per_hour == min(o.usd_per_hour for o in v.options)
    # 4-bit weights leave more KV per GPU than bf16
    assert quant.chosen.sequences_per_engine > base.chosen.sequences_per_engine


def test_rollback_keeps_quantized_at_zero_with_its_flags(reference_models):
    cfg = prod_config(reference_models, rollout__stage="rollback", rollout__quantized_percent=0)
    quant = plan_of(cfg).variant("quantized")
    assert quant.required_concurrency == 0 and quant.chosen.engines_total == 0
    assert quant.chosen.machines == 0 and quant.chosen.usd_per_hour == 0
    assert quant.chosen.engine_plan.flags.quantization == "awq_marlin"


def test_smallest_tensor_parallel_that_fits(reference_models):
    """bf16 Llama-3.1-8B at 32k does not fit one T4 (14.75 GiB): fp16 on 2 T4s does not either
    once overheads count, 4 does."""
    cfg = prod_config(reference_models, fleet__gpus=["t4"], serving__max_model_len=32768)
    cfg["qinfra:variants"]["baseline"]["format"] = "fp16"
    base = plan_of(cfg).variant("baseline")
    tps = {o.instance_type: o.tensor_parallel_size for o in base.options}
    assert tps == {"g4dn.12xlarge": 2, "g4dn.metal": 2}
    assert any("g4dn.xlarge" in r and "does not fit" in r for r in base.refused)


def test_incompatible_gpu_is_refused_not_chosen(reference_models):
    cfg = prod_config(reference_models, fleet__gpus=["t4", "l4"])  # bf16 cannot run on a T4
    base = plan_of(cfg).variant("baseline")
    assert base.chosen.gpu == "l4"
    assert any(r.startswith("t4") and "fp16" in r for r in base.refused)


def test_small_model_gets_several_replicas_per_gpu(tmp_path):
    small = {"model_type": "llama", "hidden_size": 896, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
             "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(small))
    cfg = prod_config(Path("/unused"), fleet__gpus=["h100-80gb"], serving__max_model_len=4096)
    cfg["qinfra:model"]["id"] = str(tmp_path)
    base = plan_of(cfg).variant("baseline").chosen
    assert base.replicas_per_gpu > 1
    assert base.engine_plan.flags.gpu_memory_utilization == pytest.approx(
        VLLM_DEFAULT_GPU_MEMORY_UTILIZATION / base.replicas_per_gpu, abs=1e-4)


def test_nothing_fits_is_reported(reference_models):
    cfg = prod_config(reference_models, fleet__gpus=["t4"], fleet__max_tensor_parallel=1,
                      serving__max_model_len=131072)
    cfg["qinfra:variants"]["baseline"]["format"] = "fp16"
    plan = plan_of(cfg)
    assert not plan.fits and plan.variant("baseline").chosen is None
    assert plan.variant("baseline").refused


def test_local_stack_plans_on_cpu(stacks):
    from qinfra.core.spec import load_stack

    spec = load_stack("local")
    plan = plan_stack(spec, modelinfo.load(spec.model.id), catalog())
    assert plan.fits
    for v in plan.variants:
        assert v.chosen.gpu == "cpu" and v.chosen.usd_per_hour == 0
    quant = plan.variant("quantized").chosen.engine_plan
    # 50% of the traffic, but one llama-server on target local is sized for all 4 sequences so
    # that a weight change never restarts it (sized_for_percent)
    assert quant.flags.parallel == 4
    assert quant.flags.ctx_size == 4 * 1024 and quant.flags.n_gpu_layers == 0
    assert plan.variant("baseline").chosen.engine_plan.flags.parallel == 4


# --- one default: `qinfra plan --stack` and `qinfra plan --model` agree ---------------------------


def test_stack_and_adhoc_plans_agree(reference_models):
    """The stack schema's defaults are the ad-hoc planner's: for the same model, format, GPU and
    length, the stack's chosen engine plan is exactly the ad-hoc one."""
    spec = parse_config(prod_config(reference_models), "prod")
    plan = plan_stack(spec, modelinfo.load(spec.model.id), catalog())
    for variant in plan.variants:
        chosen = variant.chosen
        assert chosen is not None and chosen.replicas_per_gpu == 1  # utilization not divided
        adhoc = plan_engine(modelinfo.load(spec.model.id), spec.variants.of(variant.name).format,
                            catalog().gpu(chosen.gpu),
                            EngineOptions(tensor_parallel_size=chosen.tensor_parallel_size,
                                          max_model_len=spec.serving.max_model_len))
        assert chosen.engine_plan == adhoc
        assert adhoc.flags.gpu_memory_utilization == VLLM_DEFAULT_GPU_MEMORY_UTILIZATION


def test_plan_stack_and_plan_model_commands_agree(stacks, reference_models):
    """The same through the command line: each variant's plan in `qinfra plan --stack prod --json`
    equals `qinfra plan --model ... --json` for its format, GPU and tensor parallelism."""
    from click.testing import CliRunner

    from qinfra.cli.main import cli

    model = str(reference_models / "llama-3.1-8b")
    path = stacks / "Pulumi.prod.yaml"
    path.write_text(path.read_text().replace("meta-llama/Llama-3.1-8B-Instruct", model))
    result = CliRunner().invoke(cli, ["plan", "--stack", "prod", "--json"])
    assert result.exit_code == 0, result.output
    for name, variant in json.loads(result.output)["variants"].items():
        chosen = variant["chosen"]
        assert chosen["replicas_per_gpu"] == 1
        adhoc = CliRunner().invoke(cli, [
            "plan", "--model", model, "--format", chosen["plan"]["format"], "--gpu", chosen["gpu"],
            "--tensor-parallel-size", str(chosen["tensor_parallel_size"]),
            "--max-model-len", "8192", "--json"])
        assert adhoc.exit_code == 0, adhoc.output
        assert json.loads(adhoc.output) == chosen["plan"], name


@pytest.mark.parametrize(
    ("stage", "percent", "quantized"),
    [
        (Stage.BASELINE_ONLY, 0, 0),  # not started at all
        (Stage.AB_TEST, 10, 100),  # one llama-server: its slots cannot follow the weight live
        (Stage.GRADUAL, 50, 100),
        (Stage.ROLLBACK, 0, 0),
    ],
)
def test_local_engines_are_sized_for_all_traffic_once_they_take_any(stage, percent, quantized):
    """Raising the quantized share on target local must not restart its engine (a restart
    fails the requests the router already sends it), so its slots never depend on the weight."""
    shares = sized_for_percent(stage, percent, Target.LOCAL)
    assert shares == {"baseline": 100, "quantized": quantized}
    assert sized_for_percent(stage, percent, Target.AWS)["quantized"] == percent
