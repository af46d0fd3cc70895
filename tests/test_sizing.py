"""Fleet sizing per variant: smallest TP that fits, replicas, shares, cheapest choice."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from qinfra.core import modelinfo
from qinfra.core.hardware import catalog
from qinfra.planning.sizing import plan_stack, traffic_share
from qinfra.core.spec import Stage, parse_config

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
def test_traffic_share(stage, percent, baseline, quantized):
    assert traffic_share(stage, percent) == {"baseline": baseline, "quantized": quantized}


def test_prod_plan_sizes_both_variants(reference_models):
    plan = plan_of(prod_config(reference_models))
    assert plan.fits
    base, quant = plan.variant("baseline"), plan.variant("quantized")
    assert base.required_concurrency == 64 and quant.required_concurrency == math.ceil(64 * 0.10)
    for v in (base, quant):
        c = v.chosen
        assert c is not None and c.engine.fits
        # enough engines for the variant's sequences, each holding what it claims
        assert c.engines * c.sequences_per_engine >= v.required_concurrency
        assert c.sequences_per_engine <= c.engine.max_concurrency
        # the cheapest fitting option was chosen
        assert c.usd_per_hour == min(o.usd_per_hour for o in v.options)
    # 4-bit weights leave more KV per GPU than bf16
    assert quant.chosen.sequences_per_engine > base.chosen.sequences_per_engine


def test_rollback_keeps_quantized_at_zero_with_its_flags(reference_models):
    cfg = prod_config(reference_models, rollout__stage="rollback", rollout__quantized_percent=0)
    quant = plan_of(cfg).variant("quantized")
    assert quant.required_concurrency == 0 and quant.chosen.engines == 0
    assert quant.chosen.machines == 0 and quant.chosen.usd_per_hour == 0
    assert quant.chosen.engine.flags["quantization"] == "awq_marlin"


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
    assert base.engine.flags["gpu_memory_utilization"] == pytest.approx(0.9 / base.replicas_per_gpu,
                                                                         abs=1e-4)


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
    quant = plan.variant("quantized").chosen.engine
    assert quant.flags["parallel"] == 2  # 50% of 4 sequences
    assert quant.flags["ctx_size"] == 2 * 1024 and quant.flags["n_gpu_layers"] == 0
    assert plan.variant("baseline").chosen.engine.flags["parallel"] == 4
