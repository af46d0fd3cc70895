"""The offline gate on the real SmolLM2 model through `qinfra gate`: Q8_0 and Q4_K_M pass, Q2_K
fails under the shipped thresholds; the KLD it reports is llama-perplexity's own figure; the
baseline's logits are computed once per baseline and text."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qinfra.cli.gate import gate
from qinfra.quality.gate import shipped_text
from qinfra.quality.gate_kld import CONTEXT_TOKENS, PERPLEXITY, logits_path
from qinfra.quality.gate_report import read_report
from qinfra.serving.llamacpp import find_binary
from tests.quality.gate_models import gate_cache, smollm2_models  # noqa: F401  (fixtures)

pytestmark = pytest.mark.real

Gated = Callable[[str], tuple[int, dict[str, Any]]]


@pytest.fixture(scope="session")
def gated(smollm2_models: Callable[[str], Path], gate_cache: Path,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Gated:
    """`gated("Q4_K_M")`: (exit code, JSON) of `qinfra gate --json` against the F16 baseline,
    run once per type for the session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QINFRA_CACHE_DIR", str(gate_cache))

    @functools.cache
    def run(gguf_type: str) -> tuple[int, dict[str, Any]]:
        argv = ["--baseline", str(smollm2_models("F16")),
                "--quantized", str(smollm2_models(gguf_type)), "--json"]
        result = CliRunner().invoke(gate, argv)
        assert result.exit_code in (0, 1), result.output
        return result.exit_code, json.loads(result.stdout)

    yield run
    mp.undo()


@pytest.mark.parametrize(
    ("gguf_type", "exit_code", "verdict"),
    [
        # 8-bit: near lossless, within its family's expected drift
        ("Q8_0", 0, "pass"),
        # 4-bit K-quant: ~0.05 mean KLD on this small model, under the acceptance bar
        ("Q4_K_M", 0, "pass"),
        # 2-bit: ~0.4 mean KLD and ~62% same top token, answers flip
        ("Q2_K", 1, "fail"),
    ],
)
def test_default_thresholds_pass_q8_q4_and_fail_q2(gated: Gated, gguf_type: str, exit_code: int,
                                                   verdict: str) -> None:
    code, doc = gated(gguf_type)
    assert (code, doc["verdict"], doc["method"]) == (exit_code, verdict, "kld")
    assert set(doc["metrics"]) >= {"mean_kld", "ppl_ratio", "same_top_p", "rms_dp"}
    assert doc["quantized"]["format"] == f"gguf-{gguf_type.lower()}"
    assert doc["thresholds"]["acceptance"]["mean_kld_max"] > 0
    # every KLD percentile llama-perplexity prints is kept
    assert {"median", "99.0%", "maximum"} <= set(doc["metrics"]["kld_percentiles"])
    if verdict == "fail":
        assert any(r.startswith("mean_kld ") and "acceptance" in r for r in doc["reasons"])
    else:
        assert doc["reasons"] == []


def test_reported_kld_is_a_direct_llama_perplexity_runs(
    gated: Gated, smollm2_models: Callable[[str], Path], gate_cache: Path, tmp_path: Path,  # noqa: F811
) -> None:
    _, doc = gated("Q4_K_M")
    # llama-perplexity's own run on the same text and the same baseline logits (the gate's
    # cached file: the baseline pass is deterministic, and a second one would cost ~20 s)
    base = logits_path(gate_cache, f"sha256-{doc['baseline']['sha256']}", doc["input_sha256"])
    ppl = str(find_binary(PERPLEXITY))
    common = ["-f", str(shipped_text()), "-c", str(CONTEXT_TOKENS)]
    out = subprocess.run([ppl, "-m", str(smollm2_models("Q4_K_M")), *common,
                          "--kl-divergence-base", str(base), "--kl-divergence"],
                         check=True, capture_output=True, text=True)
    match = re.search(r"Mean\s+KLD:\s+([0-9.]+)", out.stdout + out.stderr)
    assert match is not None
    assert doc["metrics"]["mean_kld"] == float(match.group(1))


def test_baseline_logits_are_cached_per_baseline_and_text(gated: Gated, gate_cache: Path) -> None:  # noqa: F811
    _, first = gated("Q8_0")
    _, second = gated("Q4_K_M")
    assert second["baseline_logits_cached"] or first["baseline_logits_cached"]
    base_id = f"sha256-{first['baseline']['sha256']}"
    logits = logits_path(gate_cache, base_id, first["input_sha256"])
    assert logits.is_file() and logits.stat().st_size > 0
    assert [p.name for p in logits.parent.iterdir()] == [logits.name]  # no half-written files


def test_the_report_is_content_addressed_and_reads_back(gated: Gated) -> None:
    _, doc = gated("Q2_K")
    report = read_report(doc["report_uri"])
    assert doc["report_uri"].endswith(f"/gate/{report.report_id}.json")
    assert report.verdict.value == "fail"
    assert report.quantized.sha256 == doc["quantized"]["sha256"]
    # the same evidence names the same report
    _, again = gated("Q2_K")
    assert again["report_uri"] == doc["report_uri"]


def test_a_text_shorter_than_two_contexts_fails_with_the_fix(
    smollm2_models: Callable[[str], Path], gate_cache: Path, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QINFRA_CACHE_DIR", str(gate_cache))
    short = tmp_path / "short.txt"
    short.write_text("Too short to score.\n")
    result = CliRunner().invoke(gate, ["--baseline", str(smollm2_models("F16")), "--quantized",
                                       str(smollm2_models("Q8_0")), "--text", str(short)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: llama-perplexity on the baseline")
    assert "longer text" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        # nothing to gate
        [],
        # a stack and an ad hoc pair at once
        ["--stack", "local", "--baseline", "a.gguf", "--quantized", "b.gguf"],
        # half an ad hoc pair
        ["--baseline", "a.gguf"],
    ],
)
def test_bad_usage_exits_2(argv: list[str]) -> None:
    result = CliRunner().invoke(gate, argv)
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage:")


def test_a_baseline_given_as_quantized_is_refused(smollm2_models: Callable[[str], Path]) -> None:  # noqa: F811
    f16 = str(smollm2_models("F16"))
    result = CliRunner().invoke(gate, ["--baseline", f16, "--quantized", f16])
    assert result.exit_code == 2
    assert "is gguf-f16, not a quantized format" in result.stderr
