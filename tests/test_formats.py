"""Engine x format x GPU compatibility: refusals with reasons and the nearest alternatives."""

from __future__ import annotations

import pytest

from qinfra.core.formats import Engine, Format, FormatKind, check_compatibility, format_info, format_table
from qinfra.core.hardware import catalog


def cc(gpu: str) -> float:
    return catalog().gpu(gpu).compute_capability


@pytest.mark.parametrize(
    ("fmt", "engine", "gpu", "reason", "alternative"),
    [
        # GGUF on vLLM: out-of-tree plugin; llama.cpp loads it, AWQ is vLLM's 4-bit
        (Format.GGUF_Q4_K_M, Engine.VLLM, "l4", "GGUF", "engine llama.cpp"),
        (Format.GGUF_Q4_K_M, Engine.VLLM, "l4", "GGUF", "format awq"),
        # AWQ on llama.cpp: convert to GGUF
        (Format.AWQ, Engine.LLAMA_CPP, "l4", "GGUF only", "format gguf-q4_k_m"),
        # AWQ needs 7.5; a V100 is 7.0 -> GPTQ (6.0) runs there
        (Format.AWQ, Engine.VLLM, "v100", "needs compute capability >= 7.5", "format gptq"),
        # bf16 needs 8.0; T4 is 7.5 -> fp16
        (Format.BF16, Engine.VLLM, "t4", "needs compute capability >= 8.0", "format fp16"),
        # fp8 below weight-only support (8.0): a T4 cannot run it at all
        (Format.FP8, Engine.VLLM, "t4", "needs compute capability >= 8.9", "format int8"),
    ],
)
def test_refusals_name_reason_and_alternatives(fmt, engine, gpu, reason, alternative):
    verdict = check_compatibility(fmt, engine, cc(gpu), gpu)
    assert not verdict.ok
    assert reason in verdict.reason
    assert any(alt.startswith(alternative) for alt in verdict.alternatives), verdict.alternatives


@pytest.mark.parametrize("gpu", ["a100-40gb", "a100-80gb", "a10g"])
def test_fp8_below_8_9_runs_weight_only_with_a_warning(gpu):
    verdict = check_compatibility(Format.FP8, Engine.VLLM, cc(gpu), gpu)
    assert verdict.ok
    assert "weight-only" in verdict.warnings[0]


@pytest.mark.parametrize(
    ("fmt", "engine", "gpu"),
    [
        (Format.FP8, Engine.VLLM, "l4"),
        (Format.FP8, Engine.VLLM, "h100-80gb"),
        (Format.AWQ, Engine.VLLM, "t4"),
        (Format.GPTQ, Engine.VLLM, "v100"),
        (Format.FP16, Engine.VLLM, "v100"),
        (Format.BF16, Engine.VLLM, "a10g"),
        (Format.GGUF_Q2_K, Engine.LLAMA_CPP, "t4"),
    ],
)
def test_supported_combinations(fmt, engine, gpu):
    verdict = check_compatibility(fmt, engine, cc(gpu), gpu)
    assert verdict.ok and not verdict.warnings


def test_llama_cpp_runs_gguf_on_cpu_and_vllm_does_not():
    assert check_compatibility(Format.GGUF_Q4_K_M, Engine.LLAMA_CPP, None).ok
    assert not check_compatibility(Format.AWQ, Engine.VLLM, None).ok


def test_marlin_kernels_from_8_0():
    assert format_info(Format.AWQ).quantization_flag(7.5) == "awq"
    assert format_info(Format.AWQ).quantization_flag(8.0) == "awq_marlin"
    assert format_info(Format.GPTQ).quantization_flag(9.0) == "gptq_marlin"
    assert format_info(Format.BF16).quantization_flag(9.0) is None


def test_shipped_format_table_is_complete_and_sane():
    table = format_table()
    assert set(table) == set(Format)
    for info in table.values():
        assert 2 <= info.linear_bits <= 16 and info.embedding_bits > 0 and info.lm_head_bits > 0
        assert info.engines
        assert (info.vllm_min_cc is not None) == (Engine.VLLM in info.engines)
        assert info.is_gguf == (Engine.LLAMA_CPP in info.engines)
        assert info.format not in info.equivalents
        if info.kind is FormatKind.BASELINE:
            assert info.linear_bits == 16
