"""The planner's estimated terms held to public vLLM start-up logs it was not fitted on.

The planner's constants were fitted to one log (vLLM issue 10517, Llama-3.1-8B on an RTX 3090,
see qinfra/planning/planner.py); none of the logs below was used for fitting. Each case names
its source, the vLLM version that printed it (the planner follows VLLM_VERSION, 0.33.0, V1
engine: every log here is older), the model config (written from the model's public config.json
where the repository has no copy), the GPU and the flags. Logged figures have two decimals.

Per term, the tolerance is the one these logs let us meet honestly:
- cuda_graph: within 0.05 GiB of vLLM's own estimate (one log, vLLM 0.21.0).
- peak_activation: no tolerance can be met. All three logs come from the V0 engine, whose
  profile run also warms up the sampler over max_num_seqs full-vocabulary rows, and the planner
  is 16-59 % under them (spread below). The term stays marked an estimate; the test pins the
  spread so that a planner change that moves it shows up here.
- non_torch: a per-process figure (CUDA context growth, cuBLAS/NCCL buffers) that does not follow
  the model: public single-GPU logs range 0.03-1.79 GiB and multi-GPU ranks 0.20-3.58 GiB. The
  planner's constant can only be held to lie inside that range; it stays marked an estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from qinfra.core import modelinfo
from qinfra.core.formats import Format
from qinfra.core.hardware import adhoc_gpu
from qinfra.planning.planner import GIB, EngineOptions, EnginePlan, plan_engine

_LLAMA_31_8B = json.loads((Path(__file__).parent / "data/models/llama-3.1-8b/config.json").read_text())

# meta-llama/Meta-Llama-3-8B config.json: Llama-3.1-8B's shapes with an 8192-token context.
LLAMA_3_8B = {**_LLAMA_31_8B, "max_position_embeddings": 8192, "rope_theta": 500000.0}
# Qwen/Qwen2.5-32B-Instruct config.json (the facts used).
QWEN25_32B = {
    "model_type": "qwen2", "hidden_size": 5120, "num_hidden_layers": 64, "num_attention_heads": 40,
    "num_key_value_heads": 8, "intermediate_size": 27648, "vocab_size": 152064,
    "max_position_embeddings": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
# Qwen/Qwen3-8B config.json (the facts used).
QWEN3_8B = {
    "model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
    "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


@dataclass(frozen=True)
class Log:
    """One public start-up log: where it is, what ran, and the figures it printed (GiB)."""

    source: str
    vllm: str
    config: dict[str, object]
    gpu_gib: float
    compute_capability: float
    opts: EngineOptions
    logged: dict[str, float]

    def plan(self) -> EnginePlan:
        model = modelinfo.from_config(self.config, name=self.source)
        gpu = adhoc_gpu(self.gpu_gib, self.compute_capability)
        return plan_engine(model, Format.BF16, gpu, self.opts)


def _gib(plan: EnginePlan, name: str) -> float:
    return next(t.bytes for t in plan.terms if t.name == name) / GIB


def _estimate(plan: EnginePlan, name: str) -> bool:
    return next(t.estimate for t in plan.terms if t.name == name)


LOGS = {
    # https://github.com/vllm-project/vllm/pull/10511 (youkaichao, 2024-12-14 "sanity checks"),
    # vLLM 0.6.5.dev (V0): `vllm serve meta-llama/Meta-Llama-3-8B` on one H100-80GB (79.22 GiB),
    # defaults: utilization 0.90, max_model_len 8192, chunked prefill off below 32k so the
    # profile ran max_num_batched_tokens = max_model_len = 8192, max_num_seqs 256.
    "pr10511-llama3-8b-h100-tp1": Log(
        "vllm-project/vllm#10511", "0.6.5.dev (V0)", LLAMA_3_8B, 79.22, 9.0,
        EngineOptions(tensor_parallel_size=1, max_model_len=8192, gpu_memory_utilization=0.90,
                      max_num_batched_tokens=8192, max_num_seqs=256),
        {"weights": 14.96, "non_torch": 1.79, "peak_activation": 1.26},
    ),
    # The same comment, `-tp 2` (per rank).
    "pr10511-llama3-8b-h100-tp2": Log(
        "vllm-project/vllm#10511", "0.6.5.dev (V0)", LLAMA_3_8B, 79.22, 9.0,
        EngineOptions(tensor_parallel_size=2, max_model_len=8192, gpu_memory_utilization=0.90,
                      max_num_batched_tokens=8192, max_num_seqs=256),
        {"weights": 7.48, "non_torch": 3.58, "peak_activation": 1.26},
    ),
    # https://github.com/vllm-project/vllm/issues/15815 (2025-04-02), V0 worker (vLLM 0.7/0.8):
    # Qwen2.5-32B-Instruct BF16, tensor parallel 2 on two L40S (44.42 GiB each), utilization
    # 0.90, max_model_len 10000 (below 32k: no chunked prefill, so 10000 tokens profiled),
    # max_num_seqs default 256. Its weights line (30.71 GiB per rank) is 0.19 GiB over
    # params x 2 / 2, which this planner does not explain: weights are not asserted here.
    "i15815-qwen25-32b-l40s-tp2": Log(
        "vllm-project/vllm#15815", "0.7/0.8 (V0)", QWEN25_32B, 44.42, 8.9,
        EngineOptions(tensor_parallel_size=2, max_model_len=10000, gpu_memory_utilization=0.90,
                      max_num_batched_tokens=10000, max_num_seqs=256),
        {"non_torch": 0.30, "peak_activation": 1.26},
    ),
    # https://github.com/LMCache/LMCache/issues/3430 (2026-05-28), vLLM 0.21.0 (V1): Qwen/Qwen3-8B
    # on one RTX A5000 (24 GB), max_model_len 16384, default CUDA-graph capture sizes
    # (PIECEWISE=51 largest 512, FULL=35 largest 256): "Estimated CUDA graph memory: 0.52 GiB
    # total", the figure vLLM subtracts from the KV budget since 0.21.
    "lmcache3430-qwen3-8b-a5000": Log(
        "LMCache/LMCache#3430", "0.21.0 (V1)", QWEN3_8B, 23.55, 8.6,
        EngineOptions(max_model_len=16384, gpu_memory_utilization=0.9764),
        {"cuda_graph": 0.52},
    ),
}


def _cases(term: str) -> list[str]:
    return sorted(name for name, log in LOGS.items() if term in log.logged)


@pytest.mark.parametrize("name", _cases("weights"))
def test_weights_match_the_log(name):
    """Weights are exact accounting, not an estimate: the logs' two decimals (+-0.005 GiB)."""
    log = LOGS[name]
    assert _gib(log.plan(), "weights") == pytest.approx(log.logged["weights"], abs=0.006)


@pytest.mark.parametrize("name", _cases("cuda_graph"))
def test_cuda_graph_pool_within_0_05_gib_of_vllms_estimate(name):
    log = LOGS[name]
    plan = log.plan()
    assert _estimate(plan, "cuda_graph")
    assert _gib(plan, "cuda_graph") == pytest.approx(log.logged["cuda_graph"], abs=0.05)


# Planned / logged peak activation on the V0 logs above (planner 0.844, 0.516, 1.059 GiB against
# 1.26 logged each): 0.67, 0.41, 0.84. The planner's forward-pass term halves with tensor
# parallelism while the logged peak does not (the V0 sampler warm-up, not split across ranks,
# dominates): an estimate, under by 16-59 % on V0.
ACTIVATION_SPREAD = {
    "pr10511-llama3-8b-h100-tp1": 0.67,
    "pr10511-llama3-8b-h100-tp2": 0.41,
    "i15815-qwen25-32b-l40s-tp2": 0.84,
}


@pytest.mark.parametrize("name", _cases("peak_activation"))
def test_peak_activation_is_an_estimate_with_the_documented_spread(name):
    log = LOGS[name]
    plan = log.plan()
    assert _estimate(plan, "peak_activation")
    ratio = _gib(plan, "peak_activation") / log.logged["peak_activation"]
    assert ratio == pytest.approx(ACTIVATION_SPREAD[name], abs=0.01)


# Public non-torch figures by GPU count per engine, beyond the logs above (model-independent):
# https://github.com/vllm-project/vllm/issues/13882 0.03 GiB (RTX 4060, V0 0.7),
# https://github.com/vllm-project/vllm/pull/12126 0.16 GiB (H100, V0 0.6.6),
# https://github.com/vllm-project/vllm/issues/17327 0.06 GiB (RTX 3090, V0 0.8.5),
# https://github.com/vllm-project/vllm/pull/14447 0.20 GiB per rank (RTX 3090s, V0 0.8).
NON_TORCH_RANGE_GIB = {False: (0.03, 1.79), True: (0.20, 3.58)}  # keyed by tensor parallel > 1


@pytest.mark.parametrize("name", _cases("non_torch"))
def test_non_torch_is_an_estimate_inside_the_public_range(name):
    log = LOGS[name]
    plan = log.plan()
    low, high = NON_TORCH_RANGE_GIB[log.opts.tensor_parallel_size > 1]
    assert low <= log.logged["non_torch"] <= high
    assert _estimate(plan, "non_torch")
    assert low <= _gib(plan, "non_torch") <= high
